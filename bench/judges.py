"""Reference judges for the guard benchmark, run on the same scenarios.

- Kayenta-style: at the end of each wave's bake, a two-sided Mann-Whitney
  test of the after window's per-interval values against the baseline's at
  98 % confidence (Kayenta's NetflixACAJudge default); a significant move in
  the bad direction fails the push. Per-interval values: the error ratio,
  the request count, the p95 latency, the gauge reading. Fewer than three
  values in a window is "no data" (inconclusive).
- Flagger-style: every minute after the warm-up, the last minute's value
  against a fixed threshold; the push fails when a wave collects 5 failed
  checks (Flagger's documented `interval: 1m`, `threshold: 5`). The fixed
  threshold is the check's own smallest change that matters applied to the
  baseline window's value (e.g. error ratio above baseline * 1.2 and
  baseline + 0.05 points); a minute without requests is a failed check, as
  in Flagger.

Both judges see exactly the series the guard sees; both replay the same two
waves and stop at the first failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from scipy import stats

from checks.scenario import Scenario, hist_above, hist_quantile
from checks.spec import CheckSpec, Kind


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "pass" | "fail" | "inconclusive"
    wave: int
    at: datetime | None  # when it failed


class Frame:
    """Per-interval access to one scenario's series by time window."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario

    def index(self, start: datetime, stop: datetime) -> list[int]:
        iv = self.s.interval.total_seconds()
        lo = max(0, int(np.ceil((start - self.s.start).total_seconds() / iv)))
        hi = int(np.ceil((stop - self.s.start).total_seconds() / iv))
        return list(range(lo, hi))

    def column(self, name: str, idx: list[int]) -> np.ndarray:
        values = self.s.series.get(name, np.array([]))
        idx = [i for i in idx if i < len(values)]
        return np.asarray(values[idx], dtype=float)

    def per_interval(self, check: CheckSpec, idx: list[int]) -> np.ndarray:
        """The values a Kayenta-style judge compares, one per interval."""
        if check.kind == Kind.RATIO:
            bad, total = self.column(check.bad_field, idx), self.column(check.all_field, idx)
            keep = total > 0
            share: np.ndarray = bad[keep] / total[keep]
            return share
        if check.kind == Kind.COUNT:
            return self.column(check.field, idx)
        if check.kind == Kind.LATENCY and check.latency_mode == "threshold":
            hist = self.s.histograms[check.field]
            out = [hist_quantile(hist, [i]) for i in idx]
            return np.array([v for v in out if v is not None])
        values = self.column(check.field, idx)
        kept: np.ndarray = values[~np.isnan(values)]
        return kept

    def value(self, check: CheckSpec, idx: list[int], threshold: float | None) -> float | None:
        """One window's value for a Flagger-style check (None: no data)."""
        if check.kind == Kind.RATIO:
            total = self.column(check.all_field, idx).sum()
            return float(self.column(check.bad_field, idx).sum() / total) if total > 0 else None
        if check.kind == Kind.COUNT:
            seconds = len(idx) * self.s.interval.total_seconds()
            return float(np.nansum(self.column(check.field, idx)) / seconds) if idx else None
        if check.kind == Kind.LATENCY and check.latency_mode == "threshold":
            hist = self.s.histograms[check.field]
            total = hist_above(hist, idx, -np.inf)
            if not total or threshold is None:
                return None
            return (hist_above(hist, idx, threshold) or 0.0) / total
        values = self.per_interval(check, idx)
        return float(np.mean(values)) if len(values) else None


def _bake_end(s: Scenario, live: datetime) -> datetime:
    g = s.guard
    looks = max(1, int((g.bake - g.warmup) / g.look_every))
    return live + g.warmup + looks * g.look_every


def kayenta(s: Scenario, confidence: float = 0.98) -> Outcome:
    """Mann-Whitney on per-interval values at the end of each bake."""
    frame = Frame(s)
    base = frame.index(s.push - s.guard.baseline, s.push)
    verdict = "pass"
    for wave, live in enumerate(s.waves, start=1):
        end = _bake_end(s, live)
        after = frame.index(live + s.guard.warmup, end)
        nodata = False
        for check in (c for c in s.checks if c.critical):
            x, y = frame.per_interval(check, base), frame.per_interval(check, after)
            if len(x) < 3 or len(y) < 3:
                nodata = True
                continue
            if np.ptp(np.concatenate([x, y])) == 0:
                continue
            p = stats.mannwhitneyu(y, x, alternative="two-sided").pvalue
            worse = np.median(y) > np.median(x) if check.bad.value == "rise" \
                else np.median(y) < np.median(x)
            if p < 1.0 - confidence and worse:
                return Outcome("fail", wave, end)
        if nodata:
            verdict = "inconclusive"
            break
    return Outcome(verdict, len(s.waves), None)


def flagger(s: Scenario, threshold: int = 5, interval: timedelta = timedelta(minutes=1)
            ) -> Outcome:
    """Fixed thresholds on the last minute, every minute; fail at `threshold` failed checks."""
    frame = Frame(s)
    base_idx = frame.index(s.push - s.guard.baseline, s.push)
    limits = []
    for check in (c for c in s.checks if c.critical):
        p95 = None
        if check.kind == Kind.LATENCY and check.latency_mode == "threshold":
            p95 = hist_quantile(s.histograms[check.field], base_idx)
        if check.kind in (Kind.GAUGE, Kind.LATENCY) and p95 is None:
            base = float(np.median(frame.per_interval(check, base_idx)))
        else:
            base = frame.value(check, base_idx, p95) or 0.0
        limits.append((check, p95, base))
    for wave, live in enumerate(s.waves, start=1):
        failed = 0
        now = live + s.guard.warmup + interval
        while now <= _bake_end(s, live):
            idx = frame.index(now - interval, now)
            for check, p95, base in limits:
                value = frame.value(check, idx, p95)
                if value is None or _beyond(check, value, base):
                    failed += 1
            if failed >= threshold:
                return Outcome("fail", wave, now)
            now += interval
    return Outcome("pass", len(s.waves), None)


def _beyond(check: CheckSpec, value: float, base: float) -> bool:
    if check.bad.value == "rise":
        return value > base * (1 + check.min_change) and value - base >= check.min_absolute
    return value < base * (1 - check.min_change) and base - value >= check.min_absolute

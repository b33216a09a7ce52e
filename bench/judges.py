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

Each judge's statistics are computed once per scenario (`kayenta_waves`,
`flagger_waves`) and decided at the documented setting (`kayenta_decide`,
`flagger_decide`); `kayenta_score` and `flagger_score` turn them into one
number per push that fails it at any other setting (the push fails when the
score exceeds the setting's cut), so that the benchmark can compare the
guard with each reference at equal false alarms and at equal detection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def kayenta_waves(s: Scenario) -> list[tuple[float, bool, datetime]]:
    """Per wave: the smallest two-sided Mann-Whitney p-value of a critical check that
    moved in its bad direction (1.0: none did), whether a check had too little
    data, and the end of the wave's bake."""
    frame = Frame(s)
    base = frame.index(s.push - s.guard.baseline, s.push)
    out: list[tuple[float, bool, datetime]] = []
    for live in s.waves:
        end = _bake_end(s, live)
        after = frame.index(live + s.guard.warmup, end)
        worst, nodata = 1.0, False
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
            if worse:
                worst = min(worst, float(p))
        out.append((worst, nodata, end))
    return out


def kayenta_decide(waves: Sequence[tuple[float, bool, datetime | None]],
                   confidence: float = 0.98) -> Outcome:
    """Replay `kayenta_waves` at a confidence: the first wave with p < 1 - confidence
    fails; a wave with a check without data ends the push inconclusive."""
    for wave, (p, nodata, end) in enumerate(waves, start=1):
        if p < 1.0 - confidence:
            return Outcome("fail", wave, end)
        if nodata:
            return Outcome("inconclusive", len(waves), None)
    return Outcome("pass", len(waves), None)


def kayenta_score(waves: Sequence[tuple[float, bool, datetime | None]]) -> float:
    """-p of the wave that would fail first at any confidence: the push fails at
    confidence c exactly when this score exceeds -(1 - c)."""
    best = -1.0
    for p, nodata, _ in waves:
        best = max(best, -p)
        if nodata:
            break
    return best


def kayenta(s: Scenario, confidence: float = 0.98) -> Outcome:
    """Mann-Whitney on per-interval values at the end of each bake."""
    return kayenta_decide(kayenta_waves(s), confidence)


def flagger_waves(s: Scenario, interval: timedelta = timedelta(minutes=1)
                  ) -> list[list[tuple[list[float], datetime]]]:
    """Per wave, per minute checked: for each critical check the largest multiple of
    its threshold (`min_change`, `min_absolute`) that the minute's value still
    crosses (`math.inf`: a minute without data, always a failed check), and the time."""
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
    out = []
    for live in s.waves:
        minutes = []
        now = live + s.guard.warmup + interval
        while now <= _bake_end(s, live):
            idx = frame.index(now - interval, now)
            minutes.append(([_reach(check, frame.value(check, idx, p95), base)
                             for check, p95, base in limits], now))
            now += interval
        out.append(minutes)
    return out


def flagger_decide(waves: Sequence[Sequence[tuple[Sequence[float], datetime | None]]],
                   scale: float = 1.0, threshold: int = 5) -> Outcome:
    """Replay `flagger_waves` with the thresholds multiplied by `scale`: a check fails
    when the value crosses them; a wave fails at `threshold` failed checks."""
    for wave, minutes in enumerate(waves, start=1):
        failed = 0
        for reach, now in minutes:
            failed += sum(1 for r in reach if r > scale)
            if failed >= threshold:
                return Outcome("fail", wave, now)
    return Outcome("pass", len(waves), None)


def flagger_score(waves: Sequence[Sequence[tuple[Sequence[float], datetime | None]]],
                  threshold: int = 5) -> float:
    """The largest threshold multiple at which some wave still collects `threshold`
    failed checks: the push fails at `scale` exactly when this score exceeds it."""
    best = -math.inf
    for minutes in waves:
        reach = sorted((r for checks, _ in minutes for r in checks), reverse=True)
        if len(reach) >= threshold:
            best = max(best, reach[threshold - 1])
    return best


def flagger(s: Scenario, threshold: int = 5, interval: timedelta = timedelta(minutes=1)
            ) -> Outcome:
    """Fixed thresholds on the last minute, every minute; fail at `threshold` failed checks."""
    return flagger_decide(flagger_waves(s, interval), 1.0, threshold)


def _reach(check: CheckSpec, value: float | None, base: float) -> float:
    """The largest m for which `value` is beyond the threshold m * (`min_change`,
    `min_absolute`) from `base` in the bad direction (the check fails for m < reach)."""
    if value is None:
        return math.inf
    if not (math.isfinite(value) and math.isfinite(base)):
        return -math.inf  # as before: a NaN compares false, so it is no failed check
    moved = value - base if check.bad.value == "rise" else base - value
    if moved <= 0:
        return -math.inf
    relative = moved / base / check.min_change if base > 0 and check.min_change > 0 \
        else math.inf
    absolute = moved / check.min_absolute if check.min_absolute > 0 else math.inf
    return min(relative, absolute)

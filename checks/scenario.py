"""`pushguard judge SCENARIO.json`: replay one push against recorded series.

A scenario is one JSON object:

    {
      "name": "checkout errors x3, step, 20 rps",     # free text
      "expected": "regression",                       # or "harmless"
      "interval": "30s",                              # length of each series value
      "start": "2026-03-02T08:20:00+00:00",           # time of the first value
      "push": "2026-03-02T09:00:00+00:00",            # push start: the baseline ends here
      "waves": ["2026-03-02T09:00:00+00:00"],         # optional: when each wave went live
                                                      #   (default: one wave at "push")
      "guard": {"baseline": "30m", "warmup": "1m",    # optional: [guard] keys (defaults as
                "bake": "10m", "look_every": "30s",   #   in config.toml)
                "false_alarm": 0.01, "canary_share": 0.67,
                "seasonal": "off", "on_inconclusive": "halt"},
      "checks": [{"name": "errors", "kind": "ratio",  # [[checks]] tables, same keys
                  "measurement": "http", "bad_field": "errors", "all_field": "requests",
                  "bad": "rise", "min_change": 0.2, "min_absolute": 0.001}],
      "series": {"requests": [600, 612, ...],         # per-interval values by field name;
                 "errors": [6, 4, ...]},              #   null = no data in that interval
      "histograms": {"ms": {"edges": [0, 10, ...],    # optional, latency threshold checks:
                            "counts": [[...], ...]}}, #   per-interval bucket counts
      "notes": {}                                     # optional, free-form (generator data)
    }

A check reads the series named by its fields (`field`, or `bad_field` and
`all_field`); `measurement` and `where` are not used. Counts and ratios sum
the values per step, gauges average them, latency percentiles use each value
as one point, and latency threshold checks read the histogram named by
`field` (p95 and the counts above it are interpolated within buckets). A
check without `step` whose series interval is longer than `look_every`
works on the series interval.

The replay is the pusher's: per wave, looks at warm-up + k * look_every for
k = 1..N (N = Guard.looks(bake)), baseline = (push - baseline, push), after
= (wave live + warm-up, now); the first FAIL stops the push; a wave that
ends INCONCLUSIVE stops it too unless `on_inconclusive` is "pass".

Exit status: 0 when the verdict is the expected one (pass for harmless,
fail for regression), 1 when it is not, 2 when the file is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from checks.series import QUANTILE, Series
from checks.spec import CheckSpec, Kind, parse_check
from checks.verdict import Guard, Look
from daemon.config import GuardConfig, parse_guard
from daemon.models import Verdict
from daemon.tomlread import Table, parse_duration


class ScenarioError(ValueError):
    """The scenario file is unusable; the message says which key."""


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # k + 1 bucket edges
    counts: np.ndarray  # intervals x k


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str
    interval: timedelta
    start: datetime
    push: datetime
    waves: tuple[datetime, ...]
    guard: GuardConfig
    checks: tuple[CheckSpec, ...]
    series: Mapping[str, np.ndarray]
    histograms: Mapping[str, Histogram]
    notes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Replay:
    """The outcome of a replayed push: the verdict and the look that decided it."""

    verdict: Verdict
    reason: str
    wave: int
    look: int
    at: datetime
    looks: tuple[tuple[int, int, datetime, Look], ...]  # (wave, look, time, look)


def _time(data: Mapping[str, Any], key: str) -> datetime:
    try:
        when = datetime.fromisoformat(str(data[key]))
    except (KeyError, ValueError):
        raise ScenarioError(f"{key}: expected an ISO 8601 date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _guard(raw: Any) -> GuardConfig:
    """The scenario's `guard` object, read as the config's `[guard]` table."""
    if not isinstance(raw, dict):
        raise ScenarioError("guard: expected an object")
    errors: list[str] = []
    table = Table(Path("scenario"), "guard", dict(raw), errors)
    guard = parse_guard(table)
    table.finish()
    if errors:
        raise ScenarioError("; ".join(errors))
    return guard


def _checks(raw: Any, interval: timedelta, guard: GuardConfig) -> tuple[CheckSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError("checks: expected a non-empty list of objects")
    errors: list[str] = []
    checks = []
    for i, table in enumerate(raw):
        if not isinstance(table, dict):
            raise ScenarioError(f"checks[{i}]: expected an object")
        data = dict(table)
        if "step" not in data and interval > guard.look_every:
            data["step"] = f"{interval.total_seconds():g}s"
        checks.append(parse_check(Table(Path("scenario"), f"checks[{i}]", data, errors)))
    if errors:
        raise ScenarioError("; ".join(errors))
    return tuple(checks)


def _object(raw: Any, key: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{key}: expected an object")
    return raw


def _list(raw: Any, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise ScenarioError(f"{key}: expected a list")
    return raw


def _numbers(raw: Any, key: str, *, nulls: bool) -> np.ndarray:
    """A list of finite JSON numbers (and nulls, read as NaN, where `nulls`)."""
    values = []
    for i, v in enumerate(_list(raw, key)):
        if v is None and nulls:
            values.append(math.nan)
        # bool is an int to Python, never a count to a person; NaN and Infinity are not JSON
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            values.append(float(v))
        else:
            raise ScenarioError(f"{key}[{i}]: expected a number{' or null' if nulls else ''},"
                                f" got {v!r}")
    return np.array(values, dtype=float)


def _histogram(raw: Any, key: str) -> Histogram:
    hist = _object(raw, key)
    rows = [_numbers(row, f"{key}.counts[{i}]", nulls=False)
            for i, row in enumerate(_list(hist.get("counts"), f"{key}.counts"))]
    k = len(rows[0]) if rows else 0
    for i, row in enumerate(rows):
        if len(row) != k or not k:
            raise ScenarioError(f"{key}.counts[{i}]: expected {k or 'at least 1'} bucket "
                                f"count(s) like counts[0], got {len(row)}")
    edges = _numbers(hist.get("edges"), f"{key}.edges", nulls=False)
    if rows and len(edges) != k + 1:
        raise ScenarioError(f"{key}.edges: expected {k + 1} edges for {k} bucket(s), "
                            f"got {len(edges)}")
    if np.any(np.diff(edges) <= 0):
        raise ScenarioError(f"{key}.edges: expected increasing edges")
    return Histogram(edges, np.array(rows, dtype=float).reshape(len(rows), k))


def load(data: object) -> Scenario:
    """A scenario from its JSON object; raises ScenarioError naming the bad key.

    Types and shapes are checked here, so a replay never meets a malformed value:
    `interval` > 0, `checks` a non-empty list of objects, `series` values lists of
    numbers or nulls, histogram `edges` one longer than each row of `counts`.
    """
    if not isinstance(data, dict):
        raise ScenarioError("expected a JSON object at the top level")
    try:
        interval = parse_duration(str(data.get("interval", "30s")))
    except ValueError as exc:
        raise ScenarioError(f"interval: {exc}") from None
    if interval <= timedelta(0):
        raise ScenarioError(f"interval: expected a duration above 0s, got {data['interval']!r}")
    guard = _guard(data.get("guard") or {})
    push = _time(data, "push")
    waves = tuple(_time({f"waves[{i}]": w}, f"waves[{i}]") for i, w in
                  enumerate(_list(data.get("waves") or [push.isoformat()], "waves")))
    if data.get("expected") not in ("harmless", "regression"):
        raise ScenarioError("expected: expected \"harmless\" or \"regression\"")
    series = {str(k): _numbers(vs, f"series.{k}", nulls=True)
              for k, vs in _object(data.get("series") or {}, "series").items()}
    hists = {str(k): _histogram(h, f"histograms.{k}")
             for k, h in _object(data.get("histograms") or {}, "histograms").items()}
    return Scenario(name=str(data.get("name", "")), expected=str(data["expected"]),
                    interval=interval, start=_time(data, "start"), push=push, waves=waves,
                    guard=guard, checks=_checks(data.get("checks"), interval, guard),
                    series=series, histograms=hists,
                    notes=_object(data.get("notes") or {}, "notes"))


class ScenarioSource:
    """An in-memory MetricSource over a scenario's series (a protocol-edge fake)."""

    def __init__(self, scenario: Scenario) -> None:
        self._s = scenario
        self.markers: list[dict[str, object]] = []

    def _slots(self, start: datetime, stop: datetime, step: timedelta) -> dict[int, list[int]]:
        first = self._s.start.timestamp()
        iv, st = self._s.interval.total_seconds(), step.total_seconds()
        lo = max(0, math.ceil((start.timestamp() - first) / iv))
        hi = math.ceil((stop.timestamp() - first) / iv)
        out: dict[int, list[int]] = {}
        for i in range(lo, hi):
            t = first + i * iv
            out.setdefault(int(t // st * st), []).append(i)
        return out

    def _values(self, name: str, index: list[int]) -> np.ndarray:
        values = self._s.series.get(name)
        if values is None:
            return np.array([])
        idx = [i for i in index if i < len(values)]
        picked: np.ndarray = values[idx]
        kept: np.ndarray = picked[~np.isnan(picked)]
        return kept

    async def series(self, check: CheckSpec, start: datetime, stop: datetime, step: timedelta,
                     *, slower_than: float | None = None) -> Series:
        slots = self._slots(start, stop, step)
        times = sorted(slots)
        cols: dict[str, list[float | None]] = {}
        quantile = None
        if check.kind == Kind.LATENCY and check.latency_mode == "threshold":
            hist = self._s.histograms.get(check.field)
            every = [i for t in times for i in slots[t]]
            quantile = hist_quantile(hist, every) if hist is not None else None
            cols["all"] = [hist_above(hist, slots[t], -math.inf) for t in times]
            if slower_than is not None:
                cols["slow"] = [hist_above(hist, slots[t], slower_than) for t in times]
        elif check.kind == Kind.LATENCY:
            first, iv = self._s.start.timestamp(), self._s.interval.total_seconds()
            points = [(first + i * iv, v) for t in times for i in slots[t]
                      for v in self._values(check.field, [i])]
            return Series(start, stop, step,
                          tuple(datetime.fromtimestamp(t, UTC) for t, _ in points),
                          {"value": tuple(v for _, v in points)},
                          queries=(f"memory: {check.field} points in [{start}, {stop})",))
        else:
            fields = {Kind.COUNT: [("count", check.field)], Kind.GAUGE: [("value", check.field)],
                      Kind.RATIO: [("bad", check.bad_field), ("all", check.all_field)]}
            for col, name in fields[check.kind]:
                agg = np.mean if check.kind == Kind.GAUGE else np.sum
                cols[col] = [_agg(self._values(name, slots[t]), agg) for t in times]
        return Series(start, stop, step,
                      tuple(datetime.fromtimestamp(t, UTC) for t in times),
                      {k: tuple(v) for k, v in cols.items()}, quantile,
                      (f"memory: {check.kind} {check.name!r} over [{start.isoformat()}, "
                       f"{stop.isoformat()}) by {step.total_seconds():g}s",))

    async def write_marker(self, *, push_id: int, release: str, phase: str,
                           verdict: str | None, at: datetime) -> None:
        self.markers.append({"push_id": push_id, "release": release, "phase": phase,
                             "verdict": verdict, "at": at.isoformat()})

    async def close(self) -> None:
        return None


def _agg(values: np.ndarray, fn: Any) -> float | None:
    return float(fn(values)) if len(values) else None


def hist_counts(hist: Histogram | None, index: list[int]) -> np.ndarray | None:
    if hist is None:
        return None
    idx = [i for i in index if i < len(hist.counts)]
    return hist.counts[idx].sum(axis=0) if idx else None


def hist_above(hist: Histogram | None, index: list[int], threshold: float) -> float | None:
    counts = hist_counts(hist, index)
    if counts is None or hist is None:
        return None
    lo, hi = hist.edges[:-1], hist.edges[1:]
    share = np.clip((hi - threshold) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    return float(np.dot(counts, share))


def hist_quantile(hist: Histogram, index: list[int]) -> float | None:
    counts = hist_counts(hist, index)
    if counts is None or counts.sum() <= 0:
        return None
    cum = np.cumsum(counts)
    target = QUANTILE * cum[-1]
    j = int(np.searchsorted(cum, target))
    below = cum[j - 1] if j > 0 else 0.0
    inside = (target - below) / counts[j] if counts[j] > 0 else 0.0
    return float(hist.edges[j] + inside * (hist.edges[j + 1] - hist.edges[j]))


async def replay(scenario: Scenario, *, push_id: int = 1) -> Replay:
    """Replay the scenario's push through the guard with its in-memory source."""
    guard = Guard(scenario.guard, scenario.checks, ScenarioSource(scenario))
    return await bake(guard, scenario.guard, scenario.push, scenario.waves, push_id=push_id)


async def bake(guard: Guard, config: GuardConfig, push: datetime, waves: Sequence[datetime],
               *, push_id: int = 1) -> Replay:
    """Look at a push's bakes exactly as the pusher does, with `now` given, not waited for.

    Per wave live at t0: looks k = 1..N at t0 + warmup + k * look_every with
    baseline = (push - baseline, push) and after = (t0 + warmup, now); the
    first FAIL ends the push; a wave that does not PASS ends it unless
    `on_inconclusive` is "pass".
    """
    baseline = (push - config.baseline, push)
    seen: list[tuple[int, int, datetime, Look]] = []
    n = guard.looks(config.bake)
    for w, live in enumerate(waves, start=1):
        for k in range(1, n + 1):
            now = live + config.warmup + k * config.look_every
            look = await guard.look(push_id=push_id, wave=w, waves=len(waves),
                                    baseline=baseline,
                                    after=(live + config.warmup, now), look=k, looks=n,
                                    final=k == n)
            seen.append((w, k, now, look))
            if look.verdict == Verdict.FAIL:
                return Replay(Verdict.FAIL, look.reason, w, k, now, tuple(seen))
        if seen[-1][3].verdict != Verdict.PASS and config.on_inconclusive != "pass":
            break
    w, k, now, look = seen[-1]
    verdict = Verdict.PASS if look.verdict == Verdict.PASS else Verdict.INCONCLUSIVE
    return Replay(verdict, look.reason, w, k, now, tuple(seen))


def _print(scenario: Scenario, result: Replay, every: bool) -> None:
    g = scenario.guard
    live = scenario.waves[result.wave - 1]
    after = (result.at - live - g.warmup).total_seconds()
    print(f"scenario: {scenario.name} (expected {scenario.expected})")
    print(f"verdict:  {result.verdict.value} at wave {result.wave}, look {result.look} "
          f"({after:g}s after warm-up)")
    print(f"reason:   {result.reason}")
    shown = result.looks if every else result.looks[-1:]
    for w, k, now, look in shown:
        print(f"\n-- wave {w} look {k} at {now.isoformat()}: {look.verdict.value}")
        for r in look.results:
            stat = "-" if r.statistic is None else f"{r.statistic:.3f}"
            bound = "-" if r.threshold is None else f"{r.threshold:.3f}"
            kind = "critical" if r.critical else "advisory"
            print(f"  [{r.verdict.value}] {r.check} ({kind}): z={stat} boundary={bound}")
            print(f"      {r.reason}")
            for q in r.queries:
                print(f"      query: {q}")
            for side, ev in (("before", r.before), ("after", r.after)):
                brief = {k2: v for k2, v in ev.items() if not isinstance(v, list) or k2 == "window"}
                print(f"      {side}: {json.dumps(brief, default=str)}")


def main(argv: list[str]) -> int:
    """`pushguard judge SCENARIO.json [--every-look]`: print the verdict and the evidence."""
    parser = argparse.ArgumentParser(prog="pushguard judge",
                                     description="Replay one push scenario through the guard.")
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--every-look", action="store_true", help="print every look")
    args = parser.parse_args(argv)
    try:
        scenario = load(json.loads(args.scenario.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # ScenarioError and JSONDecodeError are ValueErrors
        print(f"{args.scenario}: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(replay(scenario))
    _print(scenario, result, args.every_look)
    wanted = Verdict.PASS if scenario.expected == "harmless" else Verdict.FAIL
    return 0 if result.verdict == wanted else 1

"""Push scenarios on real backgrounds: the NAB AWS CloudWatch series.

The Numenta Anomaly Benchmark's realAWSCloudwatch series (MIT licence, in
../shared/data/nab/) are real CPU, network and request-count series at
5-minute steps with labelled anomaly windows. A scenario takes 295
consecutive points (SPAN) that do not touch any labelled window and replays them
one point per minute (5x faster than real time: at 5-minute steps a
10-minute bake would hold two points), so the guard sees real noise,
real level shifts and real daily patterns, compressed.

- gauge: every series except the two disk-write ones (their median is 0, so
  a relative change has no meaning); an injected regression multiplies the
  values after go-live (CPU capped at 100).
- count and ratio: elb_request_count_8c0756 is the traffic shape, scaled to
  the traffic level (requests ~ Poisson(level * 60 s * value / mean value));
  errors are drawn as in the synthetic generator.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.oracle import ALPHA
from bench.synthetic import CHECKS, GENERATOR, ar1, blip_cover, effect_path

SPAN = 295  # points per scenario: 270 before the push, 25 after
BEFORE = 270
TRAFFIC = "elb_request_count_8c0756.csv"
SKIP = ("ec2_disk_write_bytes_1ef3de.csv", "ec2_disk_write_bytes_c0d644.csv")
GAUGE_CHECK = {"name": "gauge", "kind": "gauge", "measurement": "host", "field": "value",
               "bad": "rise", "min_change": 0.15, "min_absolute": 0.0}


def default_root() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"


class Nab:
    """The series and their labelled windows."""

    def __init__(self, root: Path) -> None:
        folder = root / "realAWSCloudwatch"
        windows = json.loads((root / "combined_windows.json").read_text())
        self.series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.free: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("*.csv")):
            with path.open() as f:
                rows = list(csv.DictReader(f))
            times = np.array([np.datetime64(r["timestamp"]) for r in rows])
            values = np.array([float(r["value"]) for r in rows])
            bad = np.zeros(len(times), dtype=bool)
            for a, b in windows.get(f"realAWSCloudwatch/{path.name}", []):
                bad |= (times >= np.datetime64(a[:19])) & (times <= np.datetime64(b[:19]))
            # a start is free when none of its SPAN points is in a labelled window
            hits = np.convolve(bad.astype(int), np.ones(SPAN, dtype=int), "valid")
            self.series[path.name] = (times, values)
            self.free[path.name] = np.flatnonzero(hits == 0)

    def gauges(self) -> list[str]:
        return [n for n in self.series if n not in SKIP and n != TRAFFIC]

    def start(self, name: str, rng: np.random.Generator) -> int:
        free = self.free[name]
        return int(free[rng.integers(len(free))])


def _frame(rng: np.random.Generator) -> tuple[datetime, datetime, np.ndarray, list[float]]:
    push = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(
        seconds=60 * round(rng.uniform(*GENERATOR["push_hour"]) * 60))
    start = push - timedelta(minutes=BEFORE)
    t0 = np.arange(SPAN) * 60.0 - BEFORE * 60.0
    return push, start, t0, [0.0, GENERATOR["fleet_live_min"] * 60.0]


def gauge_scenario(nab: Nab, name: str, expected: str, severity: str, shape: str,
                   seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    i0 = nab.start(name, rng)
    values = nab.series[name][1][i0:i0 + SPAN].copy()
    push, start, t0, lives = _frame(rng)
    blip = rng.random() < GENERATOR["blip_probability"]
    if blip:
        cover = blip_cover(t0, 60.0, lives, rng.uniform(*GENERATOR["blip_seconds"]))
        values *= 1.0 + (rng.uniform(*GENERATOR["blip_gauge_factor"]) - 1.0) * cover
    factor = GENERATOR[severity]["gauge"] if expected == "regression" else 1.0
    path, onset = effect_path(t0 + 30.0, shape if expected == "regression" else "none",
                              factor, rng)
    values *= path
    if "cpu" in name or "asg" in name:
        values = np.minimum(values, 100.0)
    return _scenario(name, expected, severity, shape, seed, start, push, lives, onset, blip,
                     GAUGE_CHECK, {"value": values.tolist()}, None)


def traffic_scenario(nab: Nab, kind: str, level: float, expected: str, severity: str,
                     shape: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    _, all_values = nab.series[TRAFFIC]
    i0 = nab.start(TRAFFIC, rng)
    shape_values = all_values[i0:i0 + SPAN] / all_values.mean()
    push, start, t0, lives = _frame(rng)
    blip = rng.random() < GENERATOR["blip_probability"]
    cover = blip_cover(t0, 60.0, lives, rng.uniform(*GENERATOR["blip_seconds"])) if blip \
        else np.zeros(SPAN)
    factor = GENERATOR[severity][kind] if expected == "regression" else 1.0
    path, onset = effect_path(t0 + 30.0, shape if expected == "regression" else "none",
                              factor, rng)
    rate = level * 60.0 * shape_values
    series: dict[str, list[float]] = {}
    if kind == "count":
        dip = 1.0 - (1.0 - rng.uniform(*GENERATOR["blip_throughput_factor"])) * cover
        series["requests"] = rng.poisson(rate * dip * path).astype(float).tolist()
    else:
        requests = rng.poisson(rate)
        p0 = math.exp(rng.uniform(*np.log(GENERATOR["error_ratio"])))
        p = p0 * np.exp(ar1(rng, SPAN, GENERATOR["error_wander_sd"], 60.0)) * path
        p *= 1.0 + (rng.uniform(*GENERATOR["blip_error_factor"]) - 1.0) * cover
        series["requests"] = requests.astype(float).tolist()
        series["errors"] = rng.binomial(requests, np.clip(p, 0, 1)).astype(float).tolist()
    out = _scenario(TRAFFIC, expected, severity, shape, seed, start, push, lives, onset, blip,
                    CHECKS[kind], series, level)
    out["notes"]["kind"] = kind
    return out


def _scenario(name: str, expected: str, severity: str, shape: str, seed: int,
              start: datetime, push: datetime, lives: list[float], onset: float, blip: bool,
              check: dict[str, Any], series: dict[str, list[float]],
              level: float | None) -> dict[str, Any]:
    return {
        "name": f"NAB {name} {expected} {severity} {shape} #{seed}",
        "expected": expected, "interval": "60s", "start": start.isoformat(),
        "push": push.isoformat(),
        "waves": [(push + timedelta(seconds=s)).isoformat() for s in lives],
        "checks": [check], "series": series,
        "notes": {"kind": check["kind"], "level": level, "severity": severity, "shape": shape,
                  "onset_s": onset if math.isfinite(onset) else None, "blip": blip,
                  "background": f"NAB {name}", "seed": seed},
    }


DAY = 288  # points of one day of the NAB series (5-minute steps)


def _ratio(values: np.ndarray, baseline: int, after: tuple[int, int]) -> float:
    """The mean of the canary bake's after points over the mean of the baseline's."""
    return float(values[BEFORE + after[0]:BEFORE + after[1]].mean()
                 / values[BEFORE - baseline:BEFORE].mean())


def swings(nab: Nab, baseline: int = 30, after: tuple[int, int] = (1, 10)) -> np.ndarray:
    """The request count's own swing in every free window: the mean of the canary bake's
    after points (minutes `after` from the push) over the mean of the `baseline` points
    before the push, with no regression."""
    _, values = nab.series[TRAFFIC]
    return np.array([_ratio(values[i0:i0 + SPAN], baseline, after)
                     for i0 in nab.free[TRAFFIC]])


def stacked_swings(nab: Nab, streams: int, rng: np.random.Generator, baseline: int = 30,
                   after: tuple[int, int] = (1, 10)) -> np.ndarray:
    """The same swing for a service with `streams` times the traffic, made of independent
    streams like this one: every free window summed with `streams - 1` other free windows
    at the same time of day on other days (a scaled copy of one window, as the benchmark
    replays it, keeps the swings of a single stream at any traffic level)."""
    _, values = nab.series[TRAFFIC]
    free = nab.free[TRAFFIC]
    out = []
    for i0 in free:
        same = free[(free % DAY == i0 % DAY) & (free != i0)]
        if len(same) < streams - 1:
            continue
        picks = [i0, *rng.choice(same, streams - 1, replace=False)]
        out.append(_ratio(sum(values[j:j + SPAN] for j in picks), baseline, after))
    return np.array(out)


def seasonal_swings(nab: Nab, days: int, baseline: int = 30,
                    after: tuple[int, int] = (1, 10)) -> np.ndarray:
    """The swing left over by a seasonal reference: every free window's swing over the
    swing of the same window 1..`days` days earlier (summed), which is what a count check
    with a seasonal reference expects."""
    _, values = nab.series[TRAFFIC]
    out = []
    for i0 in nab.free[TRAFFIC]:
        if i0 - days * DAY < 0:
            continue
        reference = sum(values[i0 - d * DAY:i0 - d * DAY + SPAN] for d in range(1, days + 1))
        out.append(_ratio(values[i0:i0 + SPAN], baseline, after)
                   / _ratio(reference, baseline, after))
    return np.array(out)


def _bound(label: str, r: np.ndarray) -> None:
    """What a judge that knew the distribution of the swings `r` exactly would catch."""
    cut = float(np.quantile(r, ALPHA))
    q = np.quantile(r, [0.01, 0.05, 0.5, 0.95, 0.99])
    print(f"{label}, {len(r)} windows: after/before quantiles 1/5/50/95/99 % = "
          f"{' / '.join(f'{x:.2f}' for x in q)}; cut at {ALPHA:g}: {cut:.3f}; a judge "
          f"that knew these swings catches {np.mean(r * 0.5 < cut):.1%} of halvings, "
          f"{np.mean(r * 0.8 < cut):.1%} of -20 % drops")


def main() -> None:
    """`python -m bench.nab`: how far the NAB request count swings by itself, and what
    a judge that knew those swings exactly could catch at the canary bake's alpha; then
    the same with the two remedies an operator would reach for: more traffic of the same
    kind, and a seasonal reference."""
    nab = Nab(default_root())
    for baseline in (30, 10, 3):
        _bound(f"baseline {baseline:2d} min", swings(nab, baseline))
    rng = np.random.default_rng(0)
    for streams in (2, 4, 8):
        _bound(f"{streams} days' streams summed", stacked_swings(nab, streams, rng))
    for days in (1, 3, 7):
        _bound(f"seasonal reference of {days} day{'s' if days > 1 else ''}",
               seasonal_swings(nab, days))


if __name__ == "__main__":
    main()

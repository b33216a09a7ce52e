"""Seeded synthetic push scenarios for the guard benchmark (scenario JSON dicts).

Every parameter of the generator is in `GENERATOR`; `bench/guard.py` prints
it next to the results. They were fixed before the guard was measured
against them and are not tuned to the results.

A scenario is one push of one check kind (count: throughput, ratio: error
ratio, latency: share slower than the baseline p95) at one traffic level,
with 30-second values from 270 minutes before the push (the guard's noise
model reads 4 h of history, the baseline the last 30 min) to 25 minutes
after it. Two waves go live: the canary at the push and the fleet 11
minutes later (10-minute bake plus a minute of deploying). A regression
affects the whole measured metric from the canary on (no canary dilution).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

GENERATOR: dict[str, Any] = {
    "interval_s": 30,
    "history_min": 270,  # values before the push
    "after_min": 25,  # values after the push
    "fleet_live_min": 11,  # the second wave goes live this long after the canary
    "levels_rps": [0.5, 1, 2, 5, 20, 100, 500],  # mean requests per second of the day
    "push_hour": [9.0, 17.0],  # uniform, local time of the push
    "daily_amplitude": [0.3, 0.7],  # rate = level * (1 + A cos(2 pi (h - peak) / 24))
    "daily_peak_hour": [12.0, 20.0],  # uniform
    "traffic_wander_sd": 0.05,  # slow log-normal wander of traffic (AR(1), 10 min)
    "traffic_noise_sd": 0.03,  # fast log-normal noise per interval
    "wander_minutes": 10.0,  # correlation time of every slow wander
    "error_ratio": [0.002, 0.05],  # log-uniform base error ratio
    "error_wander_sd": 0.10,  # slow log-normal wander of the error ratio
    "latency_median_ms": [50.0, 300.0],  # log-uniform
    "latency_sigma": [0.4, 0.8],  # log-normal shape of request latencies
    "latency_wander_sd": 0.05,  # slow wander of the median latency (log)
    "blip_probability": 0.5,  # a restart blip at each wave's go-live
    "blip_seconds": [20.0, 90.0],  # uniform length of the blip from go-live
    "blip_error_factor": [5.0, 20.0],
    "blip_throughput_factor": [0.0, 0.7],
    "blip_latency_factor": [2.0, 4.0],
    "blip_gauge_factor": [1.5, 3.0],  # NAB gauges: CPU/network spike while restarting
    "ramp_minutes": [2.0, 8.0],  # ramp: linear from no effect to full effect
    "onset_minutes": [1.0, 6.0],  # delayed onset: full effect from this time on
    "severe": {"ratio": 3.0, "count": 0.5, "latency": 2.0, "gauge": 2.0},
    "moderate": {"ratio": 1.5, "count": 0.8, "latency": 1.3, "gauge": 1.3},
}

CHECKS: dict[str, dict[str, Any]] = {
    "count": {"name": "throughput", "kind": "count", "measurement": "http",
              "field": "requests", "bad": "drop", "min_change": 0.1, "min_absolute": 0.0},
    "ratio": {"name": "errors", "kind": "ratio", "measurement": "http",
              "bad_field": "errors", "all_field": "requests", "bad": "rise",
              "min_change": 0.2, "min_absolute": 0.0005},
    "latency": {"name": "latency", "kind": "latency", "measurement": "http",
                "field": "ms", "latency_mode": "threshold", "bad": "rise",
                "min_change": 0.5, "min_absolute": 0.02},
}

EDGES = np.concatenate([[0.0], np.geomspace(0.5, 120_000.0, 160)])  # latency buckets, ms
SHAPES = ("step", "ramp", "delayed")


def ar1(rng: np.random.Generator, n: int, sd: float, step_s: float) -> np.ndarray:
    """A stationary AR(1) path with marginal `sd` and the generator's correlation time."""
    phi = math.exp(-step_s / (GENERATOR["wander_minutes"] * 60.0))
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd)
    noise = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), n)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + noise[i]
    return out


def effect_path(t: np.ndarray, shape: str, factor: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, float]:
    """Per-interval effect factor (1 = none) from go-live at t=0; and the onset in seconds."""
    if shape == "none":
        return np.ones_like(t), math.inf
    if shape == "step":
        return np.where(t >= 0, factor, 1.0), 0.0
    if shape == "ramp":
        ramp = rng.uniform(*GENERATOR["ramp_minutes"]) * 60.0
        return 1.0 + (factor - 1.0) * np.clip(t / ramp, 0.0, 1.0), 0.0
    onset = rng.uniform(*GENERATOR["onset_minutes"]) * 60.0
    return np.where(t >= onset, factor, 1.0), onset


def blip_cover(t0: np.ndarray, step: float, lives: list[float], length: float) -> np.ndarray:
    """Share of each interval [t0, t0+step) covered by a blip after any go-live."""
    cover = np.zeros_like(t0)
    for live in lives:
        lo = np.maximum(t0, live)
        hi = np.minimum(t0 + step, live + length)
        cover += np.clip(hi - lo, 0.0, None) / step
    clipped: np.ndarray = np.clip(cover, 0.0, 1.0)
    return clipped


def traffic(rng: np.random.Generator, level: float, hours: np.ndarray,
            latent: dict[str, Any] | None = None) -> np.ndarray:
    """Expected requests per second per interval: daily cycle, slow wander, fast noise."""
    g = GENERATOR
    amp = rng.uniform(*g["daily_amplitude"])
    peak = rng.uniform(*g["daily_peak_hour"])
    cycle = 1.0 + amp * np.cos(2.0 * math.pi * (hours - peak) / 24.0)
    n = len(hours)
    wander = ar1(rng, n, g["traffic_wander_sd"], g["interval_s"])
    noise = rng.normal(0.0, g["traffic_noise_sd"], n)
    out: np.ndarray = level * cycle * np.exp(wander + noise)
    if latent is not None:
        latent["cycle"] = level * cycle
    return out


def scenario(kind: str, level: float, expected: str, severity: str, shape: str,
             seed: int, latent: dict[str, Any] | None = None) -> dict[str, Any]:
    """One scenario dict (see checks.scenario) with its generator notes.

    `latent`, when given, receives what the generator drew besides the
    series (for `bench.oracle`, which knows the true noise model): the
    interval starts `t0` (seconds from the push), the expected rate per
    interval without the regression (`mean`: requests for a count, the error
    ratio for a ratio, the log median latency for latency), its deterministic
    part (`fixed`) and the drawn constants. The draws are the same with or
    without it."""
    g = GENERATOR
    rng = np.random.default_rng(seed)
    step = float(g["interval_s"])
    n = int((g["history_min"] + g["after_min"]) * 60 / step)
    push_hour = rng.uniform(*g["push_hour"])
    day = datetime(2026, 3, 2, tzinfo=UTC)
    push = day + timedelta(seconds=round(push_hour * 3600))
    start = push - timedelta(minutes=g["history_min"])
    start -= timedelta(seconds=start.timestamp() % step)
    t0 = np.array([(start - push).total_seconds() + i * step for i in range(n)])
    mid = t0 + step / 2.0
    hours = push_hour + mid / 3600.0
    lives = [0.0, g["fleet_live_min"] * 60.0]
    blip = rng.random() < g["blip_probability"]
    cover = blip_cover(t0, step, lives, rng.uniform(*g["blip_seconds"])) if blip \
        else np.zeros(n)
    factor = g[severity][kind] if expected == "regression" else 1.0
    path, onset = effect_path(mid, shape if expected == "regression" else "none", factor, rng)
    drawn: dict[str, Any] = {}
    rate = traffic(rng, level, hours, drawn)
    series: dict[str, list[float]] = {}
    histograms: dict[str, Any] = {}
    info: dict[str, Any] = {"t0": t0, "cover": cover, "requests_per_s": drawn["cycle"]}
    if kind == "count":
        dip = 1.0 - (1.0 - rng.uniform(*g["blip_throughput_factor"])) * cover
        series["requests"] = rng.poisson(rate * step * dip * path).astype(float).tolist()
        info.update(mean=rate * step * dip, fixed=drawn["cycle"] * step * dip)
    elif kind == "ratio":
        requests = rng.poisson(rate * step)
        p0 = math.exp(rng.uniform(*np.log(g["error_ratio"])))
        p = p0 * np.exp(ar1(rng, n, g["error_wander_sd"], step)) * path
        blip_factor = 1.0 + (rng.uniform(*g["blip_error_factor"]) - 1.0) * cover
        info.update(mean=p / path * blip_factor, fixed=p0 * blip_factor)
        p = p * blip_factor
        series["requests"] = requests.astype(float).tolist()
        series["errors"] = rng.binomial(requests, np.clip(p, 0.0, 1.0)).astype(float).tolist()
    else:
        requests = rng.poisson(rate * step)
        median = math.exp(rng.uniform(*np.log(g["latency_median_ms"])))
        sigma = rng.uniform(*g["latency_sigma"])
        mu = math.log(median) + ar1(rng, n, g["latency_wander_sd"], step) + np.log(path)
        slow = math.log(rng.uniform(*g["blip_latency_factor"]))
        info.update(mean=mu - np.log(path), fixed=np.full(n, math.log(median)), sigma=sigma,
                    slow=slow)
        counts = [_histogram(rng, int(k), m, sigma, c, slow).tolist()
                  for k, m, c in zip(requests, mu, cover, strict=True)]
        series["requests"] = requests.astype(float).tolist()
        histograms["ms"] = {"edges": EDGES.tolist(), "counts": counts}
    if latent is not None:
        latent.update(info)
    return {
        "name": f"{kind} {expected} {severity} {shape} {level:g} rps #{seed}",
        "expected": expected, "interval": f"{step:g}s",
        "start": start.isoformat(), "push": push.isoformat(),
        "waves": [(push + timedelta(seconds=s)).isoformat() for s in lives],
        "checks": [CHECKS[kind]], "series": series, "histograms": histograms,
        "notes": {"kind": kind, "level": level, "severity": severity, "shape": shape,
                  "onset_s": onset if math.isfinite(onset) else None, "blip": blip,
                  "background": "synthetic", "seed": seed},
    }


def _histogram(rng: np.random.Generator, k: int, mu: float, sigma: float, cover: float,
               slow: float) -> np.ndarray:
    from scipy import special

    def probs(m: float) -> np.ndarray:
        z = (np.log(np.maximum(EDGES[1:], 1e-9)) - m) / (sigma * math.sqrt(2.0))
        cdf = np.concatenate([[0.0], 0.5 * special.erfc(-z)])
        cdf[-1] = 1.0
        return np.diff(cdf)

    p = probs(mu) if cover <= 0 else (1 - cover) * probs(mu) + cover * probs(mu + slow)
    return rng.multinomial(k, p / p.sum())

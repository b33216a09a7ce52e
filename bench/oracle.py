"""Oracle judges for the guard benchmark: the best any judge could do.

Both oracles judge a synthetic scenario once, at the end of the canary bake
(the after window from go-live + warm-up to the bake's end against the
30-minute baseline), with the guard's alpha for the canary bake: its share of
the push's false-alarm budget, over the critical checks (0.01 * 0.67 = 0.0067,
one-sided). They read the generator's own draws (`bench.synthetic.scenario`
with `latent`), which no real judge can:

- `model` knows the true noise model: the deterministic part of every
  interval's mean without the regression (the daily cycle and level, the base
  error ratio, the median latency and spread, the restart blip) and the law
  of the random part (AR(1) wander and fast noise with the generator's sd and
  correlation time), but not the wander's realisation. Its statistic is the
  after window's log rate over its known mean, minus its best linear
  prediction from the baseline's (whole, last 10 and last 3 minutes; fitted
  on simulated harmless pushes); the threshold is the simulated
  (1 - alpha) quantile. For latency it uses the mean log latency (the most
  powerful statistic for a multiplicative shift), not a share above a p95.
  This is the statistical limit: what is beyond it cannot be told apart
  from the generator's own harmless wander.
- `clairvoyant` also knows the wander's realisation, i.e. the exact
  per-interval mean without the regression: the only noise left is the
  sampling (Poisson requests, binomial errors, the latency sample mean), and
  the test is exact (simulated Poisson-binomial tail, exact Poisson tail).
  This is the physical limit: x1.5 errors on a handful of expected errors
  cannot be seen by anyone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from bench.synthetic import EDGES, GENERATOR
from daemon.config import CANARY_SHARE

ALPHA = 0.01 * CANARY_SHARE  # the guard's canary bake: false_alarm * share / 1 check
SIMS = 4000
WARMUP_S, BAKE_S, BASELINE_S = 60.0, 600.0, 1800.0
WANDER = {"count": "traffic_wander_sd", "ratio": "error_wander_sd",
          "latency": "latency_wander_sd"}


def _ar1(rng: np.random.Generator, sims: int, n: int, sd: float, step: float) -> np.ndarray:
    phi = math.exp(-step / (GENERATOR["wander_minutes"] * 60.0))
    out = np.empty((sims, n))
    out[:, 0] = rng.normal(0.0, sd, sims)
    noise = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), (sims, n))
    for i in range(1, n):
        out[:, i] = phi * out[:, i - 1] + noise[:, i]
    return out


def _log_latency(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval (requests, mean log latency) from the histogram's bucket midpoints."""
    counts = np.asarray(data["histograms"]["ms"]["counts"], dtype=float)
    lo, hi = EDGES[:-1], EDGES[1:]
    mid = np.log(np.where(lo > 0, np.sqrt(lo * np.maximum(hi, 1e-12)), hi / 2.0))
    k = counts.sum(axis=1)
    return k, (counts @ mid) / np.maximum(k, 1.0)


def judge(data: dict[str, Any], latent: dict[str, Any], seed: int) -> dict[str, str]:
    """{"model": verdict, "clairvoyant": verdict} ("fail" or "pass") for one scenario."""
    kind = data["notes"]["kind"]
    step = float(GENERATOR["interval_s"])
    t0 = np.asarray(latent["t0"])
    base = (t0 >= -BASELINE_S) & (t0 + step <= 0.0)
    after = (t0 >= WARMUP_S) & (t0 + step <= BAKE_S)
    use = np.flatnonzero(base | after)
    sl = slice(int(use[0]), int(use[-1]) + 1)  # the span the statistic reads
    t, b, a = t0[sl], base[sl], after[sl]
    last10 = b & (t >= -600.0)
    last3 = b & (t >= -180.0)
    n = len(t)
    rng = np.random.default_rng(seed ^ 0x5EED)
    sd = GENERATOR[WANDER[kind]]
    wander = _ar1(rng, SIMS, n, sd, step)
    cover = np.asarray(latent["cover"])[sl]
    fixed = np.asarray(latent["fixed"])[sl]
    mean = np.asarray(latent["mean"])[sl]
    rise = kind != "count"

    if kind == "count":
        y = np.asarray(data["series"]["requests"], dtype=float)[sl]
        noise = rng.normal(0.0, GENERATOR["traffic_noise_sd"], (SIMS, n))
        sim = rng.poisson(fixed * np.exp(wander + noise)).astype(float)

        def level(v: np.ndarray, m: np.ndarray) -> np.ndarray:
            return np.asarray(np.log((v[..., m].sum(axis=-1) + 0.5) / fixed[m].sum()))

        mu = float(mean[a].sum())
        clair = bool(stats.poisson.cdf(y[a].sum(), mu) <= ALPHA)
    elif kind == "ratio":
        req = np.asarray(data["series"]["requests"], dtype=float)[sl]
        y = np.asarray(data["series"]["errors"], dtype=float)[sl]
        sim = rng.binomial(req.astype(np.int64), np.clip(fixed * np.exp(wander), 0.0, 1.0)
                           ).astype(float)

        def level(v: np.ndarray, m: np.ndarray) -> np.ndarray:
            return np.asarray(np.log((v[..., m].sum(axis=-1) + 0.5)
                                     / (req[m] * fixed[m]).sum()))

        p = np.clip(mean[a], 0.0, 1.0)
        tail = rng.binomial(req[a].astype(np.int64), p, (20_000, int(a.sum()))).sum(axis=1)
        clair = bool(np.mean(tail >= y[a].sum()) <= ALPHA)
    else:
        k_all, m_all = _log_latency(data)
        k, y = k_all[sl], m_all[sl]
        sigma, slow = float(latent["sigma"]), float(latent["slow"])
        shift = cover * slow
        var = (sigma ** 2 + cover * (1.0 - cover) * slow ** 2) / np.maximum(k, 1.0)
        sim = fixed + shift + wander + rng.normal(0.0, 1.0, (SIMS, n)) * np.sqrt(var)

        def level(v: np.ndarray, m: np.ndarray) -> np.ndarray:
            w = k[m] / max(k[m].sum(), 1.0)
            return np.asarray(((v[..., m] - fixed[m] - shift[m]) * w).sum(axis=-1))

        w = k[a] / max(k[a].sum(), 1.0)
        centre = float(((mean[a] + shift[a]) * w).sum())
        sd_a = math.sqrt(float((w ** 2 * var[a]).sum()))
        clair = bool((float((y[a] * w).sum()) - centre) / max(sd_a, 1e-12)
                     >= stats.norm.isf(ALPHA))

    def features(v: np.ndarray) -> np.ndarray:
        cols = [level(v, b), level(v, last10), level(v, last3)]
        return np.stack([np.ones_like(cols[0]), *cols], axis=-1)

    x_sim, y_sim = features(sim), level(sim, a)
    coef = np.linalg.lstsq(x_sim, y_sim, rcond=None)[0]
    resid = y_sim - x_sim @ coef
    obs = float(level(y, a) - features(y) @ coef)
    if rise:
        model = obs > float(np.quantile(resid, 1.0 - ALPHA))
    else:
        model = obs < float(np.quantile(resid, ALPHA))
    return {"model": "fail" if model else "pass", "clairvoyant": "fail" if clair else "pass"}

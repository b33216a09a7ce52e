"""The noise model of rate comparisons: how much more than Poisson a metric varies.

Three parts, all measured on the metric itself before the push:

- `phi`: fast over-dispersion of the baseline's intervals, from successive
  differences (so that slow wander is not counted twice), at least 1.
- `wander`: slow wander of the level. The variance a block's log rate has
  beyond what `phi` explains, measured on the history's 5-minute blocks
  around a quadratic trend (method of moments plus `MARGIN` standard
  errors, so a history too short or too noisy to see the wander does not
  declare it absent). How the wander shrinks over longer windows depends on
  how persistent it is: the lag-1 correlation of the blocks' residuals (plus
  `MARGIN` standard errors) gives a correlation time tau, and a window of length L
  gets wander * f(L) / f(block), f(L) = 2 tau/L (1 - tau/L (1 - e^(-L/tau)))
  being the variance of an L-long mean of a process with that correlation
  time.
- `drift`: the trend of the day (traffic rises in the morning). A straight
  line through the history, fitted with the variances above, extrapolated
  from the baseline's centre to the after window's, as a log rate ratio: the
  comparison expects the after rate to be the baseline's times e^drift.
  `drift_var` is its variance (the fit's covariance, widened for the
  blocks' autocorrelation by (1 + rho) / (1 - rho)). A day's trend bends (a
  rise slows towards its peak), so the line can be off by more than its
  covariance says: a quadratic through the same history measures by how
  much, and the square of the two drifts' difference beyond its own noise is
  added to `drift_var`. A drift the history cannot tell from noise is shrunk
  towards none (`Noise.expected_shift`).

`prediction` uses the wander's persistence: the baseline's last minutes
predict where the after window's level lies relative to the baseline's.

Without a history (fewer than six blocks) the baseline, cut into blocks of
about five minutes, stands in for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from checks.rates import Rates

BLOCK_SECONDS = 300.0
# standard errors added to the wander and its persistence. 1.0 until the prediction's
# error was stated in full (ordinary kriging); since then 0.4 catches as many moderate
# regressions with fewer false alarms (bench.guard, seeds 4-9; README, Guard)
MARGIN = 0.4


@dataclass(frozen=True)
class Noise:
    """The three parts (see the module docstring); `extra` is the log-scale variance."""

    phi: float
    wander: float
    block: float
    drift: float
    drift_var: float

    persistence: float = 0.0  # correlation time of the wander, seconds (high estimate)
    persistence_mid: float = 0.0  # its central estimate
    persistence_low: float = 0.0  # its low estimate
    trend_known: bool = True  # the drift comes from hours of history, not the baseline

    @property
    def persistence_range(self) -> tuple[float, float, float]:
        return self.persistence_low, self.persistence_mid, self.persistence

    def window(self, span: float) -> float:
        """The wander variance of the mean log rate over a window of `span` seconds."""
        return self.wander * _mean_variance(max(span, 1.0), self.persistence) \
            / _mean_variance(self.block, self.persistence)

    def expected_shift(self) -> tuple[float, float]:
        """(expected log rate ratio after/before, its variance) from the drift.

        The drift estimate d has variance v; the true drift is taken as drawn
        from N(0, t2) with t2 = max(d^2 - v, 0) (empirical Bayes): the shift
        is d shrunk by k = t2 / (t2 + v), its variance k * v. A drift the
        history measures well (v << d^2) is expected in full; one it cannot
        tell from noise (d^2 <= v) is not expected at all and adds nothing. Without
        hours of history (a line through the baseline alone) it is only allowed for."""
        d, v = self.drift, self.drift_var
        if not self.trend_known:
            # a line through the baseline alone (no history yet: a new service, a
            # restart) says nothing about the day: not expected, only allowed for
            return 0.0, max(d * d - v, 0.0)
        t2 = max(d * d - v, 0.0)
        if t2 + v <= 0.0:
            return 0.0, 0.0
        k = t2 / (t2 + v)
        return k * d, k * v


def _mean_variance(span: float, tau: float) -> float:
    """Variance of a span-long mean of a unit process with correlation time tau."""
    if tau <= 0.0:
        return 1.0 / span
    r = span / tau
    return 2.0 / r * (1.0 - (1.0 - math.exp(-r)) / r)


def _arrays(r: Rates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e, x, t = (np.asarray(v, dtype=float) for v in (r.events, r.exposure, r.times))
    keep = x > 0
    return e[keep], x[keep], t[keep]


def fast_dispersion(before: Rates) -> float:
    """Fast over-dispersion (>= 1) from successive differences of the interval rates,
    which slow wander hardly touches: var(r_i - r_i-1) = phi * mean * (1/x_i + 1/x_i-1)."""
    e, x, _ = _arrays(before)
    mean = e.sum() / x.sum() if x.sum() > 0 else 0.0
    if len(e) < 4 or mean <= 0:
        return 1.0
    r = e / x
    num = float(np.sum(np.diff(r) ** 2))
    den = mean * float(np.sum(1.0 / x[1:] + 1.0 / x[:-1]))
    return max(num / den, 1.0)


def blocks(r: Rates, seconds: float = BLOCK_SECONDS) -> Rates:
    """The intervals summed into blocks of about `seconds`."""
    k = max(1, round(seconds / r.seconds))
    n = len(r.events) // k * k
    if n == 0:
        return r
    e = np.asarray(r.events[:n]).reshape(-1, k).sum(axis=1)
    x = np.asarray(r.exposure[:n]).reshape(-1, k).sum(axis=1)
    t = np.asarray(r.times[:n]).reshape(-1, k).mean(axis=1)
    return Rates(tuple(e), tuple(x), tuple(t), r.seconds * k)


def _design(u: np.ndarray) -> np.ndarray:
    return np.vstack([np.ones_like(u), u, u * u]).T


def model(before: Rates, after_centre: float, history: Rates | None) -> Noise:
    """The noise model for comparing a window centred at `after_centre` with `before`."""
    phi = fast_dispersion(before)
    known = history is not None and len(_arrays(history)[0]) >= 6
    hist = history if history is not None and known else blocks(before)
    e, x, t = _arrays(hist)
    if len(e) < 6 or e.sum() <= 0:
        return Noise(phi, 0.0, hist.seconds, 0.0, 0.0)
    mid, span = float(t.mean()), max(float(np.ptp(t)), 1.0)
    design = _design((t - mid) / span)
    floor = e.sum() / x.sum() * 1e-3
    # pass 1: Poisson weights; pass 2: weights with the fast and slow variance
    coef = np.linalg.lstsq(design * np.sqrt(x)[:, None], e / np.sqrt(x), rcond=None)[0]
    expected = np.maximum(design @ coef, floor) * x
    wander, taus, rho = _wander(e, expected, phi, hist.seconds)

    def noise(drift: float, drift_var: float) -> Noise:
        return Noise(phi, wander, hist.seconds, drift, drift_var, taus[2], taus[1], taus[0],
                     known)

    # the drift: a straight line refitted with the fast and slow variances
    var_rate = (phi * expected + wander * expected ** 2) / x ** 2
    weights = 1.0 / np.maximum(var_rate, 1e-300)
    rate = e / x
    ends = _design(np.array([(before.centre() - mid) / span, (after_centre - mid) / span]))
    level, cov = _trend(design[:, :2], ends[:, :2], weights, rate, rho)
    if level[0] <= floor:
        return noise(0.0, 0.0)
    if level[1] <= floor:  # the trend runs out to nothing: no trust in it
        return noise(0.0, math.log(level[0] / floor) ** 2)
    drift, drift_var = _log_drift(level, cov, ends[:, :2])
    level, cov = _trend(design, ends, weights, rate, rho)
    if min(level) > floor:
        # how far the line may be off where the day's trend bends: the quadratic's
        # difference from it beyond the difference's own noise (nested fits: the
        # variance of the difference is the difference of the variances)
        bent, bent_var = _log_drift(level, cov, ends)
        delta, delta_var = bent - drift, max(bent_var - drift_var, 0.0)
        drift_var += max(delta * delta - delta_var, 0.0)
    return noise(drift, drift_var)


def _trend(design: np.ndarray, ends: np.ndarray, weights: np.ndarray, rate: np.ndarray,
           rho: float) -> tuple[np.ndarray, np.ndarray]:
    """A weighted least-squares fit of `rate`: (its levels at `ends`, the coefficients'
    covariance widened for the blocks' autocorrelation)."""
    inverse = np.linalg.pinv(design.T @ (design * weights[:, None]))
    coef = inverse @ (design.T @ (weights * rate))
    return ends @ coef, inverse * (1.0 + rho) / (1.0 - rho)


def _log_drift(level: np.ndarray, cov: np.ndarray, ends: np.ndarray) -> tuple[float, float]:
    """(log level ratio from ends[0] to ends[1], its variance by the delta method)."""
    grad = ends[1] / level[1] - ends[0] / level[0]
    return float(math.log(level[1] / level[0])), float(grad @ cov @ grad)


def _wander(e: np.ndarray, expected: np.ndarray, phi: float,
            block: float) -> tuple[float, tuple[float, float, float], float]:
    """(wander variance MARGIN standard errors above its estimate; the correlation
    time in seconds, low, central and high (the blocks' lag-1 correlation MARGIN
    standard errors below, at and above its estimate); the high lag-1 correlation)."""
    n = len(e)
    weight = expected ** 2
    d = ((e - expected) ** 2 - phi * expected) / weight  # per-block extra relative variance
    w_hat = float(np.sum(weight * d) / weight.sum()) * n / (n - 3)
    se = float(np.sqrt(np.sum(weight ** 2 * (d - w_hat) ** 2)) / weight.sum())
    wander = max(w_hat, 0.0) + MARGIN * se
    res = (e - expected) / expected
    res = res - res.mean()
    den = float(np.dot(res, res))
    rho = float(np.dot(res[:-1], res[1:]) / den) if den > 0 else 0.0
    rhos = [min(max(rho + k * MARGIN / math.sqrt(n), 0.0), 0.95) for k in (-1, 0, 1)]
    taus = [-block / math.log(r) if r > 0 else 0.0 for r in rhos]
    return wander, (taus[0], taus[1], taus[2]), rhos[2]


def prediction(noise: Noise, before: Rates, after: Rates,
               shift: float) -> tuple[float, float] | None:
    """(the after window's predicted log level against the baseline's, beyond `shift`,
    and the variance of what the prediction leaves unexplained), or None without a
    persistent wander.

    A wander with correlation time tau carries the level of the baseline's last
    minutes into the after window: comparing with the whole baseline's mean
    ignores that and pays the wander of both windows in full. Here the
    baseline's intervals (relative to the expected rate along `shift`'s
    trend) predict the difference between the after window's mean wander and
    the baseline's, by the best linear predictor under the model: wander an
    Ornstein-Uhlenbeck process with the model's variance and tau, each interval
    seen through its own sampling and fast noise (phi / expected events). Only
    the intervals' deviations from the baseline's mean are known, not the
    baseline's level against the wander's long-run mean, so the weights sum to
    zero (ordinary kriging); weights that did not would claim too small an
    error (by a quarter to a third of it). The predictor's error variance is
    taken as the largest under the low, central and high estimates of tau: a
    persistence overestimated would otherwise trust the last minutes too much."""
    if noise.persistence <= 0.0 or noise.wander <= 0.0:
        return None
    # a persistence too short to measure: no shorter than one interval
    taus = [max(tau, before.seconds) for tau in noise.persistence_range]
    e, x, t = _arrays(before)
    if len(e) < 2 or e.sum() <= 0 or not after.times:
        return None
    gap = after.centre() - before.centre()
    slope = shift / gap if gap > 0 else 0.0
    trend = np.exp(slope * (t - before.centre()))
    mean = x * trend * (e.sum() / float(np.dot(x, trend)))  # expected events per interval
    y = e / mean - 1.0
    v = np.diag(noise.phi / np.maximum(mean, 1e-9))
    w = mean / mean.sum()
    a0 = min(after.times) - after.seconds / 2.0
    a1 = max(after.times) + after.seconds / 2.0
    span = max(a1 - a0, 1.0)

    def moments(tau: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(cov of the intervals' wander, cov of D with it, var of D), D = W_after - W_base."""
        sigma2 = noise.wander / _mean_variance(noise.block, tau)  # of the wander at a point
        k_bb = sigma2 * np.exp(-np.abs(t[:, None] - t[None, :]) / tau)
        k_ab = sigma2 * tau / span * (np.exp(-np.maximum(a0 - t, 0.0) / tau)
                                      - np.exp(-np.maximum(a1 - t, 0.0) / tau))
        var_d = sigma2 * _mean_variance(span, tau) + float(w @ k_bb @ w) \
            - 2.0 * float(w @ k_ab)
        return k_bb, k_ab - k_bb @ w, var_d

    each = [moments(tau) for tau in taus]
    k_bb, c, _ = each[1]  # the predictor is the central estimate's
    # the weights sum to zero: y holds deviations from the baseline's own mean, whose
    # wander is unknown; weights that did not cancel it would lean on where the
    # baseline lies against the wander's long-run mean, which nothing measures
    m = len(y)
    system = np.zeros((m + 1, m + 1))
    system[:m, :m] = k_bb + v
    system[:m, m] = system[m, :m] = 1.0
    try:
        lam = np.linalg.solve(system, np.append(c, 0.0))[:m]
    except np.linalg.LinAlgError:
        return None
    worst = max(var_d - 2.0 * float(lam @ c) + float(lam @ (k_bb + v) @ lam)
                for k_bb, c, var_d in each)
    return float(lam @ y), max(worst, 0.0)

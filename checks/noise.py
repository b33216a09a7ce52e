"""The noise model of rate comparisons: how much more than Poisson a metric varies.

Three parts, all measured on the metric itself before the push:

- `phi`: fast over-dispersion of the baseline's intervals, from successive
  differences (so that slow wander is not counted twice), at least 1.
- `wander`: slow wander of the level. The variance a block's log rate has
  beyond what `phi` explains, measured on the history's 5-minute blocks
  around a quadratic trend, by the method of moments with what the trend fit
  absorbs of a persistent wander counted back (`_Fit.estimate`). How the
  wander shrinks over longer windows depends on how persistent it is: the
  lag-1 correlation of the blocks' residuals gives a correlation time tau,
  and a window of length L gets wander * f(L) / f(block), f(L) = 2 tau/L
  (1 - tau/L (1 - e^(-L/tau))) being the variance of an L-long mean of a
  process with that correlation time.
- `spread`: how far the wander and tau may be off. Four hours hold only a
  dozen or two independent stretches of a wander that persists for ten
  minutes, so the wander is known to within a third or so. The estimator is
  re-run on series simulated from the fitted model (a parametric bootstrap);
  the variances of its estimates give the degrees of freedom of every
  variance built on them, and the comparisons read their z from Student's t
  (`checks.stats.student`). Adding a fixed margin instead (as before) kept
  the budget on average but not where a test leans on the wander alone: at
  100-500 requests per second 1.4-1.5 % of harmless pushes failed against a
  1 % budget, most of them in the fleet bake (README, Guard).
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

import functools
import math
from dataclasses import dataclass

import numpy as np

from checks.rates import Rates

BLOCK_SECONDS = 300.0
BOOTSTRAP = 64  # replicates of the wander's estimate, for how far it may be off
ELASTICITY_STEP = 0.25  # log-tau step of the finite differences for the elasticity


@dataclass(frozen=True)
class Spread:
    """How far the wander's estimates may be off: per replicate of a parametric
    bootstrap (`_spread`), the replicate's wander over the estimate and the log of
    its tau over the estimate's. Empty: known exactly."""

    wander: tuple[float, ...] = ()
    log_tau: tuple[float, ...] = ()

    def df(self, share: float, elasticity: float) -> float:
        """Degrees of freedom of a variance whose part `share` is proportional to
        wander * tau^elasticity, the rest known: 2 over the variance of its log
        across the replicates, as for a chi-square. (On the log of the whole
        variance, not of the wander's part: an estimate near zero is very uncertain
        relative to itself, but the variance it adds to is not.)"""
        if not self.wander or share <= 0.0:
            return math.inf
        w, t = np.asarray(self.wander), np.asarray(self.log_tau)
        ratio = 1.0 - share + share * w * np.exp(elasticity * t)
        v = float(np.var(np.log(np.maximum(ratio, 1e-9))))
        return 2.0 / v if v > 1e-9 else math.inf


@dataclass(frozen=True)
class Uncertain:
    """The part of a comparison's variance that rests on the wander's estimates: its
    size, its elasticity in tau (d log variance / d log tau) and the estimates'
    spread."""

    variance: float = 0.0
    elasticity: float = 0.0
    spread: Spread = Spread()

    def df(self, total: float) -> float:
        """Degrees of freedom of a variance `total` that holds this part."""
        if total <= 0.0 or self.variance <= 0.0:
            return math.inf
        return self.spread.df(min(self.variance / total, 1.0), self.elasticity)


@dataclass(frozen=True)
class Noise:
    """The three parts (see the module docstring); `extra` is the log-scale variance."""

    phi: float
    wander: float
    block: float
    drift: float
    drift_var: float

    persistence: float = 0.0  # correlation time of the wander, seconds
    trend_known: bool = True  # the drift comes from hours of history, not the baseline
    spread: Spread = Spread()  # how far `wander` and `persistence` may be off

    def window(self, span: float, tau: float | None = None) -> float:
        """The wander variance of the mean log rate over a window of `span` seconds
        (with correlation time `tau`, by default the estimated one)."""
        tau = self.persistence if tau is None else tau
        return self.wander * _mean_variance(max(span, 1.0), tau) \
            / _mean_variance(self.block, tau)

    def windows(self, spans: tuple[float, ...]) -> Uncertain:
        """The wander variance of the difference of independent windows' means."""
        var = sum(self.window(span) for span in spans)
        if var <= 0.0 or self.persistence <= 0.0:
            return Uncertain(var, 0.0, self.spread)
        h = ELASTICITY_STEP
        hi, lo = (sum(self.window(span, self.persistence * math.exp(k)) for span in spans)
                  for k in (h, -h))
        return Uncertain(var, math.log(hi / lo) / (2.0 * h), self.spread)

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
    events = _arrays(hist)[0]
    if len(events) < 6 or events.sum() <= 0:
        return Noise(phi, 0.0, hist.seconds, 0.0, 0.0)
    h = _measured(hist, phi)
    e, x, design, expected, floor = h.events, h.exposure, h.design, h.expected, h.floor
    mid, span, wander, rho = h.mid, h.span, h.wander, h.rho
    tau = _tau(rho, hist.seconds)

    def noise(drift: float, drift_var: float) -> Noise:
        return Noise(phi, wander, hist.seconds, drift, drift_var, tau, known, h.spread)

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


@dataclass(frozen=True)
class _Measured:
    """A history's blocks (with events), the trend through them (a quadratic in time
    centred at `mid` and scaled by `span`, fitted with Poisson weights: `expected`
    events per block, no lower than `floor` times the exposure) and the wander
    measured around it, with its lag-1 correlation between blocks and their spread."""

    events: np.ndarray
    exposure: np.ndarray
    mid: float
    span: float
    design: np.ndarray
    floor: float
    expected: np.ndarray
    wander: float
    rho: float
    spread: Spread


@functools.lru_cache(maxsize=64)
def _measured(hist: Rates, phi: float) -> _Measured:
    """The history measured (at least six blocks with events). Cached: every look of a
    push measures the same history."""
    e, x, t = _arrays(hist)
    mid, span = float(t.mean()), max(float(np.ptp(t)), 1.0)
    design = _design((t - mid) / span)
    floor = e.sum() / x.sum() * 1e-3
    coef = np.linalg.lstsq(design * np.sqrt(x)[:, None], e / np.sqrt(x), rcond=None)[0]
    expected = np.maximum(design @ coef, floor) * x
    fit = _Fit.of(design, phi / expected, expected)
    wanders, rhos = fit.estimate((e - expected) / expected)
    wander, rho = float(wanders[0]), float(rhos[0])
    return _Measured(e, x, mid, span, design, floor, expected, wander, rho,
                     _spread(fit, wander, rho, hist.seconds))


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


@dataclass(frozen=True)
class _Fit:
    """What the wander's estimator needs besides the blocks' residuals: the trend's
    design X and its pseudo-inverse (the fit leaves L = I - X X^+); the lags
    |i - j|; the blocks' own sampling variance P (phi / expected) and what the fit
    leaves of it, diag(L P L'); the weights."""

    design: np.ndarray
    inverse: np.ndarray
    lag: np.ndarray
    sampling: np.ndarray
    sampled: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, design: np.ndarray, sampling: np.ndarray, expected: np.ndarray) -> _Fit:
        n = len(sampling)
        inverse = np.linalg.pinv(design)
        leave = np.eye(n) - design @ inverse
        lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
        return cls(design, inverse, lag, sampling, np.einsum("ij,j,ij->i", leave, sampling, leave),
                   expected ** 2 / float(np.sum(expected ** 2)))

    def residuals(self, y: np.ndarray) -> np.ndarray:
        """What the trend fit leaves of series y (one per row)."""
        left: np.ndarray = y - (y @ self.inverse.T) @ self.design.T
        return left

    def estimate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the wander variance, the wander's lag-1 correlation) of each row of relative
        residuals z, by the method of moments: E[z_i^2] = wander * (L R L')_ii +
        (L P L')_ii, R the wander's correlations (rho^|i-j|).

        A trend fitted through a wander that persists absorbs much of it (a
        quadratic through 48 blocks of a wander with rho 0.6 leaves 78 %, not the
        (n - 3) / n = 94 % that independent blocks would), so counting only the
        fit's three parameters understated the wander by a sixth on average and
        let harmless pushes fail (README, Guard). The lag-1 correlation of the
        residuals is biased low by about (1 + 3 rho) / n (Kendall) and is
        corrected by that much."""
        z = np.atleast_2d(z)
        n = z.shape[1]
        den = np.einsum("bi,bi->b", z, z)
        r = np.where(den > 0, np.einsum("bi,bi->b", z[:, :-1], z[:, 1:]) / np.where(
            den > 0, den, 1.0), 0.0)
        rho = np.clip(r + (1.0 + 3.0 * r) / n, 0.0, 0.95)
        # diag(L R L') = diag(R) - 2 diag(X X^+ R) + diag(X X^+ R X^+' X'), X of rank 3
        corr = rho[:, None, None] ** self.lag[None, :, :]
        xr = self.inverse @ corr  # X^+ R, per row
        inner = xr @ self.inverse.T  # X^+ R X^+'
        kept = 1.0 - 2.0 * np.einsum("ik,bki->bi", self.design, xr) \
            + np.einsum("ik,bkl,il->bi", self.design, inner, self.design)
        wander = ((z * z - self.sampled) @ self.weight) / (kept @ self.weight)
        return np.maximum(wander, 0.0), rho


def _tau(rho: float, block: float) -> float:
    """The correlation time (seconds) of a lag-1 correlation `rho` between blocks."""
    return -block / math.log(rho) if rho > 0.0 else 0.0


def _spread(fit: _Fit, wander: float, rho: float, block: float) -> Spread:
    """How far the estimates may be off: the estimator re-run on `BOOTSTRAP` series
    simulated from the fitted model (Gaussian, the wander's and the sampling's
    covariance, seen through the trend fit), with a fixed seed so that the same
    data always give the same verdict."""
    if wander <= 0.0 or rho <= 0.0:
        return Spread()
    n = len(fit.weight)
    cov = wander * rho ** fit.lag + np.diag(fit.sampling)
    try:
        root = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return Spread()
    rng = np.random.default_rng(0)
    drawn, rhos = fit.estimate(fit.residuals(rng.standard_normal((BOOTSTRAP, n)) @ root.T))
    shortest = block / 20.0
    log_tau = np.log(np.maximum(-block / np.log(np.clip(rhos, 0.05, 0.95)), shortest)
                     / max(_tau(rho, block), shortest))
    return Spread(tuple(float(v) for v in drawn / wander), tuple(float(v) for v in log_tau))


def prediction(noise: Noise, before: Rates, after: Rates,
               shift: float) -> tuple[float, float, Uncertain] | None:
    """(the after window's predicted log level against the baseline's, beyond `shift`;
    the variance of what the prediction leaves unexplained; its part due to the
    wander), or None without a persistent wander.

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
    error (by a quarter to a third of it). How much the wander's part of the
    error depends on tau (its elasticity, from the predictor's error under a
    shorter and a longer tau) goes with it, for the degrees of freedom
    (`Uncertain.df`)."""
    if noise.persistence <= 0.0 or noise.wander <= 0.0:
        return None
    # a persistence too short to measure: no shorter than one interval
    h = ELASTICITY_STEP
    taus = [max(noise.persistence * math.exp(k), before.seconds) for k in (-h, 0.0, h)]
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
    sampled = float(lam @ v @ lam)
    low, mid, high = (max(var_d - 2.0 * float(lam @ c) + float(lam @ k_bb @ lam), 1e-12)
                      for k_bb, c, var_d in each)
    elasticity = math.log(high / low) / math.log(taus[2] / taus[0]) \
        if taus[2] > taus[0] else 0.0
    return float(lam @ y), mid + sampled, Uncertain(mid, elasticity, noise.spread)

"""Group-sequential boundaries: repeated looks without inflating false alarms.

A bake looks at the metrics N times. Testing each look at the full level
would halt a harmless push far more often than the budget allows. Instead the
budget `alpha` of one check in one bake is *spent* across the looks with a
Lan-DeMets spending function, and each look's z-boundary is the value that
spends exactly the increment, given that earlier looks did not stop.

Contract of `boundaries(alpha, fractions, spending)`: `fractions` are the
information fractions of the looks (increasing, the last is 1; this module
uses look/N), `None` marks a look that may not stop (too early); returns one
z-boundary per look (`math.inf` for looks that may not stop) such that, for a
statistic that behaves like Brownian motion in information time, the
probability of crossing any boundary under "no change" is `alpha`. The
guard's statistics share one baseline across looks, which makes successive
looks more correlated than Brownian motion; by Slepian's inequality that only
lowers the crossing probability, so the boundaries stay conservative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import optimize, special

_GRID = 201  # points of the numerical integration grid per look


def pocock_spending(alpha: float, t: float) -> float:
    """Lan-DeMets Pocock-type spending: spends early, for quick detection."""
    return alpha * math.log(1.0 + (math.e - 1.0) * min(max(t, 0.0), 1.0))


def obrien_fleming_spending(alpha: float, t: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending (one-sided): spends late."""
    if t <= 0.0:
        return 0.0
    z = _norm_isf(alpha / 2.0)
    return min(alpha, 2.0 * _norm_sf(z / math.sqrt(min(t, 1.0))))


def hsd_spending(alpha: float, t: float, gamma: float = -2.0) -> float:
    """Hwang-Shih-DeCani spending: gamma -2 lies between Pocock (about 1) and
    O'Brien-Fleming (about -4): some alpha early, for quick detection of a
    severe change, most of it late, for the power of the whole bake."""
    t = min(max(t, 0.0), 1.0)
    return alpha * (1.0 - math.exp(-gamma * t)) / (1.0 - math.exp(-gamma))


SPENDING = {"pocock": pocock_spending, "obrien-fleming": obrien_fleming_spending,
            "hsd": hsd_spending}


def _norm_sf(z: float) -> float:
    return float(0.5 * special.erfc(z / math.sqrt(2.0)))


def _norm_isf(p: float) -> float:
    return float(-special.ndtri(p))


def look_fractions(looks: int, first: int) -> tuple[float | None, ...]:
    """Information fractions k/N for looks 1..N; looks before `first` may not stop."""
    n = max(1, looks)
    return tuple((k / n) if k >= first else None for k in range(1, n + 1))


def boundaries(alpha: float, fractions: Sequence[float | None],
               spending: str = "pocock") -> tuple[float, ...]:
    """One-sided z-boundaries for the looks; see the module docstring."""
    spend = SPENDING[spending]
    out: list[float] = []
    # density of the score S = Z*sqrt(t) on the continuation region, on a grid
    grid: np.ndarray | None = None
    density: np.ndarray | None = None
    t_prev = 0.0
    spent = 0.0
    for frac in fractions:
        if frac is None:
            out.append(math.inf)
            continue
        t = min(max(frac, 1e-9), 1.0)
        increment = max(spend(alpha, t) - spent, 0.0)
        if grid is None or density is None:
            # first look that may stop: S ~ N(0, t), nothing stopped before
            z = _norm_isf(increment) if increment > 0 else math.inf
            sd = math.sqrt(t)
            top = z * sd if math.isfinite(z) else 10.0 * sd
            grid = np.linspace(-10.0 * sd, top, _GRID)
            density = np.exp(-0.5 * (grid / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        else:
            z, grid, density = _next_look(grid, density, t - t_prev, t, increment)
        out.append(z)
        spent += increment
        t_prev = t
    return tuple(out)


def _next_look(grid: np.ndarray, density: np.ndarray, dt: float, t: float,
               increment: float) -> tuple[float, np.ndarray, np.ndarray]:
    sd = math.sqrt(max(dt, 1e-12))
    weights = _trapezoid_weights(grid) * density

    def crossing(z: float) -> float:
        tail = 0.5 * special.erfc((z * math.sqrt(t) - grid) / (sd * math.sqrt(2.0)))
        return float(np.dot(weights, tail))

    if increment <= 0.0:
        z = math.inf
    else:
        low, high = -10.0, 40.0
        if crossing(high) >= increment:
            z = high
        else:
            z = float(optimize.brentq(lambda v: crossing(v) - increment, low, high,
                                      xtol=1e-6))
    top = z * math.sqrt(t) if math.isfinite(z) else float(grid[-1]) + 10.0 * sd
    new_grid = np.linspace(float(grid[0]) - 4.0 * sd, top, _GRID)
    kernel = np.exp(-0.5 * ((new_grid[:, None] - grid[None, :]) / sd) ** 2)
    new_density = kernel @ weights / (sd * math.sqrt(2.0 * math.pi))
    return z, new_grid, new_density


def _trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    h = np.diff(grid)
    w = np.zeros_like(grid)
    w[:-1] += h / 2.0
    w[1:] += h / 2.0
    return w

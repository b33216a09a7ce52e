"""The guard's rank comparison (gauge, latency percentiles): a pure function.

`compare_levels` runs a Mann-Whitney rank test of the after window's
per-interval values against the baseline's, with the Hodges-Lehmann shift
(the median of all pairwise differences) as the size of the change.
Per-interval values of a real system are autocorrelated, which makes a plain
rank test far too confident; the variance of the statistic is therefore
inflated by (1 + rho) / (1 - rho), rho being the lag-1 autocorrelation of
the linearly detrended baseline (clamped to [0, 0.9]).

Slow level shifts a rank test cannot see in 30 minutes (a gauge that steps
every hour or so) are measured on the history before the push: the same test
slid over harmless window pairs there says how far the shift strays with no
change (`null_scale`), and the shift must stand out against that too.

The decision rules are those of `checks.stats`: the single worst after
value is left out; fail only with a finite boundary, three or more after
values, z at the boundary, a shift beyond
max(min_change * |baseline median|, min_absolute), and the recent half of
the after window shifted beyond that floor too; pass only when the after
values lie below the baseline moved by a `severe` change (after = before *
severe for a rise) with 95 % confidence; otherwise inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from checks.stats import PASS_Z, Comparison, Rule
from daemon.models import Verdict


@dataclass(frozen=True)
class Levels:
    """Per-interval values (gauge readings, per-interval percentiles) and times."""

    values: tuple[float, ...]
    times: tuple[float, ...]

    def recent_half(self) -> Levels:
        n = len(self.values) // 2
        return Levels(self.values[n:], self.times[n:])


def mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """Tie-corrected Mann-Whitney z of `y` above `x` (normal approximation)."""
    nx, ny = len(x), len(y)
    ranks = stats.rankdata(np.concatenate([x, y]))
    u = float(ranks[nx:].sum()) - ny * (ny + 1) / 2.0
    n = nx + ny
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    ties = float(np.sum(counts ** 3 - counts))
    var = nx * ny / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 0.0
    return (u - nx * ny / 2.0) / math.sqrt(var)


def lag1_autocorrelation(values: np.ndarray) -> float:
    """Lag-1 autocorrelation of the linearly detrended values, clamped to [0, 0.9]."""
    if len(values) < 6:
        return 0.0
    t = np.arange(len(values), dtype=float)
    res = values - np.polyval(np.polyfit(t, values, 1), t)
    den = float(np.dot(res, res))
    if den <= 0:
        return 0.0
    rho = float(np.dot(res[:-1], res[1:]) / den)
    return min(max(rho, 0.0), 0.9)


def hodges_lehmann(x: np.ndarray, y: np.ndarray) -> float:
    """Median of all pairwise differences y_j - x_i."""
    return float(np.median(np.subtract.outer(y, x)))


def null_scale(history: np.ndarray, n_before: int, n_after: int, bad: float) -> float | None:
    """How far the Hodges-Lehmann shift strays with no change at all: its root mean
    square over window pairs (n_before values, then n_after with the worst left out,
    as in the test) slid along the history, taken one standard error high; None
    when the history holds fewer than three independent pairs."""
    width = n_before + n_after
    pairs = len(history) / max(width, 1)
    if n_before < 6 or n_after < 1 or pairs < 3.0:
        return None
    shifts = []
    for p in range(0, len(history) - width + 1, max(1, n_after // 2)):
        y = history[p + n_before:p + width]
        if len(y) >= 3:
            y = np.delete(y, int(np.argmax(bad * y)))
        shifts.append(hodges_lehmann(history[p:p + n_before], y))
    rms = math.sqrt(float(np.mean(np.square(shifts))))
    return rms * math.sqrt(pairs / float(stats.chi2.ppf(0.16, pairs)))


def compare_levels(before: Levels, after: Levels, rule: Rule, what: str, *,
                   shift: float = 0.0, history: Levels | None = None) -> Comparison:
    """Rank test of after against before values; `shift` is the seasonal expectation;
    `history`, the values before the push, gives the shift's spread with no change."""
    x = np.asarray(before.values, dtype=float)
    full = np.asarray(after.values, dtype=float) - shift
    s = 1.0 if rule.bad == "rise" else -1.0
    y, left_out = full, None
    if len(full) >= 3:  # leave out the single worst value: one bad interval is not evidence
        left_out = int(np.argmax(s * full))
        y = np.delete(full, left_out)
    ev_before: dict[str, object] = {"intervals": len(x), "values": [round(v, 6) for v in x]}
    ev_after: dict[str, object] = {"intervals": len(full), "left_out": left_out,
                                   "values": [round(v, 6) for v in full]}
    threshold = rule.z if math.isfinite(rule.z) else None

    def out(verdict: Verdict, reason: str, z: float | None, change: float | None) -> Comparison:
        return Comparison(verdict, z, threshold, change, reason, ev_before, ev_after)

    if len(x) < 6 or len(y) < 1:
        return out(Verdict.INCONCLUSIVE,
                   f"too little data: {len(x)} baseline and {len(y)} after values", None, None)
    median = float(np.median(x))
    rho = lag1_autocorrelation(x)
    inflation = math.sqrt((1.0 + rho) / (1.0 - rho))
    z = s * mann_whitney_z(x, y) / inflation
    hl = hodges_lehmann(x, y)
    scale = None if history is None else \
        null_scale(np.asarray(history.values, dtype=float), len(x), len(full), s)
    if scale is not None and scale > 0:
        z = min(z, s * hl / scale)  # both must see it: the ranks and the history
        ev_before["null_sd"] = scale
    floor = max(rule.min_change * abs(median), rule.min_absolute)
    change = hl / abs(median) if median != 0 else (math.inf * s if hl else 0.0)
    ev_before.update(median=median, autocorrelation=round(rho, 3))
    ev_after.update(median=float(np.median(y)), shift=hl)
    text = (f"{what} median {median:.4g} -> {float(np.median(y)):.4g} "
            f"(shift {hl:+.4g}, floor {floor:.3g})")
    persistent = s * hodges_lehmann(x, y[len(y) // 2:]) >= floor
    can_stop = math.isfinite(rule.z) and left_out is not None
    if can_stop and z >= rule.z and s * hl >= floor and s * hl > 0:
        if persistent:
            return out(Verdict.FAIL, f"{text}: z={z:.2f} >= {rule.z:.2f}", z, change)
        return out(Verdict.PASS, f"{text}: transient, the recent half is back near the baseline",
                   z, change)
    if not can_stop:
        return out(Verdict.INCONCLUSIVE, f"{text}: too early to decide", z, change)
    gross = abs(median) * ((rule.severe - 1.0) if s > 0 else (1.0 - 1.0 / rule.severe))
    gross = max(gross, floor)
    # the after values against the baseline moved by a severe shift: below it (for a
    # rise) with 95 % confidence, or no pass
    z_h = -s * mann_whitney_z(x + s * gross, y) / inflation if gross > 0 else 0.0
    if scale is not None and scale > 0:
        z_h = min(z_h, (gross - s * hl) / scale)
    if z_h < PASS_Z:
        return out(Verdict.INCONCLUSIVE, f"too little data: {text}; a shift of "
                   f"{s * gross:+.4g} cannot be ruled out (z={z_h:.2f} < {PASS_Z:.2f})",
                   z, change)
    detail = "no harmful change" if z < rule.z else "change below the smallest that matters"
    return out(Verdict.PASS, f"{text}: {detail} (z={z:.2f}, boundary {rule.z:.2f})", z, change)

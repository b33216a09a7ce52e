"""One check at one look: read the windows it needs, run its comparison.

`evaluate` raises `CheckError` when the source cannot answer; everything
else about the data (missing, thin) ends up in the `Comparison`.

Rate checks (count, ratio, latency share) also read the history before the
push (`windows.history_window`: eight baseline lengths in 5-minute blocks)
for the noise model's slow wander.

Seasonal reference (`[guard] seasonal = "1d".."7d"`): the same two windows
that many days earlier. A count's expected after-rate is scaled by the
reference's after/before rate ratio (its noise is added to the drift
allowance); gauge and percentile values are compared after subtracting the
reference's median shift. Ratios and latency shares are already normalised
by traffic and use no reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from checks.ranks import compare_levels
from checks.spec import CheckSpec, Kind
from checks.stats import Comparison, Naming, Rule, compare_rates
from checks.windows import (
    HISTORY_BASELINES,
    Reader,
    Window,
    column_names,
    count_rates,
    floor_to,
    history_window,
    levels,
    share_rates,
)
from daemon.models import Verdict

# The change the data must be able to reveal before a check may pass (see
# stats.Rule.severe): the "severe" regressions.
SEVERE = {Kind.COUNT: 2.0, Kind.RATIO: 3.0, Kind.LATENCY: 3.0, Kind.GAUGE: 2.0}
SEVERE_PERCENTILES = 2.0


def severe_factor(check: CheckSpec) -> float:
    if check.kind == Kind.LATENCY and check.latency_mode == "percentiles":
        return SEVERE_PERCENTILES
    return SEVERE[check.kind]


@dataclass(frozen=True)
class Evaluation:
    comparison: Comparison
    queries: tuple[str, ...]


async def evaluate(reader: Reader, check: CheckSpec, before: Window, after: Window,
                   step: timedelta, rule: Rule, seasonal_days: int) -> Evaluation:
    """Compare `after` against `before` for one check; raises CheckError."""
    if check.kind == Kind.COUNT:
        return await _count(reader, check, before, after, step, rule, seasonal_days)
    if check.is_rate:
        return await _share(reader, check, before, after, step, rule)
    return await _levels(reader, check, before, after, step, rule, seasonal_days)


async def _count(reader: Reader, check: CheckSpec, before: Window, after: Window,
                 step: timedelta, rule: Rule, days: int) -> Evaluation:
    sb = await reader.read(check, before, step, cache=True)
    sa = await reader.read(check, after, step)
    origin = before.stop
    rb = count_rates(sb, before, step, origin, trim_newest=False)
    ra = count_rates(sa, after, step, origin, trim_newest=True,
                     missing_is_zero=rule.bad == "drop")
    hw, block = history_window(before, step)
    sh = await reader.read(check, hw, block, cache=True)
    rh = count_rates(sh, hw, block, origin, trim_newest=False)
    queries = sb.queries + sa.queries + sh.queries
    scale: float | None = None
    scale_var, note = 0.0, ""
    if days:
        ref_before, ref_after = before.shifted(days, reader.tz), after.shifted(days, reader.tz)
        refb = await reader.read(check, ref_before, step, cache=True)
        refa = await reader.read(check, ref_after, step)
        eb, xb = count_rates(refb, ref_before, step, origin, trim_newest=False).total()
        ea, xa = count_rates(refa, ref_after, step, origin, trim_newest=False).total()
        queries += refb.queries + refa.queries
        if eb > 0 and ea > 0:
            scale = (ea / xa) / (eb / xb)
            scale_var = 1.0 / ea + 1.0 / eb
        else:
            note = f" (no {days}d reference data)"
    what = check.field or "events"
    comparison = compare_rates(rb, ra, rule, Naming(f"{what} rate{note}", "per s"),
                               history=rh, scale=scale, scale_var=scale_var)
    if days:
        comparison.before["seasonal_scale"] = scale
    _windows(comparison, before, after)
    return Evaluation(comparison, queries)


async def _share(reader: Reader, check: CheckSpec, before: Window, after: Window,
                 step: timedelta, rule: Rule) -> Evaluation:
    bad, total = column_names(check)
    origin = before.stop
    threshold: float | None = None
    queries: tuple[str, ...] = ()
    if check.kind == Kind.LATENCY:
        first = await reader.read(check, before, step, cache=True)
        queries += first.queries
        threshold = first.quantile
        if threshold is None or not math.isfinite(threshold):
            comparison = Comparison(
                verdict=Verdict.INCONCLUSIVE, statistic=None, threshold=None, change=None,
                reason=f"too little data: no {check.field} values in the baseline window",
                before={}, after={})
            _windows(comparison, before, after)
            return Evaluation(comparison, queries)
    sb = await reader.read(check, before, step, slower_than=threshold, cache=True)
    sa = await reader.read(check, after, step, slower_than=threshold)
    hw, block = history_window(before, step)
    sh = await reader.read(check, hw, block, slower_than=threshold, cache=True)
    rb = share_rates(sb, before, step, origin, bad, total)
    ra = share_rates(sa, after, step, origin, bad, total)
    rh = share_rates(sh, hw, block, origin, bad, total)
    if check.kind == Kind.RATIO:
        naming = Naming(f"{check.bad_field}/{check.all_field}", "ratio")
    else:
        naming = Naming(f"share of {check.field} above the baseline p95 {threshold:.4g}",
                        "ratio")
    comparison = compare_rates(rb, ra, rule, naming, history=rh)
    if threshold is not None:
        comparison.before["p95"] = threshold
    _windows(comparison, before, after)
    return Evaluation(comparison, queries + sb.queries + sa.queries + sh.queries)


async def _levels(reader: Reader, check: CheckSpec, before: Window, after: Window,
                  step: timedelta, rule: Rule, days: int) -> Evaluation:
    sb = await reader.read(check, before, step, cache=True)
    sa = await reader.read(check, after, step)
    origin = before.stop
    queries = sb.queries + sa.queries
    shift = 0.0
    if days:
        refb = await reader.read(check, before.shifted(days, reader.tz), step, cache=True)
        refa = await reader.read(check, after.shifted(days, reader.tz), step)
        queries += refb.queries + refa.queries
        vb, va = levels(refb, origin).values, levels(refa, origin).values
        if vb and va:
            shift = float(np.median(va) - np.median(vb))
    span = before.stop - before.start
    hw = Window(floor_to(before.stop - span * HISTORY_BASELINES, step), before.stop)
    sh = await reader.read(check, hw, step, cache=True)
    queries += sh.queries
    comparison = compare_levels(levels(sb, origin), levels(sa, origin), rule,
                                check.field or "value", shift=shift, history=levels(sh, origin))
    if days:
        comparison.before["seasonal_shift"] = shift
    _windows(comparison, before, after)
    return Evaluation(comparison, queries)


def _windows(comparison: Comparison, before: Window, after: Window) -> None:
    comparison.before["window"] = before.text()
    comparison.after["window"] = after.text()

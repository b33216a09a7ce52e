"""The guard: per-check results to a verdict per look, with evidence.

The false-alarm budget `[guard] false_alarm` is per push: over both bakes
(canary and fleet), all critical checks and all looks. It is split with
Bonferroni across the bakes and the critical checks: the canary bake gets
`[guard] canary_share` of it (default 0.67), the fleet bake the rest, a push
with one wave all of it, and each critical check an equal part, alpha =
false_alarm * share / critical checks. The canary bake gets the larger part
because a regression stopped there has reached one wave, not the fleet, and
because a unit of alpha buys more detection there: the fleet bake's after
window lies further from the baseline, where the metrics' slow wander widens
every test. Each check spends its alpha across the looks of a
bake with a Hwang-Shih-DeCani spending function, gamma -2
(`checks.sequential`): a little early, so that a severe regression stops
within the first looks that may stop, most of it towards the end of the
bake, where a moderate regression has gathered its evidence. (Pocock-type
spending, also implemented, spends evenly and catches fewer moderate
regressions.) Looks whose after window is shorter than three of the check's
intervals may not stop (the worst interval is left out of every test, see
`checks.stats`); the alpha of those looks is carried to the first look that
may. A rate check (count, ratio, latency share) keeps a quarter of its alpha
(`RECENT_SHARE`) for a second test at the final look, on the recent half of
the after window alone (`checks.stats`): a regression with a late onset is
diluted in the whole window. By Bonferroni the two tests together stay
within the check's alpha. The final look is the last one planned: with
`on_inconclusive = "extend:D"` that is the end of the extension, so a bake
that passes at its usual end leaves that quarter unspent. Counts with a
seasonal reference have no second test (their expected ratio is the whole
window's) and spend all of their alpha over the looks. Advisory checks are
judged the same way and reported, but never fail a push.

A look is FAIL as soon as one critical check fails; PASS only at the final
look when every critical check passed; otherwise INCONCLUSIVE. A source that
cannot answer makes its checks INCONCLUSIVE ("metrics unavailable: ..."),
never PASS. The pre-flight compares the most recent bake-length window
with the baseline-length window before it, one look at alpha = false_alarm /
critical checks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from checks.evaluate import evaluate, severe_factor
from checks.sequential import boundaries, look_fractions
from checks.series import MetricSource
from checks.spec import CheckSpec, Kind
from checks.stats import Rule
from checks.windows import Reader, after_window, baseline_window
from daemon.config import GuardConfig
from daemon.errors import CheckError
from daemon.models import CheckResult, Verdict

log = logging.getLogger("pushguard.guard")

MIN_INTERVALS = 3  # a look may stop only with this many intervals after warm-up
SPENDING = "hsd"
RECENT_SHARE = 0.25  # of a rate check's alpha: the final look's test on the recent half
UNAVAILABLE = "metrics unavailable"


@dataclass(frozen=True)
class Look:
    """The verdict of one look, with one evidence record per check."""

    verdict: Verdict
    reason: str
    results: tuple[CheckResult, ...]


class Guard:
    """Judges the checks of one daemon against one metric source (see the module doc)."""

    def __init__(self, config: GuardConfig, checks: Sequence[CheckSpec],
                 source: MetricSource, tz: tzinfo = UTC) -> None:
        self._config = config
        self._checks = tuple(checks)
        self._source = source
        self._reader = Reader(source, tz)  # tz: the clock seasonal references follow
        critical = sum(1 for c in self._checks if c.critical)
        self.budget = config.false_alarm / max(critical, 1)  # one check's, over one push
        self._bounds: dict[tuple[int, int, float], tuple[float, ...]] = {}
        self._source_ok = True
        self._marker_ok = True

    def looks(self, bake: timedelta) -> int:
        """Looks in one bake: one every `look_every` after the warm-up, until `bake` ends."""
        span = bake - self._config.warmup
        return max(1, int(span / self._config.look_every))

    def step(self, check: CheckSpec) -> timedelta:
        return check.step or self._config.look_every

    def alpha(self, wave: int, waves: int) -> float:
        """One critical check's alpha in the bake of `wave` (1: the canary) of a push
        with `waves` waves: `canary_share` of its budget for the canary bake, the rest
        for the fleet bake (the pusher makes two waves at most; a scenario file with
        more splits the rest evenly over them); all of it for a push with one wave."""
        if waves <= 1:
            return self.budget
        share = self._config.canary_share
        if wave <= 1:
            return self.budget * share
        return self.budget * (1.0 - share) / (waves - 1)

    def boundary(self, check: CheckSpec, look: int, looks: int, alpha: float) -> float:
        """The z-boundary of `check` at `look` of `looks` of a bake with `alpha`
        (inf: this look may not stop)."""
        looks = max(looks, 1)
        first = math.ceil(MIN_INTERVALS * self.step(check) / self._config.look_every)
        first = min(max(first, 1), looks)
        if self._recent_test(check):
            alpha *= 1.0 - RECENT_SHARE
        key = (looks, first, alpha)
        if key not in self._bounds:
            self._bounds[key] = boundaries(alpha, look_fractions(looks, first), SPENDING)
        return self._bounds[key][min(max(look, 1), looks) - 1]

    def recent_boundary(self, check: CheckSpec, look: int, looks: int, alpha: float) -> float:
        """The boundary of a rate check's test on the recent half of the after window:
        at the final look only, with its share of the check's alpha in the bake."""
        if look != max(looks, 1) or not self._recent_test(check) or look <= 0:
            return math.inf
        return _norm_isf(alpha * RECENT_SHARE)

    def _recent_test(self, check: CheckSpec) -> bool:
        """Rate checks test the recent half, except counts against a seasonal reference
        (whose expected ratio is the whole after window's)."""
        if check.kind == Kind.COUNT and self._config.seasonal_days:
            return False
        return check.is_rate

    async def preflight(self, now: datetime, *, push_id: int = 0) -> Look:
        """Is the service already degraded? Recent window vs the window before it."""
        span = max(self._config.bake - self._config.warmup, self._config.look_every)
        recent = (now - span, now)
        reference = (now - span - self._config.baseline, now - span)
        critical = [c for c in self._checks if c.critical]
        z = _norm_isf(self._config.false_alarm / max(len(critical), 1))
        results = await asyncio.gather(*(
            self._judge(c, push_id, 0, reference, recent, z) for c in critical))
        look = _aggregate(results, final=True, look=0, looks=0)
        if look.verdict == Verdict.FAIL:
            return Look(Verdict.FAIL, f"already degraded before the push: {look.reason}",
                        look.results)
        return look

    async def look(self, *, push_id: int, wave: int, waves: int,
                   baseline: tuple[datetime, datetime], after: tuple[datetime, datetime],
                   look: int, looks: int, final: bool) -> Look:
        """Judge every check at one look of the bake of `wave` of `waves`; never raises."""
        alpha = self.alpha(wave, waves)
        results = await asyncio.gather(*(
            self._judge(c, push_id, look, baseline, after, self.boundary(c, look, looks, alpha),
                        self.recent_boundary(c, look, looks, alpha))
            for c in self._checks))
        return _aggregate(results, final=final, look=look, looks=looks)

    async def mark(self, *, push_id: int, release: str, phase: str, verdict: str | None,
                   at: datetime) -> None:
        """Write a deploy marker; a failure is logged once (and the recovery once)."""
        try:
            await self._source.write_marker(push_id=push_id, release=release, phase=phase,
                                            verdict=verdict, at=at)
        except CheckError as exc:
            if self._marker_ok:
                log.warning("deploy marker not written (push %s, %s): %s",
                            push_id, phase, exc.message)
            self._marker_ok = False
            return
        except Exception:  # the contract: marking never breaks a push
            log.exception("deploy marker not written (push %s, %s)", push_id, phase)
            self._marker_ok = False
            return
        if not self._marker_ok:
            log.info("deploy markers are written again (push %s, %s)", push_id, phase)
        self._marker_ok = True

    async def _judge(self, check: CheckSpec, push_id: int, look: int,
                     before: tuple[datetime, datetime], after: tuple[datetime, datetime],
                     z: float, z_recent: float = math.inf) -> CheckResult:
        step = self.step(check)
        bw, aw = baseline_window(before, step), after_window(after, step)
        rule = Rule(bad=check.bad.value, min_change=check.min_change,
                    min_absolute=check.min_absolute, z=z, severe=severe_factor(check),
                    z_recent=z_recent)

        def result(verdict: Verdict, reason: str, queries: tuple[str, ...] = (),
                   statistic: float | None = None, threshold: float | None = None,
                   before_ev: dict[str, object] | None = None,
                   after_ev: dict[str, object] | None = None) -> CheckResult:
            return CheckResult(
                push_id=push_id, check=check.name, look=look, window_start=aw.start,
                window_end=max(aw.stop, aw.start), queries=queries,
                before=before_ev or {"window": bw.text()}, after=after_ev or {"window": aw.text()},
                statistic=_finite(statistic), threshold=_finite(threshold), verdict=verdict,
                reason=reason, critical=check.critical)

        if aw.stop <= aw.start or bw.stop <= bw.start:
            return result(Verdict.INCONCLUSIVE,
                          f"too early: no complete {step.total_seconds():g}s interval yet")
        try:
            found = await evaluate(self._reader, check, bw, aw, step, rule,
                                   self._config.seasonal_days)
        except CheckError as exc:
            self._source_down(exc.message)
            return result(Verdict.INCONCLUSIVE, f"{UNAVAILABLE}: {exc.message}", exc.queries)
        except Exception as exc:  # the contract: a look never raises
            log.exception("check %r could not be judged", check.name)
            return result(Verdict.INCONCLUSIVE, f"{UNAVAILABLE}: internal error: {exc!r}")
        self._source_up()
        c = found.comparison
        return result(c.verdict, c.reason, found.queries, c.statistic, c.threshold,
                      c.before, c.after)

    def _source_down(self, message: str) -> None:
        if self._source_ok:
            log.warning("%s: %s", UNAVAILABLE, message)
        self._source_ok = False

    def _source_up(self) -> None:
        if not self._source_ok:
            log.info("metrics available again")
        self._source_ok = True


def _aggregate(results: Sequence[CheckResult], *, final: bool, look: int, looks: int) -> Look:
    critical = [r for r in results if r.critical]
    failed = [r for r in critical if r.verdict == Verdict.FAIL]
    advisory = [r.check for r in results if not r.critical and r.verdict == Verdict.FAIL]
    note = f" (advisory failed: {', '.join(advisory)})" if advisory else ""
    where = f" at look {look} of {looks}" if looks else ""
    if failed:
        text = "; ".join(f"{r.check}: {r.reason}" for r in failed)
        return Look(Verdict.FAIL, f"{len(failed)} critical check(s) failed{where}: {text}{note}",
                    tuple(results))
    unavailable = [r for r in critical if r.reason.startswith(UNAVAILABLE)]
    if unavailable:
        text = "; ".join(f"{r.check}: {r.reason.removeprefix(UNAVAILABLE + ': ')}"
                         for r in unavailable)
        return Look(Verdict.INCONCLUSIVE, f"{UNAVAILABLE}{where}: {text}{note}", tuple(results))
    open_ = [r for r in critical if r.verdict != Verdict.PASS]
    if not final:
        return Look(Verdict.INCONCLUSIVE, f"no critical check failed so far{where}{note}",
                    tuple(results))
    if open_:
        text = "; ".join(f"{r.check}: {r.reason}" for r in open_)
        return Look(Verdict.INCONCLUSIVE, f"inconclusive{where}: {text}{note}", tuple(results))
    return Look(Verdict.PASS, f"all {len(critical)} critical check(s) passed{where}{note}",
                tuple(results))


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _norm_isf(p: float) -> float:
    from scipy import special

    return float(-special.ndtri(min(max(p, 1e-300), 0.5)))

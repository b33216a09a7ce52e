"""The guard's rate comparisons (count, ratio, latency share): pure functions.

`compare_rates` compares events over an exposure: for a count the exposure
is time (events per second), for a ratio the number of requests (bad per
request), for latency in threshold mode the number of requests (slower than
the baseline's p95 per request). Rank comparisons (gauge, percentiles) are
in `checks.ranks`; both return a `Comparison`.

The test. Given the total of before and after events, the after events are
binomial under "no change" with p = s*X_a / (s*X_a + X_b) (X: exposures, s:
the expected after/before rate ratio); the exact binomial tail gives z0.
Real metrics vary more than Poisson, so z0 is shrunk:

    z = z0 / sqrt(phi + extra / V0)

V0 = 1/(N p (1-p)) is the Poisson variance of the log rate ratio and phi the
fast over-dispersion. s and `extra` come from the metric's own history
before the push (`checks.noise`):

- the drift of the day (a push in a rising or falling hour), shrunk by how
  well the history measures it (`Noise.expected_shift`), and its variance;
- the slow wander of the level: the baseline's intervals predict how far the
  after window's level lies from the baseline's (the level of the last
  minutes carries on, `noise.prediction`); s includes the prediction, and
  `extra` what it leaves unexplained. Without a persistent wander, `extra`
  is the wander of both windows in full.

With a seasonal reference (counts), s is the reference's after/before ratio
instead, and `extra` the wander of both windows plus the reference's noise.

The wander and its persistence are estimates from a few hours, known to
within a third or so (`Noise.spread`). The variance they build is therefore
itself uncertain, by Satterthwaite's degrees of freedom: z is read as
Student's t and turned back into the normal z with the same tail
(`student`) before it meets a boundary or rules out a severe change. Where
Poisson noise dominates this changes little; where the wander dominates (high
traffic, an after window far from the baseline) it holds the budget that a
plain normal z missed.

Transients: the after window's single worst interval (in the bad
direction) is left out of the test, so one bad interval (a restart blip
that outlasts the warm-up, a scrape hiccup) never fails a push; a look may
therefore stop only with three or more intervals after the warm-up.

Deciding: see `checks.verdict` for the boundaries. A comparison fails only
when the look may stop, z reaches the boundary, the estimated change is
beyond `min_change` and `min_absolute`, and the recent half of the after
window is beyond `min_change` too (an effect that is over is not a
regression). At the final look (`Rule.z_recent` finite) the recent half of
the after window is also tested on its own, with the same noise model and
its own share of the alpha: a regression that began late in the bake is
diluted in the whole window but not in its recent half. That test fails the
comparison when its z reaches `z_recent`, the half's own change is beyond
`min_change` and `min_absolute` (the whole window's may be less), and the
half's newest half is still beyond `min_change`. A comparison passes
only when the data rule out a `severe` change (x3 errors, say, or the
expected rate plus `min_absolute`) with 95 % confidence (a mid-p bound),
under the same noise model (`ruled_out`). Otherwise it is inconclusive,
never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

from checks.noise import Noise, Uncertain, model, prediction
from checks.rates import Rates
from daemon.models import Verdict

PASS_Z = 1.645  # a pass rules out a severe change with 95 % confidence (one-sided)


@dataclass(frozen=True)
class Rule:
    """How one comparison decides at one look.

    `bad` is "rise" or "drop"; `z` the look's boundary (`math.inf`: this look
    may not fail); `severe` (> 1) the factor of a change that the data must be
    able to reveal for a pass (x`severe` for a rise, /`severe` for a drop).
    """

    bad: str
    min_change: float
    min_absolute: float
    z: float
    severe: float
    z_recent: float = math.inf  # the boundary of the test on the recent half (final look)


@dataclass(frozen=True)
class Comparison:
    """The outcome of one comparison with its evidence (JSON-ready dicts)."""

    verdict: Verdict
    statistic: float | None
    threshold: float | None
    change: float | None  # relative change after vs before (0.25 = +25 %)
    reason: str
    before: dict[str, object] = field(default_factory=dict)
    after: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Naming:
    """How a reason names the quantity: `what` ("errors/requests"), `unit` ("ratio", "per s")."""

    what: str
    unit: str


def z_from_p(p: float) -> float:
    return float(-special.ndtri(min(max(p, 1e-300), 1.0 - 1e-16)))


def binomial_z(k: int, n: int, pi0: float, bad: str, *, mid: bool = False) -> float:
    """z of k successes of n at p = pi0: the exact tail (`mid`: the mid-p tail, which
    counts k itself half), or in the far tail (where the exact p-value underflows) the
    signed root of the likelihood-ratio statistic."""
    p = float(stats.binom.sf(k - 1, n, pi0) if bad == "rise" else stats.binom.cdf(k, n, pi0))
    if mid:
        p -= 0.5 * float(stats.binom.pmf(k, n, pi0))
    if p > 1e-10:
        return z_from_p(p)
    m = n * pi0
    lr = 2.0 * (special.xlogy(k, k / m) + special.xlogy(n - k, (n - k) / (n - m)))
    return math.sqrt(max(float(lr), 0.0))


def rate_z(a: float, xa: float, b: float, xb: float, bad: str, *, scale: float = 1.0,
           phi: float = 1.0, extra: float = 0.0, mid: bool = False,
           wander: Uncertain | None = None) -> float:
    """z of `a` after-events against `b` before-events; positive = the bad direction.
    `wander`: the part of `extra` that rests on the wander's estimates."""
    n, pi0 = _split(a, xa, b, xb, scale)
    if n <= 0:
        return 0.0
    z0 = binomial_z(min(round(a), n), n, pi0, bad, mid=mid)
    v0 = poisson_variance(a, xa, b, xb, scale)
    total = phi * v0 + extra
    z = z0 / math.sqrt(total / v0)
    return student(z, wander.df(total)) if wander is not None else z


def poisson_variance(a: float, xa: float, b: float, xb: float, scale: float) -> float:
    """The Poisson variance of the log rate ratio of `a` after-events against `b`
    before-events, 1 / (N p (1 - p)) with p the after events' expected share."""
    n, pi0 = _split(a, xa, b, xb, scale)
    return 1.0 / (n * pi0 * (1.0 - pi0)) if n > 0 else math.inf


def _split(a: float, xa: float, b: float, xb: float, scale: float) -> tuple[int, float]:
    """(the events before and after, the after events' expected share of them), or
    (0, 0.0) when there is nothing to compare."""
    n = round(a + b)
    if n <= 0 or xa <= 0 or xb <= 0:
        return 0, 0.0
    return n, scale * xa / (scale * xa + xb)


def student(z: float, df: float) -> float:
    """The normal z with the tail that z has as Student's t on `df` degrees of freedom
    (the degrees of freedom of the variance behind z)."""
    if not math.isfinite(df) or df > 1e4 or not math.isfinite(z):
        return z
    return z_from_p(float(stats.t.sf(z, df)))


def ruled_out(a: float, xa: float, b: float, xb: float, severe_rate: float, bad: str, *,
              phi: float = 1.0, extra: float = 0.0,
              wander: Uncertain | None = None) -> float:
    """z by which `a` after-events over `xa` rule out an after rate of `severe_rate`
    (positive: the data lie on the good side of it), with the same noise as `rate_z`.

    The tail is the mid-p one: with a handful of events the exact tail's bound is
    conservative (it rules out with well over 95 % confidence, so a quiet service
    reads inconclusive more often than it should); the mid-p bound is about 95 %.
    Fail decisions keep the exact tail, which holds the false-alarm budget."""
    if bad == "drop" and severe_rate <= 0.0:
        return math.inf if a > 0 else 0.0
    good = "drop" if bad == "rise" else "rise"
    if b > 0:
        return rate_z(a, xa, b, xb, good, scale=severe_rate * xb / b, phi=phi, extra=extra,
                      mid=True, wander=wander)
    mean = severe_rate * xa  # no baseline events: the after events alone, Poisson
    if mean <= 0.0:
        return 0.0
    k = round(a)
    p = float(stats.poisson.cdf(k, mean) if bad == "rise" else stats.poisson.sf(k - 1, mean))
    p -= 0.5 * float(stats.poisson.pmf(k, mean))  # mid-p
    z = z_from_p(p) / math.sqrt(phi + extra * mean)
    return student(z, wander.df(phi / mean + extra)) if wander is not None else z


def trim_worst(after: Rates, expected_rate: float, bad: str) -> tuple[Rates, int | None]:
    """The after window without its single worst interval (when it has three or more)."""
    e, x = np.asarray(after.events, dtype=float), np.asarray(after.exposure, dtype=float)
    if np.count_nonzero(x > 0) < 3:
        return after, None
    mean = x * expected_rate
    dev = (e - mean) / np.sqrt(mean + 1.0) * (1.0 if bad == "rise" else -1.0)
    dev[x <= 0] = -np.inf
    i = int(np.argmax(dev))
    keep = [j for j in range(len(e)) if j != i]
    return Rates(tuple(after.events[j] for j in keep), tuple(after.exposure[j] for j in keep),
                 tuple(after.times[j] for j in keep), after.seconds), i


def rate_change(a: float, xa: float, b: float, xb: float, scale: float) -> tuple[float, float]:
    """(relative change, absolute difference) of the after rate against the expected rate."""
    ra = a / xa if xa > 0 else 0.0
    rb = scale * b / xb if xb > 0 else 0.0
    if rb > 0:
        return ra / rb - 1.0, ra - rb
    return (math.inf if ra > 0 else 0.0), ra - rb


def expectation(before: Rates, after: Rates, history: Rates | None, scale: float | None,
                scale_var: float) -> tuple[Noise, float, float, Uncertain]:
    """(the noise model, the expected after/before rate ratio, the extra log-scale
    variance, its part that rests on the wander's estimates) for comparing `after`
    with `before` (module doc)."""
    noise = model(before, after.centre(), history)
    wander = noise.windows((after.span(), before.span()))
    extra = wander.variance + scale_var
    if scale is None:
        shift, extra_drift = noise.expected_shift()
        predicted = prediction(noise, before, after, shift)
        if predicted is not None:
            shift += predicted[0]
            extra, wander = predicted[1], predicted[2]
        scale = math.exp(shift)
        extra += extra_drift
    return noise, scale, extra, wander


@dataclass(frozen=True)
class _Test:
    """One window's test against the baseline: the window without its worst interval,
    its events and exposure, z, and the change against the expected rate."""

    rule: Rule
    noise: Noise
    scale: float
    extra: float
    wander: Uncertain
    df: float  # of the test's variance
    window: Rates
    trimmed: int | None
    events: float
    exposure: float
    z: float
    change: float
    diff: float

    @property
    def beyond(self) -> bool:
        """The change is beyond `min_change` and `min_absolute` in the bad direction."""
        s = 1.0 if self.rule.bad == "rise" else -1.0
        return (s * self.change >= self.rule.min_change
                and s * self.diff >= self.rule.min_absolute and s * self.diff > 0)

    def lasting(self, b: float, xb: float) -> bool:
        """The window's recent half is still beyond `min_change` (not a transient)."""
        s = 1.0 if self.rule.bad == "rise" else -1.0
        recent, _ = rate_change(*self.window.recent_half().total(), b, xb, self.scale)
        return s * recent >= self.rule.min_change


def _test(before: Rates, after: Rates, rule: Rule, history: Rates | None,
          scale: float | None, scale_var: float) -> _Test:
    b, xb = before.total()
    noise, scale, extra, wander = expectation(before, after, history, scale, scale_var)
    window, trimmed = trim_worst(after, scale * b / xb if xb > 0 else 0.0, rule.bad)
    a, xa = window.total()
    z = rate_z(a, xa, b, xb, rule.bad, scale=scale, phi=noise.phi, extra=extra,
               wander=wander)
    change, diff = rate_change(a, xa, b, xb, scale)
    df = wander.df(noise.phi * poisson_variance(a, xa, b, xb, scale) + extra)
    return _Test(rule, noise, scale, extra, wander, df, window, trimmed, a, xa, z, change,
                 diff)


def compare_rates(before: Rates, after: Rates, rule: Rule, naming: Naming, *,
                  history: Rates | None = None, scale: float | None = None,
                  scale_var: float = 0.0) -> Comparison:
    """Compare after-events against before-events over their exposures (module doc)."""
    b, xb = before.total()
    t = _test(before, after, rule, history, scale, scale_var)
    noise, phi, extra, z, change = t.noise, t.noise.phi, t.extra, t.z, t.change
    a, xa = t.events, t.exposure
    text = _text(b, xb, a, xa, t.scale, naming)
    ev_before = _evidence(before, b, xb, naming)
    ev_before.update(phi=round(phi, 3), wander_sd=round(math.sqrt(noise.wander), 4),
                     persistence_s=round(noise.persistence, 1),
                     noise_df=round(t.df, 1) if math.isfinite(t.df) else None,
                     drift=round(noise.drift, 4), drift_sd=round(math.sqrt(noise.drift_var), 4))
    ev_after = _evidence(after, a, xa, naming)
    ev_after.update(change=change if math.isfinite(change) else None, left_out=t.trimmed)

    def out(verdict: Verdict, reason: str, statistic: float = z,
            threshold: float = rule.z) -> Comparison:
        return Comparison(verdict, statistic, threshold if math.isfinite(threshold) else None,
                          change, reason, ev_before, ev_after)

    can_stop = math.isfinite(rule.z) and t.trimmed is not None
    if xb <= 0 or (b + a <= 0 and rule.min_absolute <= 0):
        return out(Verdict.INCONCLUSIVE, f"too little data: {text}")
    if can_stop and z >= rule.z and t.beyond:
        if t.lasting(b, xb):
            return out(Verdict.FAIL, f"{text}: z={z:.2f} >= {rule.z:.2f}")
        return out(Verdict.PASS, f"{text}: transient, the recent half is back near the baseline")
    if math.isfinite(rule.z_recent):
        late = _test(before, after.recent_half(), rule, history, scale, scale_var)
        # the half may fail only with a change that matters and is not over yet
        if late.trimmed is not None and late.beyond and late.lasting(b, xb):
            ev_after["recent_half"] = {
                "events": late.events, "exposure": late.exposure,
                "intervals": len(late.window.events), "z": round(late.z, 3),
                "change": late.change if math.isfinite(late.change) else None}
            if late.z >= rule.z_recent:
                rate = late.events / late.exposure if late.exposure > 0 else 0.0
                return out(Verdict.FAIL, f"{text}; the recent half: {_fmt(rate, naming.unit)} "
                                         f"({_fmt_change(late.change)}; {late.events:.0f} "
                                         f"events): z={late.z:.2f} >= {rule.z_recent:.2f}",
                           late.z, rule.z_recent)
    if not can_stop:
        return out(Verdict.INCONCLUSIVE, f"{text}: too early to decide")
    expected = t.scale * b / xb
    if rule.bad == "rise":
        severe = max(expected * rule.severe, expected + rule.min_absolute)
    else:
        severe = max(min(expected / rule.severe, expected - rule.min_absolute), 0.0)
    z_h = ruled_out(a, xa, b, xb, severe, rule.bad, phi=phi, extra=extra, wander=t.wander)
    if z_h < PASS_Z:
        word = f"x{rule.severe:g} rise" if rule.bad == "rise" else f"/{rule.severe:g} drop"
        return out(Verdict.INCONCLUSIVE, f"too little data: {text}; a {word} cannot be ruled "
                                         f"out (z={z_h:.2f} < {PASS_Z:.2f})")
    detail = "no harmful change" if z < rule.z else "change below the smallest that matters"
    return out(Verdict.PASS, f"{text}: {detail} (z={z:.2f}, boundary {rule.z:.2f})")


def _evidence(r: Rates, events: float, exposure: float, naming: Naming) -> dict[str, object]:
    return {"events": events, "exposure": exposure, "intervals": len(r.events),
            "value": events / exposure if exposure > 0 else None, "unit": naming.unit,
            "events_per_interval": [round(v, 6) for v in r.events],
            "exposure_per_interval": [round(v, 6) for v in r.exposure]}


def _fmt(value: float, unit: str) -> str:
    return f"{100.0 * value:.3g}%" if unit == "ratio" else f"{value:.4g}/s"


def _fmt_change(change: float) -> str:
    if not math.isfinite(change):
        return "from zero"
    return f"x{1.0 + change:.2f}" if change >= 1.0 else f"{100.0 * change:+.1f}%"


def _text(b: float, xb: float, a: float, xa: float, scale: float, naming: Naming) -> str:
    base = b / xb if xb > 0 else 0.0
    ra = a / xa if xa > 0 else 0.0
    change, _ = rate_change(a, xa, b, xb, scale)
    expected = f" (expected {_fmt(scale * base, naming.unit)})" if abs(scale - 1) > 5e-4 else ""
    return (f"{naming.what} {_fmt(base, naming.unit)}{expected} -> {_fmt(ra, naming.unit)} "
            f"({_fmt_change(change)}; {a:.0f} events after, {b:.0f} before)")

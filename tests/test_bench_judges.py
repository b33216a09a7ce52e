"""The benchmark's reference judges: one score per push must fail it at every setting
exactly when the judge itself would (the comparison at equal detection rests on it)."""

from __future__ import annotations

import math

import pytest

from bench import judges
from bench.synthetic import scenario
from checks.scenario import load

CASES = [("ratio", 20.0, "regression", "moderate", "step", 11),
         ("ratio", 20.0, "harmless", "none", "none", 12),
         ("count", 5.0, "regression", "severe", "delayed", 13),
         ("count", 0.5, "harmless", "none", "none", 14),
         ("latency", 2.0, "regression", "moderate", "ramp", 15),
         ("latency", 100.0, "harmless", "none", "none", 16)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[1]:g}")
def test_a_score_fails_a_push_at_every_setting_exactly_when_the_judge_does(case) -> None:
    s = load(scenario(*case))
    kayenta, flagger = judges.kayenta_waves(s), judges.flagger_waves(s)
    assert judges.kayenta(s) == judges.kayenta_decide(kayenta)
    assert judges.flagger(s) == judges.flagger_decide(flagger)
    k_score, f_score = judges.kayenta_score(kayenta), judges.flagger_score(flagger)
    for confidence in (0.0, 0.5, 0.9, 0.98, 0.999, 1.0 - 1e-12):
        fails = judges.kayenta_decide(kayenta, confidence).verdict == "fail"
        assert fails == (k_score > -(1.0 - confidence)), confidence
    for scale in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 16.0, math.inf):
        fails = judges.flagger_decide(flagger, scale).verdict == "fail"
        assert fails == (f_score > scale), scale


def test_flagger_counts_a_minute_beyond_its_threshold_in_the_bad_direction_only() -> None:
    spec = load(scenario("ratio", 20.0, "harmless", "none", "none", 12)).checks[0]
    base = 0.01  # errors: min_change 0.2, min_absolute 0.0005
    assert judges._reach(spec, 0.012, base) == pytest.approx(1.0)  # +20 %: at the threshold
    assert judges._reach(spec, 0.0105, base) == pytest.approx(0.25)  # +5 %: a quarter of the +20 %
    assert judges._reach(spec, 0.009, base) == -math.inf  # better is never a failed check
    assert judges._reach(spec, None, base) == math.inf  # no requests is a failed check

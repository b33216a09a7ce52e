"""The guard's verdicts: looks, budget, advisory checks, unavailable sources, pre-flight,
markers, and `pushguard judge` on the example scenarios in tests/scenarios/."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import special

from checks import scenario as judge
from checks.scenario import ScenarioSource, load
from checks.sequential import boundaries, look_fractions
from checks.series import Series
from checks.spec import CheckSpec, Kind
from checks.verdict import RECENT_SHARE, Guard
from daemon.config import GuardConfig
from daemon.errors import CheckError
from daemon.models import Verdict

SCENARIOS = Path(__file__).parent / "scenarios"
PUSH = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CONFIG = GuardConfig(baseline=timedelta(minutes=30), warmup=timedelta(minutes=1),
                     bake=timedelta(minutes=10), look_every=timedelta(seconds=30),
                     false_alarm=0.01, seasonal_days=0, on_inconclusive="halt",
                     extend=timedelta(0))
RATIO = {"name": "errors", "kind": "ratio", "measurement": "http", "bad_field": "errors",
         "all_field": "requests", "bad": "rise", "min_change": 0.2, "min_absolute": 0.001}
CPU = {"name": "cpu", "kind": "gauge", "measurement": "host", "field": "cpu", "bad": "rise",
       "min_change": 0.15, "critical": False}


def data(errors_after: float = 1.0, cpu_after: float = 1.0, errors_recent: float = 1.0,
         seed: int = 1) -> dict[str, Any]:
    """Four and a half hours of 30 s values at 50 rps and 1 % errors around PUSH."""
    rng = np.random.default_rng(seed)
    n, at_push = 590, 540
    requests = rng.poisson(1500, n)
    p = np.full(n, 0.01)
    p[at_push:] *= errors_after
    p[at_push - 20:at_push] *= errors_recent  # the last ten minutes before the push
    cpu = rng.normal(40, 2, n)
    cpu[at_push:] *= cpu_after
    return {"expected": "harmless", "interval": "30s",
            "start": (PUSH - timedelta(minutes=270)).isoformat(), "push": PUSH.isoformat(),
            "checks": [RATIO, CPU],
            "series": {"requests": requests.tolist(),
                       "errors": rng.binomial(requests, p).tolist(), "cpu": cpu.tolist()}}


def guard_for(raw: dict[str, Any]) -> tuple[Guard, list[CheckSpec]]:
    s = load(raw)
    return Guard(CONFIG, s.checks, ScenarioSource(s)), list(s.checks)


async def look(guard: Guard, k: int, n: int = 18, wave: int = 1, waves: int = 2) -> Any:
    return await guard.look(push_id=4, wave=wave, waves=waves,
                            baseline=(PUSH - CONFIG.baseline, PUSH),
                            after=(PUSH + CONFIG.warmup,
                                   PUSH + CONFIG.warmup + k * CONFIG.look_every),
                            look=k, looks=n, final=k == n)


def test_looks_and_budget() -> None:
    guard, _ = guard_for(data())
    assert guard.looks(CONFIG.bake) == 18  # (10m - 1m) / 30s
    # one critical check: the push's budget split over the canary and the fleet bake
    assert CONFIG.canary_share == pytest.approx(0.67)
    assert guard.alpha(1, 2) == pytest.approx(0.01 * 0.67)
    assert guard.alpha(2, 2) == pytest.approx(0.01 * 0.33)
    assert guard.alpha(1, 1) == pytest.approx(0.01)  # one wave, one bake: all of it
    for waves in range(1, 5):  # the bakes of a push never spend more than the budget
        assert sum(guard.alpha(w, waves) for w in range(1, waves + 1)) == pytest.approx(0.01)
    fleet_first = Guard(replace(CONFIG, canary_share=0.2), guard._checks, guard._source)
    assert fleet_first.alpha(1, 2) == pytest.approx(0.002)
    assert fleet_first.alpha(2, 2) == pytest.approx(0.008)


async def test_each_bake_is_judged_with_its_own_alpha() -> None:
    guard, (errors, _) = guard_for(data())
    for wave, waves in ((1, 2), (2, 2), (1, 1)):
        final = await look(guard, 18, wave=wave, waves=waves)
        (result,) = [r for r in final.results if r.check == errors.name]
        assert result.threshold == pytest.approx(
            guard.boundary(errors, 18, 18, guard.alpha(wave, waves)))
    canary, fleet = guard.alpha(1, 2), guard.alpha(2, 2)
    assert guard.boundary(errors, 18, 18, canary) < guard.boundary(errors, 18, 18, fleet)


def test_a_rate_check_keeps_a_quarter_of_its_alpha_for_the_recent_half() -> None:
    guard, (errors, cpu) = guard_for(data())
    alpha = guard.alpha(1, 2)
    spent = boundaries(alpha * (1 - RECENT_SHARE), look_fractions(18, 3), "hsd")
    assert [guard.boundary(errors, k, 18, alpha) for k in range(1, 19)] == pytest.approx(spent)
    assert guard.recent_boundary(errors, 18, 18, alpha) == pytest.approx(
        -float(special.ndtri(alpha * RECENT_SHARE)))
    assert all(math.isinf(guard.recent_boundary(errors, k, 18, alpha)) for k in range(1, 18))
    assert math.isinf(guard.recent_boundary(cpu, 18, 18, alpha))  # gauges: rank test only
    full = boundaries(alpha, look_fractions(18, 3), "hsd")
    assert [guard.boundary(cpu, k, 18, alpha) for k in range(1, 19)] == pytest.approx(full)
    # a count against a seasonal reference expects the whole window's ratio: no half test
    count = replace(errors, kind=Kind.COUNT, field="requests")
    source = ScenarioSource(load(data()))
    seasonal = Guard(replace(CONFIG, seasonal_days=1), [count], source)
    assert math.isinf(seasonal.recent_boundary(count, 18, 18, alpha))
    assert seasonal.boundary(count, 18, 18, alpha) == pytest.approx(
        boundaries(alpha, look_fractions(18, 3), "hsd")[-1])


async def test_pass_only_at_the_final_look() -> None:
    guard, _ = guard_for(data())
    middle = await look(guard, 9)
    final = await look(guard, 18)
    assert middle.verdict == Verdict.INCONCLUSIVE and "no critical check failed" in middle.reason
    assert final.verdict == Verdict.PASS, final.reason
    assert [r.check for r in final.results] == ["errors", "cpu"]
    assert final.results[0].push_id == 4 and final.results[0].look == 18


async def test_critical_failure_fails_and_advisory_never_does() -> None:
    guard, _ = guard_for(data(errors_after=3.0, cpu_after=1.5))
    failed = await look(guard, 18)
    assert failed.verdict == Verdict.FAIL
    assert "errors" in failed.reason and "advisory failed: cpu" in failed.reason
    guard, _ = guard_for(data(cpu_after=1.5))
    advisory = await look(guard, 18)
    assert advisory.verdict == Verdict.PASS, advisory.reason
    assert advisory.results[1].verdict == Verdict.FAIL and not advisory.results[1].critical


async def test_too_early_looks_never_fail() -> None:
    guard, _ = guard_for(data(errors_after=10.0))
    first = await look(guard, 1)
    assert first.verdict == Verdict.INCONCLUSIVE
    assert first.results[0].threshold is None


class DownSource:
    """A source whose server is gone, and one whose client breaks unexpectedly."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def series(self, check: CheckSpec, start: datetime, stop: datetime,
                     step: timedelta, *, slower_than: float | None = None) -> Series:
        raise self.error

    async def write_marker(self, *, push_id: int, release: str, phase: str,
                           verdict: str | None, at: datetime) -> None:
        raise self.error

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("error", [CheckError("connection refused"), RuntimeError("bug")])
async def test_unavailable_source_is_inconclusive_never_pass(error: Exception,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    _, checks = guard_for(data())
    guard = Guard(CONFIG, checks, DownSource(error))
    with caplog.at_level(logging.INFO, logger="pushguard.guard"):
        final = await look(guard, 18)
        pre = await guard.preflight(PUSH)
        await guard.mark(push_id=1, release="r", phase="start", verdict=None, at=PUSH)
    assert final.verdict == Verdict.INCONCLUSIVE
    assert final.reason.startswith("metrics unavailable")
    assert pre.verdict == Verdict.INCONCLUSIVE


async def test_preflight_sees_a_service_already_degraded() -> None:
    guard, _ = guard_for(data(errors_recent=4.0))
    degraded = await guard.preflight(PUSH)
    assert degraded.verdict == Verdict.FAIL
    assert degraded.reason.startswith("already degraded before the push")
    guard, _ = guard_for(data())
    healthy = await guard.preflight(PUSH)
    assert healthy.verdict == Verdict.PASS, healthy.reason


async def test_marks_reach_the_source() -> None:
    raw = data()
    s = load(raw)
    source = ScenarioSource(s)
    guard = Guard(CONFIG, s.checks, source)
    await guard.mark(push_id=2, release="abc", phase="start", verdict=None, at=PUSH)
    assert source.markers == [{"push_id": 2, "release": "abc", "phase": "start",
                               "verdict": None, "at": PUSH.isoformat()}]


# -- pushguard judge ----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "verdict", "status"), [
    ("ratio_harmless_blip", "pass", 0), ("ratio_errors_x3", "fail", 0),
    ("count_drop_half_ramp", "fail", 0), ("latency_slower_x1_5", "fail", 0),
    ("gauge_nab_cpu_doubles", "fail", 0), ("ratio_low_traffic", "inconclusive", 1)])
def test_judge_prints_the_verdict_and_evidence(name: str, verdict: str, status: int,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert judge.main([str(SCENARIOS / f"{name}.json")]) == status
    out = capsys.readouterr().out
    assert f"verdict:  {verdict} at wave" in out
    assert "query: memory:" in out and "before:" in out and "after:" in out


def test_judge_refuses_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"expected": "maybe", "push": PUSH.isoformat()}))
    assert judge.main([str(broken)]) == 2
    assert "expected" in capsys.readouterr().err
    wrong_check = replace_check(data(), kind="speed")
    broken.write_text(json.dumps(wrong_check))
    assert judge.main([str(broken)]) == 2
    assert "checks[0].kind" in capsys.readouterr().err
    broken.write_text(json.dumps({**data(), "guard": {"canary_share": 1.5}}))
    assert judge.main([str(broken)]) == 2
    assert "canary_share" in capsys.readouterr().err


HIST = {"edges": [0, 100, 200], "counts": [[5, 1], [4, 2]]}


@pytest.mark.parametrize(("changes", "key"), [
    ({"interval": "0s"}, "interval"),
    ({"series": {"requests": 5}}, "series.requests"),
    ({"series": [1, 2]}, "series"),
    ({"series": {"requests": [1, "a"]}}, "series.requests[1]"),
    ({"series": {"requests": [1, True]}}, "series.requests[1]"),
    ({"series": {"requests": [1, math.nan]}}, "series.requests[1]"),
    ({"notes": [1]}, "notes"),
    ({"checks": None}, "checks"),
    ({"checks": []}, "checks"),
    ({"checks": "x"}, "checks"),
    ({"checks": [RATIO, 3]}, "checks[1]"),
    ({"waves": "2026-03-02T12:00:00+00:00"}, "waves"),
    ({"waves": [PUSH.isoformat(), 5]}, "waves[1]"),
    ({"histograms": [1]}, "histograms"),
    ({"histograms": {"ms": 3}}, "histograms.ms"),
    ({"histograms": {"ms": {"counts": [[1]]}}}, "histograms.ms.edges"),
    ({"histograms": {"ms": {**HIST, "edges": [0]}}}, "histograms.ms.edges"),
    ({"histograms": {"ms": {**HIST, "edges": [0, 200, 100]}}}, "histograms.ms.edges"),
    ({"histograms": {"ms": {**HIST, "counts": [[1], [1, 2]]}}}, "histograms.ms.counts[1]"),
    ({"histograms": {"ms": {**HIST, "counts": 7}}}, "histograms.ms.counts"),
    ({"histograms": {"ms": {"edges": [0, 1], "counts": [[None]]}}}, "histograms.ms.counts[0][0]"),
])
def test_judge_names_the_key_of_a_malformed_file(changes: dict[str, Any], key: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed file is exit status 2 and one line naming the key, never a traceback
    or a verdict (status 1 would read as "not the expected verdict")."""
    raw = {**data(), **changes}
    if raw["checks"] is None:
        del raw["checks"]
    with pytest.raises(judge.ScenarioError, match=rf"^{re.escape(key)}: "):
        load(raw)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(raw))
    assert judge.main([str(broken)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f": {key}: " in err


@pytest.mark.parametrize("top", [[1, 2], "hello", 5, None])
def test_judge_refuses_a_file_that_is_not_an_object(top: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(top))
    assert judge.main([str(broken)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_scenario_histograms_are_read() -> None:
    hist = load({**data(), "histograms": {"ms": HIST}}).histograms["ms"]
    assert hist.edges.tolist() == [0, 100, 200] and hist.counts.shape == (2, 2)


def replace_check(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**raw, "checks": [{**raw["checks"][0], **changes}]}


def test_scenario_checks_use_the_config_keys() -> None:
    s = load(replace_check(data(), step="1m"))
    assert s.checks[0].step == timedelta(minutes=1)
    assert replace(s.checks[0], step=None).kind.value == "ratio"


async def test_seasonal_reference_scales_the_expected_count() -> None:
    """Traffic falls 30 % an hour at push time, as it did the day before: with a 1d
    reference the fall is expected and a real drop still fails."""
    rng = np.random.default_rng(9)
    start = PUSH - timedelta(days=1, hours=1)
    n = int((timedelta(days=1, hours=1, minutes=20)).total_seconds() / 30)
    t = np.array([(start + timedelta(seconds=30 * i) - PUSH).total_seconds() for i in range(n)])
    hour = (t % 86400) / 3600.0
    hour = np.where(hour > 12, hour - 24, hour)  # hours from the push, the same each day
    rate = 100 * np.exp(-0.35 * hour)
    count = {"name": "throughput", "kind": "count", "measurement": "http",
             "field": "requests", "bad": "drop", "min_change": 0.1}
    seasonal = replace(CONFIG, seasonal_days=1)

    async def final(drop: float) -> Any:
        requests = rng.poisson(rate * 30 * np.where(t >= 60, drop, 1.0))
        s = load({"expected": "harmless", "interval": "30s", "start": start.isoformat(),
                  "push": PUSH.isoformat(), "checks": [count],
                  "series": {"requests": requests.tolist()}})
        guard = Guard(seasonal, s.checks, ScenarioSource(s))
        return await look(guard, 18)

    harmless = await final(1.0)
    assert harmless.verdict == Verdict.PASS, harmless.reason
    assert "expected" in harmless.results[0].reason
    assert harmless.results[0].before["seasonal_scale"] < 0.95
    regression = await final(0.6)
    assert regression.verdict == Verdict.FAIL, regression.reason

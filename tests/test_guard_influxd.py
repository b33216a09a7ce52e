"""The guard end to end against a real influxd: synthetic series written for a harmless
push and for four regressions (error ratio x3, throughput -40 %, latency p95 +50 %,
CPU +30 %), looked at exactly as the pusher looks (checks.scenario.bake); and the
outcome when influxd is stopped."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from checks.influx import open_source
from checks.scenario import Replay, bake
from checks.spec import CheckSpec, Direction, Kind
from checks.verdict import Guard
from daemon.config import GuardConfig, InfluxConfig
from daemon.models import Verdict
from tests.fixtures_influx import v1_config
from tests.influxd import Influxd

PUSH = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
GUARD = GuardConfig(baseline=timedelta(minutes=10), warmup=timedelta(seconds=30),
                    bake=timedelta(minutes=3), look_every=timedelta(seconds=30),
                    false_alarm=0.01, seasonal_days=0, on_inconclusive="halt",
                    extend=timedelta(0))
CASES = ("calm", "errors", "throughput", "latency", "cpu")


def checks(service: str) -> list[CheckSpec]:
    where = (("service", service),)

    def spec(name: str, kind: Kind, measurement: str, bad: Direction, min_change: float,
             **kw: object) -> CheckSpec:
        return CheckSpec(name=name, kind=kind, measurement=measurement,
                         field=str(kw.get("field", "")), bad_field=str(kw.get("bad_field", "")),
                         all_field=str(kw.get("all_field", "")), where=where, query=None,
                         bad=bad, min_change=min_change,
                         min_absolute=float(str(kw.get("min_absolute", 0.0))), critical=True,
                         step=kw.get("step"))  # type: ignore[arg-type]

    return [
        spec("errors", Kind.RATIO, "http", Direction.RISE, 0.2, bad_field="errors",
             all_field="requests", min_absolute=0.001),
        spec("throughput", Kind.COUNT, "http", Direction.DROP, 0.1, field="requests"),
        spec("latency", Kind.LATENCY, "http_latency", Direction.RISE, 0.5, field="ms",
             min_absolute=0.02),
        spec("cpu", Kind.GAUGE, "host", Direction.RISE, 0.15, field="cpu",
             step=timedelta(seconds=10)),
    ]


def lines(service: str, rng: np.random.Generator) -> list[str]:
    """95 minutes of history and 4 minutes after the push; the regression starts at the push."""
    out = []
    start = PUSH - timedelta(minutes=95)
    for i in range(99 * 6):
        at = start + timedelta(seconds=10 * i)
        after = at >= PUSH
        ms = int(at.timestamp() * 1000)
        rate = 200 * (0.6 if after and service == "throughput" else 1.0)
        requests = int(rng.poisson(rate))
        p = 0.02 * (3.0 if after and service == "errors" else 1.0)
        errors = int(rng.binomial(requests, p))
        out.append(f"http,service={service} requests={requests}i,errors={errors}i {ms}")
        cpu = rng.normal(40.0, 2.0) * (1.3 if after and service == "cpu" else 1.0)
        out.append(f"host,service={service},host=web1 cpu={cpu:.3f} {ms}")
        slower = 1.5 if after and service == "latency" else 1.0
        for k, latency in enumerate(rng.lognormal(np.log(100.0), 0.5, rng.poisson(20))):
            out.append(f"http_latency,service={service} ms={latency * slower:.2f} {ms + k}")
    return out


@pytest.fixture(scope="module")
def written(influxd: Influxd) -> str:
    rng = np.random.default_rng(20260302)
    influxd.create_database("guard")
    for service in CASES:
        influxd.write("guard", lines(service, rng))
    return "guard"


async def replay(config: InfluxConfig, service: str) -> Replay:
    source = open_source(config)
    try:
        return await bake(Guard(GUARD, checks(service), source), GUARD, PUSH, [PUSH])
    finally:
        await source.close()


async def test_harmless_push_passes_with_evidence(influxd: Influxd, written: str) -> None:
    result = await replay(v1_config(influxd.url, written), "calm")
    assert result.verdict == Verdict.PASS, result.reason
    final = result.looks[-1][3]
    assert {r.check for r in final.results} == {"errors", "throughput", "latency", "cpu"}
    for r in final.results:
        assert r.verdict == Verdict.PASS, (r.check, r.reason)
        assert r.queries and all("'calm'" in q for q in r.queries)
        assert r.statistic is not None and r.threshold is not None
        assert r.before["window"] == [(PUSH - timedelta(minutes=10)).isoformat(),
                                      PUSH.isoformat()]
        window = r.after["window"]
        assert isinstance(window, list) and window[0] == (PUSH + GUARD.warmup).isoformat()


@pytest.mark.parametrize(("service", "failing"), [
    ("errors", "errors"), ("throughput", "throughput"), ("latency", "latency"), ("cpu", "cpu")])
async def test_regression_fails_the_right_check(influxd: Influxd, written: str, service: str,
                                                failing: str) -> None:
    result = await replay(v1_config(influxd.url, written), service)
    assert result.verdict == Verdict.FAIL, result.reason
    final = result.looks[-1][3]
    failed = [r for r in final.results if r.verdict == Verdict.FAIL]
    assert [r.check for r in failed] == [failing], result.reason
    (evidence,) = failed
    assert evidence.statistic is not None and evidence.threshold is not None
    assert evidence.statistic >= evidence.threshold
    assert evidence.before and evidence.after and evidence.queries
    assert failing in result.reason


async def test_stopped_influxd_is_inconclusive_never_pass(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    server = Influxd.start(tmp_path / "influxd")
    try:
        server.create_database("gone")
        server.write("gone", lines("calm", np.random.default_rng(1)))
        config = v1_config(server.url, "gone", timeout=2)
        source = open_source(config)
        guard = Guard(GUARD, checks("calm"), source)
        baseline = (PUSH - GUARD.baseline, PUSH)
        after = (PUSH + GUARD.warmup, PUSH + GUARD.bake)
        first = await guard.look(push_id=1, wave=1, waves=2, baseline=baseline, after=after,
                                 look=5, looks=5, final=True)
        assert first.verdict == Verdict.PASS, first.reason
        server.stop()
        with caplog.at_level(logging.INFO, logger="pushguard.guard"):
            for _ in range(2):
                look = await guard.look(push_id=1, wave=1, waves=2, baseline=baseline,
                                        after=after, look=5, looks=5, final=True)
                assert look.verdict == Verdict.INCONCLUSIVE
                assert look.reason.startswith("metrics unavailable")
                assert all(r.verdict == Verdict.INCONCLUSIVE for r in look.results)
            pre = await guard.preflight(PUSH)
            await guard.mark(push_id=1, release="r1", phase="end", verdict="fail", at=PUSH)
            await guard.mark(push_id=1, release="r1", phase="end", verdict="fail", at=PUSH)
        assert pre.verdict == Verdict.INCONCLUSIVE and "metrics unavailable" in pre.reason
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("metrics unavailable" in w for w in warnings) == 1  # logged once
        assert sum("deploy marker" in w for w in warnings) == 1
        await source.close()
    finally:
        server.stop()


async def test_a_failed_query_is_in_the_evidence(influxd: Influxd, influx_db: str) -> None:
    """A raw-query typo answered 400: the check is inconclusive and its evidence shows the
    statement that failed, with the times bound, as a successful check's does."""
    typo = replace(checks("calm")[1], query='SELECT sum("requests") AS "count" FROM "http" '
                   'WHERE time >= {start} AND time < {stop} GROUP BY time({interval}) fil(null)')
    source = open_source(v1_config(influxd.url, influx_db))
    try:
        look = await Guard(GUARD, [typo], source).look(
            push_id=1, wave=1, waves=1, baseline=(PUSH - GUARD.baseline, PUSH),
            after=(PUSH + GUARD.warmup, PUSH + GUARD.bake), look=5, looks=5, final=True)
    finally:
        await source.close()
    (r,) = look.results
    assert r.verdict == Verdict.INCONCLUSIVE and "InfluxDB answered 400" in r.reason
    (query,) = r.queries
    assert query.startswith('SELECT sum("requests")') and "fil(null)" in query
    assert "time >= '2026-03-02T11:50:00.000000Z'" in query  # the baseline's start, bound


async def test_markers_are_written(influxd: Influxd, influx_db: str) -> None:
    source = open_source(v1_config(influxd.url, influx_db))
    guard = Guard(GUARD, checks("calm"), source)
    try:
        await guard.mark(push_id=9, release="abc123", phase="start", verdict=None, at=PUSH)
    finally:
        await source.close()
    body = influxd.query('SELECT * FROM "pushguard_deploys"', influx_db).decode()
    assert "abc123" in body and "start" in body


async def test_series_of_several_hosts_are_all_read(influxd: Influxd, influx_db: str) -> None:
    """An answer with several series at the same times (points of three hosts, a raw
    query grouped by a tag): no series overwrites another."""
    t0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    step = timedelta(seconds=30)
    ms = [int((t0 + i * step).timestamp() * 1000) for i in range(4)]
    influxd.write(influx_db, [f"lat,service=shop,host={h} p95={base + i} {m}"
                              for i, m in enumerate(ms)
                              for h, base in (("web1", 100), ("web2", 500), ("web3", 900))]
                  + [f"http,host={h} requests={n} {ms[0]}"
                     for h, n in (("web1", 500), ("web2", 510))])
    source = open_source(v1_config(influxd.url, influx_db))

    def spec(**changes: object) -> CheckSpec:
        base = CheckSpec(name="p", kind=Kind.LATENCY, measurement="lat", field="p95",
                         bad_field="", all_field="", where=(("service", "shop"),), query=None,
                         bad=Direction.RISE, min_change=0.2, min_absolute=0.0, critical=True,
                         latency_mode="percentiles")
        return replace(base, **changes)  # type: ignore[arg-type]

    try:
        points = await source.series(spec(), t0, t0 + 4 * step, step)
        assert sorted(v for v in points.column("value") if v is not None) == sorted(
            base + i for i in range(4) for base in (100, 500, 900))
        raw = ('SELECT sum("requests") AS "count" FROM "http" WHERE time >= {start} AND '
               'time < {stop} GROUP BY time({interval}), "host"')
        counts = await source.series(
            spec(kind=Kind.COUNT, measurement="http", field="requests", where=(), query=raw,
                 bad=Direction.DROP, latency_mode="threshold"), t0, t0 + 2 * step, step)
        assert counts.column("count")[0] == 1010
    finally:
        await source.close()

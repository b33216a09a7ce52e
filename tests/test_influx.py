"""Metric sources: InfluxQL against a real influxd (1.x), Flux against a loopback fake
of InfluxDB 2 (annotated CSV on /api/v2/query, line protocol on /api/v2/write).

No InfluxDB 2 server is installable here; the fake computes its answers from the
points written to it and the query's bound parameters (the `extern` block).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from checks.influx import marker_line, open_source
from checks.spec import CheckSpec, Direction, Kind
from daemon.config import InfluxConfig
from daemon.errors import CheckError
from tests.fixtures_influx import v1_config
from tests.influxd import Influxd, free_port

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def check(kind: Kind, **kw: Any) -> CheckSpec:
    base = CheckSpec(name=f"{kind} check", kind=kind, measurement="http", field="requests",
                     bad_field="errors", all_field="requests", where=(("service", "shop"),),
                     query=None, bad=Direction.RISE, min_change=0.2, min_absolute=0.0,
                     critical=True)
    return replace(base, **kw)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def http_lines(n: int = 6) -> list[str]:
    lines = []
    for i in range(n):  # two points per 30 s interval, one for another service
        for j in range(2):
            at = ms(T0 + i * STEP + j * timedelta(seconds=10))
            lines.append(f"http,service=shop requests={10 + i},errors={i % 2} {at}")
        lines.append(f"http,service=other requests=1000,errors=500 {ms(T0 + i * STEP)}")
    return lines


# -- InfluxDB 1.x: InfluxQL against influxd ------------------------------------------------------

async def test_v1_count_and_ratio_per_interval(influxd: Influxd,
                                               influx_config: InfluxConfig) -> None:
    influxd.write(influx_config.database, http_lines())
    source = open_source(influx_config)
    try:
        count = await source.series(check(Kind.COUNT), T0, T0 + 6 * STEP, STEP)
        ratio = await source.series(check(Kind.RATIO), T0, T0 + 6 * STEP, STEP)
    finally:
        await source.close()
    assert count.times[0] == T0 and len(count.times) == 6
    assert count.column("count") == (20.0, 22.0, 24.0, 26.0, 28.0, 30.0)
    assert ratio.column("bad") == (0.0, 2.0, 0.0, 2.0, 0.0, 2.0)
    assert ratio.column("all") == count.column("count")
    assert "\"service\" = 'shop'" in count.queries[0]
    assert "GROUP BY time(30s)" in count.queries[0]


async def test_v1_latency_threshold_counts_above_the_threshold(
        influxd: Influxd, influx_config: InfluxConfig) -> None:
    lines = [f"lat,service=shop ms={v} {ms(T0) + k}" for k, v in enumerate(range(1, 101))]
    influxd.write(influx_config.database, lines)
    spec = check(Kind.LATENCY, measurement="lat", field="ms")
    source = open_source(influx_config)
    try:
        plain = await source.series(spec, T0, T0 + STEP, STEP)
        slow = await source.series(spec, T0, T0 + STEP, STEP, slower_than=90.0)
    finally:
        await source.close()
    assert plain.quantile == 95.0
    assert plain.column("all") == (100.0,)
    assert slow.column("slow") == (10.0,)
    assert any("> 90.0" in q for q in slow.queries)


async def test_v1_gauge_and_percentiles(influxd: Influxd, influx_config: InfluxConfig) -> None:
    lines = [f"host,service=shop cpu={40 + i},p95={100 + i} {ms(T0 + i * STEP / 2)}"
             for i in range(4)]
    influxd.write(influx_config.database, lines)
    source = open_source(influx_config)
    try:
        gauge = await source.series(check(Kind.GAUGE, measurement="host", field="cpu"),
                                    T0, T0 + 2 * STEP, STEP)
        raw = await source.series(check(Kind.LATENCY, measurement="host", field="p95",
                                        latency_mode="percentiles"), T0, T0 + 2 * STEP, STEP)
    finally:
        await source.close()
    assert gauge.column("value") == (40.5, 42.5)
    assert raw.column("value") == (100.0, 101.0, 102.0, 103.0)


async def test_v1_statement_error_on_http_200_is_a_check_error(
        influx_config: InfluxConfig) -> None:
    spec = check(Kind.COUNT, query='SELECT bogus("requests") FROM "http" WHERE time >= {start} '
                                   'AND time < {stop} GROUP BY time({interval})')
    source = open_source(influx_config)
    try:
        with pytest.raises(CheckError, match="statement 1 failed: undefined function bogus"
                           ) as caught:
            await source.series(spec, T0, T0 + STEP, STEP)
    finally:
        await source.close()
    assert caught.value.queries == ('SELECT bogus("requests") FROM "http" WHERE time >= '
                                    "'2026-03-02T10:00:00.000000Z' AND time < "
                                    "'2026-03-02T10:00:30.000000Z' GROUP BY time(30s)",)


async def test_v1_unknown_database_and_bad_syntax_are_check_errors(influxd: Influxd) -> None:
    source = open_source(v1_config(influxd.url, "nosuchdb"))
    bad = open_source(v1_config(influxd.url, "nosuchdb"))
    try:
        with pytest.raises(CheckError, match="database not found"):
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
        with pytest.raises(CheckError, match="InfluxDB answered 400"):
            await bad.series(check(Kind.COUNT, query="SELEKT nothing"), T0, T0 + STEP, STEP)
    finally:
        await source.close()
        await bad.close()


async def test_v1_raw_query_template_binds_times() -> None:
    from checks.influxql import statements

    spec = check(Kind.COUNT, query='SELECT sum("n") AS "count" FROM "x" WHERE time >= {start} '
                                   'AND time < {stop} GROUP BY time({interval})')
    texts, _ = statements(spec, timedelta(minutes=1), None)
    assert texts == ['SELECT sum("n") AS "count" FROM "x" WHERE time >= $start AND '
                     'time < $stop GROUP BY time(60s)']


async def test_v1_identifiers_are_quoted_strictly() -> None:
    from checks.influxql import ident, statements

    assert ident('we"ird\\name') == '"we\\"ird\\\\name"'
    texts, params = statements(check(Kind.COUNT, where=(("svc", "a'b"),)), STEP, None)
    assert '"svc" = $w0' in texts[0] and params["w0"] == "a'b"


async def test_v1_dead_port_is_unavailable() -> None:
    source = open_source(v1_config(f"http://127.0.0.1:{free_port()}", "x", timeout=2))
    try:
        with pytest.raises(CheckError, match="did not answer"):
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
        with pytest.raises(CheckError, match="deploy marker"):
            await source.write_marker(push_id=1, release="abc", phase="start", verdict=None,
                                      at=T0)
    finally:
        await source.close()


async def test_v1_slow_server_times_out(aiohttp_server: ServerFactory) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/query", hang)
    server = await aiohttp_server(app)
    source = open_source(v1_config(str(server.make_url("")).rstrip("/"), "x", timeout=0.2))
    try:
        with pytest.raises(CheckError, match=r"no answer within 0.2s"):
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
    finally:
        await source.close()


@pytest.mark.parametrize("where", ["result", "series"])
async def test_v1_partial_answer_is_a_check_error_naming_the_statement(
        aiohttp_server: ServerFactory, where: str) -> None:
    # what influxd sends when its max-row-limit cuts a raw-points query short
    serie: dict[str, Any] = {"name": "http", "columns": ["time", "all"],
                             "values": [[ms(T0), 3], [ms(T0 + STEP), 4]]}
    result: dict[str, Any] = {"statement_id": 1, "series": [serie]}
    (result if where == "result" else serie)["partial"] = True

    async def answer(request: web.Request) -> web.Response:
        ok = {"statement_id": 0, "series": [{"name": "http", "columns": ["time", "all"],
                                             "values": [[ms(T0), 10]]}]}
        return web.json_response({"results": [ok, result]})

    app = web.Application()
    app.router.add_post("/query", answer)
    server = await aiohttp_server(app)
    source = open_source(v1_config(str(server.make_url("")).rstrip("/"), "x"))
    spec = check(Kind.LATENCY, field="ms", latency_mode="threshold")
    try:
        with pytest.raises(CheckError, match=r"statement 2 .*partial") as caught:
            await source.series(spec, T0, T0 + 2 * STEP, STEP, slower_than=250.0)
    finally:
        await source.close()
    assert 'count("ms") AS "slow"' in str(caught.value)
    assert caught.value.details["statement"] == 2


async def test_v1_deploy_marker_is_a_tagged_point(influxd: Influxd,
                                                  influx_config: InfluxConfig) -> None:
    source = open_source(influx_config)
    try:
        await source.write_marker(push_id=7, release="v 1,2", phase="end", verdict="fail",
                                  at=T0)
    finally:
        await source.close()
    body = influxd.query('SELECT "text", "push" FROM "pushguard_deploys" '
                         'WHERE "verdict" = \'fail\' AND "release" = \'v 1,2\'',
                         influx_config.database).decode()
    assert '"push 7 end: release v 1,2, fail"' in body and ",7]" in body


TRICKY = ["x\\,y", "a=b c", "back\\slash", "two\\\\ sp", 'q"x', "t\\=u"]


def test_marker_line_escapes_as_line_protocol_does() -> None:
    """Tag values escape only commas, equals signs and spaces (a backslash is literal);
    the measurement escapes commas and spaces; the string field escapes double quotes
    and backslashes. A value ending in a backslash, or holding a newline, is refused."""
    line = marker_line("deploy s,x", push_id=7, release="x\\,y a=b", phase="end",
                       verdict="pass", at=T0)
    assert line == ('deploy\\ s\\,x,phase=end,push_id=7,release=x\\\\,y\\ a\\=b,verdict=pass '
                    'text="push 7 end: release x\\\\,y a=b, pass",push=7i ' f"{ms(T0)}")
    for bad in ("ends\\", "two\nlines"):
        with pytest.raises(CheckError, match="release"):
            marker_line("m", push_id=1, release=bad, phase="end", verdict=None, at=T0)
    with pytest.raises(CheckError, match="marker_measurement"):
        marker_line("m\\", push_id=1, release="r", phase="end", verdict=None, at=T0)


async def test_v1_deploy_marker_keeps_tricky_releases(influxd: Influxd,
                                                      influx_config: InfluxConfig) -> None:
    source = open_source(influx_config)
    try:
        for i, release in enumerate(TRICKY):
            await source.write_marker(push_id=i, release=release, phase="end", verdict=None,
                                      at=T0 + i * STEP)
        with pytest.raises(CheckError, match="backslash"):
            await source.write_marker(push_id=9, release="ends\\", phase="end", verdict=None,
                                      at=T0)
    finally:
        await source.close()
    body = json.loads(influxd.query('SHOW TAG VALUES FROM "pushguard_deploys" WITH KEY = '
                                    '"release"', influx_config.database))
    stored = {v for _, v in body["results"][0]["series"][0]["values"]}
    assert stored == set(TRICKY)
    body = json.loads(influxd.query('SELECT "text" FROM "pushguard_deploys"',
                                    influx_config.database))
    texts = [v for _, v in body["results"][0]["series"][0]["values"]]
    assert texts == [f"push {i} end: release {r}" for i, r in enumerate(TRICKY)]


def test_open_source_reads_secrets_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-value\n")
    assert open_source(v1_config("http://127.0.0.1:1", "x", user="pg", password_file=secret))
    with pytest.raises(CheckError) as err:
        open_source(v1_config("http://127.0.0.1:1", "x", user="pg",
                              password_file=tmp_path / "missing"))
    assert "password_file" in err.value.message and "s3cret" not in err.value.message


# -- InfluxDB 2.x: Flux against a loopback fake ----------------------------------------------------

class FakeInflux2:
    """Answers like InfluxDB 2 for the guard's Flux: computes each `yield` from the written
    points, the block's aggregate function and the bound parameters in `extern`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.points: list[tuple[str, dict[str, str], dict[str, float], int]] = []
        self.writes: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.fail_with: tuple[int, str] | None = None
        self.ok_body: str | None = None  # a 200 answer's body in place of the annotated CSV

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v2/write", self.write)
        app.router.add_post("/api/v2/query", self.query)
        return app

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Token {self.token}"

    async def write(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"code": "unauthorized", "message": "no"}, status=401)
        body = await request.text()
        self.writes.append({"query": dict(request.query), "body": body})
        self.add(body)
        return web.Response(status=204)

    def add(self, body: str) -> None:
        """Store the points of a line-protocol body (millisecond timestamps)."""
        for line in body.splitlines():
            match = _LINE.match(line)
            assert match, line
            name, *tags = re.split(r"(?<!\\),", match["head"])
            fields = [f.split("=", 1) for f in re.findall(r'(?:[^,"]|"[^"]*")+', match["fields"])]
            values = {k: float(v.rstrip("i")) for k, v in fields if not v.startswith('"')}
            self.points.append((name, dict(t.split("=", 1) for t in tags), values,
                                int(match["at"])))

    async def query(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"code": "unauthorized", "message": "no"}, status=401)
        body = await request.json()
        self.queries.append(body)
        if self.fail_with:
            return web.json_response({"code": "invalid", "message": self.fail_with[1]},
                                     status=self.fail_with[0])
        if self.ok_body is not None:
            return web.Response(text=self.ok_body, content_type="application/json")
        params = {s["assignment"]["id"]["name"]: _literal(s["assignment"]["init"])
                  for s in body["extern"]["body"]}
        text = body["query"]
        head, *blocks = text.split("\ndata\n")
        tables = [self.table(head + block, params) for block in blocks]
        csv = "\n".join(_annotated(name, i, rows) for i, (name, rows) in enumerate(tables))
        return web.Response(text=csv, content_type="text/csv")

    def table(self, block: str, p: dict[str, Any]) -> tuple[str, list[tuple[Any, Any]]]:
        head = p["_pg_measurement"]
        name = re.search(r'yield\(name: "(\w+)"\)', block)
        field = re.search(r"r\._field == (_pg_\w+)", block)
        assert name and field, block
        tags = {k: p[v] for k, v in re.findall(r'r\["(\w+)"\] == (_pg_w\d+)', block)}
        start, stop = p["_pg_start"], p["_pg_stop"]
        values = [(at, f[p[field[1]]]) for m, t, f, at in self.points
                  if m == head and p[field[1]] in f and all(t.get(k) == v for k, v in
                                                             tags.items())
                  and ms(start) <= at < ms(stop)]
        if "_pg_slower" in block:
            values = [(at, v) for at, v in values if v > p["_pg_slower"]]
        if "quantile(" in block:
            ordered = sorted(v for _, v in values)
            return name[1], [(None, ordered[int(0.95 * (len(ordered) - 1))])]
        fn = re.search(r"fn: (\w+)", block)
        assert fn, block
        every = int(p["_pg_every"].total_seconds() * 1000)
        rows = []
        for w in range(ms(start), ms(stop), every):
            inside = [v for at, v in values if w <= at < w + every]
            aggs: dict[str, Callable[[list[float]], float]] = {
                "sum": sum, "count": len, "mean": lambda v: sum(v) / len(v)}
            agg = aggs[fn[1]]
            value = agg(inside) if inside or fn[1] == "count" else None
            rows.append((datetime.fromtimestamp(w / 1000, UTC), value))
        return name[1], rows


_LINE = re.compile(r'^(?P<head>(?:[^ \\]|\\.)+) (?P<fields>(?:[^ "]|"(?:[^"\\]|\\.)*")+) '
                   r'(?P<at>\d+)$')


def _literal(node: dict[str, Any]) -> Any:
    kind = node["type"]
    if kind == "DateTimeLiteral":
        return datetime.fromisoformat(node["value"].replace("Z", "+00:00"))
    if kind == "DurationLiteral":
        return timedelta(microseconds=sum(d["magnitude"] for d in node["values"]))
    if kind == "FloatLiteral":
        return float(node["value"])
    return node["value"]


def _annotated(result: str, table: int, rows: list[tuple[Any, Any]]) -> str:
    timed = rows and rows[0][0] is not None
    cols = ["result", "table", *(["_time"] if timed else []), "_value"]
    types = ["string", "long", *(["dateTime:RFC3339"] if timed else []), "double"]
    lines = ["#datatype," + ",".join(types), "#group," + ",".join(["false"] * len(cols)),
             f"#default,{result}" + "," * (len(cols) - 1), "," + ",".join(cols)]
    for at, value in rows:
        when = [at.isoformat().replace("+00:00", "Z")] if timed else []
        lines.append(",".join(["", "", str(table), *when, "" if value is None else str(value)]))
    return "\n".join(lines) + "\n"


@pytest.fixture
async def influx2(aiohttp_server: ServerFactory, tmp_path: Path
                  ) -> tuple[FakeInflux2, InfluxConfig]:
    fake = FakeInflux2("tok-123")
    server = await aiohttp_server(fake.app())
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    config = InfluxConfig(api="v2", url=str(server.make_url("")).rstrip("/"), database="",
                          user=None, password_file=None, org="acme", bucket="shop",
                          token_file=token, timeout=timedelta(seconds=5),
                          measurement_prefix="pushguard_deploys")
    return fake, config


async def test_v2_ratio_binds_every_value(influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    fake, config = influx2
    source = open_source(config)
    try:
        fake.add("\n".join(http_lines()))
        ratio = await source.series(check(Kind.RATIO), T0, T0 + 6 * STEP, STEP)
    finally:
        await source.close()
    assert ratio.column("bad") == (0.0, 2.0, 0.0, 2.0, 0.0, 2.0)
    assert ratio.column("all") == (20.0, 22.0, 24.0, 26.0, 28.0, 30.0)
    assert ratio.times[0] == T0
    sent = fake.queries[-1]
    names = {s["assignment"]["id"]["name"] for s in sent["extern"]["body"]}
    assert {"_pg_bucket", "_pg_start", "_pg_stop", "_pg_every", "_pg_w0"} <= names
    assert "shop" not in sent["query"]  # values travel as parameters, not in the text
    assert "option _pg_w0 = \"shop\"" in ratio.queries[0]


async def test_v2_latency_threshold(influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    fake, config = influx2
    fake.add("\n".join(f"lat,service=shop ms={v} {ms(T0) + v}" for v in range(1, 101)))
    spec = check(Kind.LATENCY, measurement="lat", field="ms")
    source = open_source(config)
    try:
        plain = await source.series(spec, T0, T0 + STEP, STEP)
        slow = await source.series(spec, T0, T0 + STEP, STEP, slower_than=90.0)
    finally:
        await source.close()
    assert plain.quantile == 95.0 and plain.column("all") == (100.0,)
    assert slow.column("slow") == (10.0,)


async def test_v2_marker_goes_to_the_write_endpoint(
        influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    fake, config = influx2
    source = open_source(config)
    try:
        await source.write_marker(push_id=3, release="abc", phase="end", verdict="pass", at=T0)
    finally:
        await source.close()
    (write,) = fake.writes
    assert write["query"]["bucket"] == "shop" and write["query"]["org"] == "acme"
    assert write["query"]["precision"] == "ms"
    assert write["body"].startswith("pushguard_deploys,phase=end,push_id=3,release=abc,"
                                    "verdict=pass ")


async def test_v2_errors_are_check_errors(influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    fake, config = influx2
    fake.fail_with = (400, "compilation failed: error at @1:1: undefined identifier")
    source = open_source(config)
    try:
        with pytest.raises(CheckError, match="HTTP 400") as caught:
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
    finally:
        await source.close()
    (query,) = caught.value.queries  # the statement that failed, for the evidence
    assert 'option _pg_w0 = "shop"' in query and "yield(name: \"count\")" in query
    dead = replace(config, url=f"http://127.0.0.1:{free_port()}")
    source = open_source(dead)
    try:
        with pytest.raises(CheckError, match="did not answer"):
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
    finally:
        await source.close()


async def test_v2_a_200_answer_that_is_not_csv_is_a_check_error(
        influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    """A proxy or a wrong URL can answer 200 with JSON: the guard reports the metrics
    unavailable (a CheckError), not an internal error."""
    fake, config = influx2
    fake.ok_body = json.dumps({"code": "internal error", "message": "boom"})
    source = open_source(config)
    try:
        with pytest.raises(CheckError, match="did not answer the Flux query"):
            await source.series(check(Kind.COUNT), T0, T0 + STEP, STEP)
    finally:
        await source.close()


async def test_v2_tables_at_the_same_times_are_summed_not_overwritten(
        influx2: tuple[FakeInflux2, InfluxConfig]) -> None:
    """Two tables of one answer (a query grouped by host) at the same times: the count
    of an interval is the sum over both, as with InfluxQL."""
    fake, config = influx2
    first = [(T0, 10.0), (T0 + STEP, 20.0)]
    second = [(T0, 1.0), (T0 + STEP, 2.0)]
    fake.ok_body = _annotated("count", 0, first) + "\n" + _annotated("count", 1, second)
    source = open_source(config)
    try:
        counts = await source.series(check(Kind.COUNT), T0, T0 + 2 * STEP, STEP)
    finally:
        await source.close()
    assert counts.times == (T0, T0 + STEP)
    assert counts.column("count") == (11.0, 22.0)

"""InfluxDB 2.x source: Flux through influxdb-client's async client.

Every value (bucket, measurement, fields, tag values, times, the window, the
latency threshold) is a bound parameter: the client sends it in the query's
`extern` block as `option _pg_... = ...`. Tag keys appear in the text as
JSON-quoted string literals (config.toml restricts them to letters, digits
and `_ . -`). Each column the guard needs is one `yield` whose name is the
column name; windows use `aggregateWindow(..., timeSrc: "_start")` so the
rows carry interval starts.

A raw `query` template may use `{start}`, `{stop}` and `{interval}`
(the parameters `_pg_start`, `_pg_stop`, `_pg_every`) and `_pg_bucket`; it
yields tables named after the columns (`count`, `bad`, `all`, `value`), or
one unnamed result taken as the first column.

There was no InfluxDB 2 server to test against: the tests run this source
against a loopback aiohttp server that answers like InfluxDB 2 (annotated
CSV on /api/v2/query, /api/v2/write for markers).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.flux_csv_parser import FluxCsvParserException, FluxQueryException
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from checks.influx import marker_line
from checks.series import QUANTILE, Collector, Series, columns
from checks.spec import CheckSpec, Kind
from daemon.config import InfluxConfig
from daemon.errors import CheckError

_MS: WritePrecision = WritePrecision.MS  # type: ignore[assignment]  # a str constant
# FluxCsvParserException: an HTTP 200 whose body is not annotated CSV (a proxy's JSON or
# HTML page) is an unusable answer from the source, not a fault in the guard
_FAILURES = (ApiException, InfluxDBError, FluxQueryException, FluxCsvParserException,
             aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError)


def _window(fn: str) -> str:
    return (f"  |> group()\n  |> aggregateWindow(every: _pg_every, fn: {fn}, "
            f"createEmpty: true, timeSrc: \"_start\")\n")


def flux(check: CheckSpec, slower_than: float | None) -> tuple[str, dict[str, Any], list[str]]:
    """(Flux text, parameters without bucket and times, column names yielded)."""
    params: dict[str, Any] = {"_pg_measurement": check.measurement}
    if check.query:
        text = check.query.replace("{start}", "_pg_start").replace("{stop}", "_pg_stop")
        return text.replace("{interval}", "_pg_every"), params, columns(check)
    where = ["r._measurement == _pg_measurement"]
    for i, (key, value) in enumerate(check.where):
        params[f"_pg_w{i}"] = value
        where.append(f"r[{json.dumps(key)}] == _pg_w{i}")
    head = ("data = from(bucket: _pg_bucket)\n  |> range(start: _pg_start, stop: _pg_stop)\n"
            f"  |> filter(fn: (r) => {' and '.join(where)})\n")
    parts: list[str] = []

    def one(name: str, field: str, fn: str, extra: str = "") -> None:
        params[f"_pg_{name}_field"] = field
        parts.append(f"data\n  |> filter(fn: (r) => r._field == _pg_{name}_field{extra})\n"
                     f"{_window(fn)}  |> yield(name: \"{name}\")\n")

    if check.kind == Kind.COUNT:
        one("count", check.field, "sum")
    elif check.kind == Kind.RATIO:
        one("bad", check.bad_field, "sum")
        one("all", check.all_field, "sum")
    elif check.kind == Kind.GAUGE:
        one("value", check.field, "mean")
    elif check.latency_mode == "percentiles":
        params["_pg_value_field"] = check.field
        parts.append("data\n  |> filter(fn: (r) => r._field == _pg_value_field)\n  |> group()\n"
                     "  |> keep(columns: [\"_time\", \"_value\"])\n  |> yield(name: \"value\")\n")
    else:
        one("all", check.field, "count")
        if slower_than is None:
            parts.append("data\n  |> filter(fn: (r) => r._field == _pg_all_field)\n"
                         f"  |> group()\n  |> quantile(q: {QUANTILE}, method: "
                         "\"estimate_tdigest\")\n  |> yield(name: \"quantile\")\n")
        else:
            params["_pg_slower"] = float(slower_than)
            one("slow", check.field, "count", " and r._value > _pg_slower")
    names = columns(check) + (["slow"] if slower_than is not None else [])
    return head + "\n" + "\n".join(parts), params, names


class FluxSource:
    """MetricSource for InfluxDB 2.x; see the module docstring."""

    def __init__(self, config: InfluxConfig, token: str) -> None:
        self._config = config
        self._token = token
        self._client: InfluxDBClientAsync | None = None

    def _api(self) -> InfluxDBClientAsync:
        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self._config.url, token=self._token, org=self._config.org,
                timeout=int(self._config.timeout.total_seconds() * 1000))
        return self._client

    async def series(self, check: CheckSpec, start: datetime, stop: datetime, step: timedelta,
                     *, slower_than: float | None = None) -> Series:
        text, params, names = flux(check, slower_than)
        params.update(_pg_bucket=self._config.bucket, _pg_start=start, _pg_stop=stop,
                      _pg_every=step)
        try:
            tables = await asyncio.wait_for(
                self._api().query_api().query(text, params=params),
                self._config.timeout.total_seconds() + 1.0)
            rows = Collector(list(names))
            quantile: float | None = None
            for table in tables:
                for record in table.records:
                    name = str(record.values.get("result") or "_result")
                    value = record.values.get("_value")
                    number = float(value) if isinstance(value, int | float) else None
                    if name == "quantile":
                        quantile = number
                        continue
                    key = names[0] if name not in names else name
                    when = record.values.get("_time")
                    if not isinstance(when, datetime):
                        continue
                    rows.add(when.astimezone(UTC), key, number)
        except _FAILURES as exc:
            raise CheckError(f"InfluxDB at {self._config.url} did not answer the Flux query: "
                             f"{_describe(exc, self._config.timeout)}",
                             queries=(_resolved(text, params),),
                             url=self._config.url) from None
        return rows.series(start, stop, step, quantile, (_resolved(text, params),))

    async def write_marker(self, *, push_id: int, release: str, phase: str,
                           verdict: str | None, at: datetime) -> None:
        line = marker_line(self._config.measurement_prefix, push_id=push_id, release=release,
                           phase=phase, verdict=verdict, at=at)
        try:
            await asyncio.wait_for(
                self._api().write_api().write(bucket=self._config.bucket, org=self._config.org,
                                              record=line, write_precision=_MS),
                self._config.timeout.total_seconds() + 1.0)
        except _FAILURES as exc:
            raise CheckError(f"InfluxDB at {self._config.url} did not take the deploy marker: "
                             f"{_describe(exc, self._config.timeout)}",
                             url=self._config.url) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


def _resolved(text: str, params: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, datetime):
            return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if isinstance(v, timedelta):
            return f"{v.total_seconds():g}s"
        return json.dumps(v)
    options = "\n".join(f"option {k} = {show(v)}" for k, v in sorted(params.items()))
    return options + "\n" + text


def _describe(exc: BaseException, timeout: timedelta) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout.total_seconds():g}s"
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {(exc.body or exc.reason or '')!s:.200}"
    return str(exc)[:300] or type(exc).__name__

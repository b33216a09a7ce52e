"""InfluxDB 1.x source: InfluxQL over `/query`, markers over `/write`.

Values (tag values, times, the latency threshold) are bound parameters
(`params` JSON, `$name` in the statement). InfluxDB 1.6 does not accept
bound parameters for identifiers (measurement, field and tag-key names:
"found ..., expected identifier"), so identifiers are double-quoted with `\\`
and `"` escaped; config.toml already restricts them to letters, digits and
`_ . -`. Answers use `epoch=ms`; an `error` in any `results[i]` is a
failure even on HTTP 200, and so is `partial` on a result or a series (the
server's `max-row-limit` cut the statement short). Timeouts, refused
connections, error answers and partial answers raise `CheckError`.

A raw `query` template of a check may use `{start}` and `{stop}` (bound as
`$start`, `$stop`) and `{interval}` (the GROUP BY duration, e.g. `30s`); its
columns are taken by name (`count`, `bad`, `all`, `value`) or else in order.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from checks.influx import marker_line
from checks.series import QUANTILE, Collector, Series, columns
from checks.spec import CheckSpec, Kind
from daemon.config import InfluxConfig
from daemon.errors import CheckError


def ident(name: str) -> str:
    """A strictly quoted InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rfc3339(when: datetime) -> str:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration(step: timedelta) -> str:
    return f"{max(1, round(step.total_seconds()))}s"


def statements(check: CheckSpec, step: timedelta,
               slower_than: float | None) -> tuple[list[str], dict[str, Any]]:
    """The InfluxQL statements for one window and their parameters (without times)."""
    params: dict[str, Any] = {}
    conditions = []
    for i, (key, value) in enumerate(check.where):
        params[f"w{i}"] = value
        conditions.append(f"{ident(key)} = $w{i}")
    conditions.append("time >= $start AND time < $stop")
    where = " AND ".join(conditions)
    source = ident(check.measurement)
    group = f"GROUP BY time({_duration(step)}) fill(null)"
    field = ident(check.field)
    if check.query:
        text = check.query.replace("{start}", "$start").replace("{stop}", "$stop")
        return [text.replace("{interval}", _duration(step))], params
    if check.kind == Kind.COUNT:
        return [f'SELECT sum({field}) AS "count" FROM {source} WHERE {where} {group}'], params
    if check.kind == Kind.RATIO:
        return [f'SELECT sum({ident(check.bad_field)}) AS "bad", sum({ident(check.all_field)}) '
                f'AS "all" FROM {source} WHERE {where} {group}'], params
    if check.kind == Kind.GAUGE:
        return [f'SELECT mean({field}) AS "value" FROM {source} WHERE {where} {group}'], params
    if check.latency_mode == "percentiles":
        return [f'SELECT {field} AS "value" FROM {source} WHERE {where}'], params
    out = [f'SELECT count({field}) AS "all" FROM {source} WHERE {where} {group}']
    if slower_than is None:
        out.append(f'SELECT percentile({field}, {100 * QUANTILE:g}) AS "quantile" '
                   f'FROM {source} WHERE {where}')
    else:
        params["slower"] = float(slower_than)
        out.append(f'SELECT count({field}) AS "slow" FROM {source} '
                   f'WHERE {field} > $slower AND {where} {group}')
    return out, params


def resolve(statement: str, params: dict[str, Any]) -> str:
    """The statement with its parameters written in, for people to read."""
    def value(match: re.Match[str]) -> str:
        v = params.get(match[1])
        if v is None:
            return match[0]
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return repr(v)
    return re.sub(r"\$(\w+)", value, statement)


class InfluxQLSource:
    """MetricSource for InfluxDB 1.x; see the module docstring."""

    def __init__(self, config: InfluxConfig, password: str | None) -> None:
        self._config = config
        self._headers = {"Authorization": aiohttp.encode_basic_auth(config.user, password or "")} \
            if config.user else {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self._config.timeout.total_seconds())
            self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self._session

    async def series(self, check: CheckSpec, start: datetime, stop: datetime, step: timedelta,
                     *, slower_than: float | None = None) -> Series:
        texts, params = statements(check, step, slower_than)
        params.update(start=_rfc3339(start), stop=_rfc3339(stop))
        results = await self._query(texts, params)
        quantile: float | None = None
        wanted = columns(check)
        rows = Collector(wanted + (["slow"] if slower_than is not None else []))
        for result in results:
            for serie in result.get("series") or []:
                names = list(serie.get("columns") or [])
                for row in serie.get("values") or []:
                    values = dict(zip(names[1:], row[1:], strict=False))
                    if "quantile" in values:
                        quantile = _number(values.pop("quantile"))
                        continue
                    when = datetime.fromtimestamp(int(row[0]) / 1000, UTC)
                    for i, name in enumerate(names[1:]):
                        key = name if name in wanted or not check.query else \
                            (wanted[i] if i < len(wanted) else name)
                        if key in rows.names:
                            rows.add(when, key, _number(row[i + 1]))
        return rows.series(start, stop, step, quantile,
                           tuple(resolve(t, params) for t in texts))

    async def _query(self, texts: list[str], params: dict[str, Any]) -> list[dict[str, Any]]:
        form = {"q": ";\n".join(texts), "db": self._config.database, "epoch": "ms",
                "params": json.dumps(params)}
        url = f"{self._config.url}/query"
        queries = tuple(resolve(t, params) for t in texts)  # for a failed check's evidence
        try:
            async with self._http().post(url, data=form) as answer:
                body = await answer.text()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CheckError(f"InfluxDB at {self._config.url} did not answer: "
                             f"{_describe(exc, self._config.timeout)}", url=url,
                             queries=queries) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise CheckError(f"InfluxDB answered {status} with a body that is not JSON",
                             url=url, queries=queries) from None
        if status != 200 or "error" in data:
            raise CheckError(f"InfluxDB answered {status}: {data.get('error', body[:200])}",
                             url=url, queries=queries)
        results: list[dict[str, Any]] = data.get("results") or []
        for i, result in enumerate(results):
            if result.get("error"):
                raise CheckError(f"InfluxDB statement {i + 1} failed: {result['error']}",
                                 url=url, statement=i + 1, queries=queries)
            # e.g. the server's max-row-limit cut it short: missing rows would read as
            # intervals without data, so the check cannot judge
            if result.get("partial") or any(s.get("partial") for s in result.get("series") or []):
                text = resolve(texts[i], params) if i < len(texts) else "?"
                raise CheckError(f"InfluxDB answered statement {i + 1} only in part "
                                 f"(partial): {text}", url=url, statement=i + 1,
                                 queries=queries)
        return results

    async def write_marker(self, *, push_id: int, release: str, phase: str,
                           verdict: str | None, at: datetime) -> None:
        line = marker_line(self._config.measurement_prefix, push_id=push_id, release=release,
                           phase=phase, verdict=verdict, at=at)
        url = f"{self._config.url}/write"
        query = {"db": self._config.database, "precision": "ms"}
        try:
            async with self._http().post(url, params=query, data=line.encode()) as answer:
                body = await answer.text()
                if answer.status != 204:
                    raise CheckError(f"InfluxDB refused the deploy marker ({answer.status}): "
                                     f"{body[:200]}", url=url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CheckError(f"InfluxDB at {self._config.url} did not take the deploy marker: "
                             f"{_describe(exc, self._config.timeout)}", url=url) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _describe(exc: BaseException, timeout: timedelta) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {timeout.total_seconds():g}s"
    return str(exc) or type(exc).__name__

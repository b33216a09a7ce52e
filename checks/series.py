"""What a metric source hands the guard: `Series`, and the `MetricSource` protocol.

A `Series` holds one check's values over one window [start, stop), one row
per interval of `step` (interval start times), or one row per stored point
for raw per-interval percentiles. Columns by kind of check:

| kind                 | columns                         | also                         |
|----------------------|---------------------------------|------------------------------|
| count                | `count` (sum)                   |                              |
| ratio                | `bad`, `all` (sums)             |                              |
| latency, threshold   | `all` (count); `slow` (count    | `quantile`: the window's p95 |
|                      | above `slower_than`, when given)|                              |
| latency, percentiles | `value` (raw points)            |                              |
| gauge                | `value` (mean)                  |                              |

`None` is an interval without data. `queries` are the statements as sent,
with their bound parameters written in, for the evidence.

An answer may hold several series (a raw query grouped by a tag, points of
several hosts at the same times): `Collector` sums the count columns of rows
at the same time across them, and keeps every `value` point (times may then
repeat), so that no series silently overwrites another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from checks.spec import CheckSpec, Kind

QUANTILE = 0.95  # the latency threshold mode compares against the baseline's p95


def columns(check: CheckSpec) -> list[str]:
    """The columns a source reads for `check` (the table above; `slow` comes on top)."""
    if check.kind == Kind.COUNT:
        return ["count"]
    if check.kind == Kind.RATIO:
        return ["bad", "all"]
    if check.kind == Kind.LATENCY and check.latency_mode == "threshold":
        return ["all"]
    return ["value"]


@dataclass(frozen=True)
class Series:
    """One check's values over [start, stop); see the module docstring."""

    start: datetime
    stop: datetime
    step: timedelta
    times: tuple[datetime, ...]
    columns: Mapping[str, tuple[float | None, ...]]
    quantile: float | None = None
    queries: tuple[str, ...] = field(default=())

    def column(self, name: str) -> tuple[float | None, ...]:
        """The column's values, or all `None` when the source did not return it."""
        return self.columns.get(name, (None,) * len(self.times))


class Collector:
    """Rows of one answer, from any number of its series (module doc)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._sums: dict[datetime, dict[str, float | None]] = {}
        self._points: list[tuple[datetime, float | None]] = []

    def add(self, when: datetime, name: str, value: float | None) -> None:
        if name == "value":
            self._points.append((when, value))
            return
        row = self._sums.setdefault(when, {})
        old = row.get(name)
        row[name] = value if old is None else old + (value or 0.0)

    def series(self, start: datetime, stop: datetime, step: timedelta,
               quantile: float | None, queries: tuple[str, ...]) -> Series:
        names = list(self.names)
        if "value" in names:
            points = sorted(self._points, key=lambda p: p[0])  # stable: a series' order
            return Series(start=start, stop=stop, step=step, times=tuple(t for t, _ in points),
                          columns={"value": tuple(v for _, v in points)}, quantile=quantile,
                          queries=queries)
        times = sorted(self._sums)
        return Series(start=start, stop=stop, step=step, times=tuple(times),
                      columns={n: tuple(self._sums[t].get(n) for t in times) for n in names},
                      quantile=quantile, queries=queries)


class MetricSource(Protocol):
    """Where the guard reads metrics and writes deploy markers.

    Every method raises `CheckError` when the source cannot answer (down,
    slow, a bad query, an error in a statement); it never returns partial
    data silently.
    """

    async def series(self, check: CheckSpec, start: datetime, stop: datetime, step: timedelta,
                     *, slower_than: float | None = None) -> Series:
        """Per-interval values the check needs over [start, stop)."""
        ...

    async def write_marker(self, *, push_id: int, release: str, phase: str,
                           verdict: str | None, at: datetime) -> None:
        """Write one deploy-marker point (tags push_id, release, phase, verdict)."""
        ...

    async def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...

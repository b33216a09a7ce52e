"""From a source's `Series` to the numbers the statistics take, per kind of check.

Windows are aligned to whole intervals of the check's step (counted from
the Unix epoch, as InfluxDB's GROUP BY time() does): the baseline from
floor(start) to floor(end), the after window from ceil(start) to floor(now),
so only complete intervals are compared.

Missing values: in a count, an interval without data is left out (no events,
no exposure): a gap in the baseline, the history or a seasonal reference is
unknown, not zero, and read as zero it would lower the baseline and hide a
drop. Only in the after window of a check whose bad direction is a drop does
an interval without data count as zero events (a service that stopped
reporting has stopped serving), except the newest interval, which is left
out when empty (metrics arrive a little late). A count that gets no data
after the push is therefore a drop (bad = "drop") or too little data, never
a pass. In a ratio or a latency share, an interval without requests has no
weight. Gauge and percentile values without data are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import numpy as np

from checks.ranks import Levels
from checks.rates import Rates
from checks.series import MetricSource, Series
from checks.spec import CheckSpec, Kind


@dataclass(frozen=True)
class Window:
    """An aligned window [start, stop) of whole steps."""

    start: datetime
    stop: datetime

    def shifted(self, days: int, tz: tzinfo = UTC) -> Window:
        """The same window `days` earlier on the local clock of `tz` (traffic follows the
        clock people live by: across a daylight-saving change that is 23 or 25 hours)."""
        def back(when: datetime) -> datetime:
            return (when.astimezone(tz) - timedelta(days=days)).astimezone(UTC)
        return Window(back(self.start), back(self.stop))

    def text(self) -> list[str]:
        return [self.start.isoformat(), self.stop.isoformat()]

    def seconds(self) -> float:
        return (self.stop - self.start).total_seconds()


def _ms(when: datetime) -> int:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def floor_to(when: datetime, step: timedelta) -> datetime:
    s = round(step.total_seconds() * 1000)
    ms = _ms(when)
    return _at(ms - ms % s)


def ceil_to(when: datetime, step: timedelta) -> datetime:
    s = round(step.total_seconds() * 1000)
    ms = _ms(when)
    return _at(ms + (-ms) % s)


HISTORY_BASELINES = 8  # the noise model looks this many baseline lengths back
BLOCK = timedelta(minutes=5)  # block length of the noise model's history


def history_window(before: Window, step: timedelta) -> tuple[Window, timedelta]:
    """The window (and its block step) on which the slow wander is measured."""
    block = step * max(1, -(-round(BLOCK.total_seconds()) // round(step.total_seconds())))
    stop = floor_to(before.stop, block)
    span = (before.stop - before.start) * HISTORY_BASELINES
    return Window(floor_to(stop - span, block), stop), block


def baseline_window(span: tuple[datetime, datetime], step: timedelta) -> Window:
    return Window(floor_to(span[0], step), floor_to(span[1], step))


def after_window(span: tuple[datetime, datetime], step: timedelta) -> Window:
    return Window(ceil_to(span[0], step), floor_to(span[1], step))


def _grid(series: Series, window: Window, step: timedelta, name: str) -> list[float | None]:
    s = round(step.total_seconds() * 1000)
    values = dict(zip((_ms(t) for t in series.times), series.column(name), strict=False))
    return [values.get(ms) for ms in range(_ms(window.start), _ms(window.stop), s)]


def _mid_seconds(window: Window, step: timedelta, origin: datetime) -> tuple[float, ...]:
    n = round(window.seconds() / step.total_seconds())
    first = (window.start - origin).total_seconds() + step.total_seconds() / 2
    return tuple(first + i * step.total_seconds() for i in range(n))


def count_rates(series: Series, window: Window, step: timedelta, origin: datetime, *,
                trim_newest: bool, missing_is_zero: bool = False) -> Rates:
    """Events per interval with the interval length in seconds as exposure; an interval
    without data has no exposure, or zero events with `missing_is_zero` (module doc)."""
    values = _grid(series, window, step, "count")
    times = _mid_seconds(window, step, origin)
    if trim_newest and values and values[-1] is None:
        values, times = values[:-1], times[:-1]
    seconds = step.total_seconds()
    return Rates(tuple(v or 0.0 for v in values),
                 tuple(seconds if v is not None or missing_is_zero else 0.0 for v in values),
                 times, seconds)


def share_rates(series: Series, window: Window, step: timedelta, origin: datetime,
                bad: str, total: str) -> Rates:
    """Bad events per interval over all events per interval (ratio, latency share)."""
    events = _grid(series, window, step, bad)
    exposure = _grid(series, window, step, total)
    return Rates(tuple(max(e or 0.0, 0.0) for e in events),
                 tuple(max(x or 0.0, 0.0) for x in exposure),
                 _mid_seconds(window, step, origin), step.total_seconds())


def levels(series: Series, origin: datetime) -> Levels:
    """The non-missing values with their times (seconds from `origin`)."""
    pairs = [((t - origin).total_seconds(), v)
             for t, v in zip(series.times, series.column("value"), strict=False)
             if v is not None and np.isfinite(v)]
    return Levels(tuple(v for _, v in pairs), tuple(t for t, _ in pairs))


class Reader:
    """Reads series for the guard, caching windows that cannot change (the baseline)."""

    def __init__(self, source: MetricSource, tz: tzinfo = UTC) -> None:
        self._source = source
        self.tz = tz  # the local clock of seasonal references
        self._cache: dict[tuple[str, datetime, datetime, float | None], Series] = {}

    async def read(self, check: CheckSpec, window: Window, step: timedelta, *,
                   slower_than: float | None = None, cache: bool = False) -> Series:
        key = (check.name, window.start, window.stop, slower_than)
        if cache and key in self._cache:
            return self._cache[key]
        series = await self._source.series(check, window.start, window.stop, step,
                                           slower_than=slower_than)
        if cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = series
        return series


def column_names(check: CheckSpec) -> tuple[str, str]:
    """(events, exposure) column names of a rate-type check."""
    if check.kind == Kind.RATIO:
        return "bad", "all"
    return "slow", "all"

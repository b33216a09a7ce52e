"""The Prometheus exposition of /metrics, computed from the store at scrape time.

Every figure is read from SQLite when scraped, so counters survive restarts
and agree with the REST API. Scrapes that arrive while one is being computed
share it (single flight), and a rendering is reused for up to `max_age`
seconds (default 1): however many scrapers come, the store aggregates at
most about once a second.
`Exposition` owns its `CollectorRegistry` (never the global one) and that
in-flight task; `close()` cancels it (the app calls it on cleanup).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from daemon.models import Control, Push, QueueState
from daemon.store import Store

if TYPE_CHECKING:
    from api.app import Controller

T = TypeVar("T")
DURATION_BUCKETS = (60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0)


@dataclass(frozen=True)
class _Scrape:
    figures: dict[str, Any]
    ready: bool
    current_push: int | None
    next_slot: datetime | None
    window: str | None


class SingleFlight(Generic[T]):
    """Concurrent callers of `run` share one call of `fn` while it is in flight.

    Safe for reads of the store: the store runs every call in order on one
    thread, so a read still in flight when a caller arrives comes after
    every write that had completed by then; a joiner never sees older data
    than a call of its own would. With `max_age` > 0 an answer is also
    reused until that many seconds after its call started (for /metrics,
    whose aggregates cost more than a scraper needs to be fresh).
    """

    def __init__(self, fn: Callable[[], Awaitable[T]], name: str, max_age: float = 0.0) -> None:
        self._fn = fn
        self._name = name
        self._max_age = max_age
        self._inflight: asyncio.Task[T] | None = None
        self._kept: tuple[float, T] | None = None

    async def run(self) -> T:
        kept = self._kept
        if kept is not None and time.monotonic() - kept[0] < self._max_age:
            return kept[1]
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._call(), name=self._name)
            self._inflight.add_done_callback(self._done)
        # shielded: a caller that goes away does not cancel the others' answer
        return await asyncio.shield(self._inflight)

    async def _call(self) -> T:
        started = time.monotonic()
        answer = await self._fn()
        if self._max_age > 0:
            self._kept = (started, answer)
        return answer

    def _done(self, task: asyncio.Task[T]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: the waiters got it, or nobody waits any more

    async def close(self) -> None:
        """Cancel and await a call in flight."""
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Exposition:
    """Renders /metrics; one per app. Figures are at most `max_age` seconds old."""

    def __init__(self, store: Store, control: Controller, clock: Callable[[], datetime],
                 version: str, max_age: float = 1.0) -> None:
        self._store = store
        self._control = control
        self._clock = clock
        self._version = version
        self._scrape: _Scrape | None = None
        self._flight = SingleFlight(self._render, "pushguard-metrics", max_age)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def render(self) -> bytes:
        """The text exposition; joins a scrape already in flight."""
        return await self._flight.run()

    async def close(self) -> None:
        await self._flight.close()

    async def _render(self) -> bytes:
        figures = await self._store.figures(DURATION_BUCKETS)
        now = self._clock()
        self._scrape = _Scrape(figures, self._control.ready(), self._control.current_push(),
                               self._control.next_slot(now), self._control.window_state(now))
        return generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        """The families of the last scrape (prometheus-client's Collector protocol)."""
        scrape = self._scrape
        if scrape is None:
            return []
        return [*_families(scrape.figures), *_live(scrape, self._version)]


def _families(f: dict[str, Any]) -> Iterable[Metric]:
    pushes = CounterMetricFamily("pushguard_pushes", "Finished pushes by end state and verdict.",
                                 labels=["state", "verdict"])
    for state, verdict, n in f["pushes"]:
        pushes.add_metric([state, verdict], n)
    yield pushes
    count, total, under = f["duration"]
    yield HistogramMetricFamily(
        "pushguard_push_duration_seconds", "Wall time of finished pushes, claim to end.",
        buckets=[*((repr(b), n) for b, n in zip(DURATION_BUCKETS, under, strict=True)),
                 ("+Inf", count)], sum_value=total)
    hosts = CounterMetricFamily("pushguard_host_results", "Host steps ended, by step and outcome.",
                                labels=["step", "outcome"])
    for step, outcome, n in f["hosts"]:
        hosts.add_metric([step, outcome], n)
    yield hosts
    checks = CounterMetricFamily("pushguard_check_evaluations",
                                 "Check looks evaluated, by check and verdict.",
                                 labels=["check", "verdict"])
    for name, verdict, n in f["checks"]:
        checks.add_metric([name, verdict], n)
    yield checks
    queue = GaugeMetricFamily("pushguard_queue_changes", "Changes by state.", labels=["state"])
    for state, n in sorted(f["queue"].items()):
        queue.add_metric([state], n)
    yield queue
    control: Control = f["control"]
    yield GaugeMetricFamily("pushguard_queue_paused", "1 while a person has paused the queue.",
                            value=float(control.state == QueueState.PAUSED))
    yield GaugeMetricFamily("pushguard_queue_halted", "1 while the daemon has halted the queue.",
                            value=float(control.state == QueueState.HALTED))
    last: Push | None = f["last"]
    last_time = GaugeMetricFamily("pushguard_last_push_finished_timestamp_seconds",
                                  "When the last push finished (Unix time).")
    if last is not None and last.finished_at is not None:
        last_time.add_metric([], last.finished_at.timestamp())
    yield last_time


def _live(s: _Scrape, version: str) -> Iterable[Metric]:
    info = GaugeMetricFamily("pushguard_build_info", "The running version.", labels=["version"])
    info.add_metric([version], 1.0)
    yield info
    yield GaugeMetricFamily("pushguard_ready", "1 when the store is open and the daemon started.",
                            value=float(s.ready))
    yield GaugeMetricFamily("pushguard_push_running", "1 while a push runs.",
                            value=float(s.current_push is not None))
    window = GaugeMetricFamily("pushguard_window_state",
                               "1 for the schedule's present state (open, frozen, "
                               "outside-window).", labels=["state"])
    for name in ("open", "frozen", "outside-window"):
        window.add_metric([name], float((s.window or "open") == name))
    yield window
    slot = GaugeMetricFamily("pushguard_scheduler_next_slot_timestamp_seconds",
                             "The next push slot (Unix time); absent when none is planned.")
    if s.next_slot is not None:
        slot.add_metric([], s.next_slot.timestamp())
    yield slot

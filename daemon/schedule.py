"""When pushes may happen: push slots as pure functions of `now`.

Slots are laid out per local day: on a push day, from the window's start
every `every` until the window's end (half-open), each moved later by a
fixed jitter derived from the slot itself (so the same config gives the same
slots on every run and every restart), and dropped when it falls in a
freeze or does not exist on the wall clock (a daylight-saving gap).

`Ticker` is the only part that waits: an APScheduler 3.x job at each slot
that asks the pusher to run. It never runs a push itself, because
APScheduler cancels running jobs on shutdown; the pusher owns the push task.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from daemon.config import ScheduleConfig

log = logging.getLogger("pushguard.schedule")

# how far ahead next_slot looks before deciding that no slot will ever come
_HORIZON_DAYS = 400


def _jitter(config: ScheduleConfig, day: date, index: int) -> timedelta:
    if not config.jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{day.isoformat()}#{index}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=int(fraction * config.jitter.total_seconds()))


def _exists(local: datetime) -> bool:
    """False for a wall-clock time skipped by a daylight-saving change."""
    return local.astimezone(UTC).astimezone(local.tzinfo).replace(fold=0) == local


def in_freeze(config: ScheduleConfig, at: datetime) -> bool:
    return any(freeze.start <= at < freeze.end for freeze in config.freezes)


def slots_on(config: ScheduleConfig, day: date, tz: tzinfo) -> list[datetime]:
    """The push slots of one local day, as aware datetimes in the time zone `tz`."""
    return list(_slots(config, day, tz))


def _slots(config: ScheduleConfig, day: date, tz: tzinfo, first: int = 0) -> Iterator[datetime]:
    """The push slots of one local day from slot number `first` on, in order."""
    if day.weekday() not in config.days:
        return
    start = datetime.combine(day, config.window_start, tzinfo=tz)
    end = datetime.combine(day, config.window_end, tzinfo=tz)
    # step in wall-clock minutes so that a slot at 09:20 stays at 09:20 on any day
    index = first
    while start + config.every * index < end:
        local = start + config.every * index + _jitter(config, day, index)
        if local < end and _exists(local) and not in_freeze(config, local):
            yield local
        index += 1


def _first_candidate(config: ScheduleConfig, day: date, tz: tzinfo, now: datetime) -> int:
    """A slot number of `day` below which no slot comes after `now`, so that next_slot
    skips those slots instead of building them (a day of 1s slots holds 86400).

    A slot's wall time is below start + (number + 1) * every (jitter < every); wall
    clock and real time part by at most an hour on a daylight-saving day, so stay an
    hour and a slot behind `now`.
    """
    start = datetime.combine(day, config.window_start, tzinfo=tz)
    wall = now.astimezone(tz).replace(tzinfo=None) - start.replace(tzinfo=None)
    return max(0, int((wall - timedelta(hours=1)) / config.every) - 1)


def _days_from(now: datetime, tz: tzinfo) -> Iterator[date]:
    today = now.astimezone(tz).date()
    for n in range(-1, _HORIZON_DAYS):
        yield today + timedelta(days=n)


def next_slot(config: ScheduleConfig, tz: tzinfo, now: datetime) -> datetime | None:
    """The first slot strictly after `now`, or None if there is none within a year."""
    for day in _days_from(now, tz):
        for slot in _slots(config, day, tz, _first_candidate(config, day, tz, now)):
            if slot > now:
                return slot
    return None


def window_state(config: ScheduleConfig, tz: tzinfo, now: datetime) -> str | None:
    """"frozen", "outside-window", or None when normal pushes may go out now."""
    if in_freeze(config, now):
        return "frozen"
    local = now.astimezone(tz)
    if local.weekday() not in config.days:
        return "outside-window"
    if not config.window_start <= local.time().replace(tzinfo=None) < config.window_end:
        return "outside-window"
    return None


class Ticker:
    """Fires `tick()` at every slot through APScheduler 3.x, one slot at a time.

    Each run schedules a single date job for the next slot; when it fires it
    calls `tick` (which only hands work to the pusher) and schedules the next.
    """

    def __init__(self, config: ScheduleConfig, tz: tzinfo,
                 tick: Callable[[datetime], Awaitable[None]],
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.tz = tz
        self._tick = tick
        self._clock = clock
        self._scheduler = AsyncIOScheduler(
            timezone=tz,
            job_defaults={"misfire_grace_time": 600, "coalesce": True, "max_instances": 1},
        )
        self.next_at: datetime | None = None

    def start(self) -> None:
        self._scheduler.add_listener(self._missed, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self._scheduler.start()
        self._plan()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def _plan(self, after: datetime | None = None) -> None:
        """Schedule the first slot after `after` (default: now) as its own job."""
        now = self._clock()
        self.next_at = next_slot(self.config, self.tz, max(now, after) if after else now)
        if self.next_at is None:
            log.warning("no push slot in the next %d days: check [schedule]", _HORIZON_DAYS)
            return
        # one job per slot (its own id), so a slow tick never makes the next slot
        # count as a second instance of a running job
        self._scheduler.add_job(self._fire, DateTrigger(run_date=self.next_at),
                                args=[self.next_at], id=f"slot {self.next_at.isoformat()}",
                                replace_existing=True)
        log.debug("next push slot %s", self.next_at.isoformat())

    async def _fire(self, slot: datetime) -> None:
        # plan the next slot first: whatever the tick does, the schedule goes on
        self._plan(after=slot)
        try:
            await self._tick(slot)
        except Exception:
            log.exception("the slot at %s could not hand work to the pusher", slot)

    def _missed(self, event: JobEvent) -> None:
        """A slot APScheduler did not run (the loop was blocked past the grace time)."""
        log.warning("push slot %s was missed; planning the next one", event.job_id)
        if self.next_at is None or self.next_at <= self._clock():
            self._plan()

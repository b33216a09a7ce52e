"""Push slots: a pure function of `now` over days, windows, freezes and DST."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.config import Freeze, ScheduleConfig, load
from daemon.schedule import Ticker, next_slot, slots_on, window_state

ROOT = Path(__file__).resolve().parent.parent
BERLIN = ZoneInfo("Europe/Berlin")
PLAIN = ScheduleConfig(days=frozenset(range(5)), window_start=time(9), window_end=time(17),
                       every=timedelta(minutes=20), jitter=timedelta(0), freezes=(),
                       batch_size=1)


def b(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def test_default_config_gives_24_to_26_slots_on_a_working_day() -> None:
    config = load(ROOT / "config.toml")
    tz = config.daemon.timezone
    for day in (date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 4)):  # Mon, Tue, Fri
        slots = slots_on(config.schedule, day, tz)
        assert 24 <= len(slots) <= 26
        assert all(time(9) <= s.time() < time(17) for s in slots)
        assert slots == sorted(slots) and len(set(slots)) == len(slots)
    assert slots_on(config.schedule, date(2026, 12, 5), tz) == []  # Saturday
    # jitter is stable: the same slots on every call (and so on every restart)
    assert slots_on(config.schedule, date(2026, 12, 4), tz) == slots


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (b(2026, 11, 30, 8, 0), b(2026, 11, 30, 9, 0)),      # Monday before the window
        (b(2026, 11, 30, 9, 0), b(2026, 11, 30, 9, 20)),     # exactly on a slot: the next one
        (b(2026, 11, 30, 9, 5), b(2026, 11, 30, 9, 20)),
        (b(2026, 11, 30, 16, 40), b(2026, 12, 1, 9, 0)),     # last slot taken: next day
        (b(2026, 11, 30, 17, 0), b(2026, 12, 1, 9, 0)),      # window end is excluded
        (b(2026, 12, 4, 16, 50), b(2026, 12, 7, 9, 0)),      # Friday evening -> Monday
        (b(2026, 12, 5, 12, 0), b(2026, 12, 7, 9, 0)),       # Saturday
    ],
)
def test_next_slot_table(now: datetime, expected: datetime) -> None:
    assert next_slot(PLAIN, BERLIN, now) == expected


def test_freezes_skip_slots() -> None:
    frozen = replace(PLAIN, freezes=(Freeze(b(2026, 12, 24, 0, 0), b(2026, 12, 27, 0, 0)),
                                     Freeze(b(2026, 12, 28, 9, 0), b(2026, 12, 28, 12, 0))))
    assert next_slot(frozen, BERLIN, b(2026, 12, 23, 17, 0)) == b(2026, 12, 28, 12, 0)
    assert window_state(frozen, BERLIN, b(2026, 12, 24, 10, 0)) == "frozen"
    assert window_state(frozen, BERLIN, b(2026, 12, 28, 10, 0)) == "frozen"
    assert window_state(frozen, BERLIN, b(2026, 12, 28, 12, 0)) is None


def test_window_state() -> None:
    assert window_state(PLAIN, BERLIN, b(2026, 11, 30, 8, 59)) == "outside-window"
    assert window_state(PLAIN, BERLIN, b(2026, 11, 30, 9, 0)) is None
    assert window_state(PLAIN, BERLIN, b(2026, 11, 30, 17, 0)) == "outside-window"
    assert window_state(PLAIN, BERLIN, b(2026, 12, 5, 12, 0)) == "outside-window"
    # the same instant in UTC is judged in the configured zone
    assert window_state(PLAIN, BERLIN, datetime(2026, 11, 30, 8, 30, tzinfo=UTC)) is None


def test_daylight_saving_changes() -> None:
    every_day = replace(PLAIN, days=frozenset(range(7)), window_start=time(1),
                        window_end=time(4), every=timedelta(minutes=30))
    # 2026-03-29: Berlin clocks jump from 02:00 to 03:00; 02:00 and 02:30 do not exist
    spring = slots_on(every_day, date(2026, 3, 29), BERLIN)
    assert [s.strftime("%H:%M") for s in spring] == ["01:00", "01:30", "03:00", "03:30"]
    assert all(s.utcoffset() == timedelta(hours=2) for s in spring[2:])
    # 2026-10-25: 02:00-03:00 happens twice; each slot still happens once
    autumn = slots_on(every_day, date(2026, 10, 25), BERLIN)
    assert [s.strftime("%H:%M") for s in autumn] == ["01:00", "01:30", "02:00", "02:30",
                                                     "03:00", "03:30"]
    utc = [s.astimezone(UTC) for s in autumn]
    assert utc == sorted(utc) and len(set(utc)) == len(utc)
    # a working-hours window keeps its wall-clock times across the change
    before = slots_on(PLAIN, date(2026, 3, 27), BERLIN)
    after = slots_on(PLAIN, date(2026, 3, 30), BERLIN)
    assert [s.time() for s in before] == [s.time() for s in after]
    assert next_slot(PLAIN, BERLIN, b(2026, 3, 27, 17, 0)) == b(2026, 3, 30, 9, 0)


def test_no_slot_at_all() -> None:
    never = replace(PLAIN, freezes=(Freeze(b(2026, 1, 1, 0, 0), b(2030, 1, 1, 0, 0)),))
    assert next_slot(never, BERLIN, b(2026, 6, 1, 0, 0)) is None


EVERY_SECOND = replace(PLAIN, days=frozenset(range(7)), window_start=time(0),
                       window_end=time(23, 59, 59), every=timedelta(seconds=1))


async def run_ticker(ticks: int, within: float, *, pause: float = 0.0,
                     clock_behind: timedelta = timedelta(0)) -> tuple[list[datetime], Ticker]:
    """A real AsyncIOScheduler with a slot every second, run until `ticks` slots fired
    (each tick busy for `pause` seconds, our clock `clock_behind` the scheduler's)."""
    fired: list[datetime] = []
    done = asyncio.Event()

    async def tick(slot: datetime) -> None:
        fired.append(slot)
        if len(fired) >= ticks:
            done.set()
        if pause:
            await asyncio.sleep(pause)  # longer than `every`: the pusher is busy

    ticker = Ticker(EVERY_SECOND, UTC, tick, lambda: datetime.now(UTC) - clock_behind)
    ticker.start()
    try:
        await asyncio.wait_for(done.wait(), within)
    finally:
        ticker.shutdown()
    return fired, ticker


async def test_ticker_fires_at_slots_through_apscheduler() -> None:
    """A real AsyncIOScheduler fires the tick at each slot and plans the next."""
    fired, ticker = await run_ticker(2, 10)
    assert fired[1] > fired[0]
    assert ticker.next_at is not None and ticker.next_at > fired[1]


async def test_a_slow_tick_never_stops_the_schedule() -> None:
    """A tick that outlasts the gap between slots: the following slots still fire."""
    fired, _ = await run_ticker(4, 15, pause=1.5)
    assert fired == sorted(fired) and len(set(fired)) == len(fired)


async def test_a_clock_behind_the_scheduler_does_not_fire_a_slot_twice_or_stall() -> None:
    """APScheduler may run a job a hair before its time by our clock; the next slot
    must still be the one after, not the same slot again (which APScheduler would
    refuse as a second running instance, and the schedule would stop)."""
    fired, _ = await run_ticker(3, 10, clock_behind=timedelta(milliseconds=300))
    assert len(set(fired)) == len(fired), fired

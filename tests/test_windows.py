"""checks.windows: a count interval without data is unknown, not zero, except where
a missing count means the service stopped serving (the after window of a drop check)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from checks.scenario import load, replay
from checks.series import Series
from checks.windows import Window, count_rates
from daemon.models import Verdict

PUSH = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
STEP = timedelta(seconds=30)


def test_a_missing_count_interval_has_no_exposure_unless_missing_means_zero() -> None:
    window = Window(PUSH, PUSH + 4 * STEP)
    times = tuple(PUSH + i * STEP for i in (0, 2, 3))
    series = Series(start=window.start, stop=window.stop, step=STEP, times=times,
                    columns={"count": (10.0, 12.0, None)})
    rates = count_rates(series, window, STEP, PUSH, trim_newest=False)
    assert rates.events == (10.0, 0.0, 12.0, 0.0)
    assert rates.exposure == (30.0, 0.0, 30.0, 0.0)
    zero = count_rates(series, window, STEP, PUSH, trim_newest=True, missing_is_zero=True)
    assert zero.events == (10.0, 0.0, 12.0)  # the newest, empty, is left out: data is late
    assert zero.exposure == (30.0, 30.0, 30.0)


def scenario(check: dict[str, Any], values: list[float | None]) -> dict[str, Any]:
    start = PUSH - timedelta(hours=4, minutes=30)
    return {"expected": "harmless", "interval": "30s", "start": start.isoformat(),
            "push": PUSH.isoformat(), "checks": [check], "series": {check["field"]: values}}


def minutes_from_push(n: int) -> np.ndarray:
    return np.arange(n) * 0.5 - 270.0


async def test_a_rise_check_without_data_after_the_push_is_never_a_pass() -> None:
    rng = np.random.default_rng(3)
    t = minutes_from_push(590)  # 270 min before the push, 25 after
    errors: list[float | None] = [float(v) for v in rng.poisson(2.0, len(t))]
    errors = [None if m >= 0 else v for m, v in zip(t, errors, strict=True)]
    check = {"name": "errors", "kind": "count", "measurement": "http", "field": "errors",
             "bad": "rise", "min_change": 0.2}
    outcome = await replay(load(scenario(check, errors)))
    assert outcome.verdict == Verdict.INCONCLUSIVE, outcome.reason


async def test_gaps_in_the_baseline_do_not_hide_a_drop() -> None:
    rng = np.random.default_rng(4)
    t = minutes_from_push(590)
    rate = np.where(t >= 1.0, 0.6, 1.0) * 27 * 30  # a 40 % drop after the canary's warm-up
    values: list[float | None] = [float(v) for v in rng.poisson(rate)]
    # every other interval before the push never reached InfluxDB
    values = [None if m < 0 and i % 2 else v
              for i, (m, v) in enumerate(zip(t, values, strict=True))]
    check = {"name": "requests", "kind": "count", "measurement": "http",
             "field": "requests", "bad": "drop", "min_change": 0.1}
    outcome = await replay(load(scenario(check, values)))
    assert outcome.verdict == Verdict.FAIL, outcome.reason


def test_a_seasonal_reference_keeps_the_local_clock_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Monday after the spring change (Sunday 29 March 2026): 10:00 local is 08:00 UTC
    push = datetime(2026, 3, 30, 10, 0, tzinfo=berlin).astimezone(UTC)
    window = Window(push - timedelta(minutes=30), push)
    week = window.shifted(7, berlin)
    assert week.stop.astimezone(berlin).replace(tzinfo=None) == datetime(2026, 3, 23, 10, 0)
    assert week.stop == datetime(2026, 3, 23, 9, 0, tzinfo=UTC)  # CET then: UTC+1
    assert window.shifted(7).stop == datetime(2026, 3, 23, 8, 0, tzinfo=UTC)  # UTC: 1 h off
    sunday = datetime(2026, 3, 29, 10, 0, tzinfo=berlin).astimezone(UTC)  # the change's day
    day = Window(sunday - timedelta(minutes=30), sunday).shifted(1, berlin)
    assert sunday - day.stop == timedelta(hours=23)  # Saturday 10:00 CET

"""bench.nab: the request count's own swings, and what the usual remedies leave of them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.nab import DAY, SPAN, TRAFFIC, seasonal_swings, stacked_swings, swings


def fake(values: np.ndarray) -> SimpleNamespace:
    """A Nab with one traffic series and every start free."""
    starts = np.arange(len(values) - SPAN + 1)
    return SimpleNamespace(series={TRAFFIC: (None, values)}, free={TRAFFIC: starts})


def daily(days: int) -> np.ndarray:
    t = np.arange(days * DAY)
    return 100.0 + 60.0 * np.sin(2 * np.pi * t / DAY)


def test_a_seasonal_reference_removes_a_pure_daily_cycle() -> None:
    nab = fake(daily(6))
    assert np.ptp(swings(nab)) > 0.5  # the cycle alone swings the after/before ratio
    left = seasonal_swings(nab, 3)
    assert len(left) == 6 * DAY - SPAN + 1 - 3 * DAY
    assert left == pytest.approx(1.0)


def test_summing_streams_at_the_same_time_of_day_narrows_independent_swings() -> None:
    noisy = fake(100.0 * np.random.default_rng(1).lognormal(0.0, 0.5, 12 * DAY))
    one, eight = swings(noisy), stacked_swings(noisy, 8, np.random.default_rng(2))
    assert len(eight) == len(one)
    assert np.log(eight).std() < 0.5 * np.log(one).std()  # about 1/sqrt(8)
    assert stacked_swings(noisy, 1, np.random.default_rng(2)) == pytest.approx(one)


def test_summed_streams_keep_the_daily_cycle() -> None:
    # windows at another time of day would swing differently; the same time of day does not
    nab = fake(daily(12))
    assert stacked_swings(nab, 8, np.random.default_rng(3)) == pytest.approx(swings(nab))

"""bench.falsealarms: the share of harmless pushes failed, with its interval."""

from __future__ import annotations

import pytest

from bench.falsealarms import judge, row, wilson


def test_wilson_interval_matches_the_values_worked_by_hand() -> None:
    # the score interval worked by hand: 5/10 is symmetric about 0.5; 0/10 starts at 0
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    low, high = wilson(15, 1500)
    assert low < 0.01 < high


def test_a_row_counts_failures_and_those_in_the_fleet_bake() -> None:
    results: list[tuple[str, int | None]] = [
        ("fail", 2), ("pass", 1), ("fail", 1), ("inconclusive", 1)]
    cells = [c.strip() for c in row("ratio", 500.0, results).strip("|").split("|")]
    assert cells[:5] == ["ratio", "500", "4", "2", "50.00 %"]
    assert cells[6] == "1"


def test_a_harmless_push_is_judged_by_the_guard() -> None:
    [(verdict, wave)] = judge(("count", 20.0, [700_001]))
    assert verdict in {"pass", "fail", "inconclusive"} and wave in {1, 2}


def test_a_harmless_gauge_push_on_a_nab_series_is_judged_by_the_guard() -> None:
    [(verdict, wave)] = judge(("gauge", "rds_cpu_utilization_cc0c53.csv", [900_001]))
    assert verdict in {"pass", "fail", "inconclusive"} and wave in {1, 2}
    cells = [c.strip() for c in row("gauge", "rds_cpu", [(verdict, wave)]).strip("|").split("|")]
    assert cells[:3] == ["gauge", "rds_cpu", "1"]

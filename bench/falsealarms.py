"""Harmless pushes in bulk: `python -m bench.falsealarms [--pushes N] [--levels ...]`.

`bench.guard` judges 60 harmless pushes per kind and level with each seed: a
cell that small cannot show whether the guard stays within its 1 % budget
(at a true 1 %, 2 of 60 or more happen one time in eight). This judges N
harmless synthetic pushes per kind and level (by default 1,000 at each of
the generator's levels) through the guard alone (seeds from `--seed-base`
up, apart from the benchmark's), and prints per cell, and per level over
the kinds, the share that failed with its 95 % Wilson interval and how many
of the failures fell in the fleet bake; last, whether issue 4's goal (at
most 1 % at every traffic level) is met.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import functools
import math
import time
from concurrent.futures import ProcessPoolExecutor

from bench.nab import Nab, default_root, gauge_scenario
from bench.synthetic import GENERATOR, scenario
from checks.scenario import load, replay

KINDS = ("count", "ratio", "latency")
# (kind, traffic level) of synthetic pushes, or ("gauge", NAB series file)
Cell = tuple[str, float | str]
Result = tuple[str, int | None]  # verdict, wave


@functools.cache
def _nab() -> Nab:
    return Nab(default_root())


def judge(job: tuple[str, float | str, list[int]]) -> list[Result]:
    """(verdict, wave) of each harmless push of one cell (a worker's share)."""
    kind, where, seeds = job
    out = []
    for seed in seeds:
        if kind == "gauge":
            data = gauge_scenario(_nab(), str(where), "harmless", "none", "none", seed)
        else:
            data = scenario(kind, float(where), "harmless", "none", "none", seed)
        g = asyncio.run(replay(load(data)))
        out.append((g.verdict.value, g.wave))
    return out


def judge_cells(cells: list[Cell], seeds: list[int], jobs: int) -> dict[Cell, list[Result]]:
    """Every cell's pushes, one per seed, spread over `jobs` worker processes."""
    work = [(kind, where, seeds[i::jobs]) for kind, where in cells for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(judge, work))
    return {cell: [r for part in parts[c * jobs:(c + 1) * jobs] for r in part]
            for c, cell in enumerate(cells)}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a share k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def row(kind: str, level: float | str, results: list[Result]) -> str:
    n = len(results)
    failed = [wave for verdict, wave in results if verdict == "fail"]
    low, high = wilson(len(failed), n)
    fleet = sum(1 for wave in failed if wave == 2)
    where = f"{level:g}" if isinstance(level, float | int) else level
    return (f"| {kind} | {where} | {n} | {len(failed)} | {100 * len(failed) / n:.2f} % "
            f"| {100 * low:.2f}–{100 * high:.2f} % | {fleet} |")


def gauges(pushes: int, seed_base: int, jobs: int) -> None:
    """Harmless gauge pushes on the NAB series (no traffic level), `pushes` per series."""
    started = time.monotonic()
    cells: list[Cell] = [("gauge", name) for name in _nab().gauges()]
    by_cell = judge_cells(cells, list(range(seed_base, seed_base + pushes)), jobs)
    print(f"\n# Harmless gauge pushes on the NAB series: {pushes} per series, seeds "
          f"{seed_base}+, {time.monotonic() - started:.0f}s")
    print("| kind | series | pushes | failed | share | 95 % interval | in the fleet bake |")
    print("|---|---|---|---|---|---|---|")
    for (kind, name), results in by_cell.items():
        print(row(kind, str(name).removesuffix(".csv"), results))
    print(row("gauge", "all", [r for results in by_cell.values() for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=1000, help="per kind and level")
    parser.add_argument("--levels", type=float, nargs="+",
                        default=[float(v) for v in GENERATOR["levels_rps"]])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--seed-base", type=int, default=700_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nab-gauges", type=int, default=0,
                        help="also this many harmless gauge pushes per NAB series")
    args = parser.parse_args()
    started = time.monotonic()
    seeds = list(range(args.seed_base, args.seed_base + args.pushes))
    cells: list[Cell] = [(kind, level) for kind in args.kinds for level in args.levels]
    by_cell = judge_cells(cells, seeds, args.jobs)
    print(f"# Harmless pushes through the guard: {args.pushes} per kind and level, "
          f"seeds {args.seed_base}+, {time.monotonic() - started:.0f}s")
    print("| kind | rps | pushes | failed | share | 95 % interval | in the fleet bake |")
    print("|---|---|---|---|---|---|---|")
    for (kind, level), results in by_cell.items():
        print(row(kind, level, results))
    worst = 0.0
    for level in args.levels:
        results = [r for (_, lv), rs in by_cell.items() if lv == level for r in rs]
        print(row("all", level, results))
        worst = max(worst, sum(1 for v, _ in results if v == "fail") / len(results))
    met = "met" if worst <= 0.01 else "NOT met"
    print(f"\nGoal: at most 1 % of harmless pushes fail at every traffic level: {met} "
          f"(worst level {100 * worst:.2f} %)")
    if args.nab_gauges > 0:
        gauges(args.nab_gauges, args.seed_base, args.jobs)


if __name__ == "__main__":
    main()

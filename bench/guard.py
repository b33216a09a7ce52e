"""Guard quality benchmark: `python -m bench.guard [--seed N] [--jobs 2] [--write DIR] [--quick]`.

Generates a seeded set of pushes (bench/synthetic.py: count, ratio and
latency checks at 0.5 to 500 requests per second with a daily cycle; shapes
step, ramp, delayed onset; harmless pushes with and without restart blips;
bench/nab.py: the same on real NAB AWS CloudWatch backgrounds), replays
every push through the guard exactly as the pusher would (checks.scenario)
and through two reference judges (bench/judges.py), and prints the false
alarm rate, detection by severity, the inconclusive rate and the time to
detect, by kind and traffic level, the three judges side by side, and which
of issue 4's goals are met. `--write DIR` also saves every scenario as JSON
for `pushguard judge`.

On the synthetic pushes it also runs two oracles (bench/oracle.py) that read
the generator's own draws: one knows the true noise model, one also its
realisation (sampling noise only). Printed beside the guard, they show how
much of a detection gap is statistics the guard could still win and how much
no judge can: the same false-alarm budget, one test at the end of the canary
bake. `--quick` runs a quarter of the pushes, for iterating only.

Time to detect is measured from the end of the canary's warm-up, or from
the regression's onset when that is later, to the look that failed.
"""

from __future__ import annotations

import os

# one BLAS thread per worker process: the work is many small arrays
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import asyncio
import json
import math
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench import judges, oracle
from bench.nab import GAUGE_CHECK, Nab, default_root, gauge_scenario, traffic_scenario
from bench.synthetic import CHECKS, GENERATOR, SHAPES, scenario
from checks.scenario import load, replay

LOOSE = 0.2  # the guard again with a 20 % false-alarm budget, near the references' rate
JUDGES = ("guard", f"guard@{LOOSE:g}", "kayenta", "flagger")
# background, kind, level, expected, severity, shape, seed
Spec = tuple[str, str, float, str, str, str, int]


def make_specs(seed: int, per_cell: int, nab_gauge: int, nab_traffic: int) -> list[Spec]:
    specs: list[Spec] = []
    n = 0

    def add(background: str, kind: str, level: float, expected: str, count: int) -> None:
        nonlocal n
        for i in range(count):
            n += 1
            sev, shape = ("none", "none") if expected == "harmless" else \
                (("severe", "moderate")[i % 2], SHAPES[(i // 2) % len(SHAPES)])
            specs.append((background, kind, level, expected, sev, shape, seed * 1_000_003 + n))

    for kind in ("count", "ratio", "latency"):
        for level in GENERATOR["levels_rps"]:
            add("synthetic", kind, level, "harmless", per_cell)
            add("synthetic", kind, level, "regression", per_cell)
    for kind in ("count", "ratio"):
        for level in GENERATOR["levels_rps"]:
            add("nab-traffic", kind, level, "harmless", nab_traffic)
            add("nab-traffic", kind, level, "regression", nab_traffic)
    for name in Nab(default_root()).gauges():
        add(f"nab:{name}", "gauge", 0.0, "harmless", nab_gauge)
        add(f"nab:{name}", "gauge", 0.0, "regression", nab_gauge)
    return specs


def build(spec: Spec, nab: Nab, latent: dict[str, Any] | None = None) -> dict[str, Any]:
    background, kind, level, expected, sev, shape, seed = spec
    if background == "synthetic":
        return scenario(kind, level, expected, sev, shape, seed, latent)
    if background == "nab-traffic":
        return traffic_scenario(nab, kind, level, expected, sev, shape, seed)
    return gauge_scenario(nab, background.removeprefix("nab:"), expected, sev, shape, seed)


def run_chunk(chunk: list[Spec], write: str | None) -> list[dict[str, Any]]:
    """Judge a chunk of scenarios with the three judges (runs in a worker process)."""
    nab = Nab(default_root())
    out = []
    for spec in chunk:
        latent: dict[str, Any] = {}
        data = build(spec, nab, latent)
        if write:
            name = f"{spec[6]}-{spec[1]}-{spec[3]}.json"
            (Path(write) / name).write_text(json.dumps(data))
        s = load(data)
        onset = timedelta(seconds=data["notes"]["onset_s"] or 0.0)
        origin = max(s.waves[0] + s.guard.warmup, s.waves[0] + onset)
        result: dict[str, Any] = {"spec": spec, "notes": data["notes"]}
        g = asyncio.run(replay(s))
        loose = asyncio.run(replay(replace(s, guard=replace(s.guard, false_alarm=LOOSE))))
        kayenta, flagger = judges.kayenta_waves(s), judges.flagger_waves(s)
        outcomes = {"guard": judges.Outcome(g.verdict.value, g.wave,
                                            g.at if g.verdict.value == "fail" else None),
                    JUDGES[1]: judges.Outcome(loose.verdict.value, loose.wave,
                                              loose.at if loose.verdict.value == "fail"
                                              else None),
                    "kayenta": judges.kayenta_decide(kayenta),
                    "flagger": judges.flagger_decide(flagger)}
        for judge, o in outcomes.items():
            ttd = (o.at - origin).total_seconds() if o.at is not None else None
            result[judge] = {"verdict": o.verdict, "wave": o.wave, "ttd": ttd}
        result["kayenta"]["score"] = judges.kayenta_score(kayenta)
        result["flagger"]["score"] = judges.flagger_score(flagger)
        result["guard_reason"] = g.reason
        if latent:
            result["oracle"] = oracle.judge(data, latent, spec[6])
        out.append(result)
    return out


def rate(rows: list[dict[str, Any]], judge: str, test: Any) -> str:
    if not rows:
        return "-"
    k = sum(1 for r in rows if test(r[judge]))
    return f"{100.0 * k / len(rows):5.1f}% ({k}/{len(rows)})"


def ttd(rows: list[dict[str, Any]], judge: str) -> str:
    times = [r[judge]["ttd"] for r in rows if r[judge]["verdict"] == "fail"]
    if not times:
        return "-"
    return f"{np.median(times):4.0f}s / {np.percentile(times, 90):4.0f}s"


def pick(rows: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    out = rows
    for key, value in want.items():
        if key == "min_level":
            out = [r for r in out if r["notes"]["level"] is not None
                   and r["notes"]["level"] >= value]
        elif key == "kinds":
            out = [r for r in out if r["notes"]["kind"] in value]
        else:
            out = [r for r in out if r["notes"].get(key, r["spec"][3]) == value]
    return out


def fails(o: dict[str, Any]) -> bool:
    return bool(o["verdict"] == "fail")


def fails_bake1(o: dict[str, Any]) -> bool:
    return bool(o["verdict"] == "fail" and o["wave"] == 1)


def inconclusive(o: dict[str, Any]) -> bool:
    return bool(o["verdict"] == "inconclusive")


def table(title: str, header: list[str], lines: Iterable[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in lines:
        print("| " + " | ".join(line) + " |")


def report(rows: list[dict[str, Any]]) -> None:
    traffic = ("count", "ratio", "latency")
    harmless = [r for r in rows if r["spec"][3] == "harmless"]
    severe = pick(rows, severity="severe", kinds=traffic, min_level=5)
    moderate = pick(rows, severity="moderate", kinds=traffic, min_level=5)
    table("Side by side (count, ratio, latency at >= 5 rps for detection; all harmless)",
          ["", *JUDGES], [
              ["harmless pushes failed", *(rate(harmless, j, fails) for j in JUDGES)],
              ["harmless inconclusive", *(rate(harmless, j, inconclusive) for j in JUDGES)],
              ["severe failed, canary bake", *(rate(severe, j, fails_bake1) for j in JUDGES)],
              ["severe failed, push", *(rate(severe, j, fails) for j in JUDGES)],
              ["severe time to detect, median / p90", *(ttd(severe, j) for j in JUDGES)],
              ["moderate failed, canary bake", *(rate(moderate, j, fails_bake1) for j in JUDGES)],
              ["moderate failed, push", *(rate(moderate, j, fails) for j in JUDGES)],
              ["all pushes >= 1 rps inconclusive",
               *(rate(pick(rows, min_level=1), j, inconclusive) for j in JUDGES)]])
    levels = GENERATOR["levels_rps"]
    table("Guard by traffic level (count, ratio, latency; synthetic and NAB traffic)",
          ["rps", "harmless failed", "harmless inconclusive", "severe failed (canary bake)",
           "severe ttd median / p90", "moderate failed (canary bake)", "moderate failed (push)"],
          ([f"{lv:g}",
            rate(pick(harmless, level=lv), "guard", fails),
            rate(pick(harmless, level=lv), "guard", inconclusive),
            rate(pick(rows, severity="severe", level=lv), "guard", fails_bake1),
            ttd(pick(rows, severity="severe", level=lv), "guard"),
            rate(pick(rows, severity="moderate", level=lv), "guard", fails_bake1),
            rate(pick(rows, severity="moderate", level=lv), "guard", fails)]
           for lv in levels))
    table("By kind and background (harmless failed | severe failed | "
          "moderate failed, whole push; detection at >= 5 rps for traffic kinds)",
          ["kind", "background", "judge", "harmless failed", "harmless inconclusive",
           "severe failed", "severe ttd", "moderate failed"],
          _kind_lines(rows))
    shapes = [["harmless", "blip" if b else "no blip", *(rate(
        [r for r in harmless if r["notes"]["blip"] == b], j, fails) for j in JUDGES)]
        for b in (False, True)]
    shapes += [["regression " + s, "", *(rate(pick(rows, shape=s, kinds=traffic, min_level=5),
                                              j, fails) for j in JUDGES)] for s in SHAPES]
    table("By shape (failed)", ["shape", "", *JUDGES], shapes)
    oracle_tables(rows)
    goals(rows)


def _kind_lines(rows: list[dict[str, Any]]) -> Iterable[list[str]]:
    for kind in ("count", "ratio", "latency", "gauge"):
        for bg in ("synthetic", "nab"):
            sub = [r for r in pick(rows, kind=kind)
                   if r["notes"]["background"].startswith("NAB") == (bg == "nab")]
            if not sub:
                continue
            det = sub if kind == "gauge" else pick(sub, min_level=5)
            for j in JUDGES:
                yield [kind, bg, j, rate(pick(sub, severity="none"), j, fails),
                       rate(pick(sub, severity="none"), j, inconclusive),
                       rate(pick(det, severity="severe"), j, fails),
                       ttd(pick(det, severity="severe"), j),
                       rate(pick(det, severity="moderate"), j, fails)]


def oracle_tables(rows: list[dict[str, Any]]) -> None:
    """The guard beside the oracles (bench/oracle.py) on the synthetic scenarios."""
    syn = [r for r in rows if "oracle" in r]
    if not syn:
        return

    def o_rate(sub: list[dict[str, Any]], which: str) -> str:
        k = sum(1 for r in sub if r["oracle"][which] == "fail")
        return f"{100.0 * k / len(sub):5.1f}%" if sub else "-"

    def g_rate(sub: list[dict[str, Any]]) -> str:
        k = sum(1 for r in sub if fails_bake1(r["guard"]))
        return f"{100.0 * k / len(sub):5.1f}%" if sub else "-"

    def lines(sev: str) -> Iterable[list[str]]:
        for kind in ("count", "ratio", "latency", "all"):
            for lv in [*GENERATOR["levels_rps"], ">=5"]:
                sub = pick(syn, severity=sev) if kind == "all" else pick(syn, severity=sev,
                                                                         kind=kind)
                sub = pick(sub, min_level=5) if lv == ">=5" else pick(sub, level=lv)
                if sub:
                    yield [kind, f"{lv:g}" if isinstance(lv, float | int) else lv,
                           str(len(sub)), g_rate(sub), o_rate(sub, "model"),
                           o_rate(sub, "clairvoyant")]

    header = ["kind", "rps", "n", "guard", "oracle (noise model)",
              "clairvoyant (sampling only)"]
    table(f"Oracles (synthetic only; failed by the end of the canary bake, alpha "
          f"{oracle.ALPHA:g} one-sided): MODERATE regressions", header, lines("moderate"))
    table("Oracles: SEVERE regressions", header, lines("severe"))
    table("Oracles: HARMLESS pushes failed (the oracles' own false alarms, canary bake)",
          header, lines("none"))


def share(sub: list[dict[str, Any]], judge: str, test: Any) -> float:
    return sum(1 for r in sub if test(r[judge])) / max(len(sub), 1)


def goal_lines(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the traffic kinds (count, ratio, latency) in `rows`."""
    traffic = ("count", "ratio", "latency")
    harmless = pick(rows, severity="none", kinds=traffic)
    severe = pick(rows, severity="severe", kinds=traffic, min_level=5)
    moderate = pick(rows, severity="moderate", kinds=traffic, min_level=5)
    worst = max(share(pick(harmless, level=lv), "guard", fails)
                for lv in GENERATOR["levels_rps"])
    times = [r["guard"]["ttd"] for r in severe if r["guard"]["verdict"] == "fail"]
    med = float(np.median(times)) if times else float("inf")
    low = pick(rows, min_level=1, kinds=traffic)
    levels = [pick(harmless, level=lv) for lv in GENERATOR["levels_rps"]]
    worst_rows = max(levels, key=lambda sub: share(sub, "guard", fails))
    out = [
        ("<= 1% of harmless pushes fail, at every traffic level (cells of ~190 cannot "
         "show it: bench.falsealarms)",
         f"worst level {rate(worst_rows, 'guard', fails).strip()}", worst <= 0.01),
        (">= 95% of severe regressions fail at >= 5 rps (canary bake)",
         f"{100 * share(severe, 'guard', fails_bake1):.1f}%",
         share(severe, "guard", fails_bake1) >= 0.95),
        ("median time to detect severe <= 3 min after warm-up", f"{med:.0f}s", med <= 180),
        (">= 80% of moderate regressions fail by the end of the bake (canary bake)",
         f"{100 * share(moderate, 'guard', fails_bake1):.1f}%",
         share(moderate, "guard", fails_bake1) >= 0.8),
        (">= 80% of moderate regressions fail by the end of the bake (canary and fleet)",
         f"{100 * share(moderate, 'guard', fails):.1f}%",
         share(moderate, "guard", fails) >= 0.8),
        ("<= 5% inconclusive at >= 1 rps", f"{100 * share(low, 'guard', inconclusive):.1f}%",
         share(low, "guard", inconclusive) <= 0.05),
    ]
    detect = severe + moderate
    pairs = [(guard, ref) for guard in JUDGES[:2] for ref in JUDGES[2:]]
    for guard, ref in pairs:
        fewer = share(harmless, guard, fails) < share(harmless, ref, fails)
        better = share(detect, guard, fails) >= share(detect, ref, fails)
        out.append((f"{guard}: fewer false alarms than {ref} at its documented setting, "
                    "at equal or better detection",
                    f"FA {100 * share(harmless, guard, fails):.1f}% vs "
                    f"{100 * share(harmless, ref, fails):.1f}%, detection "
                    f"{100 * share(detect, guard, fails):.1f}% vs "
                    f"{100 * share(detect, ref, fails):.1f}%", fewer and better))
    out += [matched(harmless, detect, guard, ref) for guard, ref in pairs]
    return out


def matched(harmless: list[dict[str, Any]], detect: list[dict[str, Any]], guard: str,
            ref: str) -> tuple[str, str, bool]:
    """The guard against every setting of a reference judge (a cut on its per-push
    score, see `bench.judges`): met when each setting that detects at least as
    many regressions as the guard raises more false alarms than the guard."""
    fa_g, det_g = share(harmless, guard, fails), share(detect, guard, fails)
    bh = np.array([r[ref]["score"] for r in harmless], dtype=float)
    bd = np.array([r[ref]["score"] for r in detect], dtype=float)
    cuts = np.unique(np.concatenate([bh, bd, [-np.inf]]))  # a push fails when score > cut
    fa = (bh[None, :] > cuts[:, None]).mean(axis=1)
    det = (bd[None, :] > cuts[:, None]).mean(axis=1)
    det_at_fa = float(det[fa <= fa_g].max())
    reach = det >= det_g
    fa_at_det = float(fa[reach].min()) if reach.any() else math.inf
    at_det = f"{100 * fa_at_det:.1f}%" if math.isfinite(fa_at_det) else "never reached"
    return (f"{guard}: fewer false alarms than {ref} at any setting of it with equal or "
            "better detection",
            f"{ref} at {100 * det_g:.1f}% detection: FA {at_det} (guard {100 * fa_g:.1f}%); "
            f"at {100 * fa_g:.1f}% FA: detection {100 * det_at_fa:.1f}%", fa_at_det > fa_g)


def goals(rows: list[dict[str, Any]]) -> None:
    synthetic = [r for r in rows if r["notes"]["background"] == "synthetic"]
    both = zip(goal_lines(synthetic), goal_lines(rows), strict=True)
    table("Goals (issue 4; count, ratio, latency checks)",
          ["goal", "synthetic", "met", "synthetic and NAB traffic", "met"],
          ([g, m1, "yes" if ok1 else "NO", m2, "yes" if ok2 else "NO"]
           for (g, m1, ok1), (_, m2, ok2) in both))
    gauges = pick(rows, kind="gauge")
    print(f"\nNAB gauges (no traffic level): harmless failed "
          f"{rate(pick(gauges, severity='none'), 'guard', fails).strip()}, severe failed "
          f"{rate(pick(gauges, severity='severe'), 'guard', fails).strip()}, moderate failed "
          f"{rate(pick(gauges, severity='moderate'), 'guard', fails).strip()}.")


def _plain(value: Any) -> Any:
    """`value` with non-finite floats (a score that no setting reaches) as strings, so
    that the file is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--per-cell", type=int, default=60,
                        help="synthetic harmless and regression pushes per kind and level")
    parser.add_argument("--nab-gauge", type=int, default=12, help="per NAB series and class")
    parser.add_argument("--nab-traffic", type=int, default=8, help="per kind, level and class")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write", help="folder to save every scenario as JSON")
    parser.add_argument("--json", help="file to save the per-scenario results")
    parser.add_argument("--quick", action="store_true",
                        help="a quarter of the pushes (--per-cell 15, --nab-gauge 3, "
                             "--nab-traffic 2), for iterating; not for the README")
    args = parser.parse_args()
    if args.quick:
        args.per_cell, args.nab_gauge, args.nab_traffic = 15, 3, 2
    began = time.monotonic()
    specs = make_specs(args.seed, args.per_cell, args.nab_gauge, args.nab_traffic)
    if args.write:
        Path(args.write).mkdir(parents=True, exist_ok=True)
    chunks = [specs[i::args.jobs * 4] for i in range(args.jobs * 4)]
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for part in pool.map(run_chunk, chunks, [args.write] * len(chunks)):
            rows.extend(part)
    harmless = sum(1 for r in rows if r["spec"][3] == "harmless")
    print(f"# Guard benchmark: seed {args.seed}, {len(rows)} pushes ({harmless} harmless, "
          f"{len(rows) - harmless} regressions), {time.monotonic() - began:.0f}s on "
          f"{args.jobs} processes")
    print("\nGenerator: " + json.dumps(GENERATOR))
    print("Checks: " + json.dumps([*CHECKS.values(), GAUGE_CHECK]))
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(_plain(rows), default=str, allow_nan=False))


if __name__ == "__main__":
    main()

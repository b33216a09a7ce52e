"""Chaos: SIGKILL `pushguard serve` at seeded random moments while it pushes to
real sshd hosts and judges real InfluxDB metrics, many times; after every
restart the records must still say exactly what happened.

Invariants checked after each restart (each check counted):
- every change the test made is in the store, in a state its pushes explain:
  none lost, none extra, none left `pushing`, a change that reached a host is
  never pushed again silently, one that did not went back to `approved` on
  the record;
- no push without a record: every push has its changes and its events, every
  release folder or `current` link on a host comes from a recorded push (or
  was there before the test), at most one push is unfinished;
- every host's recorded live release equals what `current` says on the host;
- a push the kill interrupted reads `interrupted` and the queue is halted with
  a reason naming it; it resumes through the API and the line goes on.

`make test` runs a short variant (CHAOS_KILLS, default 6, every change good,
`on_regression = "halt"`); `make chaos` runs many more kills, under both
policies (CHAOS_POLICIES=halt,rollback), with one change in five bad
(CHAOS_BAD=0.2: its metrics regress once it is live, so pushes also fail,
halt and roll back while the kills land). CHAOS_SEED picks the moments.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_env import write_tokens
from tests.fixtures_harness import (
    FAULTS_DB,
    InfluxProxy,
    Served,
    db_value,
    fleet_config,
    live_on,
    releases_on,
    serving,
    snapshot,
    wait_until,
)
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

pytest_plugins = ["tests.fixtures_faults"]

KILLS = int(os.environ.get("CHAOS_KILLS", "6"))
SEED = int(os.environ.get("CHAOS_SEED", "20261130"))
BAD = float(os.environ.get("CHAOS_BAD", "0"))
POLICIES = os.environ.get("CHAOS_POLICIES", "halt").split(",")
BASELINE = 8.0
BAKE = 5.0
GUARD = {"baseline": f"{BASELINE:g}s", "warmup": "1s", "bake": f"{BAKE:g}s", "look_every": "1s"}
UNFINISHED = ("planned", "deploying", "baking")
pytestmark = pytest.mark.timeout(120 + 30 * KILLS)
# (what, wave, at most how long after it): the moments a kill aims at. Host steps
# count from their start, so a kill lands inside the step or just after it.
STEPS = ("connect", "upload", "unpack", "switch", "activate", "prune")
TARGETS = [("claim", 0, 0.3), *((step, wave, 0.05) for wave in (1, 2) for step in STEPS),
           ("baking", 1, 5.0), ("baking", 2, 5.0)]


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def snapshot_push(db: Path, push_id: int) -> tuple[str, int, bool] | None:
    """(state, wave of its latest host step, finished) of one push."""
    state = db_value(db, "SELECT state FROM pushes WHERE id = ?", [push_id])
    if state is None:
        return None
    wave = db_value(db, "SELECT MAX(wave) FROM host_results WHERE push_id = ?", [push_id])
    finished = db_value(db, "SELECT finished_at FROM pushes WHERE id = ?", [push_id])
    return str(state), int(wave or 0), finished is not None


@dataclass
class Tally:
    """How many kills were tried and how many invariant checks held."""

    kills: int = 0
    recovery_kills: int = 0
    verdict_halts: int = 0
    fixes: int = 0
    held: Counter[str] = field(default_factory=Counter)
    moments: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: Any = "") -> None:
        if ok:
            self.held[name] += 1
        else:
            self.broken.append(f"kill {self.kills}: {name}: {detail}")

    def total(self) -> int:
        return sum(self.held.values())


class Chaos:
    """The daemon under test, its hosts, the changes it was given and the tally."""

    def __init__(self, served: Served, fleet: SshFleet, repo: Path, rng: random.Random) -> None:
        self.resumed = False
        self.policy = "halt"
        self.served = served
        self.fleet = fleet
        self.repo = repo
        self.rng = rng
        self.created: set[int] = set()
        self.tally = Tally()
        self.before_releases = releases_on(fleet)
        self.before_live = live_on(fleet)
        self.span = 10.0  # seconds a push takes; updated from the pushes that finish

    # -- steering -------------------------------------------------------------------

    def feed(self, backlog: int = 2) -> None:
        """Keep `backlog` approved changes waiting, made through the API."""
        waiting = db_value(self.served.db,
                           "SELECT COUNT(*) FROM changes WHERE state = 'approved'") or 0
        for _ in range(backlog - int(waiting)):
            n = len(self.created)
            bad = self.rng.random() < BAD
            ref = commit(self.repo, f"change {n}", {"app.txt": f"v{n}\n",
                                                    "BAD": "1\n" if bad else "0\n"})
            self.created.add(self.served.add_change(ref, f"{'bad ' if bad else ''}change {n}"))

    def serving_bad(self) -> list[str]:
        """The hosts whose live release is a bad one (its metrics regress)."""
        out = []
        for host in self.fleet.hosts:
            bad = host.local(self.fleet.deploy_path()) / "current" / "BAD"
            try:
                if bad.read_text().strip() == "1":
                    out.append(host.name)
            except OSError:
                continue
        return out

    def heal(self) -> None:
        """While a bad release is live somewhere, make sure an expedited fix is waiting:
        the pre-flight will not push anything else into the incident."""
        if not self.serving_bad() or db_value(
                self.served.db, "SELECT COUNT(*) FROM changes WHERE expedite = 1 AND state IN "
                "('approved', 'pushing')"):
            return
        n = len(self.created)
        ref = commit(self.repo, f"fix {n}", {"app.txt": f"fix {n}\n", "BAD": "0\n"})
        change = self.served.call("POST", "/v1/changes", {"ref": ref, "title": f"fix {n}"})
        self.served.call("POST", f"/v1/changes/{change['id']}/expedite", {})
        self.served.call("POST", f"/v1/changes/{change['id']}/approve", {})
        self.created.add(int(change["id"]))
        self.tally.fixes += 1

    def last_push(self) -> int:
        return int(db_value(self.served.db, "SELECT MAX(id) FROM pushes") or 0)

    def wait_for_push_after(self, push_id: int) -> int:
        """The next push's id, once it is claimed. A line that a failed verdict halted
        meanwhile is resumed, as a person would after a look."""
        def claimed() -> int:
            if self.last_push() > push_id:
                return self.last_push()
            control = db_value(self.served.db, "SELECT state FROM control WHERE id = 1")
            if control == "halted" and not db_value(
                    self.served.db, "SELECT COUNT(*) FROM pushes WHERE state IN "
                    "('planned', 'deploying', 'baking')"):
                self.tally.verdict_halts += 1
                self.served.call("POST", "/v1/resume", {"reason": "chaos: a push failed"})
            self.heal()
            return 0
        found = int(wait_until(claimed, self.span * 3, 0.01, f"no push after {push_id}"))
        if self.resumed:
            self.tally.check("the line goes on after the resume", True)
            self.resumed = False
        return found

    def wait_for(self, push_id: int, target: tuple[str, int, float]) -> None:
        """Wait until push `push_id` reached `target` (or ended), then a random while."""
        what, wave, length = target
        db = self.served.db

        def reached() -> bool:
            row = db_value(db, "SELECT state || '|' || COALESCE(finished_at, '') FROM pushes"
                           " WHERE id = ?", [push_id])
            if row is None:
                return False
            state, finished = str(row).split("|", 1)
            if finished or what == "claim":
                return True
            if what == "baking":
                top = db_value(db, "SELECT MAX(wave) FROM host_results WHERE push_id = ?",
                               [push_id]) or 0
                return state == "baking" and int(top) >= wave
            return db_value(db, "SELECT 1 FROM host_results WHERE push_id = ? AND wave = ?"
                            " AND step = ?", [push_id, wave, what]) is not None
        wait_until(reached, self.span * 2, 0.003, f"push {push_id} never reached {target}")
        time.sleep(self.rng.uniform(0.0, length))  # the random moment itself

    def kill(self) -> tuple[set[int], set[int]]:
        """SIGKILL now; the pushes that were unfinished at that moment, and those that had
        ended while a change of theirs was still going out (a rollback under way)."""
        self.served.kill()
        self.tally.kills += 1
        snap = snapshot(self.served.db)
        unfinished = {p["id"]: p["state"] for p in snap["pushes"].values()
                      if p["state"] in UNFINISHED}
        latest: dict[int, int] = {}  # change -> the last push that carried it
        for p, c in snap["push_changes"]:
            latest[c] = max(p, latest.get(c, 0))
        stranded = {latest[c] for c, row in snap["changes"].items()
                    if row["state"] == "pushing" and latest[c] not in unfinished}
        steps = [r for r in snap["host_results"] if r["push_id"] in unfinished]
        where = "idle" if not unfinished else ", ".join(
            f"push {p} {state}" + (f" after {steps[-1]['step']} on {steps[-1]['host']}"
                                   f" (wave {steps[-1]['wave']})" if steps else "")
            for p, state in unfinished.items())
        if stranded:
            where = f"push {min(stranded)} rolling back"
        self.tally.moments[where.split(" after")[0].split(" ", 2)[-1]] += 1
        print(f"kill {self.tally.kills}: {where}")
        return set(unfinished), stranded

    def restart(self) -> None:
        """Start again; sometimes kill it once more while it recovers."""
        if self.rng.random() < 0.25:
            self.served.spawn()
            time.sleep(self.rng.uniform(0.05, 1.5))  # the scenario: a moment during start-up
            self.served.kill()
            self.tally.kills += 1
            self.tally.recovery_kills += 1
        self.served.start()

    # -- invariants ----------------------------------------------------------------------

    def quiesce(self) -> dict[str, Any]:
        """Make sure no push runs (pausing the line if it is running) and return status."""
        status = self.served.call("GET", "/v1/status")
        if status["state"] == "running":
            self.served.call("POST", "/v1/pause", {"reason": "chaos: checking invariants"})
        wait_until(lambda: self.served.call("GET", "/v1/status")["current_push"] is None,
                   self.span * 3, 0.1, "the running push never ended")
        return status

    def after_restart(self, interrupted: set[int], stranded: set[int]) -> None:
        t = self.tally
        status = self.quiesce()
        snap = snapshot(self.served.db)
        pushes = snap["pushes"]
        for push_id in stranded:
            changes = [c for p, c in snap["push_changes"] if p == push_id]
            t.check("a change left going out by a rollback is failed on the record",
                    all(snap["changes"][c]["state"] == "failed" for c in changes), changes)
            t.check("the queue is halted after a rollback the kill cut short",
                    status["state"] == "halted" and f"push {push_id}" in status["reason"],
                    status)
        for push_id in interrupted:
            t.check("an interrupted push reads interrupted",
                    pushes[push_id]["state"] == "interrupted", pushes[push_id])
            t.check("the queue is halted after an interrupted push",
                    status["state"] == "halted" and f"push {push_id}" in status["reason"]
                    and snap["control"]["state"] == "halted", status)
        self.bookkeeping(snap)
        self.hosts(snap)
        if snap["control"]["state"] != "running":
            control = self.served.call("POST", "/v1/resume", {"reason": "chaos: checked"})
            t.check("the queue resumes through the API", control["state"] == "running",
                    control)
            self.resumed = True

    def bookkeeping(self, snap: dict[str, Any]) -> None:
        t = self.tally
        changes, pushes = snap["changes"], snap["pushes"]
        t.check("every change is accounted for", set(changes) == self.created,
                (sorted(changes), sorted(self.created)))
        of_change: dict[int, list[int]] = {}
        of_push: dict[int, list[int]] = {}
        for push_id, change_id in snap["push_changes"]:
            of_change.setdefault(change_id, []).append(push_id)
            of_push.setdefault(push_id, []).append(change_id)
        touched: dict[int, set[str]] = {}
        for row in snap["host_results"]:
            if row["step"] != "connect":
                touched.setdefault(row["push_id"], set()).add(row["host"])
        unfinished = [p for p in pushes.values() if p["state"] in UNFINISHED]
        t.check("no push is left unfinished after recovery", not unfinished, unfinished)
        pushed_events = {e["entity_id"] for e in snap["events"]
                         if e["entity"] == "push" and e["from_state"] is None}
        t.check("every push has its changes and its claim event",
                all(of_push.get(p) for p in pushes) and {str(p) for p in pushes} <= pushed_events,
                (of_push, pushed_events))
        for change_id, change in changes.items():
            mine = sorted(of_change.get(change_id, []))
            states = [pushes[p]["state"] for p in mine]
            state = change["state"]
            if state == "live":
                ok = states[-1:] == ["passed"]
            elif state == "approved":
                ok = all(s in ("interrupted", "aborted") and not touched.get(p)
                         for p, s in zip(mine, states, strict=True))
            elif state == "failed":
                ok = bool(mine) and states[-1] in ("failed", "interrupted", "rolled_back",
                                                   "aborted")
            elif state == "reverted":
                ok = states[-1:] == ["rolled_back"]
            else:
                ok = state in ("pending", "cancelled")
            t.check("each change's state is explained by its pushes", ok,
                    (change_id, state, list(zip(mine, states, strict=True))))
            earlier = mine[:-1]
            t.check("a change that reached a host is never pushed again silently",
                    not any(touched.get(p) for p in earlier), (change_id, mine, touched))

    def hosts(self, snap: dict[str, Any]) -> None:
        t = self.tally
        recorded = {h["name"]: h["live_release"]
                    for h in self.served.call("GET", "/v1/hosts")["hosts"]}
        actual = live_on(self.fleet)
        t.check("every host's recorded live release is what `current` says there",
                recorded == actual, (recorded, actual))
        released = {p["release"] for p in snap["pushes"].values()}
        uploaded = {(r["host"], pushes_release)
                    for r in snap["host_results"]
                    for pushes_release in [snap["pushes"][r["push_id"]]["release"]]
                    if r["step"] in ("upload", "unpack")}
        for name, folders in releases_on(self.fleet).items():
            new = folders - self.before_releases[name]
            t.check("no release on a host without a recorded push",
                    all((name, r) in uploaded and r in released for r in new), (name, new))
            live = actual[name]
            t.check("what runs on a host came from a recorded push",
                    live == self.before_live[name] or live in released, (name, live))

    def learn_span(self) -> None:
        spans = db_value(self.served.db,
                         "SELECT MAX((julianday(finished_at) - julianday(started_at)) * 86400)"
                         " FROM pushes WHERE state = 'passed'")
        if spans:
            self.span = max(self.span, float(spans))


@pytest.fixture(params=POLICIES)
def chaos(request: pytest.FixtureRequest, tmp_path: Path, shop_fleet: SshFleet,
          influxd: Influxd, shop: ShopSimulator, fault_shop: ShopSimulator) -> Chaos:
    # (fault_shop: the fault tests' metrics start now, so they have a baseline by then)
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
    tokens = write_tokens(tmp_path / "tokens")
    port = _port()
    config = fleet_config(tmp_path / "config.toml", shop_fleet, repo=repo,
                          influx_url=influxd.url, database="e2e",
                          tokens_file=tmp_path / "tokens", api_port=port, checks=CHECKS,
                          guard=GUARD, schedule={"every": "2s"},
                          deploy={"on_regression": request.param})
    served = Served(config, port, tokens, tmp_path / "var" / "pushguard.db")
    wait_until(lambda: shop.healthy_for() > BASELINE + BAKE + 1, 60)  # a clean baseline
    made = Chaos(served, shop_fleet, repo, random.Random(SEED))
    made.policy = request.param
    return made


def test_sigkill_at_random_moments_keeps_every_record(chaos: Chaos) -> None:
    began = time.monotonic()
    rng = chaos.rng
    with serving(chaos.served):
        last = 0
        while chaos.tally.kills - chaos.tally.recovery_kills < KILLS:
            chaos.feed()
            chaos.heal()
            if rng.random() < 0.85:  # a random moment of the next push
                last = chaos.wait_for_push_after(last)
                chaos.wait_for(last, rng.choice(TARGETS))
            else:  # any moment at all, maybe between pushes
                time.sleep(rng.uniform(0.0, 2.0))
            interrupted, stranded = chaos.kill()
            chaos.restart()
            chaos.after_restart(interrupted, stranded)
            chaos.learn_span()
            last = chaos.last_push()
        # no more kills: the line drains what is left and ends where the records say
        def drained() -> bool:
            snap = snapshot(chaos.served.db)
            if snap["control"]["state"] == "halted":  # a push failed its checks: a person resumes
                chaos.served.call("POST", "/v1/resume", {"reason": "chaos: drain"})
            chaos.heal()  # and the fleet ends on a good release
            return not chaos.serving_bad() and not [
                c for c in snap["changes"].values() if c["state"] in ("approved", "pushing")]
        wait_until(drained, chaos.span * 6, 0.2, "the queue did not drain after the kills")
        chaos.quiesce()
        snap = snapshot(chaos.served.db)
        chaos.bookkeeping(snap)
        chaos.hosts(snap)
    tally = chaos.tally
    seconds = time.monotonic() - began
    policy = chaos.policy
    print(f"\nchaos (seed {SEED}, on_regression={policy}, bad={BAD:g}): {tally.kills} kills "
          f"tried ({tally.recovery_kills} during recovery), {len(snap['pushes'])} pushes, "
          f"{len(chaos.created)} changes, {tally.verdict_halts} halts resumed between kills, "
          f"{tally.fixes} expedited fixes; "
          f"{tally.total()} invariant checks held, {len(tally.broken)} broken, {seconds:.0f}s")
    print("  kills by moment: " + ", ".join(f"{m} {n}" for m, n in sorted(tally.moments.items())))
    for name, n in sorted(tally.held.items()):
        print(f"  {n:4d}  {name}")
    assert not tally.broken, "\n".join(tally.broken)
    assert tally.kills >= KILLS


def test_kill_between_a_failed_verdict_and_the_halt_keeps_the_line_stopped(
        tmp_path: Path, fault_fleet: SshFleet, influx_proxy: InfluxProxy) -> None:
    """A push that failed must leave the queue halted even when the daemon dies right
    after it recorded the verdict, while it writes the deploy marker (held here by the
    proxy, so the kill lands there every time). The push fails at its canary, whose
    activate command exits 3."""
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
    tokens = write_tokens(tmp_path / "tokens")
    port = _port()
    config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                          influx_url=influx_proxy.url, database=FAULTS_DB,
                          tokens_file=tmp_path / "tokens", api_port=port,
                          guard={"baseline": "5s", "warmup": "0s", "bake": "1s",
                                 "look_every": "1s"}, schedule={"every": "2s"})
    served = Served(config, port, tokens, tmp_path / "var" / "pushguard.db")
    influx_proxy.set("slow", delay=30.0, only="/write")  # markers time out after 2s
    with serving(served):
        broken = served.add_change(commit(repo, "broken", {"bin/activate": "#!/bin/sh\nexit 3\n"}),
                                   "breaks the reload")
        waiting = served.add_change(commit(repo, "next", {"bin/activate": ACTIVATE}), "next")

        def end_marker_in_flight() -> bool:
            """The push is recorded failed and its end marker is being written (held)."""
            writes = [r for r in influx_proxy.requests if r.startswith(b"POST /write")]
            failed = db_value(served.db, "SELECT COUNT(*) FROM pushes WHERE state = 'failed'")
            return bool(failed) and len(writes) >= 2  # the start marker, then the end one
        wait_until(end_marker_in_flight, 60, 0.005)
        served.kill()
        influx_proxy.set("pass")
        served.start()
        status = served.call("GET", "/v1/status")
        pushes = served.call("GET", "/v1/pushes")["pushes"]
        first = pushes[-1]
        assert first["state"] == "failed" and first["changes"] == [broken], first
        assert served.call("GET", f"/v1/changes/{broken}")["state"] == "failed"
        assert status["state"] == "halted" and len(pushes) == 1, (
            f"push {first['id']} failed ({first['reason']}) but after the restart the queue "
            f"is {status['state']!r} and the next change ({waiting}) goes out: {pushes[0]}")

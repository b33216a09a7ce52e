"""Crash safety: SIGKILL the daemon at each push step in turn; after each restart
nothing is lost or pushed twice, the push reads `interrupted`, every host's live
release is recorded as it is on the host, and the queue is halted with a reason."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_env import write_config, write_tokens
from tests.fixtures_daemon import current_of
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(400)

Probe = Callable[[sqlite3.Connection, int], bool]


def _push_of(db: sqlite3.Connection, change_id: int) -> tuple[int, str] | None:
    row = db.execute("SELECT p.id, p.state FROM pushes p JOIN push_changes c ON c.push_id = p.id"
                     " WHERE c.change_id = ? ORDER BY p.id DESC LIMIT 1", [change_id]).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _step_started(step: str, wave: int = 1) -> Probe:
    def probe(db: sqlite3.Connection, change_id: int) -> bool:
        push = _push_of(db, change_id)
        return push is not None and db.execute(
            "SELECT 1 FROM host_results WHERE push_id = ? AND step = ? AND wave = ?",
            [push[0], step, wave]).fetchone() is not None
    return probe


def _claimed(db: sqlite3.Connection, change_id: int) -> bool:
    return _push_of(db, change_id) is not None


def _baking(db: sqlite3.Connection, change_id: int) -> bool:
    push = _push_of(db, change_id)
    return push is not None and push[1] == "baking"


def _final_look_due(db: sqlite3.Connection, change_id: int) -> bool:
    """The fleet wave's bake has made all looks but the last: the verdict is next."""
    push = _push_of(db, change_id)
    if push is None:
        return False
    row = db.execute("SELECT MAX(look) FROM check_results WHERE push_id = ? AND wave = 2",
                     [push[0]]).fetchone()
    return row is not None and row[0] is not None and int(row[0]) >= 2


STEPS: list[tuple[str, Probe]] = [
    ("claim", _claimed),
    ("upload", _step_started("upload")),
    ("switch", _step_started("switch")),
    ("bake", _baking),
    ("verdict", _final_look_due),
]


class Daemon:
    """`pushguard serve` as a child process, and a small REST client for it."""

    def __init__(self, config: Path, port: int, tokens: dict[str, str], db: Path) -> None:
        self.config, self.port, self.tokens, self.db = config, port, tokens, db
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "serve", "-c", str(self.config)],
                cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.call("GET", "/readyz")["status"] == "ready":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("the daemon did not become ready")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             role: str = "admin") -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.tokens[role]}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, probe: Probe, change_id: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
            while time.monotonic() < deadline:
                if probe(db, change_id):
                    return
                time.sleep(0.002)
        raise AssertionError(f"{probe} never held for change {change_id}")


@pytest.fixture
def daemon(tmp_path: Path, shop_fleet: SshFleet, influxd: Influxd,
           shop: ShopSimulator) -> Iterator[tuple[Daemon, Path]]:
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tokens = write_tokens(tmp_path / "tokens")
    config = write_config(
        tmp_path / "config.toml", state_dir=tmp_path / "var", repo=repo,
        hosts=[{"name": h.name, "address": h.address, "port": h.port}
               for h in shop_fleet.hosts],
        ssh={"user": shop_fleet.user, "key_file": str(shop_fleet.key_file),
             "known_hosts": str(shop_fleet.known_hosts), "connect_timeout": "5s"},
        influx_url=influxd.url, database="e2e", tokens_file=tmp_path / "tokens",
        api_port=port, checks=CHECKS, deploy={"path": shop_fleet.deploy_path()},
        # a short baseline: after each kill and resume, normal changes wait one baseline
        # (a clean one after the halt); these kills need a verdict, not a strong one
        guard={"baseline": "8s", "warmup": "1s", "bake": "6s", "look_every": "1s"},
        schedule={"every": "1s"})
    time.sleep(max(0.0, 15 - shop.healthy_for()))  # a clean baseline (see fixtures_daemon)
    process = Daemon(config, port, tokens, tmp_path / "var" / "pushguard.db")
    yield process, repo
    process.stop()


def test_sigkill_at_each_push_step(daemon: tuple[Daemon, Path], shop_fleet: SshFleet) -> None:
    process, repo = daemon
    process.start()
    held = 0
    for number, (step, probe) in enumerate(STEPS):
        ref = commit(repo, f"change {number}", {"app.txt": f"v{number}\n"})
        change = process.call("POST", "/v1/changes",
                              {"ref": ref, "title": f"change {number}", "author": "dev"})
        process.call("POST", f"/v1/changes/{change['id']}/approve", {})
        process.wait_for(probe, change["id"])
        process.kill()
        process.start()
        push_id = held_invariants(process, shop_fleet, change["id"], step)
        held += 1
        process.call("POST", "/v1/resume", {"reason": f"checked after the kill at {step}"})
        assert process.call("GET", "/v1/status")["state"] in ("running", "outside-window")
        print(f"kill at {step}: push {push_id} interrupted, invariants held")
    assert held == len(STEPS)


def held_invariants(process: Daemon, fleet: SshFleet, change_id: int, step: str) -> int:
    pushes = process.call("GET", "/v1/pushes?limit=100")["pushes"]
    mine = [p for p in pushes if change_id in p["changes"]]
    assert len(mine) == 1, f"{step}: change {change_id} in pushes {mine}"
    push = process.call("GET", f"/v1/pushes/{mine[0]['id']}")
    assert push["state"] == "interrupted", (step, push["state"], push["reason"])
    touched = {h["name"] for h in push["hosts"] if h["step"] != "connect"}
    change = process.call("GET", f"/v1/changes/{change_id}")
    # a change that reached a host is not sent again silently; one that did not goes back
    assert change["state"] == ("failed" if touched else "approved"), (step, change, touched)
    status = process.call("GET", "/v1/status")
    assert status["state"] == "halted" and f"push {push['id']}" in status["reason"], status
    recorded = {h["name"]: h["live_release"] for h in process.call("GET", "/v1/hosts")["hosts"]}
    assert recorded == current_of(fleet), step
    every = process.call("GET", "/v1/changes?limit=1000")["changes"]
    assert change_id in [c["id"] for c in every]
    return int(push["id"])

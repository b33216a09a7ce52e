"""Secrets: API tokens, the InfluxDB password and the SSH key never show in the
log (JSON, at debug level, through a push, an InfluxDB outage and refused
calls), in any API answer or in the CLI's output; a secrets file that others
may read draws a warning at start; a host whose key changed is refused and
nothing runs there."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncssh
import pytest

from daemon import config as config_module
from daemon.models import Outcome, PushState, QueueState
from daemon.queue import Queue
from daemon.service import Service
from tests.daemon_env import write_tokens
from tests.fixtures_harness import (
    FAULTS_DB,
    ROOT,
    InfluxProxy,
    Served,
    fleet_config,
    free_port,
    live_on,
    releases_on,
    serving,
    wait_until,
)
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

pytest_plugins = ["tests.fixtures_faults"]
pytestmark = pytest.mark.timeout(150)

BASELINE = 8.0
BAKE = 4.0  # short: the verdict does not matter here, only that the metrics were read
GUARD = {"baseline": f"{BASELINE:g}s", "warmup": "1s", "bake": f"{BAKE:g}s", "look_every": "1s"}
QUICK = {"baseline": "5s", "warmup": "0s", "bake": "1s", "look_every": "1s"}


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_secrets_never_appear_in_logs_api_answers_or_cli_output(
        tmp_path: Path, fault_fleet: SshFleet, fault_shop: ShopSimulator,
        influx_proxy: InfluxProxy) -> None:
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
    tokens = write_tokens(tmp_path / "tokens")
    password = "pw-" + secrets.token_urlsafe(24)
    _secret_file(tmp_path / "influx-password", password)
    port = free_port()
    config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                          influx_url=influx_proxy.url, database=FAULTS_DB,
                          tokens_file=tmp_path / "tokens", api_port=port, checks=CHECKS,
                          guard=GUARD, schedule={"every": "2s"},
                          influx_extra={"user": "pushguard",
                                        "password_file": str(tmp_path / "influx-password")})
    served = Served(config, port, tokens, tmp_path / "var" / "pushguard.db",
                    args=("--log-format", "json", "--log-level", "debug"), keep_replies=True)
    wait_until(lambda: fault_shop.healthy_for() > BASELINE + BAKE + 1, 60)  # clean baseline
    outputs: list[str] = []
    with serving(served):
        # refused calls of every kind, some carrying a real token in the wrong place
        wrong = secrets.token_hex(16)
        served.send("POST", "/v1/pause", {"reason": "x"}, auth="read")  # 403
        served.send("POST", "/v1/pause", {"reason": "x"}, auth=None,
                    headers={"Authorization": f"Bearer {wrong}"})  # 401
        served.send("POST", "/v1/pause", {"reason": "x"}, auth=None,
                    headers={"Authorization": f"Basic {tokens['admin']}"})
        served.send("POST", "/v1/pause", {"reason": "x"}, auth=None,
                    headers={"Authorization": f"Bearer {tokens['admin']}x"})
        served.send("POST", f"/v1/pause?token={tokens['admin']}", {"reason": "x"}, auth=None)
        served.send("POST", "/v1/changes", raw=f"{{\"ref\": {tokens['deploy']!r}".encode())
        served.send("POST", "/v1/pushes", {"token": tokens["admin"]})
        # (a 404 may quote the path it was asked for back to its caller: not kept here,
        # but the log must not show it)
        served.keep_replies = False
        served.send("GET", f"/v1/changes/{tokens['read']}")
        served.keep_replies = True
        # a push whose pre-flight meets InfluxDB down (postponed), then one that passes
        influx_proxy.set("down")
        change = served.add_change(commit(repo, "one", {"app.txt": "one\n"}), "one")
        wait_until(lambda: served.call("GET", "/v1/pushes")["pushes"], 30)
        influx_proxy.set("pass")
        # its verdict does not matter here, only that it read the metrics with the password
        wait_until(lambda: served.call("GET", f"/v1/changes/{change}")["state"]
                   in ("live", "failed"), 60, 0.2, "the push never ended")
        for path in ("/v1/status", "/v1/changes", f"/v1/changes/{change}", "/v1/pushes",
                     "/v1/pushes/1", "/v1/pushes/2", "/v1/hosts", "/v1/events?limit=1000",
                     "/metrics", "/v1/openapi.json", "/livez", "/readyz"):
            assert served.send("GET", path).status == 200, path
        # the CLI, given tokens the ways it takes them
        env = {**os.environ, "PUSHGUARD_URL": served.url}
        for argv, token in ((["status"], tokens["read"]), (["hosts"], tokens["read"]),
                            (["pause", "--reason", "cli"], tokens["read"]),
                            (["pause", "--reason", "cli"], wrong),
                            (["resume", "--reason", "cli"], tokens["admin"])):
            done = subprocess.run([sys.executable, "-m", "daemon", *argv],
                                  env={**env, "PUSHGUARD_TOKEN": token}, cwd=ROOT,
                                  capture_output=True, text=True, timeout=30)
            outputs += [done.stdout, done.stderr]
        done = subprocess.run([sys.executable, "-m", "daemon", "check-config", "-c",
                               str(config)], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
        outputs += [done.stdout, done.stderr]
    # the password was really in use: every request to InfluxDB carried it
    basic = base64.b64encode(f"pushguard:{password}".encode()).decode()
    sent = [r for r in influx_proxy.requests if r.startswith((b"POST", b"GET"))]
    assert sent and all(f"Basic {basic}".encode() in r for r in sent)
    key_lines = [line for line in fault_fleet.key_file.read_text().splitlines()
                 if len(line) > 20 and "PRIVATE KEY" not in line]
    needles = {**{f"{role} token": t for role, t in tokens.items()},
               "influxdb password": password, "basic auth header": basic,
               **{f"ssh key line {i}": line for i, line in enumerate(key_lines)}}
    log = served.log_text()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any("metrics" in r["message"] and r["level"] == "warning" for r in records)
    assert len(served.replies) > 20
    answers = [r.body.decode(errors="replace") + json.dumps(r.headers) for r in served.replies]
    for name, needle in needles.items():
        assert needle not in log, f"the {name} is in the log"
        assert not [a for a in answers if needle in a], f"the {name} is in an API answer"
        assert not [o for o in outputs if needle in o], f"the {name} is in the CLI output"


# -- secrets files others may read ---------------------------------------------------

Start = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service(tmp_path: Path, fault_fleet: SshFleet,
                        influxd: Influxd) -> AsyncIterator[Start]:
    started: list[Service] = []

    async def run(*, known_hosts: Path | None = None, key_file: Path | None = None,
                  password_mode: int = 0o600, tokens_mode: int = 0o600,
                  deploy: dict[str, object] | None = None) -> Service:
        repo = make_repo(tmp_path / "repo")
        commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
        write_tokens(tmp_path / "tokens")
        (tmp_path / "tokens").chmod(tokens_mode)
        _secret_file(tmp_path / "influx-password", secrets.token_hex(12), password_mode)
        config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                              influx_url=influxd.url, database=FAULTS_DB,
                              tokens_file=tmp_path / "tokens", guard=QUICK,
                              schedule={"every": "1h"}, known_hosts=known_hosts,
                              deploy=deploy,
                              influx_extra={"user": "pushguard",
                                            "password_file": str(tmp_path / "influx-password")})
        if key_file is not None:
            text = config.read_text().replace(str(fault_fleet.key_file), str(key_file))
            config.write_text(text)
        service = Service(config_module.load(config))
        await service.start()
        started.append(service)
        return service

    yield run
    for service in started:
        await service.stop(grace=10)


def _warned(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and str(path) in r.getMessage()]


async def test_a_tokens_file_others_may_read_draws_a_warning(
        start_service: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await start_service(tokens_mode=0o644)
    assert _warned(caplog, tmp_path / "tokens")
    assert not _warned(caplog, tmp_path / "influx-password")


async def test_an_influxdb_password_file_others_may_read_draws_a_warning(
        start_service: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await start_service(password_mode=0o644)
    assert _warned(caplog, tmp_path / "influx-password")


async def test_an_ssh_key_others_may_read_draws_a_warning(
        start_service: Start, tmp_path: Path, fault_fleet: SshFleet,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key = tmp_path / "id_ed25519"
    key.write_bytes(fault_fleet.key_file.read_bytes())
    key.chmod(0o644)
    await start_service(key_file=key)
    assert _warned(caplog, key)


# -- a changed host key --------------------------------------------------------------

@contextlib.contextmanager
def _new_key(fault_fleet: SshFleet) -> Iterator[str]:
    """host3 gets a new host key (as after a reinstall, or a man in the middle); the
    known_hosts file still holds the old one. Restored afterwards."""
    host = fault_fleet.host("host3")
    key_file = host.dir / "ssh_host_ed25519_key"
    old = key_file.read_bytes()
    host.stop()
    key_file.write_bytes(asyncssh.generate_private_key("ssh-ed25519")
                         .export_private_key("openssh"))
    try:
        host.start()
        yield host.name
    finally:
        host.stop()
        key_file.write_bytes(old)
        host.start()


async def test_a_changed_host_key_refuses_the_host_and_nothing_runs_there(
        start_service: Start, fault_fleet: SshFleet, tmp_path: Path) -> None:
    service = await start_service(deploy={"canary": 3})
    assert service.store is not None and service.pusher is not None
    store = service.store
    before_live, before_releases = live_on(fault_fleet), releases_on(fault_fleet)
    host = fault_fleet.host("host3")
    app = host.local(fault_fleet.deploy_path())
    activated = (app / "activated").read_text() if (app / "activated").exists() else None
    with _new_key(fault_fleet) as victim:
        log_from = len(host.log_text())
        queue = Queue(store, tmp_path / "repo")
        ref = commit(tmp_path / "repo", "one", {"app.txt": "one\n"})
        change = await queue.enqueue(ref, "one", "dev", service.clock())
        await queue.approve(change.id, "reviewer", service.clock())
        push = await service.push_now("tester")
        assert push is not None
        await service.pusher.wait()
        sshd_log = host.log_text()[log_from:]
    final = await store.get_push(push.id)
    assert final.state == PushState.FAILED and f"{victim} host-key-rejected at connect" \
        in final.reason, final.reason
    steps = [(r.step, r.outcome) for r in await store.host_results(push.id) if r.host == victim]
    assert steps == [("connect", Outcome.HOST_KEY_REJECTED)], steps
    # nothing ran there: no login, no upload, no new release, no activate
    assert "Accepted publickey" not in sshd_log, sshd_log
    assert live_on(fault_fleet)[victim] == before_live[victim]
    assert releases_on(fault_fleet)[victim] == before_releases[victim]
    assert not list(app.glob("releases/.upload-*"))
    now = (app / "activated").read_text() if (app / "activated").exists() else None
    assert now == activated
    hosts = {h.name: h for h in await store.hosts()}
    assert hosts[victim].last_outcome == Outcome.HOST_KEY_REJECTED
    assert hosts[victim].live_release == before_live[victim]
    assert {live_on(fault_fleet)[h] for h in ("host1", "host2")} == {final.release}
    control = await store.control()
    assert control.state == QueueState.HALTED and "host-key-rejected" in control.reason

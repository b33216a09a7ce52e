"""Faults during a push, each on real sshd hosts and a real influxd: the metric
source down or slow at the bake (and down at the pre-flight), a disk that fills
during unpack, sshd killed mid-upload, the source repository losing the commit,
and a read-only state directory at start."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import config as config_module
from daemon.models import ChangeState, Outcome, PushState, QueueState
from daemon.service import Service
from tests.daemon_env import write_tokens
from tests.fixtures_daemon import Daemon
from tests.fixtures_harness import (
    FAULTS_DB,
    ROOT,
    InfluxProxy,
    fleet_config,
    free_port,
    live_on,
    releases_on,
    wait_until,
)
from tests.gitrepo import commit, git, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

pytest_plugins = ["tests.fixtures_faults"]
pytestmark = pytest.mark.timeout(120)

QUIET = {"every": "1h"}  # no slot fires: the test presses the deploy button
BASELINE = 8.0
BAKE = 4.0
GUARD = {"baseline": f"{BASELINE:g}s", "warmup": "1s", "bake": f"{BAKE:g}s", "look_every": "1s"}
# no checks: the guard passes a bake of one second; these tests are about the hosts
QUICK = {"baseline": "5s", "warmup": "0s", "bake": "1s", "look_every": "1s"}

Start = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def start(tmp_path: Path, fault_fleet: SshFleet,
                influxd: Influxd) -> AsyncIterator[Start]:
    """`start(influx_url=..., checks=..., guard=..., deploy=...)`: a Service on the fault
    fleet, its repository holding one base commit."""
    started: list[Service] = []

    async def run(*, influx_url: str | None = None, checks: Any = (), guard: Any = QUICK,
                  deploy: Any = None) -> Daemon:
        repo = make_repo(tmp_path / "repo")
        commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
        write_tokens(tmp_path / "tokens")
        config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                              influx_url=influx_url or influxd.url, database=FAULTS_DB,
                              tokens_file=tmp_path / "tokens", checks=checks, guard=guard,
                              deploy=deploy, schedule=QUIET)
        service = Service(config_module.load(config))
        await service.start()
        started.append(service)
        return Daemon(service, repo)

    yield run
    for service in started:
        await service.stop(grace=10)


async def push(d: Daemon, message: str, files: dict[str, str | bytes]) -> Any:
    """Approve a change of `files`, press the deploy button, wait for the push to end."""
    ref = commit(d.repo, message, files)
    change = await d.queue.enqueue(ref, message, "dev", d.service.clock())
    await d.queue.approve(change.id, "reviewer", d.service.clock())
    started = await d.service.push_now("tester")
    assert started is not None and started.changes == (change.id,)
    assert d.service.pusher is not None
    await d.service.pusher.wait()
    return await d.store.get_push(started.id)


async def baseline(d: Daemon, fleet: SshFleet) -> str:
    """A first good release on every host (the one a failed push must leave live)."""
    first = await push(d, "good", {"app.txt": "good\n"})
    assert first.state == PushState.PASSED, first.reason
    assert set(live_on(fleet).values()) == {first.release}
    return str(first.release)


# -- the metric source --------------------------------------------------------------

async def clean_baseline(shop: ShopSimulator) -> None:
    """Wait until the guard's windows hold no bad release's errors (an earlier test's)."""
    await asyncio.to_thread(wait_until, lambda: shop.healthy_for() > BASELINE + BAKE + 1, 60)


async def test_influxdb_down_postpones_before_and_halts_inconclusive_at_the_bake(
        start: Start, fault_fleet: SshFleet, fault_shop: ShopSimulator,
        influx_proxy: InfluxProxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await clean_baseline(fault_shop)
    d = await start(influx_url=influx_proxy.url, checks=CHECKS, guard=GUARD)
    before = live_on(fault_fleet)

    influx_proxy.set("down")  # before the push: the pre-flight cannot read -> postponed
    postponed = await push(d, "one", {"app.txt": "one\n"})
    assert postponed.state == PushState.ABORTED, postponed
    assert "postponed" in postponed.reason and "metrics" in postponed.reason
    assert (await d.store.get_change(postponed.changes[0])).state == ChangeState.APPROVED
    assert (await d.store.control()).state == QueueState.RUNNING
    assert live_on(fault_fleet) == before and not await d.store.host_results(postponed.id)

    influx_proxy.set("pass")  # back: the same change goes out, and at the bake it is down
    again = await d.service.push_now("tester")
    assert again is not None and again.changes == postponed.changes

    async def baking() -> bool:
        return (await d.store.get_push(again.id)).state == PushState.BAKING
    await d.until(baking, 30)
    influx_proxy.set("down")
    assert d.service.pusher is not None
    await d.service.pusher.wait()
    await assert_unjudged(d, again.id, fault_fleet, before)
    guard = [(r.levelno, r.message.split(":")[0]) for r in caplog.records
             if r.name == "pushguard.guard" and "deploy marker" not in r.message]
    # each outage is logged once when it starts and once when it ends, not on every look
    assert guard == [(logging.WARNING, "metrics unavailable"), (logging.INFO,
                     "metrics available again"), (logging.WARNING, "metrics unavailable")], guard


async def test_influxdb_slower_than_its_timeout_at_the_bake_is_never_a_pass(
        start: Start, fault_fleet: SshFleet, fault_shop: ShopSimulator,
        influx_proxy: InfluxProxy) -> None:
    await clean_baseline(fault_shop)
    # under the rollback policy too: no verdict is no evidence against the change, so the
    # line halts and the canary keeps the new release (it used to be rolled back)
    d = await start(influx_url=influx_proxy.url, checks=CHECKS, guard=GUARD,
                    deploy={"on_regression": "rollback"})
    before = live_on(fault_fleet)
    # [influxdb] timeout is 2s
    pushed = await cut_at_the_bake(d, influx_proxy, "slow", "slow", delay=5.0, only="/query")
    reason = await assert_unjudged(d, pushed.id, fault_fleet, before)
    assert "no answer within 2s" in reason


async def test_a_bake_without_a_verdict_passed_by_policy_is_recorded_as_inconclusive(
        start: Start, fault_fleet: SshFleet, fault_shop: ShopSimulator,
        influx_proxy: InfluxProxy) -> None:
    await clean_baseline(fault_shop)
    d = await start(influx_url=influx_proxy.url, checks=CHECKS,
                    guard={**GUARD, "on_inconclusive": "pass"})
    final = await cut_at_the_bake(d, influx_proxy, "unjudged", "down")
    # the policy lets it through, but the record says the guard never judged it
    assert final.state == PushState.PASSED and final.verdict == "inconclusive", final
    assert final.reason.startswith("passed by policy") and "metrics unavailable" in final.reason
    assert (await d.store.control()).state == QueueState.RUNNING
    assert set(live_on(fault_fleet).values()) == {final.release}


async def cut_at_the_bake(d: Daemon, proxy: InfluxProxy, text: str, mode: str,
                          **how: Any) -> Any:
    """Push a change of app.txt; once its canary bakes, the proxy turns `mode`; the
    push's record once it has ended."""
    ref = commit(d.repo, text, {"app.txt": f"{text}\n"})
    change = await d.queue.enqueue(ref, text, "dev", d.service.clock())
    await d.queue.approve(change.id, "reviewer", d.service.clock())
    pushed = await d.service.push_now("tester")
    assert pushed is not None

    async def baking() -> bool:
        return (await d.store.get_push(pushed.id)).state == PushState.BAKING
    await d.until(baking, 30)
    proxy.set(mode, **how)
    assert d.service.pusher is not None
    await d.service.pusher.wait()
    return await d.store.get_push(pushed.id)


async def assert_unjudged(d: Daemon, push_id: int, fleet: SshFleet,
                          before: dict[str, str | None]) -> str:
    """The push could not be judged: inconclusive, the line halted, never a pass."""
    final = await d.store.get_push(push_id)
    assert final.state == PushState.FAILED and final.verdict == "inconclusive", final
    assert "metrics unavailable" in final.reason, final.reason
    control = await d.store.control()
    assert control.state == QueueState.HALTED and "metrics unavailable" in control.reason
    assert f"push {push_id}" in control.reason
    looks = [r for r in await d.store.check_results(push_id) if r["wave"] == 1]
    assert looks and all(r["verdict"] == "inconclusive" for r in looks), looks
    assert (await d.store.get_change(final.changes[0])).state == ChangeState.FAILED
    live = live_on(fleet)  # the canary runs it; the rest of the fleet was never touched
    assert live["host1"] == final.release
    assert {live["host2"], live["host3"]} <= {before["host2"], before["host3"]}
    return final.reason


# -- the hosts ---------------------------------------------------------------------------

@pytest.fixture
def small_disk(fault_fleet: SshFleet) -> Iterator[Path]:
    """host1's application folder on a 6 MiB tmpfs (mounted before its sshd starts, so
    its mount namespace sees it); the real folder is back afterwards."""
    host = fault_fleet.host("host1")
    host.stop()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=755", "pushguard-small",
                    str(host.app_dir)], check=True, timeout=30)
    try:
        host.start()
        yield host.app_dir
    finally:
        host.stop()
        subprocess.run(["umount", str(host.app_dir)], check=True, timeout=30)
        host.start()


async def test_disk_full_during_unpack_fails_that_host_and_keeps_its_release(
        start: Start, fault_fleet: SshFleet, small_disk: Path) -> None:
    d = await start()
    good = await baseline(d, fault_fleet)
    # 4 MiB that gzip cannot shrink: the upload fits in 6 MiB, upload plus unpack does not
    big = await push(d, "big", {"blob.bin": os.urandom(4 << 20)})
    assert big.state == PushState.FAILED and big.verdict == "fail", big
    assert "host1 failed at unpack" in big.reason, big.reason
    steps = {(r.host, r.step): r for r in await d.store.host_results(big.id)}
    unpack = steps["host1", "unpack"]
    assert unpack.outcome == Outcome.FAILED and unpack.exit_status == 66, unpack
    # GNU tar says it either way when the disk is full
    assert "No space left on device" in unpack.stderr_tail or "Wrote only" in unpack.stderr_tail
    assert live_on(fault_fleet) == dict.fromkeys(("host1", "host2", "host3"), good)
    hosts = {h.name: h for h in await d.store.hosts()}
    assert hosts["host1"].live_release == good and hosts["host1"].last_outcome == Outcome.FAILED
    control = await d.store.control()
    assert control.state == QueueState.HALTED and f"push {big.id} failed" in control.reason
    # nothing half-unpacked is left behind, and the space came back
    leftovers = [p.name for p in (small_disk / "releases").iterdir() if p.name.startswith(".")]
    assert not leftovers and releases_on(fault_fleet)["host1"] == {good}
    assert shutil.disk_usage(small_disk).free > 5 << 20


async def test_a_host_that_fails_after_its_switch_is_recorded_on_the_release_it_runs(
        start: Start, fault_fleet: SshFleet) -> None:
    d = await start()
    await baseline(d, fault_fleet)
    broken = await push(d, "broken", {"bin/activate": "#!/bin/sh\nexit 3\n"})
    assert broken.state == PushState.FAILED and "host1 failed at activate" in broken.reason
    assert live_on(fault_fleet)["host1"] == broken.release  # switched, then activate failed
    hosts = {h.name: h for h in await d.store.hosts()}
    assert hosts["host1"].live_release == broken.release, hosts["host1"]
    assert hosts["host1"].last_outcome == Outcome.FAILED


async def test_sshd_killed_mid_upload_fails_the_host_and_the_line_goes_on_after(
        start: Start, fault_fleet: SshFleet) -> None:
    d = await start()
    good = await baseline(d, fault_fleet)
    host = fault_fleet.host("host1")
    uploads = host.local(fault_fleet.deploy_path()) / "releases"
    blob = os.urandom(48 << 20)
    killed = threading.Event()

    def kill_mid_upload() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for part in uploads.glob(".upload-*"):
                try:
                    size = part.stat().st_size
                except FileNotFoundError:
                    continue
                if 0 < size < len(blob) // 2:
                    host.stop()
                    killed.set()
                    return
            time.sleep(0.002)  # watching the partial upload grow

    watcher = threading.Thread(target=kill_mid_upload, name="kill-mid-upload")
    watcher.start()
    try:
        cut = await push(d, "huge", {"blob.bin": blob})
    finally:
        watcher.join()
        if not host.running:
            host.start()
    assert killed.is_set(), "the upload ended before sshd could be killed"
    assert cut.state == PushState.FAILED, cut
    last = [r for r in await d.store.host_results(cut.id) if r.host == "host1"][-1]
    assert last.step == "upload" and last.outcome in (Outcome.UNREACHABLE, Outcome.FAILED), last
    assert live_on(fault_fleet)["host1"] == good
    hosts = {h.name: h for h in await d.store.hosts()}
    assert hosts["host1"].live_release == good and hosts["host1"].last_outcome == last.outcome
    assert (await d.store.control()).state == QueueState.HALTED
    # sshd is back: a person resumes; once a whole baseline has passed since (no baseline
    # holds the incident) the next change reaches every host
    await d.service.resume("operator", "sshd on host1 restarted")
    assert await d.service.settling_until(d.service.clock()) is not None

    async def settled() -> bool:
        return await d.service.settling_until(d.service.clock()) is None
    await d.until(settled, BASELINE + 30)
    after = await push(d, "small fix", {"blob.bin": "small now\n"})
    assert after.state == PushState.PASSED, after.reason
    assert set(live_on(fault_fleet).values()) == {after.release}


# -- the source repository -------------------------------------------------------------

async def test_a_commit_gone_from_the_repository_aborts_its_push_only(
        start: Start, fault_fleet: SshFleet) -> None:
    d = await start()
    good = await baseline(d, fault_fleet)
    doomed = commit(d.repo, "doomed", {"app.txt": "doomed\n"})
    change = await d.queue.enqueue(doomed, "doomed", "dev", d.service.clock())
    await d.queue.approve(change.id, "reviewer", d.service.clock())
    # approved, then the history is rewritten and the object pruned
    git(d.repo, "reset", "-q", "--hard", "HEAD~1")
    git(d.repo, "reflog", "expire", "--expire=now", "--all")
    git(d.repo, "gc", "-q", "--prune=now")
    gone = await d.service.push_now("tester")
    assert gone is not None and d.service.pusher is not None
    await d.service.pusher.wait()
    gone = await d.store.get_push(gone.id)
    assert gone.state == PushState.ABORTED, gone
    assert doomed in gone.reason and "is not in" in gone.reason, gone.reason
    assert (await d.store.get_change(change.id)).state == ChangeState.FAILED
    assert not await d.store.host_results(gone.id)
    assert set(live_on(fault_fleet).values()) == {good}
    # a bad change stops itself, not the line: the next one goes out
    assert (await d.store.control()).state == QueueState.RUNNING
    nxt = await push(d, "next", {"app.txt": "next\n"})
    assert nxt.state == PushState.PASSED and set(live_on(fault_fleet).values()) == {nxt.release}
    # the whole repository gone: the same, with a message that says so
    ref = commit(d.repo, "later", {"app.txt": "later\n"})
    change = await d.queue.enqueue(ref, "later", "dev", d.service.clock())
    await d.queue.approve(change.id, "reviewer", d.service.clock())
    moved = d.repo.with_name("repo-moved")
    d.repo.rename(moved)
    try:
        lost = await d.service.push_now("tester")
        assert lost is not None
        await d.service.pusher.wait()
    finally:
        moved.rename(d.repo)
    lost = await d.store.get_push(lost.id)
    assert lost.state == PushState.ABORTED and "does not exist" in lost.reason, lost
    assert set(live_on(fault_fleet).values()) == {nxt.release}


# -- the state directory -------------------------------------------------------------

READ_ONLY_SERVE = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && '
                   'shift && exec "$@"')


@pytest.mark.parametrize("existing", [False, True], ids=["empty", "with-database"])
def test_read_only_state_dir_is_a_clear_error_at_start(
        tmp_path: Path, fault_fleet: SshFleet, influxd: Influxd, existing: bool) -> None:
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"app.txt": "base\n"})
    write_tokens(tmp_path / "tokens")
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                          influx_url=influxd.url, database=FAULTS_DB, api_port=port,
                          tokens_file=tmp_path / "tokens", state_dir=state, guard=QUICK,
                          schedule=QUIET)
    serve = [sys.executable, "-m", "daemon", "serve", "-c", str(config)]
    if existing:  # a daemon ran here before and left its database and lock file
        first = subprocess.Popen(serve, cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: (state / "pushguard.db").exists() and _answers(port), 60)
        finally:
            first.terminate()
            assert first.wait(timeout=60) == 0
    began = time.monotonic()
    # the state dir is made read-only in a mount namespace of this child only
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             READ_ONLY_SERVE, "sh", str(state), *serve],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result
    assert time.monotonic() - began < 30
    err = result.stderr
    assert "cannot start" in err and str(state) in err and "Read-only file system" in err, err
    assert "Traceback" not in err, err
    assert not _answers(port)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0

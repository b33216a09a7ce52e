"""daemon.fleet against real OpenSSH hosts on loopback (tests/sshfleet.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from asyncssh.sftp import SFTPClientHandler

from daemon.fleet import Fleet
from daemon.hostrun import HostOutcome
from daemon.models import Outcome
from daemon.release import Release
from tests.fixtures_ssh import AppRepo, MakeFleet, deploy_config
from tests.sshfleet import SshFleet, SshHost

ENV = {"PUSHGUARD_PUSH": "7", "PUSHGUARD_TITLE": "a change"}


class StepLog:
    """Records every step callback; checks what ran where."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, HostOutcome | None]] = []

    async def __call__(self, host: str, step: str, phase: str,
                       outcome: HostOutcome | None) -> None:
        self.calls.append((host, step, phase, outcome))

    def of(self, host: str) -> list[tuple[str, str, Outcome | None]]:
        return [(step, phase, o.outcome if o else None)
                for h, step, phase, o in self.calls if h == host]


def host_root(fleet: SshFleet, host: SshHost, path: str) -> Path:
    return host.local(fleet.remote_path(host, path))


def live_target(fleet: SshFleet, host: SshHost, path: str, link: str = "current") -> str:
    return os.readlink(host_root(fleet, host, path) / link)


def assert_tree_equals_commit(repo: AppRepo, commit: str, folder: Path) -> None:
    """The files under `folder` are exactly the commit's tree: paths, bytes, modes, links."""
    listing = repo.git("ls-tree", "-r", "-z", "--full-tree", commit).split(b"\0")
    expected: dict[str, tuple[str, str]] = {}
    for entry in filter(None, listing):
        meta, _, raw_name = entry.partition(b"\t")
        entry_mode, _, entry_blob = meta.decode().split(" ")
        expected[raw_name.decode()] = (entry_mode, entry_blob)
    found = {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    }
    assert found == set(expected)
    for name, (mode, blob) in expected.items():
        path = folder / name
        content = repo.git("cat-file", "blob", blob)
        if mode == "120000":
            assert os.readlink(path) == content.decode()
        else:
            assert path.read_bytes() == content, name
            assert os.access(path, os.X_OK) == (mode == "100755"), name


def outcomes_by_host(results: list[HostOutcome]) -> dict[str, HostOutcome]:
    return {r.host: r for r in results}


async def test_deploy_rollback_and_read_back_on_six_hosts(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str
) -> None:
    fleet = make_fleet()
    hosts = ssh_fleet.host_configs()
    first, second = app_repo.releases[0], app_repo.releases[1]
    assert len(hosts) >= 5

    for release in (first, second):
        results = await fleet.deploy(hosts, release, env=ENV)
        assert [r.host for r in results] == [h.name for h in hosts]
        assert {r.outcome for r in results} == {Outcome.OK}
        assert {r.release for r in results} == {release.id}
        for host in ssh_fleet.hosts:
            root = host_root(ssh_fleet, host, deploy_path)
            assert live_target(ssh_fleet, host, deploy_path) == f"releases/{release.id}"
            assert_tree_equals_commit(app_repo, release.commit, root / "current")
            assert (root / "activated").read_text().strip() == release.id
        live = await fleet.read_live(hosts)
        assert [(r.outcome, r.release) for r in live] == [(Outcome.OK, release.id)] * len(hosts)

    for host in ssh_fleet.hosts:
        assert live_target(ssh_fleet, host, deploy_path, "previous") == f"releases/{first.id}"

    results = await fleet.rollback(hosts, env=ENV)
    assert [(r.outcome, r.step, r.release) for r in results] == \
        [(Outcome.OK, "activate", first.id)] * len(hosts)
    for host in ssh_fleet.hosts:
        root = host_root(ssh_fleet, host, deploy_path)
        assert live_target(ssh_fleet, host, deploy_path) == f"releases/{first.id}"
        assert live_target(ssh_fleet, host, deploy_path, "previous") == f"releases/{second.id}"
        assert_tree_equals_commit(app_repo, first.commit, root / "current")
        assert (root / "activated").read_text().strip() == first.id
    live = await fleet.read_live(hosts)
    assert [(r.outcome, r.release) for r in live] == [(Outcome.OK, first.id)] * len(hosts)


async def test_steps_run_in_order_and_a_present_release_is_reused(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet()
    host = ssh_fleet.host_configs()[:1]
    first, second = app_repo.releases[0], app_repo.releases[1]
    steps = StepLog()
    await fleet.deploy(host, first, env=ENV, on_step=steps)
    ok = Outcome.OK
    assert steps.of("host1") == [
        ("connect", "start", None), ("connect", "end", ok),
        ("upload", "start", None), ("upload", "end", ok),
        ("unpack", "start", None), ("unpack", "end", ok),
        ("switch", "start", None), ("switch", "end", ok),
        ("activate", "start", None), ("activate", "end", ok),
        ("prune", "start", None), ("prune", "end", ok),
    ]
    assert [o.release for _, step, _, o in steps.calls if o and step == "switch"] == [first.id]

    await fleet.deploy(host, second, env=ENV)
    steps = StepLog()
    results = await fleet.deploy(host, first, env=ENV, on_step=steps)
    assert results[0].outcome is Outcome.OK
    skipped = [(s, o) for s, phase, o in steps.of("host1") if phase == "end"][1:3]
    assert skipped == [("upload", Outcome.SKIPPED), ("unpack", Outcome.SKIPPED)]


async def test_prune_keeps_newest_and_never_live_or_previous(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str
) -> None:
    fleet = make_fleet(keep_releases=2)
    hosts = ssh_fleet.host_configs()[:2]
    v1, v2, v3, v4 = (r.id for r in app_repo.releases)

    def present() -> set[str]:
        folder = host_root(ssh_fleet, ssh_fleet.hosts[0], deploy_path) / "releases"
        return {p.name for p in folder.iterdir() if not p.name.startswith(".")}

    for release in app_repo.releases[:3]:
        assert {r.outcome for r in await fleet.deploy(hosts, release, env=ENV)} == {Outcome.OK}
    assert present() == {v2, v3}
    # after a rollback the previous release (v3) is older than the ones kept by age
    assert {r.release for r in await fleet.rollback(hosts, env=ENV)} == {v2}
    assert {r.outcome for r in await fleet.deploy(hosts, app_repo.releases[3], env=ENV)} \
        == {Outcome.OK}
    assert present() == {v2, v3, v4}
    assert live_target(ssh_fleet, ssh_fleet.hosts[0], deploy_path, "previous") \
        == f"releases/{v2}"
    assert v1 not in present()


async def test_stopped_sshd_is_unreachable_and_the_others_deploy(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str
) -> None:
    fleet = make_fleet()
    down = ssh_fleet.host("host3")
    down.stop()
    try:
        results = outcomes_by_host(
            await fleet.deploy(ssh_fleet.host_configs(), app_repo.releases[0], env=ENV))
    finally:
        down.start()
    assert results["host3"].outcome is Outcome.UNREACHABLE
    assert results["host3"].step == "connect"
    assert results["host3"].seconds < 5
    assert not host_root(ssh_fleet, down, deploy_path).exists()
    others = [r for name, r in results.items() if name != "host3"]
    assert {r.outcome for r in others} == {Outcome.OK}


@pytest.mark.parametrize(("connect_timeout", "expected"), [
    (10.0, Outcome.TIMEOUT),  # the host deadline (2 s) passes first
    (1.0, Outcome.UNREACHABLE),  # the SSH handshake deadline passes first
])
async def test_frozen_host_times_out_within_its_deadline_and_the_wave_ends(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet,
    connect_timeout: float, expected: Outcome
) -> None:
    deadline = 2.0
    fleet = make_fleet(ssh=ssh_fleet.ssh_config(connect_timeout=connect_timeout),
                       host_timeout=timedelta(seconds=deadline))
    frozen = ssh_fleet.host("host4")
    frozen.freeze()
    try:
        started = time.monotonic()
        results = outcomes_by_host(
            await fleet.deploy(ssh_fleet.host_configs(), app_repo.releases[0], env=ENV))
        elapsed = time.monotonic() - started
    finally:
        frozen.thaw()
    assert (results["host4"].outcome, results["host4"].step) == (expected, "connect")
    bound = min(deadline, connect_timeout)
    assert bound <= results["host4"].seconds < bound + 1.0
    assert elapsed < deadline + 2.0  # the wave ends with its slowest deadline
    assert {r.outcome for name, r in results.items() if name != "host4"} == {Outcome.OK}


@pytest.mark.parametrize("end", ["deadline", "cancel"])
async def test_host_frozen_mid_upload_ends_at_its_deadline_or_when_cancelled(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet,
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    # the default keepalive (15 s) would notice the frozen peer only after 45 s or more
    deadline = 2.0 if end == "deadline" else 30.0
    fleet = make_fleet(host_timeout=timedelta(seconds=deadline))
    host = ssh_fleet.host("host5")
    froze = asyncio.Event()
    write = SFTPClientHandler.write

    async def write_then_freeze(handler: SFTPClientHandler, handle: bytes, offset: int,
                                data: bytes) -> int:
        if not froze.is_set():
            host.freeze()  # the remote file is open and the first bytes are on their way
            froze.set()
        return await write(handler, handle, offset, data)

    monkeypatch.setattr(SFTPClientHandler, "write", write_then_freeze)
    started = time.monotonic()
    call = asyncio.create_task(fleet.deploy([host.host_config()], app_repo.releases[0],
                                            env=ENV))
    try:
        await asyncio.wait_for(froze.wait(), 10)
        if end == "cancel":
            call.cancel()
            started = time.monotonic()
        await asyncio.wait({call}, timeout=(deadline if end == "deadline" else 0) + 3.0)
        elapsed = time.monotonic() - started
        finished = call.done()
    finally:
        host.thaw()  # the call that still waits on the frozen host can now end
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(call, 60)
    assert finished, f"the call was still running after {elapsed:.1f}s"
    if end == "cancel":
        assert call.cancelled() and elapsed < 1.0
        return
    result = call.result()[0]
    assert (result.outcome, result.step) == (Outcome.TIMEOUT, "upload")
    assert deadline <= result.seconds < deadline + 1.0 and elapsed < deadline + 1.5


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline.replace(b"\0", b" "):
                found.append(int(entry))
    return found


async def _wait_until(condition: Callable[[], bool], within: float) -> bool:
    """Poll `condition` until it holds or `within` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_timed_out_command_is_killed_on_the_host(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str
) -> None:
    marker = "sleep 37.5"
    fleet = make_fleet(command_timeout=timedelta(seconds=1),
                       activate=f'{marker}; touch "$PUSHGUARD_PATH/too-late"')
    host = ssh_fleet.hosts[0]
    results = await fleet.deploy(ssh_fleet.host_configs()[:1], app_repo.releases[0], env=ENV)
    assert (results[0].outcome, results[0].step) == (Outcome.TIMEOUT, "activate")
    assert results[0].exit_status == 124
    assert results[0].stderr_tail.endswith("pushguard: stopped on the host after 1s\n")
    assert await _wait_until(lambda: not _processes_with(marker), within=10)
    assert not (host_root(ssh_fleet, host, deploy_path) / "too-late").exists()


async def test_failing_activate_is_failed_with_status_and_stderr_tail(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet
) -> None:
    noise = "x" * 5000
    fleet = make_fleet(activate=f'echo {noise} >&2; echo "activate broke: $PUSHGUARD_RELEASE" >&2;'
                                " exit 3")
    steps = StepLog()
    release = app_repo.releases[0]
    results = await fleet.deploy(ssh_fleet.host_configs()[:2], release, env=ENV, on_step=steps)
    for result in results:
        assert (result.outcome, result.step, result.exit_status) == (Outcome.FAILED, "activate", 3)
        assert result.stderr_tail.endswith(f"activate broke: {release.id}\n")
        assert len(result.stderr_tail) <= 2048
        assert result.release == release.id  # switched before activate failed
    assert steps.of("host1")[-1] == ("activate", "end", Outcome.FAILED)


@pytest.mark.parametrize("problem", ["unknown", "changed"])
async def test_unverifiable_host_key_is_rejected_and_nothing_runs_there(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str,
    tmp_path: Path, problem: str
) -> None:
    victim = ssh_fleet.host("host2")
    known_hosts = ssh_fleet.write_known_hosts(tmp_path / "known_hosts", without=("host2",))
    if problem == "changed":  # host2 listed, but with another host's key
        other = known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
        with known_hosts.open("a") as file:
            file.write(f"[{victim.address}]:{victim.port} {other}\n")
    log_before = len(victim.log_text())
    fleet = make_fleet(ssh=ssh_fleet.ssh_config(known_hosts=known_hosts))
    results = outcomes_by_host(
        await fleet.deploy(ssh_fleet.host_configs(), app_repo.releases[0], env=ENV))
    assert (results["host2"].outcome, results["host2"].step) == \
        (Outcome.HOST_KEY_REJECTED, "connect")
    assert {r.outcome for name, r in results.items() if name != "host2"} == {Outcome.OK}
    assert not host_root(ssh_fleet, victim, deploy_path).exists()
    assert "Accepted publickey" not in victim.log_text()[log_before:]


async def test_shell_syntax_in_a_change_runs_nothing(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, deploy_path: str
) -> None:
    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    env = {
        "PUSHGUARD_PUSH": "1",
        "PUSHGUARD_REF": "$(touch /tmp/pwned)",
        "PUSHGUARD_TITLE": "`touch /tmp/pwned`; touch /tmp/pwned",
        "PUSHGUARD_AUTHOR": "'; touch /tmp/pwned; echo '\n$(touch /tmp/pwned)",
    }
    fleet = make_fleet(activate='printf "%s|%s|%s" "$PUSHGUARD_REF" "$PUSHGUARD_TITLE" '
                                '"$PUSHGUARD_AUTHOR" > "$PUSHGUARD_PATH/change"')
    results = await fleet.deploy(ssh_fleet.host_configs()[:2], app_repo.releases[0], env=env)
    assert {r.outcome for r in results} == {Outcome.OK}
    recorded = (host_root(ssh_fleet, ssh_fleet.hosts[0], deploy_path) / "change").read_text()
    assert recorded == "|".join([env["PUSHGUARD_REF"], env["PUSHGUARD_TITLE"],
                                 env["PUSHGUARD_AUTHOR"]])
    assert not pwned.exists()
    with pytest.raises(ValueError, match="environment variable name"):
        await fleet.deploy(ssh_fleet.host_configs()[:1], app_repo.releases[0],
                           env={"X=$(touch /tmp/pwned)": "1"})
    with pytest.raises(ValueError, match="NUL"):
        await fleet.deploy(ssh_fleet.host_configs()[:1], app_repo.releases[0],
                           env={"PUSHGUARD_TITLE": "a\0$(touch /tmp/pwned)"})
    assert not pwned.exists()


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[int, set[str]]]:
    """An HTTP server on 127.0.0.1: /health/<name> is 200 unless <name> is in `sick`."""
    sick: set[str] = set()

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=503 if request.match_info["name"] in sick else 200)

    app = web.Application()
    app.router.add_get("/health/{name}", health)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port, sick
    await runner.cleanup()


async def test_health_probe_fails_an_unhealthy_host(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet,
    health_server: tuple[int, set[str]]
) -> None:
    port, sick = health_server
    sick.add("host2")
    fleet = make_fleet(health_url=f"http://127.0.0.1:{port}/health/{{name}}",
                       health_timeout=timedelta(seconds=1))
    results = outcomes_by_host(
        await fleet.deploy(ssh_fleet.host_configs()[:3], app_repo.releases[0], env=ENV))
    assert (results["host2"].outcome, results["host2"].step) == (Outcome.FAILED, "health")
    assert "HTTP 503" in results["host2"].stderr_tail
    assert {results[n].outcome for n in ("host1", "host3")} == {Outcome.OK}
    assert results["host1"].step == "prune"


async def test_read_live_on_a_fresh_host_and_rollback_without_previous(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet()
    hosts = ssh_fleet.host_configs()[:2]
    assert [(r.outcome, r.release) for r in await fleet.read_live(hosts)] == \
        [(Outcome.OK, None)] * 2
    await fleet.deploy(hosts, app_repo.releases[0], env=ENV)
    results = await fleet.rollback(hosts, env=ENV)
    assert [(r.outcome, r.step) for r in results] == [(Outcome.FAILED, "switch")] * 2
    assert "no previous release" in results[0].stderr_tail
    assert {r.release for r in await fleet.read_live(hosts)} == {app_repo.releases[0].id}


async def test_rollback_from_release_leaves_other_hosts_alone(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet()
    hosts = ssh_fleet.host_configs()[:3]
    v1, v2 = app_repo.releases[0], app_repo.releases[1]
    await fleet.deploy(hosts, v1, env=ENV)
    await fleet.deploy(hosts[:2], v2, env=ENV)  # host3 stays on v1
    results = await fleet.rollback(hosts, env=ENV, from_release=v2.id)
    assert [(r.outcome, r.release) for r in results] == \
        [(Outcome.OK, v1.id), (Outcome.OK, v1.id), (Outcome.SKIPPED, v1.id)]


async def test_concurrency_bounds_hosts_in_flight(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(concurrency=2)
    in_flight, peak = 0, 0

    async def on_step(host: str, step: str, phase: str, outcome: HostOutcome | None) -> None:
        nonlocal in_flight, peak
        if (step, phase) == ("connect", "start"):
            in_flight += 1
            peak = max(peak, in_flight)
        elif (step, phase) == ("prune", "end"):
            in_flight -= 1

    results = await fleet.deploy(ssh_fleet.host_configs(), app_repo.releases[0], env=ENV,
                                 on_step=on_step)
    assert {r.outcome for r in results} == {Outcome.OK}
    assert peak == 2


async def test_per_host_paths_when_namespaces_are_not_used(
    tmp_path: Path, app_repo: AppRepo
) -> None:
    with SshFleet(tmp_path / "fleet", 2, first=200, namespaces=False) as hosts:
        path = hosts.deploy_path("app")
        assert "{name}" in path
        fleet = Fleet(hosts.ssh_config(), deploy_config(path), hosts.host_configs())
        try:
            release: Release = app_repo.releases[2]
            results = await fleet.deploy(hosts.host_configs(), release, env=ENV)
            assert {r.outcome for r in results} == {Outcome.OK}
            for host in hosts.hosts:
                root = host_root(hosts, host, path)
                assert re.search(rf"/{host.name}/", str(root))
                assert_tree_equals_commit(app_repo, release.commit, root / "current")
        finally:
            await fleet.close()


async def test_unreadable_key_fails_every_host_without_raising(
    ssh_fleet: SshFleet, app_repo: AppRepo, make_fleet: MakeFleet, tmp_path: Path
) -> None:
    ssh = replace(ssh_fleet.ssh_config(), key_file=tmp_path / "missing")
    results = await make_fleet(ssh=ssh).deploy(ssh_fleet.host_configs()[:2],
                                               app_repo.releases[0], env=ENV)
    assert [(r.outcome, r.step) for r in results] == [(Outcome.FAILED, "connect")] * 2
    assert "missing" in results[0].stderr_tail

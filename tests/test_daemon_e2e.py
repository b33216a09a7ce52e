"""The daemon end to end: real sshd hosts, a real influxd, metrics that follow
what is live, and the schedule draining the queue hands-off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon import config as config_module
from daemon.models import ChangeState, PushState, QueueState, Trigger
from daemon.queue import Queue
from daemon.service import Service
from tests.daemon_env import write_config, write_tokens
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

pytestmark = pytest.mark.timeout(300)
BASELINE = 8.0  # seconds of metrics the guard compares against


def current_of(fleet: SshFleet) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for host in fleet.hosts:
        link = host.local(fleet.remote_path(host, fleet.deploy_path())) / "current"
        out[host.name] = link.readlink().name if link.is_symlink() else None
    return out


class Daemon:
    """A Service started in this event loop, with helpers to steer and wait."""

    def __init__(self, service: Service, repo: Path) -> None:
        self.service = service
        self.repo = repo
        assert service.store is not None
        self.store = service.store
        self.queue = Queue(service.store, repo)

    async def approve(self, message: str, files: dict[str, str], *,
                      expedite: bool = False) -> int:
        ref = commit(self.repo, message, files)
        now = self.service.clock()
        change = await self.queue.enqueue(ref, message, "dev", now)
        if expedite:
            await self.queue.expedite(change.id, "lead", now)
        await self.queue.approve(change.id, "reviewer", now)
        return change.id

    async def until(self, what: Callable[[], Awaitable[Any]], limit: float = 60) -> Any:
        """Poll `what` until it is truthy; fail after `limit` seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            value = await what()
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {limit}s waiting for {what}")

    async def change_done(self, change_id: int) -> bool:
        state = (await self.store.get_change(change_id)).state
        return state not in (ChangeState.APPROVED, ChangeState.PUSHING)

    async def push_of(self, change_id: int) -> Any:
        for push in await self.store.list_pushes(limit=100):
            if change_id in push.changes and push.finished_at is not None:
                return push
        return None


@pytest.fixture
async def daemon_factory(tmp_path: Path, shop_fleet: SshFleet, influxd: Influxd,
                         shop: ShopSimulator) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    started: list[Service] = []

    async def start(**deploy: Any) -> Daemon:
        repo = make_repo(tmp_path / "repo")
        commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
        config_file = write_config(
            tmp_path / "config.toml", state_dir=tmp_path / "var", repo=repo,
            hosts=[{"name": h.name, "address": h.address, "port": h.port}
                   for h in shop_fleet.hosts],
            ssh={"user": shop_fleet.user, "key_file": str(shop_fleet.key_file),
                 "known_hosts": str(shop_fleet.known_hosts), "connect_timeout": "5s"},
            influx_url=influxd.url, database="e2e", tokens_file=tmp_path / "tokens",
            checks=CHECKS, deploy={"path": shop_fleet.deploy_path(), **deploy},
            guard={"baseline": f"{BASELINE:g}s", "warmup": "1s", "bake": "6s",
                   "look_every": "1s"},
            schedule={"every": "2s"})
        write_tokens(tmp_path / "tokens")
        service = Service(config_module.load(config_file))
        await service.start()
        started.append(service)
        # the guard needs a baseline of metrics before the first push
        await asyncio.sleep(max(0.0, BASELINE + 1 - shop.running_for()))
        return Daemon(service, repo)

    yield start
    for service in started:
        await service.stop(grace=10)


async def test_pushes_pass_then_a_bad_change_halts_and_a_fix_goes_forward(
        daemon_factory: Callable[..., Awaitable[Daemon]], shop_fleet: SshFleet) -> None:
    d = await daemon_factory()
    good = [await d.approve(f"good {n}", {"app.txt": f"good {n}\n"}) for n in range(3)]
    for change_id in good:
        await d.until(lambda c=change_id: d.change_done(c))
    pushes = [await d.push_of(c) for c in good]
    assert [p.state for p in pushes] == [PushState.PASSED] * 3
    assert all(p.trigger == Trigger.SCHEDULE for p in pushes)
    last = (await d.store.get_change(good[-1])).ref
    assert set(current_of(shop_fleet).values()) == {last}
    assert {h.live_release for h in await d.store.hosts()} == {last}

    bad = await d.approve("bad: checkout breaks", {"BAD": "1\n", "app.txt": "bad\n"})
    waiting = await d.approve("next feature", {"app.txt": "next\n", "BAD": "0\n"})
    await d.until(lambda: d.change_done(bad))
    push = await d.push_of(bad)
    assert push.state == PushState.FAILED and push.verdict == "fail"
    control = await d.store.control()
    assert control.state == QueueState.HALTED
    assert f"push {push.id} failed" in control.reason and "checkout errors" in control.reason
    evidence = [r for r in await d.store.check_results(push.id) if r["verdict"] == "fail"]
    assert evidence and evidence[0]["name"] == "checkout errors"
    assert evidence[0]["queries"] and evidence[0]["before"] and evidence[0]["after"]
    assert (await d.store.get_change(bad)).state == ChangeState.FAILED
    await asyncio.sleep(5)  # two more slots pass: the halted queue pushes nothing
    assert (await d.store.get_change(waiting)).state == ChangeState.APPROVED

    fix = await d.approve("fix checkout", {"app.txt": "fixed\n", "BAD": "0\n"},
                          expedite=True)
    await d.until(lambda: d.change_done(fix))
    fix_push = await d.push_of(fix)
    assert fix_push.trigger == Trigger.EXPEDITE
    assert fix_push.state == PushState.PASSED, fix_push.reason
    control = await d.store.control()
    assert control.state == QueueState.RUNNING and "expedited fix" in control.reason
    await d.until(lambda: d.change_done(waiting))  # the line moves again
    events = [e for e in await d.store.events(limit=1000) if e.entity == "queue"]
    assert [(e.from_state, e.to_state) for e in events] == [("running", "halted"),
                                                            ("halted", "running")]


async def test_rollback_policy_returns_touched_hosts(
        daemon_factory: Callable[..., Awaitable[Daemon]], shop_fleet: SshFleet) -> None:
    d = await daemon_factory(on_regression="rollback")
    good = await d.approve("good", {"app.txt": "good\n"})
    await d.until(lambda: d.change_done(good))
    good_ref = (await d.store.get_change(good)).ref
    assert set(current_of(shop_fleet).values()) == {good_ref}
    bad = await d.approve("bad", {"BAD": "1\n"})
    await d.until(lambda: d.change_done(bad))
    push = await d.push_of(bad)
    assert push.state == PushState.ROLLED_BACK and push.verdict == "fail", push.reason
    assert (await d.store.get_change(bad)).state == ChangeState.REVERTED
    assert set(current_of(shop_fleet).values()) == {good_ref}
    assert {h.live_release for h in await d.store.hosts()} == {good_ref}
    assert (await d.store.control()).state == QueueState.RUNNING

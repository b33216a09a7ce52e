"""pytest fixtures for daemon tests: one 3-host fleet, a simulated shop, and
`daemon_factory`, which starts a real Service in the test's event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon import config as config_module
from daemon.models import ChangeState
from daemon.queue import Queue
from daemon.service import Service
from tests.daemon_env import write_config, write_tokens
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

BASELINE = 16.0  # seconds of metrics the guard compares against (short ones cost power)
BAKE = 6.0  # seconds each wave is watched


@pytest.fixture(scope="session")
def shop_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    """Three real sshd hosts on 127.0.0.60-62, shared by the daemon tests."""
    with SshFleet(tmp_path_factory.mktemp("shop-fleet"), 3, first=60) as hosts:
        yield hosts


@pytest.fixture(scope="session")
def shop(shop_fleet: SshFleet, influxd: Influxd) -> Iterator[ShopSimulator]:
    """Request and error counts per host in database `e2e`, following what is live."""
    influxd.create_database("e2e")
    simulator = ShopSimulator(shop_fleet, shop_fleet.deploy_path(), influxd.url, "e2e")
    simulator.start()
    yield simulator
    simulator.stop()


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

    async def start(*, deploy: dict[str, Any] | None = None,
                    schedule: dict[str, Any] | None = None,
                    webhooks: Sequence[dict[str, Any]] = ()) -> Daemon:
        repo = make_repo(tmp_path / "repo")
        commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
        config_file = write_config(
            tmp_path / "config.toml", state_dir=tmp_path / "var", repo=repo,
            hosts=[{"name": h.name, "address": h.address, "port": h.port}
                   for h in shop_fleet.hosts],
            ssh={"user": shop_fleet.user, "key_file": str(shop_fleet.key_file),
                 "known_hosts": str(shop_fleet.known_hosts), "connect_timeout": "5s"},
            influx_url=influxd.url, database="e2e", tokens_file=tmp_path / "tokens",
            checks=CHECKS, deploy={"path": shop_fleet.deploy_path(), **(deploy or {})},
            guard={"baseline": f"{BASELINE:g}s", "warmup": "1s", "bake": f"{BAKE:g}s",
                   "look_every": "1s"},
            schedule={"every": "2s", **(schedule or {})}, webhooks=webhooks)
        write_tokens(tmp_path / "tokens")
        service = Service(config_module.load(config_file))
        await service.start()
        started.append(service)
        # the guard needs a baseline of metrics before the first push
        # the guard needs a clean baseline of metrics before the first push: an earlier
        # test may have left a bad release's errors in the last few seconds
        await asyncio.sleep(max(0.0, BASELINE + BAKE + 1 - shop.healthy_for()))
        return Daemon(service, repo)

    yield start
    for service in started:
        await service.stop(grace=10)

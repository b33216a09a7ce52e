"""Shared set-up of the API tests (no tests here): a real store, a real git
repository, the API app on a loopback test server, and a Controller that
implements the protocol over the real store (the protocol edge).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from api.app import build_app
from api.auth import Tokens
from daemon.config import ApiConfig
from daemon.models import (
    ChangeState,
    CheckResult,
    Control,
    HostResult,
    Outcome,
    Push,
    PushState,
    Trigger,
    Verdict,
)
from daemon.queue import Queue
from daemon.store import Store
from tests.gitrepo import commit, make_repo

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
READ = "r" * 8 + "-read-token-0001"
DEPLOY = "d" * 8 + "-deploy-token-01"
ADMIN = "a" * 8 + "-admin-token-001"
TOKENS_TEXT = f"""# name role token
reader read {READ}
dana deploy {DEPLOY}

ada admin {ADMIN}
"""
HOSTS = ("web1", "web2", "web3")


class Clock:
    """A clock the tests move by hand (the code under test takes `now` from it)."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


class StoreController:
    """The Controller protocol over the real store, as the daemon would answer."""

    def __init__(self, store: Store, clock: Clock, queue: Queue) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.is_ready = True
        self.window: str | None = None
        self.settling: datetime | None = None
        self.slot: datetime | None = NOW + timedelta(minutes=20)
        self.running: int | None = None
        self.live: dict[str, object] | None = None

    def ready(self) -> bool:
        return self.is_ready

    def current_push(self) -> int | None:
        return self.running

    def next_slot(self, now: datetime) -> datetime | None:
        return self.slot

    def window_state(self, now: datetime) -> str | None:
        return self.window

    async def settling_until(self, now: datetime) -> datetime | None:
        return self.settling

    async def push_now(self, actor: str) -> Push | None:
        push = await self.store.claim(batch_size=1,
                                      normal_allowed=self.window is None and self.settling is None,
                                      trigger=Trigger.API, actor=actor, now=self.clock())
        if push is not None:
            self.running = push.id
        return push

    async def pause(self, actor: str, reason: str) -> Control:
        return await self.queue.pause(actor, reason, self.clock())

    async def resume(self, actor: str, reason: str) -> Control:
        return await self.queue.resume(actor, reason, self.clock())

    def progress(self) -> dict[str, object] | None:
        return self.live


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: Store
    queue: Queue
    control: StoreController
    clock: Clock
    repo: Path
    commits: list[str]
    config: ApiConfig

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, token: str | None = ADMIN,
                   **kwargs: Any) -> tuple[int, Any]:
        headers = {**(self.auth(token) if token else {}), **kwargs.pop("headers", {})}
        async with self.client.request(method, path, headers=headers, **kwargs) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()


def make_commits(repo_dir: Path, n: int = 6) -> list[str]:
    make_repo(repo_dir)
    return [commit(repo_dir, f"change {i}", {"app.txt": f"v{i}\n"}) for i in range(n)]


def api_config(tmp_path: Path, *, read_needs_token: bool = False,
               max_body: int = 4096) -> ApiConfig:
    return ApiConfig(host="127.0.0.1", port=0, tokens_file=tmp_path / "tokens",
                     read_needs_token=read_needs_token, max_body=max_body)


def make_app(store: Store, repo: Path, config: ApiConfig, clock: Clock,
             metrics_max_age: float = 0.0) -> tuple[web.Application, StoreController, Queue]:
    queue = Queue(store, repo)
    control = StoreController(store, clock, queue)
    app = build_app(store=store, queue=queue, control=control, api_config=config,
                    tokens=Tokens.parse(TOKENS_TEXT, "tokens"), version="1.2.3-test",
                    clock=clock, hosts=HOSTS, metrics_max_age=metrics_max_age)
    return app, control, queue


async def start_env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
                    commits: list[str], metrics_max_age: float = 0.0, **config: Any) -> Env:
    clock = Clock()
    cfg = api_config(tmp_path, **config)
    app, control, queue = make_app(store, tmp_path / "app", cfg, clock, metrics_max_age)
    client = await aiohttp_client(app)
    return Env(client, store, queue, control, clock, tmp_path / "app", commits, cfg)


async def approved_change(env: Env, index: int) -> int:
    """Add and approve commit `index` through the API; its change id."""
    status, change = await env.call("POST", "/v1/changes", json={
        "ref": env.commits[index], "title": f"change {index}"})
    assert status == 201, change
    status, change = await env.call("POST", f"/v1/changes/{change['id']}/approve")
    assert status == 200, change
    return int(change["id"])


async def drive_push(store: Store, clock: Clock, push_id: int, *, hosts: tuple[str, ...] = HOSTS,
                     verdict: Verdict = Verdict.PASS, host_seconds: float = 2.0) -> Push:
    """Run a claimed push to its end through the store, as the pusher writes it."""
    await store.transition_push(push_id, PushState.DEPLOYING, "pusher", "wave 1", clock())
    push = await store.get_push(push_id)
    for wave, wave_hosts in enumerate((hosts[:1], hosts[1:]), start=1):
        for host in wave_hosts:
            row = await store.host_step_started(push_id, host, wave, "activate", clock())
            clock.advance(host_seconds)
            outcome = Outcome.OK if verdict == Verdict.PASS or wave == 1 else Outcome.FAILED
            await store.host_step_ended(row, HostResult(
                push_id, host, wave, "activate", outcome, 0 if outcome == Outcome.OK else 1,
                "" if outcome == Outcome.OK else "reload failed", host_seconds, push.release),
                clock())
            await store.record_live(host, push.release, str(outcome), push_id, "pusher",
                                    clock())
        await store.transition_push(push_id, PushState.BAKING, "pusher", f"bake {wave}", clock())
        clock.advance(60)
        look_verdict = Verdict.PASS if wave == 1 else verdict
        await store.add_check_results(push_id, wave, [CheckResult(
            push_id, "checkout errors", 1, clock() - timedelta(minutes=1), clock(),
            ("SELECT sum(errors) FROM http",), {"bad": 3, "all": 1000},
            {"bad": 4 if look_verdict == Verdict.PASS else 40, "all": 1000}, 0.4, 2.5,
            look_verdict, f"ratio check {look_verdict}")], clock())
        if wave == 1:
            await store.transition_push(push_id, PushState.DEPLOYING, "pusher", "wave 2",
                                        clock())
    passed = verdict == Verdict.PASS
    return await store.finish_push(
        push_id, PushState.PASSED if passed else PushState.FAILED,
        ChangeState.LIVE if passed else ChangeState.FAILED, "pusher",
        "all checks passed" if passed else "checkout errors rose", clock(), verdict=verdict)

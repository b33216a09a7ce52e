"""The pusher's rules on a real fleet: one push at a time whoever asks, a clean
stop in the middle of a push, and webhooks as the push goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.config import HostConfig
from daemon.errors import Busy
from daemon.models import ChangeState, PushState, QueueState
from daemon.pusher import waves
from tests.fixtures_daemon import Daemon, current_of
from tests.shopsim import ShopSimulator
from tests.sshfleet import SshFleet

pytestmark = pytest.mark.timeout(180)
QUIET = {"every": "1h"}  # no slot fires during the test: only the test asks for pushes


async def test_two_triggers_at_once_start_one_push(
        daemon_factory: Callable[..., Awaitable[Daemon]]) -> None:
    d = await daemon_factory(schedule=QUIET)
    first = await d.approve("one", {"app.txt": "1\n"})
    second = await d.approve("two", {"app.txt": "2\n"})
    service = d.service
    results = await asyncio.gather(service.push_now("alice"), service.push_now("bob"),
                                   return_exceptions=True)
    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(started) == 1 and started[0] is not None
    assert len(refused) == 1 and isinstance(refused[0], Busy), refused
    assert started[0].changes == (first,)
    assert (await d.store.get_change(second)).state == ChangeState.APPROVED
    assert service.pusher is not None
    await service.pusher.wait()
    assert (await d.store.get_push(started[0].id)).state == PushState.PASSED


async def test_stop_during_a_bake_records_the_push_as_interrupted(
        daemon_factory: Callable[..., Awaitable[Daemon]], shop_fleet: SshFleet) -> None:
    d = await daemon_factory(schedule=QUIET)
    change = await d.approve("one", {"app.txt": "1\n"})
    push = await d.service.push_now("alice")
    assert push is not None

    async def baking() -> bool:
        return (await d.store.get_push(push.id)).state == PushState.BAKING

    await d.until(baking)
    store = d.store
    began = time.monotonic()
    await d.service.stop(grace=5)
    assert time.monotonic() - began < 10  # the bake's sleep ends at once; no host step ran
    # the service closed its store: read the record through a fresh one
    from daemon.store import Store
    reopened = await Store.open(store.path)
    try:
        final = await reopened.get_push(push.id)
        control = await reopened.control()
        assert final.state == PushState.INTERRUPTED, final
        assert "stopped during the push" in final.reason
        assert control.state == QueueState.HALTED and f"push {push.id}" in control.reason
        assert (await reopened.get_change(change)).state == ChangeState.FAILED
        live = {h.name: h.live_release for h in await reopened.hosts()}
        assert live == current_of(shop_fleet)
    finally:
        await reopened.close()


async def test_webhooks_follow_the_push(
        daemon_factory: Callable[..., Awaitable[Daemon]]) -> None:
    received: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        if received[-1]["event"] == "passed":
            got.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        d = await daemon_factory(schedule=QUIET, webhooks=[
            {"url": str(server.make_url("/hook")), "events": ["started", "passed"]}])
        await d.approve("one", {"app.txt": "1\n"})
        push = await d.service.push_now("alice")
        assert push is not None
        await asyncio.wait_for(got.wait(), 60)
    finally:
        await server.close()
    assert [body["event"] for body in received] == ["started", "passed"]
    assert all(body["push"] == push.id and body["text"].startswith("pushguard: ")
               for body in received)


async def test_no_push_into_an_incident(daemon_factory: Callable[..., Awaitable[Daemon]],
                                        shop: ShopSimulator) -> None:
    """Checkouts start failing with no push; a push asked for now is postponed, the
    change goes back to the queue, and an expedited fix still goes out."""
    d = await daemon_factory(schedule=QUIET)
    change = await d.approve("feature", {"app.txt": "feature\n"})
    shop.incident = True
    try:
        await asyncio.sleep(3)  # the incident fills most of the pre-flight's recent window
        push = await d.service.push_now("alice")
        assert push is not None and d.service.pusher is not None
        await d.service.pusher.wait()
        final = await d.store.get_push(push.id)
        assert final.state == PushState.ABORTED, final
        assert final.reason.startswith("postponed: service already degraded"), final.reason
        assert "checkout errors" in final.reason
        assert (await d.store.get_change(change)).state == ChangeState.APPROVED
        assert [r for r in await d.store.check_results(push.id) if r["verdict"] == "fail"]
        assert not await d.store.host_results(push.id)  # no host was touched
        fix = await d.approve("fix", {"app.txt": "fix\n"}, expedite=True)
        await d.until(lambda: d.change_done(fix))
        fix_push = await d.push_of(fix)
        assert fix_push.trigger == "expedite" and fix_push.state != PushState.ABORTED
    finally:
        shop.incident = False


def test_the_plan_has_one_wave_when_the_canary_is_none_or_every_host() -> None:
    # a plan of one wave is judged with the whole false-alarm budget (checks.verdict)
    hosts = [HostConfig(f"web{n}", f"127.0.0.{n}", 22, ()) for n in range(1, 4)]
    assert waves(hosts, 1) == [hosts[:1], hosts[1:]]
    for canary in (0, 3, 5):
        assert waves(hosts, canary) == [hosts]

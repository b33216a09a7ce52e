"""Webhooks against a real loopback HTTP server; sd_notify against a real socket."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.config import WebhookConfig
from daemon.notify import Systemd, Webhooks


class HookServer:
    """A chat-tool-like receiver: records bodies, fails the first `fail` requests."""

    def __init__(self, fail: int = 0, status: int = 500) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail = fail
        self.status = status
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=self.status)
        self.bodies.append(await request.json())
        self.got.set()
        return web.Response(text="ok")


async def serve(hook: HookServer) -> TestServer:
    app = web.Application()
    app.router.add_post("/hook/secret-part", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def config(url: str, events: tuple[str, ...] = ("failed", "halted"),
           retries: int = 3) -> WebhookConfig:
    return WebhookConfig(url=url, events=events, timeout=timedelta(seconds=2), retries=retries)


async def test_delivers_subscribed_events_only() -> None:
    hook = HookServer()
    server = await serve(hook)
    hooks = Webhooks([config(str(server.make_url("/hook/secret-part")))], backoff=0.01)
    try:
        hooks.emit("passed", "push 1 passed", {"push": 1})
        hooks.emit("halted", "queue halted: push 2 failed", {"push": 2, "reason": "x"})
        await hooks.drain(5)
    finally:
        await hooks.close()
        await server.close()
    assert hook.bodies == [{"text": "pushguard: queue halted: push 2 failed",
                            "event": "halted", "push": 2, "reason": "x"}]


async def test_retries_then_succeeds_and_logs_recovery(caplog: pytest.LogCaptureFixture) -> None:
    hook = HookServer(fail=2)
    server = await serve(hook)
    hooks = Webhooks([config(str(server.make_url("/hook/secret-part")))], backoff=0.01)
    try:
        hooks.emit("failed", "push 3 failed", {"push": 3})
        await hooks.drain(5)
    finally:
        await hooks.close()
        await server.close()
    assert hook.attempts == 3 and len(hook.bodies) == 1


async def test_failing_hook_is_bounded_logged_once_never_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    hook = HookServer(fail=1000)
    server = await serve(hook)
    url = str(server.make_url("/hook/secret-part"))
    hooks = Webhooks([config(url, retries=2)], backoff=0.01)
    caplog.set_level(logging.WARNING, "pushguard.notify")
    try:
        for n in range(3):
            hooks.emit("failed", f"push {n} failed", {"push": n})
        await hooks.drain(5)
    finally:
        await hooks.close()
        await server.close()
    assert hook.attempts == 9  # 3 events x (1 + 2 retries), then given up
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1
    assert "secret-part" not in caplog.text  # the path often carries the hook's secret


async def test_unreachable_hook_does_not_raise() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hooks = Webhooks([config(f"http://127.0.0.1:{port}/x", retries=1)], backoff=0.01)
    hooks.emit("failed", "x", {})
    await hooks.drain(5)
    await hooks.close()
    assert hooks.delivered == 0


def test_systemd_notify_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        systemd = Systemd({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert systemd.enabled and systemd.watchdog_interval == 2.0
        systemd.ready("idle")
        assert sock.recv(1024).decode().startswith("READY=1\nSTATUS=idle\nMAINPID=")
        systemd.watchdog()
        assert sock.recv(1024) == b"WATCHDOG=1"
        systemd.extend_timeout(90)
        assert sock.recv(1024) == b"EXTEND_TIMEOUT_USEC=90000000"
        systemd.stopping("bye")
        assert sock.recv(1024) == b"STOPPING=1\nSTATUS=bye"
        systemd.close()


def test_systemd_is_silent_without_systemd() -> None:
    systemd = Systemd({})
    assert not systemd.enabled and systemd.watchdog_interval is None
    assert systemd.send("READY=1") is False
    other = Systemd({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process

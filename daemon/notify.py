"""Outgoing notifications: webhooks for chat and paging, and systemd's sd_notify.

A webhook gets a JSON POST with a `text` field (what Slack, Mattermost and
most chat tools accept) plus the structured details. Delivery happens in
tasks this object owns, with a bounded number of retries; a failing webhook
is logged when it starts failing and when it recovers, never fatal, and
never holds up a push.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from daemon.config import WebhookConfig

log = logging.getLogger("pushguard.notify")


class Webhooks:
    """Fire-and-forget delivery of push events to the configured webhooks."""

    def __init__(self, hooks: Sequence[WebhookConfig], *, backoff: float = 0.5) -> None:
        self.hooks = tuple(hooks)
        self._backoff = backoff
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing: set[str] = set()
        self.delivered = 0

    def emit(self, event: str, text: str, details: Mapping[str, Any]) -> None:
        """Queue `event` for every webhook that subscribed to it; returns at once."""
        body = {"text": f"pushguard: {text}", "event": event, **details}
        for hook in self.hooks:
            if event in hook.events:
                task = asyncio.create_task(self._deliver(hook, body), name=f"webhook {event}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, hook: WebhookConfig, body: Mapping[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        problem = ""
        for attempt in range(hook.retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                timeout = aiohttp.ClientTimeout(total=hook.timeout.total_seconds())
                async with self._session.post(hook.url, json=body, timeout=timeout) as response:
                    if response.status < 300:
                        self._recovered(hook)
                        self.delivered += 1
                        return
                    problem = f"HTTP {response.status}"
                    if 400 <= response.status < 500 and response.status != 429:
                        break  # the hook refuses this body; retrying will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if hook.url not in self._failing:
            self._failing.add(hook.url)
            log.warning("webhook %s failing (%s); further failures are not logged until it "
                        "recovers", _safe_url(hook.url), problem)

    def _recovered(self, hook: WebhookConfig) -> None:
        if hook.url in self._failing:
            self._failing.discard(hook.url)
            log.info("webhook %s recovered", _safe_url(hook.url))

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for deliveries in flight, then cancel the rest."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        await self.drain(grace)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _safe_url(url: str) -> str:
    """The URL without its path and query, which often carry the hook's secret."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/..."


class Systemd:
    """sd_notify over the NOTIFY_SOCKET datagram socket, without a dependency.

    Every call is a no-op when the daemon was not started by systemd (no
    NOTIFY_SOCKET). `watchdog_interval` is half of WatchdogSec when the
    watchdog is meant for this process, else None.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # an abstract socket is written with a leading '@'
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *assignments: str) -> bool:
        if not self._address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

"""The composition root: builds every long-lived object, starts them in order
and stops them in reverse.

Start: lock the state dir -> store -> metric source and guard -> fleet ->
webhooks -> pusher -> recovery (interrupt unfinished pushes, read back every
host) -> REST API (bound) -> schedule. Stop: schedule -> pusher (the current
host step ends, bounded; an unfinished push is recorded as interrupted) ->
API -> webhooks -> fleet -> metric source -> store -> lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import IO

from aiohttp import web

from api.app import build_app
from api.auth import Tokens
from checks.influx import MetricSource, open_source
from checks.verdict import Guard
from daemon import schedule
from daemon.config import Config
from daemon.errors import Busy, StoreError
from daemon.fleet import Fleet, warn_if_open
from daemon.models import ChangeState, Control, Push, QueueState, Trigger
from daemon.notify import Systemd, Webhooks
from daemon.pusher import Pusher
from daemon.queue import Queue
from daemon.recovery import recover
from daemon.store import Store

log = logging.getLogger("pushguard.service")

EXPEDITE_POLL = 2.0  # seconds between looks for an approved expedited fix


def utcnow() -> datetime:
    return datetime.now(UTC)


def pushguard_version() -> str:
    try:
        return version("pushguard")
    except PackageNotFoundError:
        return "0+unknown"


class Service:
    """The running daemon; also the API's Controller."""

    def __init__(self, config: Config, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.tz = config.daemon.timezone
        self._ready = False
        self._lock_file: IO[bytes] | None = None
        self.store: Store | None = None
        self.queue: Queue | None = None
        self.source: MetricSource | None = None
        self.fleet: Fleet | None = None
        self.webhooks: Webhooks | None = None
        self.pusher: Pusher | None = None
        self.ticker: schedule.Ticker | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._poller: asyncio.Task[None] | None = None
        # a slot that found a push running: taken as soon as the pusher is free
        self._owed_slot = False
        self.systemd = Systemd()
        self._heartbeat: asyncio.Task[None] | None = None

    # -- start and stop -------------------------------------------------------

    async def start(self) -> None:
        """Start everything; on failure, stop what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=5.0)
            raise

    async def _start(self) -> None:
        config = self.config
        self._lock_state_dir()
        self.store = await Store.open(config.db_path)
        tokens = Tokens.load(config.api.tokens_file)
        self.source = open_source(config.influxdb)
        guard = Guard(config.guard, config.checks, self.source, config.daemon.timezone)
        self.fleet = Fleet(config.ssh, config.deploy, config.hosts)
        warn_if_open(config.ssh.key_file)
        self.webhooks = Webhooks(config.webhooks)
        self.pusher = Pusher(config=config, store=self.store, fleet=self.fleet, guard=guard,
                             webhooks=self.webhooks, clock=self.clock)
        interrupted = await recover(self.store, self.fleet, config.hosts, self.clock(),
                                    self.clock)
        for push_id in interrupted:
            log.warning("push %d was left unfinished by the last run: interrupted, queue "
                        "halted", push_id)
        self.queue = Queue(self.store, config.source.repo)
        app = build_app(store=self.store, queue=self.queue,
                        control=self, api_config=config.api, tokens=tokens,
                        version=pushguard_version(), clock=self.clock,
                        hosts=[host.name for host in config.hosts])
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.api.host, config.api.port)
        await site.start()
        self.port = _bound_port(self.runner, config.api.port)
        self.ticker = schedule.Ticker(config.schedule, self.tz, self._tick, self.clock)
        self.ticker.start()
        self._poller = asyncio.create_task(self._poll_expedited(), name="expedite poller")
        self._ready = True
        # only now: the store is open, recovery is done and the API socket is bound
        self.systemd.ready(await self._status_text())
        self._heartbeat = asyncio.create_task(self._beat(), name="systemd heartbeat")
        log.info("pushguard %s ready: API on http://%s:%s, %d host(s), next slot %s",
                 pushguard_version(), config.api.host, self.port, len(config.hosts),
                 self.ticker.next_at.isoformat() if self.ticker.next_at else "none")

    async def stop(self, grace: float = 60.0) -> None:
        """Stop in reverse order; safe to call on a partly started service."""
        self._ready = False
        busy = self.pusher is not None and self.pusher.busy
        self.systemd.stopping("stopping: letting the current host step end" if busy
                              else "stopping")
        if busy:
            self.systemd.extend_timeout(grace + 30.0)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self.ticker is not None:
            self.ticker.shutdown()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self.pusher is not None:
            await self.pusher.stop(grace)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.fleet is not None:
            await self.fleet.close()
        if self.source is not None:
            await self.source.close()
        if self.store is not None:
            await self.store.close()
        self._unlock_state_dir()
        self.systemd.close()

    async def _beat(self) -> None:
        """WATCHDOG=1 from a task on the event loop (a blocked loop trips the watchdog),
        and STATUS= whenever what the daemon does changes."""
        interval = self.systemd.watchdog_interval
        pace = min(interval, 5.0) if interval else 5.0
        last = ""
        while True:
            if interval:
                self.systemd.watchdog()
            try:
                text = await self._status_text()
            except Exception:
                text = "store unavailable"
            if text != last:
                self.systemd.status(text)
                last = text
            await asyncio.sleep(pace)

    async def _status_text(self) -> str:
        """One line for `systemctl status`: what the daemon is doing now."""
        assert self.store is not None
        progress = self.progress()
        if progress is not None:
            return (f"push {progress['push']}: {progress['phase']} wave {progress['wave']}/"
                    f"{progress['waves']} ({progress['hosts_done']}/{progress['hosts_total']}"
                    " hosts)")
        control = await self.store.control()
        if control.state != QueueState.RUNNING:
            return f"{control.state}: {control.reason}"[:200]
        slot = self.next_slot(self.clock())
        return f"idle; next slot {slot.isoformat() if slot else 'none'}"

    def _lock_state_dir(self) -> None:
        state_dir = self.config.daemon.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(state_dir / "pushguard.lock", "wb")  # noqa: SIM115
        except OSError as exc:
            raise StoreError(f"cannot use the state directory {state_dir}: {exc.strerror}",
                             path=str(state_dir)) from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another pushguard is running on {state_dir}",
                             path=str(state_dir)) from None
        self._lock_file.write(f"{os.getpid()}\n".encode())
        self._lock_file.flush()

    def _unlock_state_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- what sets pushes going ---------------------------------------------------

    async def _tick(self, slot: datetime) -> None:
        assert self.pusher is not None
        try:
            push = await self.pusher.request(Trigger.SCHEDULE, "schedule",
                                             normal_allowed=self._window_open())
        except Busy as exc:
            self._owed_slot = True
            log.info("slot %s taken when the pusher is free: %s", slot.isoformat(), exc.message)
            return
        if push is None:
            log.debug("slot %s: nothing to push", slot.isoformat())

    async def _poll_expedited(self) -> None:
        """Start an expedited fix without waiting for a slot (also while halted), and
        take a slot that was missed because a push was running (at most one is owed)."""
        assert self.store is not None and self.pusher is not None
        while True:
            await asyncio.sleep(EXPEDITE_POLL)
            if self.pusher.busy:
                continue
            try:
                if self._owed_slot:
                    self._owed_slot = False
                    try:
                        await self._tick(self.clock())
                    except Exception:
                        self._owed_slot = True  # still owed: the next round takes it
                        raise
                    continue
                waiting = await self.store.list_changes(ChangeState.APPROVED, limit=1000)
                if any(change.expedite for change in waiting):
                    await self.pusher.request(Trigger.EXPEDITE, "expedite",
                                              normal_allowed=False)
            except Busy:
                continue
            except Exception:  # the store locked, say: the next round tries again
                log.exception("expedite poller: could not start a push")

    def _window_open(self) -> bool:
        return schedule.window_state(self.config.schedule, self.tz, self.clock()) is None

    # -- the API's Controller -------------------------------------------------------

    def ready(self) -> bool:
        return self._ready

    def current_push(self) -> int | None:
        if self.pusher is None or self.pusher.progress is None:
            return None
        return self.pusher.progress.push

    def next_slot(self, now: datetime) -> datetime | None:
        if self.ticker is not None and self.ticker.next_at is not None:
            return self.ticker.next_at
        return schedule.next_slot(self.config.schedule, self.tz, now)

    def window_state(self, now: datetime) -> str | None:
        return schedule.window_state(self.config.schedule, self.tz, now)

    async def settling_until(self, now: datetime) -> datetime | None:
        assert self.pusher is not None
        return await self.pusher.settling_until(now)

    async def push_now(self, actor: str) -> Push | None:
        assert self.pusher is not None
        return await self.pusher.request(Trigger.API, actor, normal_allowed=self._window_open())

    async def pause(self, actor: str, reason: str) -> Control:
        assert self.queue is not None
        return await self.queue.pause(actor, reason, self.clock())

    async def resume(self, actor: str, reason: str) -> Control:
        assert self.queue is not None and self.webhooks is not None
        control = await self.queue.resume(actor, reason, self.clock())
        self.webhooks.emit("resumed", f"queue resumed by {actor}: {reason}",
                           {"actor": actor, "reason": reason})
        return control

    def progress(self) -> dict[str, object] | None:
        if self.pusher is None or self.pusher.progress is None:
            return None
        return self.pusher.progress.as_dict()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    """The port actually bound (differs from the config when it asked for port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            with contextlib.suppress(OSError, IndexError):
                return int(sock.getsockname()[1])
    return configured

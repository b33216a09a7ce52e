"""One host in one fleet call: its SSH connection, its deadline and its steps.

`HostRun.within_deadline(work)` runs `work` (deploy, rollback or read_live,
the steps described in `daemon.fleet`) under the host's deadline and always
returns the host's `HostOutcome`; a step that ends badly raises `StepError`
inside, which becomes the outcome. Every remote command is bounded on the
host by coreutils `timeout` too, so nothing outlives the deadline there;
`on_step` is awaited around every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncssh

from daemon import remote
from daemon.config import DeployConfig, HostConfig
from daemon.errors import HostError
from daemon.models import Outcome
from daemon.release import Release

log = logging.getLogger("daemon.fleet")

STDERR_TAIL = 2048
KILL_GRACE = 5  # seconds between TERM and KILL for a timed-out remote command
CLOSE_GRACE = 1.0  # seconds a clean SSH disconnect may take before the socket is dropped
# exit statuses of coreutils `timeout` when it stopped the command (TERM, then KILL)
_TIMEOUT_STATUSES = frozenset({124, 137})

@dataclass(frozen=True)
class HostOutcome:
    """What happened on one host: in one step (callbacks) or in the whole call."""

    host: str
    outcome: Outcome
    step: str
    exit_status: int | None
    stderr_tail: str
    seconds: float
    release: str | None  # the live release id after the step, when known


StepCallback = Callable[[str, str, str, HostOutcome | None], Awaitable[None]]
"""(host, step, "start" | "end", outcome or None): awaited around every step."""


class StepError(HostError):
    """A step ended badly on one host; `outcome` says how."""

    def __init__(self, outcome: Outcome, message: str, *, host: str, step: str,
                 exit_status: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message, host=host, step=step, exit_status=exit_status,
                         stderr_tail=stderr_tail)
        self.outcome = outcome


class HostRun:
    """One host in one call: its connection, its deadline and its step log."""

    def __init__(self, host: HostConfig, deploy: DeployConfig,
                 options: asyncssh.SSHClientConnectionOptions,
                 http: aiohttp.ClientSession | None, on_step: StepCallback | None) -> None:
        self.host = host
        self.deploy_config = deploy
        self.path = deploy.path.replace("{name}", host.name)
        self.options = options
        self.http = http
        self.on_step = on_step
        self.conn: asyncssh.SSHClientConnection | None = None
        self.step = "connect"
        self.live: str | None = None
        self.final = Outcome.OK
        self.clock = asyncio.get_running_loop().time
        self.started = self.step_started = self.clock()
        self.deadline = self.started + deploy.host_timeout.total_seconds()

    async def within_deadline(self, work: Callable[[HostRun], Coroutine[Any, Any, None]]
                              ) -> HostOutcome:
        """Run `work` under the host deadline; always return this host's outcome.

        A step callback that raises fails the host at that step. At the deadline, or
        when the call is cancelled, the connection is aborted before anything else
        waits on the host, so a frozen host holds nothing open past its deadline.
        """
        try:
            await self._bounded(work)
            await self._close()
        except StepError as exc:
            return await self._finish(exc.outcome, exc.exit_status, exc.stderr_tail)
        except TimeoutError:
            seconds = self.deploy_config.host_timeout.total_seconds()
            return await self._finish(Outcome.TIMEOUT, None,
                                      f"host deadline of {seconds:g}s passed in {self.step}")
        except Exception as exc:
            log.exception("host %s: unexpected error in %s", self.host.name, self.step)
            return await self._finish(Outcome.FAILED, None, describe(exc))
        return await self._finish(self.final, None, "")

    async def _bounded(self, work: Callable[[HostRun], Coroutine[Any, Any, None]]) -> None:
        """Run `work` until the deadline; when it fails, times out or is cancelled, abort
        the connection before anything else waits on the host."""
        task = asyncio.create_task(work(self), name=f"host {self.host.name}")
        try:
            async with asyncio.timeout_at(self.deadline):
                # shielded, so that a cancel reaches here before the work's own
                # clean-ups: asyncssh's put() and SFTP exit wait on the peer for a
                # clean close, which a frozen peer holds open until the keepalive gives up
                await asyncio.shield(task)
        except BaseException:
            self._abort()  # fails every request still waiting on this connection
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # the failure is the one raised here, or the deadline
            raise

    async def deploy(self, release: Release, exports: str) -> None:
        await self._connect()
        lines = (await self._run(remote.PREPARE, self.path, release.id)).splitlines()
        self.live = remote.release_of(lines[0]) if len(lines) > 1 else None
        await self._end()
        await self._upload_and_unpack(release, need=lines[-1:] == ["need"])
        await self._begin("switch")
        # cut short mid-switch, either release may be live: the record keeps the old one
        self.live = None
        await self._run(remote.SWITCH, self.path, release.id)
        self.live = release.id
        await self._end()
        await self._activate(release.id, exports)
        await self._health()
        await self._command_step("prune", remote.PRUNE, self.path,
                                 str(self.deploy_config.keep_releases))

    async def rollback(self, exports: str, from_release: str) -> None:
        await self._connect()
        await self._end()
        await self._begin("switch")
        result = await self._run(remote.ROLLBACK, self.path, from_release)
        verb, _, target = result.strip().partition(" ")
        self.live = remote.release_of(target)
        if verb == "skip":
            self.final = Outcome.SKIPPED
            await self._end(Outcome.SKIPPED)
            return
        await self._end()
        if self.live is not None:
            await self._activate(self.live, exports)
        await self._health()

    async def read_live(self) -> None:
        await self._connect()
        await self._end()
        await self._begin("read")
        self.live = remote.release_of(await self._run(remote.READ_LIVE, self.path))
        await self._end()

    async def _connect(self) -> None:
        await self._begin("connect")
        try:
            self.conn = await asyncssh.connect(self.host.address, self.host.port,
                                               options=self.options, config=None)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._error(Outcome.HOST_KEY_REJECTED, str(exc)) from None
        except asyncssh.PermissionDenied as exc:
            raise self._error(Outcome.FAILED, f"login refused: {exc}") from None
        except (OSError, asyncssh.Error) as exc:
            raise self._error(Outcome.UNREACHABLE, describe(exc)) from None
        except TimeoutError:
            if self._past_deadline():
                raise
            raise self._error(Outcome.UNREACHABLE, "connect timed out") from None

    async def _upload_and_unpack(self, release: Release, *, need: bool) -> None:
        upload = f"{self.path}/releases/.upload-{release.id}-{secrets.token_hex(4)}.tar.gz"
        await self._begin("upload")
        if not need:
            await self._end(Outcome.SKIPPED)
            await self._begin("unpack")
            await self._end(Outcome.SKIPPED)
            return
        assert self.conn is not None
        try:
            async with self.conn.start_sftp_client() as sftp:
                await sftp.put(str(release.archive), upload)
        except (OSError, asyncssh.Error) as exc:
            raise self._error(lost_or_failed(exc), describe(exc)) from None
        await self._end()
        await self._command_step("unpack", remote.UNPACK, self.path, release.id, upload,
                                 release.sha256)

    async def _activate(self, release_id: str, exports: str) -> None:
        own = remote.exports({"PUSHGUARD_RELEASE": release_id, "PUSHGUARD_PATH": self.path})
        script = f'cd -- "$1/current"\n{exports}\n{own}\n{self.deploy_config.activate}'
        await self._command_step("activate", script, self.path)

    async def _health(self) -> None:
        template = self.deploy_config.health_url
        if template is None or self.http is None:
            return
        await self._begin("health")
        try:
            url = template.format(address=self.host.address, name=self.host.name,
                                  port=self.host.port)
        except (KeyError, IndexError, ValueError) as exc:
            raise self._error(Outcome.FAILED, f"bad health_url: {describe(exc)}") from None
        await _probe(self.http, url, self.deploy_config.health_timeout.total_seconds(),
                     self._error)
        await self._end()

    async def _command_step(self, step: str, script: str, *args: str) -> None:
        await self._begin(step)
        await self._run(script, *args)
        await self._end()

    async def _run(self, script: str, *args: str) -> str:
        """Run `script` with `args` on the host, bounded there and here; its stdout."""
        assert self.conn is not None
        limit = self._command_seconds()
        command = shlex.join(["timeout", "-k", str(KILL_GRACE), str(limit),
                              "sh", "-c", script, "sh", *args])
        started = self.clock()
        try:
            async with asyncio.timeout(limit + KILL_GRACE + 2):
                result = await self.conn.run(command, check=False, encoding="utf-8",
                                             errors="replace")
        except (OSError, asyncssh.Error) as exc:
            raise self._error(lost_or_failed(exc), describe(exc)) from None
        except TimeoutError:
            if self._past_deadline():
                raise
            raise self._error(Outcome.TIMEOUT, f"no answer within {limit}s") from None
        if result.exit_status == 0:
            return str(result.stdout)
        stderr = str(result.stderr)
        status = result.exit_status if result.exit_signal is None else None
        # the host-side bound, not a command that happens to exit 124 early
        if status in _TIMEOUT_STATUSES and self.clock() - started >= limit - 0.5:
            stderr += f"pushguard: stopped on the host after {limit}s\n"
            raise self._error(Outcome.TIMEOUT, f"timed out after {limit}s", status,
                              stderr[-STDERR_TAIL:])
        raise self._error(Outcome.FAILED, f"exit status {status}", status,
                          stderr[-STDERR_TAIL:])

    def _command_seconds(self) -> int:
        left = self.deadline - self.clock()
        limit = min(self.deploy_config.command_timeout.total_seconds(), left)
        return max(1, math.ceil(limit))

    async def _begin(self, step: str) -> None:
        self.step = step
        self.step_started = self.clock()
        if self.on_step is not None:
            await self.on_step(self.host.name, step, "start", None)

    async def _end(self, outcome: Outcome = Outcome.OK) -> None:
        if self.on_step is not None:
            seconds = self.clock() - self.step_started
            result = HostOutcome(self.host.name, outcome, self.step, None, "", seconds,
                                 self.live)
            await self.on_step(self.host.name, self.step, "end", result)

    async def _finish(self, outcome: Outcome, exit_status: int | None,
                      stderr_tail: str) -> HostOutcome:
        """The call's outcome for this host; the failing step also gets its end callback."""
        if outcome in (Outcome.TIMEOUT, Outcome.UNREACHABLE) and self.step == "switch":
            self.live = None  # we cannot know whether the rename happened
        seconds = self.clock() - self.started
        result = HostOutcome(self.host.name, outcome, self.step, exit_status, stderr_tail,
                             seconds, self.live)
        log.info("host %s: %s at %s after %.2fs%s", self.host.name, outcome, self.step,
                 seconds, f": {stderr_tail[-200:]}" if stderr_tail else "")
        if outcome not in (Outcome.OK, Outcome.SKIPPED) and self.on_step is not None:
            step_result = HostOutcome(self.host.name, outcome, self.step, exit_status,
                                      stderr_tail, self.clock() - self.step_started,
                                      self.live)
            try:
                await self.on_step(self.host.name, self.step, "end", step_result)
            except Exception:
                log.exception("host %s: step callback failed", self.host.name)
        return result

    def _error(self, outcome: Outcome, message: str, exit_status: int | None = None,
               stderr_tail: str = "") -> StepError:
        return StepError(outcome, message, host=self.host.name, step=self.step,
                         exit_status=exit_status, stderr_tail=stderr_tail or message)

    def _past_deadline(self) -> bool:
        return self.clock() >= self.deadline

    async def _close(self) -> None:
        """Disconnect cleanly, but never wait more than CLOSE_GRACE for it."""
        try:
            if self.conn is not None:
                self.conn.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await self.conn.wait_closed()
        finally:
            self._abort()  # a cancel during the grace must not leave the socket open

    def _abort(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None


async def _probe(http: aiohttp.ClientSession, url: str, budget: float,
                 error: Callable[[Outcome, str], StepError]) -> None:
    """GET `url` until it answers 2xx; StepError (failed) after `budget` seconds."""
    deadline = time.monotonic() + budget
    pause = 0.1
    while True:
        left = deadline - time.monotonic()
        try:
            timeout = aiohttp.ClientTimeout(total=max(0.1, min(5.0, left)))
            async with http.get(url, timeout=timeout, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return
                last = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = describe(exc) or type(exc).__name__
        if time.monotonic() + pause >= deadline:
            raise error(Outcome.FAILED, f"{url} not healthy within {budget:g}s: {last}")
        await asyncio.sleep(pause)  # retry backoff between probes
        pause = min(pause * 2, 2.0)


def lost_or_failed(exc: Exception) -> Outcome:
    lost = (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError)
    return Outcome.UNREACHABLE if isinstance(exc, lost) else Outcome.FAILED


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

"""The fleet: push a release to hosts over SSH, roll back, read back what is live.

Layout on every host, under `[deploy] path` (which may hold `{name}`, the
host's name, for fleets whose hosts share one disk):

    releases/<id>/     an unpacked release; it exists only once complete
    current -> releases/<id>    the live release (relative symlink)
    previous -> releases/<id>   the release that was live before it

A deploy runs these steps per host, in order: connect, upload (SFTP of the
archive, skipped when the release is already unpacked there), unpack (into a
temporary folder, digest checked, renamed into place), switch (a new symlink
renamed over `current`, after `previous` is pointed at the old target),
activate (the configured shell command, run by `sh` in `{path}/current` with
PUSHGUARD_RELEASE, PUSHGUARD_PATH, PUSHGUARD_PUSH and the caller's `env`
exported), health (the optional health URL, probed from here) and prune
(keep `keep_releases`, counting from the newest, but never `current` or
`previous`). A rollback is connect, switch (to `previous`; the two swap),
activate and health.

Contracts:
- Host keys are always checked against `[ssh] known_hosts`; no agent and no
  ssh config are used. One SSH connection per host per call.
- Hosts run concurrently under `[deploy] concurrency`; each host has its own
  deadline (`host_timeout`) from the moment it starts. Every remote command
  is also bounded on the host by `timeout` (at most `command_timeout` and
  never past the host's deadline), so nothing outlives its deadline there.
- A host's failure is a `HostOutcome`, never an exception: `unreachable`,
  `host-key-rejected`, `timeout` (the host deadline, or the host-side bound
  of a command), or `failed` with the step, exit status and stderr tail.
- Values from a change (env) reach the activate command only as exported,
  shell-quoted variables; every path and id in a command is quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import shlex
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncssh

from daemon import remote
from daemon.config import DeployConfig, HostConfig, SshConfig
from daemon.errors import HostError
from daemon.models import Outcome
from daemon.release import Release

log = logging.getLogger(__name__)

STDERR_TAIL = 2048
KILL_GRACE = 5  # seconds between TERM and KILL for a timed-out remote command
CLOSE_GRACE = 1.0  # seconds a clean SSH disconnect may take before the socket is dropped
# exit statuses of coreutils `timeout` when it stopped the command (TERM, then KILL)
_TIMEOUT_STATUSES = frozenset({124, 137})
# AES-GCM first: one AEAD call per packet (chacha20-poly1305 costs three here)
_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"]


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


class Fleet:
    """Deploys releases to hosts over SSH; one instance per daemon.

    `hosts` is the configured fleet; calls take the hosts of one wave.
    """

    def __init__(self, ssh: SshConfig, deploy: DeployConfig,
                 hosts: Sequence[HostConfig]) -> None:
        self._ssh = ssh
        self._deploy = deploy
        self.hosts = tuple(hosts)
        self._http: aiohttp.ClientSession | None = None

    async def deploy(self, hosts: Sequence[HostConfig], release: Release, *,
                     env: Mapping[str, str],
                     on_step: StepCallback | None = None) -> list[HostOutcome]:
        """Deploy `release` to `hosts` (one wave); one outcome per host, in order."""
        remote.check_release_id(release.id)
        exports = remote.exports(env)

        async def one(run: _HostRun) -> None:
            await run.deploy(release, exports)

        return await self._fan_out(hosts, on_step, one)

    async def rollback(self, hosts: Sequence[HostConfig], *, env: Mapping[str, str],
                       on_step: StepCallback | None = None,
                       from_release: str | None = None) -> list[HostOutcome]:
        """Switch each host back to its `previous` release and activate it.

        `current` and `previous` swap. With `from_release`, a host whose live
        release is another one is left alone (outcome `skipped`).
        """
        if from_release is not None:
            remote.check_release_id(from_release)
        exports = remote.exports(env)

        async def one(run: _HostRun) -> None:
            await run.rollback(exports, from_release or "")

        return await self._fan_out(hosts, on_step, one)

    async def read_live(self, hosts: Sequence[HostConfig]) -> list[HostOutcome]:
        """Read `current` on each host: ok with `.release` (None if unset), or the failure."""

        async def one(run: _HostRun) -> None:
            await run.read_live()

        return await self._fan_out(hosts, None, one)

    async def close(self) -> None:
        """Release the HTTP session used for health probes."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _fan_out(self, hosts: Sequence[HostConfig], on_step: StepCallback | None,
                       work: Callable[[_HostRun], Awaitable[None]]) -> list[HostOutcome]:
        try:
            options = await asyncio.to_thread(self._connect_options)
        except (OSError, ValueError, asyncssh.Error) as exc:
            return [_setup_failure(host, exc) for host in hosts]
        gate = asyncio.Semaphore(self._deploy.concurrency)
        http = self._http_session() if self._deploy.health_url else None

        async def guarded(host: HostConfig) -> HostOutcome:
            async with gate:
                run = _HostRun(host, self._deploy, options, http, on_step)
                return await run.within_deadline(work)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(guarded(host)) for host in hosts]
        return [task.result() for task in tasks]

    def _connect_options(self) -> asyncssh.SSHClientConnectionOptions:
        # keys and known hosts are read once per call, not once per host
        return asyncssh.SSHClientConnectionOptions(
            username=self._ssh.user,
            client_keys=[asyncssh.read_private_key(self._ssh.key_file)],
            known_hosts=asyncssh.read_known_hosts(str(self._ssh.known_hosts)),
            config=None,
            agent_path=None,
            agent_forwarding=False,
            x509_trusted_certs=None,
            x509_trusted_cert_paths=[],
            gss_auth=False,
            host_based_auth=False,
            kbdint_auth=False,
            password_auth=False,
            compression_algs=["none"],  # the archive is compressed already
            encryption_algs=_CIPHERS,
            connect_timeout=self._ssh.connect_timeout.total_seconds(),
            keepalive_interval=self._ssh.keepalive.total_seconds(),
        )

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http


class _HostRun:
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

    async def within_deadline(self, work: Callable[[_HostRun], Awaitable[None]]) -> HostOutcome:
        """Run `work` under the host deadline; always return this host's outcome.

        A step callback that raises fails the host at that step.
        """
        try:
            async with asyncio.timeout_at(self.deadline):
                try:
                    await work(self)
                except BaseException:
                    # abort, not close: a frozen peer would hold a clean close open
                    self._abort()
                    raise
            await self._close()
        except StepError as exc:
            return await self._finish(exc.outcome, exc.exit_status, exc.stderr_tail)
        except TimeoutError:
            seconds = self.deploy_config.host_timeout.total_seconds()
            return await self._finish(Outcome.TIMEOUT, None,
                                      f"host deadline of {seconds:g}s passed in {self.step}")
        except Exception as exc:
            log.exception("host %s: unexpected error in %s", self.host.name, self.step)
            return await self._finish(Outcome.FAILED, None, _describe(exc))
        return await self._finish(self.final, None, "")

    async def deploy(self, release: Release, exports: str) -> None:
        await self._connect()
        lines = (await self._run(remote.PREPARE, self.path, release.id)).splitlines()
        self.live = remote.release_of(lines[0]) if len(lines) > 1 else None
        await self._end()
        await self._upload_and_unpack(release, need=lines[-1:] == ["need"])
        await self._begin("switch")
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
            raise self._error(Outcome.UNREACHABLE, _describe(exc)) from None
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
            raise self._error(_lost_or_failed(exc), _describe(exc)) from None
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
            raise self._error(Outcome.FAILED, f"bad health_url: {_describe(exc)}") from None
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
            raise self._error(_lost_or_failed(exc), _describe(exc)) from None
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
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_GRACE):
                    await self.conn.wait_closed()
        self._abort()

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
            last = _describe(exc) or type(exc).__name__
        if time.monotonic() + pause >= deadline:
            raise error(Outcome.FAILED, f"{url} not healthy within {budget:g}s: {last}")
        await asyncio.sleep(pause)  # retry backoff between probes
        pause = min(pause * 2, 2.0)


def _lost_or_failed(exc: Exception) -> Outcome:
    lost = (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError)
    return Outcome.UNREACHABLE if isinstance(exc, lost) else Outcome.FAILED


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _setup_failure(host: HostConfig, exc: Exception) -> HostOutcome:
    return HostOutcome(host.name, Outcome.FAILED, "connect", None,
                       f"cannot load ssh key or known_hosts: {_describe(exc)}", 0.0, None)


def warn_if_open(key_file: Path) -> None:
    """Warn (once, at start) when group or others may read the SSH private key; OpenSSH
    itself refuses such a key. An unreadable key is reported per host by the fan-out."""
    try:
        mode = key_file.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: the ssh.key_file is open to group or others (mode %o); chmod 600 it",
                    key_file, stat.S_IMODE(mode))

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

`Fleet` fans a call out over the hosts; one host's connection, deadline and
steps are `daemon.hostrun.HostRun`.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh

from daemon import remote
from daemon.config import DeployConfig, HostConfig, SshConfig
from daemon.hostrun import HostOutcome, HostRun, StepCallback, describe
from daemon.models import Outcome
from daemon.release import Release

log = logging.getLogger(__name__)

# AES-GCM first: one AEAD call per packet (chacha20-poly1305 costs three here)
_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"]


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

        async def one(run: HostRun) -> None:
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

        async def one(run: HostRun) -> None:
            await run.rollback(exports, from_release or "")

        return await self._fan_out(hosts, on_step, one)

    async def read_live(self, hosts: Sequence[HostConfig]) -> list[HostOutcome]:
        """Read `current` on each host: ok with `.release` (None if unset), or the failure."""

        async def one(run: HostRun) -> None:
            await run.read_live()

        return await self._fan_out(hosts, None, one)

    async def close(self) -> None:
        """Release the HTTP session used for health probes."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _fan_out(self, hosts: Sequence[HostConfig], on_step: StepCallback | None,
                       work: Callable[[HostRun], Coroutine[Any, Any, None]]
                       ) -> list[HostOutcome]:
        try:
            options = await asyncio.to_thread(self._connect_options)
        except (OSError, ValueError, asyncssh.Error) as exc:
            return [_setup_failure(host, exc) for host in hosts]
        gate = asyncio.Semaphore(self._deploy.concurrency)
        http = self._http_session() if self._deploy.health_url else None

        async def guarded(host: HostConfig) -> HostOutcome:
            async with gate:
                run = HostRun(host, self._deploy, options, http, on_step)
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


def _setup_failure(host: HostConfig, exc: Exception) -> HostOutcome:
    return HostOutcome(host.name, Outcome.FAILED, "connect", None,
                       f"cannot load ssh key or known_hosts: {describe(exc)}", 0.0, None)


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

"""Real OpenSSH hosts on loopback, for the tests, the fan-out bench and the demo.

`SshFleet(base, count)` starts `count` Debian `sshd` processes, one per loopback
address (127.0.0.2, 127.0.0.3, ...), each on a free port, with a generated
ed25519 host key, one shared client key, a `known_hosts` file listing every
host and an `authorized_keys` file. Each sshd runs as the current user (root)
in its own mount namespace (`unshare --mount --propagation private`) with a
per-host folder bind-mounted over `app_path` (default `/srv/app`), so every
host has its own `/srv/app` as on a real fleet, and an empty per-host home
folder over the user's home, so that the developer's own shell start-up
files (a slow or chatty `~/.bashrc`) do not run on the test hosts.

Where mount namespaces are refused, the fleet falls back to per-host paths:
each host's application folder is then its own folder on the shared disk and
`SshFleet.deploy_path()` returns a path with a `{name}` placeholder that
`daemon.fleet.Fleet` formats per host. Code that uses the fleet should always
take the deploy path from `deploy_path()` and map host paths back to local
files with `SshHost.local()`, so it works either way.

Hosts can be stopped, restarted, frozen (SIGSTOP) and thawed for fault tests.
Starting waits until the port accepts connections (no fixed sleeps); `close()`
kills every sshd and session process it started. The mount point (`/srv/app`)
and sshd's privilege-separation folder (`/run/sshd`) are created when missing
and left in place: they are empty, and removing a mount point could detach
the mounts of another fleet that is still running.

This module does not import pytest: `tests/fixtures_ssh.py` wraps it in
fixtures and `bench/fanout.py` and `make demo` use it directly. As a program
(`python -m tests.sshfleet FOLDER --count 3 --port 2222 --prefix web`) it
starts the hosts, prints the matching `[ssh]` and `[[hosts]]` config and runs
until SIGINT or SIGTERM.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType

import asyncssh

from daemon.config import HostConfig, SshConfig

SSHD = "/usr/sbin/sshd"
UNSHARE = "/usr/bin/unshare"
PRIVSEP_DIR = Path("/run/sshd")

_SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxStartups 200:30:400
MaxSessions 100
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel INFO
"""

# sh -c script run by unshare inside the new mount namespace: $1 host folder,
# $2 mount point, $3 host home folder, $4 the user's home, $5 sshd, $6 config
_NAMESPACED_START = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && exec "$5" -D -e -f "$6"'


def namespaces_work() -> bool:
    """True if this process may start a program in a private mount namespace."""
    try:
        result = subprocess.run(
            [UNSHARE, "--mount", "--propagation", "private", "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def free_port(address: str) -> int:
    """A TCP port that is free on `address` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (found through /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class SshHost:
    """One sshd on its own loopback address; its files live in `dir`."""

    name: str
    address: str
    port: int
    dir: Path
    app_path: str  # the deploy root as the host's own processes see it
    namespaced: bool
    config_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def app_dir(self) -> Path:
        """The local folder that is `app_path` on this host."""
        return self.dir / "app"

    @property
    def log_file(self) -> Path:
        return self.dir / "sshd.log"

    def local(self, remote: str) -> Path:
        """The local file that is `remote` (a path under `app_path`) on this host."""
        root = self.app_path.rstrip("/")
        if remote != root and not remote.startswith(root + "/"):
            raise ValueError(f"{remote!r} is not under {root!r}")
        return self.app_dir / remote[len(root):].lstrip("/")

    def host_config(self) -> HostConfig:
        return HostConfig(name=self.name, address=self.address, port=self.port, tags=())

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start sshd (if not running) and wait until its port accepts connections."""
        if self.running:
            return
        if self.namespaced:
            argv = [UNSHARE, "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                    _NAMESPACED_START, "sh", str(self.app_dir), self.app_path,
                    str(self.dir / "home"), _home(), SSHD, str(self.config_file)]
        else:
            argv = [SSHD, "-D", "-e", "-f", str(self.config_file)]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._wait_accepting(timeout)

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            if not self.running:
                raise RuntimeError(f"sshd of {self.name} exited:\n{self.log_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"sshd of {self.name} not accepting on {self.address}:{self.port}"
                    ) from None
            time.sleep(pause)  # polling the condition, with a short backoff
            pause = min(pause * 2, 0.1)

    def stop(self) -> None:
        """Kill sshd and every session it runs; the host is then unreachable."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            pids = [process.pid, *_children(process.pid)]
            _signal(pids, signal.SIGKILL)
            process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP sshd and all its sessions: the port still accepts, nothing answers."""
        if self.process is not None:
            _signal([self.process.pid, *_children(self.process.pid)], signal.SIGSTOP)

    def thaw(self) -> None:
        """Undo `freeze()`."""
        if self.process is not None:
            _signal([self.process.pid, *_children(self.process.pid)], signal.SIGCONT)


class SshFleet:
    """`count` real sshd hosts on 127.0.0.{first}, 127.0.0.{first+1}, ...

    Use as a context manager or call `start()` and `close()`. `namespaces`
    None means: use mount namespaces if this machine allows them.
    """

    def __init__(self, base: Path, count: int, *, app_path: str = "/srv/app",
                 first: int = 2, namespaces: bool | None = None, port: int | None = None,
                 name_prefix: str = "host") -> None:
        if not 1 <= count <= 250 or not 1 <= first <= 254 - count + 1:
            raise ValueError(f"cannot place {count} hosts from 127.0.0.{first}")
        self.base = base
        self.count = count
        self.first = first
        self.port = port  # None: a free port per host; else this port on every address
        self.name_prefix = name_prefix
        self.user = getpass.getuser()
        self.namespaced = namespaces_work() if namespaces is None else namespaces
        self._app_path = app_path.rstrip("/")
        self.key_file = base / "client" / "id_ed25519"
        self.known_hosts = base / "client" / "known_hosts"
        self.authorized_keys = base / "client" / "authorized_keys"
        self.hosts: list[SshHost] = []

    def __enter__(self) -> SshFleet:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Write keys and configs and start every host; on failure stop what started."""
        self._write_client_files()
        for index in range(self.count):
            self.hosts.append(self._make_host(index))
        self.write_known_hosts(self.known_hosts)
        if self.namespaced:
            Path(self._app_path).mkdir(parents=True, exist_ok=True)
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            for host in self.hosts:
                host.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every host (thawing frozen ones first)."""
        for host in self.hosts:
            host.thaw()
            host.stop()

    def _write_client_files(self) -> None:
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        _write_private(self.key_file, key.export_private_key("openssh"))
        self.authorized_keys.write_bytes(key.export_public_key("openssh"))

    def _make_host(self, index: int) -> SshHost:
        name = f"{self.name_prefix}{index + 1}"
        address = f"127.0.0.{self.first + index}"
        folder = self.base / "hosts" / name
        (folder / "app").mkdir(parents=True, exist_ok=True)
        (folder / "home").mkdir(mode=0o700, exist_ok=True)
        host_key = folder / "ssh_host_ed25519_key"
        _write_private(host_key, asyncssh.generate_private_key("ssh-ed25519")
                       .export_private_key("openssh"))
        port = self.port or free_port(address)
        config_file = folder / "sshd_config"
        config_file.write_text(_SSHD_CONFIG.format(
            address=address, port=port, host_key=host_key,
            authorized_keys=self.authorized_keys,
        ))
        app_path = self._app_path if self.namespaced else str(folder / "app")
        return SshHost(name=name, address=address, port=port, dir=folder, app_path=app_path,
                       namespaced=self.namespaced, config_file=config_file)

    def write_known_hosts(self, path: Path, *, without: tuple[str, ...] = ()) -> Path:
        """Write a known_hosts file for every host except those named in `without`."""
        lines = []
        for host in self.hosts:
            if host.name in without:
                continue
            key = asyncssh.read_private_key(host.dir / "ssh_host_ed25519_key")
            public = key.export_public_key("openssh").decode().split()[:2]
            lines.append(f"[{host.address}]:{host.port} {' '.join(public)}\n")
        path.write_text("".join(lines))
        return path

    def deploy_path(self, sub: str = "") -> str:
        """The `[deploy] path` for this fleet, optionally a sub-folder of the app root.

        With namespaces it is the same on every host; without, it holds a
        `{name}` placeholder that the fleet formats per host.
        """
        suffix = f"/{sub.strip('/')}" if sub else ""
        if self.namespaced:
            return self._app_path + suffix
        return str(self.base / "hosts" / "{name}" / "app") + suffix

    def remote_path(self, host: SshHost, deploy_path: str) -> str:
        """`deploy_path` as formatted for `host`."""
        return deploy_path.replace("{name}", host.name)

    def ssh_config(self, *, connect_timeout: float = 10.0, keepalive: float = 15.0,
                   known_hosts: Path | None = None) -> SshConfig:
        return SshConfig(
            user=self.user,
            key_file=self.key_file,
            known_hosts=known_hosts or self.known_hosts,
            connect_timeout=timedelta(seconds=connect_timeout),
            keepalive=timedelta(seconds=keepalive),
        )

    def host_configs(self) -> tuple[HostConfig, ...]:
        return tuple(host.host_config() for host in self.hosts)

    def host(self, name: str) -> SshHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


def _home() -> str:
    return pwd.getpwuid(os.getuid()).pw_dir


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def config_snippet(fleet: SshFleet) -> str:
    """The `[ssh]` and `[[hosts]]` sections of config.toml for `fleet`."""
    lines = ["[ssh]", f'user = "{fleet.user}"', f'key_file = "{fleet.key_file}"',
             f'known_hosts = "{fleet.known_hosts}"', ""]
    for host in fleet.hosts:
        lines += ["[[hosts]]", f'name = "{host.name}"', f'address = "{host.address}"',
                  f"port = {host.port}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run real sshd hosts on loopback.")
    parser.add_argument("folder", type=Path, help="where keys, configs and host files go")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--first", type=int, default=2, help="last octet of the first host")
    parser.add_argument("--port", type=int, default=None, help="default: a free port each")
    parser.add_argument("--prefix", default="host", help="host names: PREFIX1, PREFIX2, ...")
    parser.add_argument("--app-path", default="/srv/app")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    with SshFleet(args.folder.resolve(), args.count, app_path=args.app_path, first=args.first,
                  port=args.port, name_prefix=args.prefix) as fleet:
        print(config_snippet(fleet), flush=True)
        print(f"# deploy path: {fleet.deploy_path()}; stop with SIGINT or SIGTERM", flush=True)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()

"""The harness of the chaos, fault, hostile-input, secrets and load tests
(a plain module: its pytest fixtures are in tests/fixtures_faults.py).

- `Served`: `pushguard serve` as a child process (killable with SIGKILL), a
  small REST client over urllib that can keep every response it got (for the
  secrets greps), its log file and its resident memory.
- `InfluxProxy`: a TCP proxy on loopback in front of the real influxd that can
  pass, delay every request (`slow`, optionally only `/write` or `/query`),
  or go `down` (the port refuses connections) and come back on the same port.
  It is the protocol edge of the InfluxDB faults: influxd itself stays up for
  the other tests of the session.
- `snapshot`: one consistent read of the store (a read-only SQLite
  transaction), for invariants that must not race the daemon.
- `fleet_config`: a complete config.toml for a fleet (tests/daemon_env.py),
  with `[influxdb]` extras such as a user and a password file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon_env import write_config
from tests.sshfleet import SshFleet

ROOT = Path(__file__).resolve().parent.parent
FAULTS_DB = "faults"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: Callable[[], Any], limit: float, pause: float = 0.05,
               message: str = "") -> Any:
    """Poll `what` until it returns something truthy; AssertionError after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g}s: {message or what}")
        time.sleep(pause)  # polling a condition


# -- the daemon as a child process ----------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiFailure(AssertionError):
    def __init__(self, reply: Reply, what: str) -> None:
        super().__init__(f"{what}: HTTP {reply.status}: {reply.body[:500]!r}")
        self.reply = reply


@dataclass
class Served:
    """`pushguard serve -c CONFIG` as a child; `call` speaks its REST API."""

    config: Path
    port: int
    tokens: dict[str, str]
    db: Path
    args: Sequence[str] = ()
    log: Path | None = None
    keep_replies: bool = False
    replies: list[Reply] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = self.config.parent / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        assert self.log is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "serve", "-c", str(self.config), *self.args],
                cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.starts += 1

    def wait_ready(self, limit: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            try:
                return self.send("GET", "/readyz", auth=None).status == 200
            except OSError:
                return False
        wait_until(ready, limit, 0.05, "the daemon did not become ready")

    def start(self, limit: float = 60) -> None:
        self.spawn()
        self.wait_ready(limit)

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, limit: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_kb(self) -> int:
        """Resident memory of the daemon process now, in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        assert self.log is not None
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def send(self, method: str, path: str, body: Any = None, *, auth: str | None = "admin",
             raw: bytes | None = None, headers: Mapping[str, str] | None = None,
             timeout: float = 15) -> Reply:
        """One request; any status comes back as a Reply (kept when `keep_replies`)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                             else None)
        head = {"Content-Type": "application/json", **(headers or {})}
        if auth is not None:
            head["Authorization"] = f"Bearer {self.tokens[auth]}"
        request = urllib.request.Request(self.url + path, method=method, data=data,
                                         headers=head)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                reply = Reply(answer.status, dict(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, dict(exc.headers.items()), exc.read())
        if self.keep_replies:
            self.replies.append(reply)
        return reply

    def call(self, method: str, path: str, body: Any = None, *, auth: str | None = "admin",
             expect: tuple[int, ...] = (200, 201, 202)) -> Any:
        """The JSON answer of a request that must succeed."""
        reply = self.send(method, path, body, auth=auth)
        if reply.status not in expect:
            raise ApiFailure(reply, f"{method} {path}")
        return reply.json()

    def add_change(self, ref: str, title: str, author: str = "dev") -> int:
        change = self.call("POST", "/v1/changes", {"ref": ref, "title": title,
                                                   "author": author})
        self.call("POST", f"/v1/changes/{change['id']}/approve", {})
        return int(change["id"])


@contextlib.contextmanager
def serving(served: Served, *, start: bool = True) -> Iterator[Served]:
    """Start (optionally) and always stop the child, even when the test fails."""
    try:
        if start:
            served.start()
        yield served
    finally:
        served.stop()


# -- one consistent read of the store ---------------------------------------------

def snapshot(db: Path) -> dict[str, Any]:
    """Changes, pushes, push_changes, host_results, hosts, control and the event
    count, read in one transaction of a read-only connection."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")
        try:
            out = {
                "changes": {r["id"]: dict(r) for r in conn.execute("SELECT * FROM changes")},
                "pushes": {r["id"]: dict(r) for r in conn.execute("SELECT * FROM pushes")},
                "push_changes": [tuple(r) for r in conn.execute(
                    "SELECT push_id, change_id FROM push_changes ORDER BY push_id")],
                "host_results": [dict(r) for r in conn.execute(
                    "SELECT * FROM host_results ORDER BY id")],
                "hosts": {r["name"]: dict(r) for r in conn.execute("SELECT * FROM hosts")},
                "control": dict(conn.execute("SELECT * FROM control WHERE id = 1").fetchone()),
                "events": [dict(r) for r in conn.execute(
                    "SELECT * FROM events ORDER BY id")],
            }
        finally:
            conn.execute("COMMIT")
    return out


def db_value(db: Path, sql: str, args: Sequence[Any] = ()) -> Any:
    """The first column of the first row of `sql` (None if no row) on a read-only connection."""
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            row = conn.execute(sql, list(args)).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return None
    return row[0] if row else None


# -- hosts as they really are ---------------------------------------------------------

def live_on(fleet: SshFleet, path: str | None = None) -> dict[str, str | None]:
    """Each host's `current` release, read from the host's own disk."""
    out: dict[str, str | None] = {}
    for host in fleet.hosts:
        link = host.local(fleet.remote_path(host, path or fleet.deploy_path())) / "current"
        out[host.name] = link.readlink().name if link.is_symlink() else None
    return out


def releases_on(fleet: SshFleet, path: str | None = None) -> dict[str, set[str]]:
    """Each host's unpacked releases (the folders under `releases/`)."""
    out: dict[str, set[str]] = {}
    for host in fleet.hosts:
        folder = host.local(fleet.remote_path(host, path or fleet.deploy_path())) / "releases"
        out[host.name] = {p.name for p in folder.iterdir()
                          if p.is_dir() and not p.name.startswith(".")} \
            if folder.is_dir() else set()
    return out


# -- config ---------------------------------------------------------------------------------

def fleet_config(path: Path, fleet: SshFleet, *, repo: Path, influx_url: str, database: str,
                 tokens_file: Path, api_port: int = 0, checks: Sequence[Mapping[str, Any]] = (),
                 deploy: Mapping[str, Any] | None = None,
                 guard: Mapping[str, Any] | None = None,
                 schedule: Mapping[str, Any] | None = None,
                 influx_extra: Mapping[str, str] | None = None,
                 known_hosts: Path | None = None, state_dir: Path | None = None) -> Path:
    """A complete config.toml for `fleet` with fast test timings."""
    write_config(
        path, state_dir=state_dir or path.parent / "var", repo=repo,
        hosts=[{"name": h.name, "address": h.address, "port": h.port} for h in fleet.hosts],
        ssh={"user": fleet.user, "key_file": str(fleet.key_file),
             "known_hosts": str(known_hosts or fleet.known_hosts), "connect_timeout": "5s"},
        influx_url=influx_url, database=database, tokens_file=tokens_file,
        api_port=api_port, checks=checks,
        deploy={"path": fleet.deploy_path(), **(deploy or {})},
        guard=guard, schedule=schedule)
    if influx_extra:
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in influx_extra.items())
        text = path.read_text().replace("[influxdb]\n", "[influxdb]\n" + extra, 1)
        path.write_text(text)
    return path


# -- InfluxDB behind a proxy that can be slow or down -------------------------------------

class InfluxProxy:
    """A loopback TCP proxy to `upstream` (host, port): `mode` is "pass", "slow" or "down".

    In "slow" mode each request (each chunk a client sends) waits `delay`
    seconds before it goes upstream; `only` limits that to requests whose
    first line holds that text (e.g. "/write"). "down" closes the listening
    socket and every open connection: clients get connection refused.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.delay = 0.0
        self.only = ""
        self.requests: list[bytes] = []  # the first 2 KiB of every request seen
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def start(self) -> InfluxProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name="influx-proxy").start()

    def set(self, mode: str, delay: float = 0.0, only: str = "") -> None:
        if mode == "down" and self.mode != "down":
            self._shut()
        elif mode != "down" and self.mode == "down":
            self._listen()
        self.mode, self.delay, self.only = mode, delay, only

    def _shut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = list(self._open), set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._shut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if request:
                    self.requests.append(chunk[:2048])
                    first = chunk.split(b"\r\n", 1)[0].decode("latin-1")
                    if self.mode == "slow" and (not self.only or self.only in first) \
                            and self._closed.wait(self.delay):
                        break
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

"""A real InfluxDB 1.x server (Debian's /usr/bin/influxd) on loopback.

Plain module with no pytest import so that `make demo` reuses it (demo/influx.py):

    with Influxd.start(Path("var/influx")) as server:
        print(server.url)   # http://127.0.0.1:PORT, database created on demand

Contract: `start` writes a generated config (all data under `root`, HTTP on a
free 127.0.0.1 port, the RPC bind-address on another free loopback port, no
usage reporting, no internal monitor), starts influxd and returns once
`/ping` answers 204, or raises `InfluxdError` with the log tail. `stop`
terminates the process and waits for it; it is idempotent.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType

INFLUXD = "/usr/bin/influxd"


class InfluxdError(RuntimeError):
    """influxd could not be started or did not answer /ping in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(root: Path, http_port: int, rpc_port: int) -> str:
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root / 'meta'}"
  logging-enabled = false

[data]
  dir = "{root / 'data'}"
  wal-dir = "{root / 'wal'}"
  query-log-enabled = false
  index-version = "inmem"

[coordinator]
  query-timeout = "30s"
  log-queries-after = "0s"

[retention]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
  write-tracing = false

[logging]
  level = "warn"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""


class Influxd:
    """One running influxd process; use `Influxd.start(root)`."""

    def __init__(self, root: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process

    @classmethod
    def start(cls, root: Path, *, timeout: float = 30.0, port: int | None = None,
              own_session: bool = False) -> Influxd:
        """Start influxd with its data under `root` (HTTP on `port`, or a free one);
        wait until /ping answers. `own_session`: out of the caller's process group, so
        that a Ctrl-C reaches only the caller (the demo), which stops it in order."""
        if not Path(INFLUXD).exists():
            raise InfluxdError(f"{INFLUXD} is not installed (Debian package `influxdb`)")
        root.mkdir(parents=True, exist_ok=True)
        http_port, rpc_port = port or free_port(), free_port()
        while rpc_port == http_port:
            rpc_port = free_port()
        config = root / "influxd.conf"
        config.write_text(_config(root, http_port, rpc_port), encoding="utf-8")
        log = (root / "influxd.log").open("wb")
        process = subprocess.Popen(
            [INFLUXD, "-config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=own_session,
        )
        log.close()
        server = cls(root, http_port, process)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InfluxdError(f"influxd exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)  # polling a condition, not a fixed wait for an effect
        raise InfluxdError(f"influxd did not answer /ping in {timeout}s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                return bool(answer.status == 204)
        except (OSError, urllib.error.URLError):
            return False

    def query(self, q: str, database: str = "") -> bytes:
        """Run one InfluxQL statement (POST, for CREATE/DROP); return the JSON body."""
        data = urllib.parse.urlencode({"q": q, "db": database}).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as answer:
            body: bytes = answer.read()
            return body

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, database: str, lines: list[str], precision: str = "ms") -> None:
        """Write line-protocol points; raise on any non-204 answer."""
        url = f"{self.url}/write?" + urllib.parse.urlencode({"db": database,
                                                              "precision": precision})
        body = "\n".join(lines).encode()
        with urllib.request.urlopen(url, data=body, timeout=30) as answer:
            if answer.status != 204:
                raise InfluxdError(f"write answered {answer.status}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.root / "influxd.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        """Stop and delete the data folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Influxd:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""The demo's InfluxDB 1.x: Debian's influxd on a fixed loopback port.

`InfluxServer.start(root, port, database)` writes a generated config (all
data under `root`, HTTP on 127.0.0.1:`port`, the RPC bind-address on a free
loopback port, no usage reporting, no internal monitor, no retention), starts
influxd in its own session (Ctrl-C reaches the demo, which stops it in order),
waits until `/ping` answers and creates `database`. It raises `InfluxError`
with the log tail when influxd exits or does not answer in time. `stop()`
terminates it and waits; it is idempotent.

(`tests/influxd.py` picks a free port for the tests; the demo needs the port
that the root config.toml names.)
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from demo.errors import DemoError

INFLUXD = "/usr/bin/influxd"


class InfluxError(DemoError):
    """influxd could not be started, or it refused a statement."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(root: Path, port: int, rpc_port: int) -> str:
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

[retention]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""


class InfluxServer:
    """One influxd process started by `InfluxServer.start`."""

    def __init__(self, root: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{port}"
        self.process = process

    @classmethod
    def start(cls, root: Path, port: int, database: str, timeout: float = 30.0) -> InfluxServer:
        if not Path(INFLUXD).exists():
            raise InfluxError(f"{INFLUXD} is not installed (Debian package `influxdb`)")
        root.mkdir(parents=True, exist_ok=True)
        config = root / "influxd.conf"
        config.write_text(_config(root, port, _free_port()))
        with (root / "influxd.log").open("wb") as log:
            process = subprocess.Popen([INFLUXD, "-config", str(config)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = cls(root, port, process)
        try:
            server._wait_ready(timeout)
            server.query(f'CREATE DATABASE "{database}"')
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InfluxError(f"influxd exited with {self.process.returncode}:\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/ping", timeout=1) as answer:
                if answer.status == 204:
                    return
            time.sleep(0.1)  # polling a condition: influxd opens its port
        raise InfluxError(f"influxd did not answer /ping within {timeout:g}s:\n"
                          f"{self.log_tail()}")

    def query(self, statement: str) -> bytes:
        """Run one InfluxQL statement with POST; the JSON answer."""
        data = urllib.parse.urlencode({"q": statement}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/query", data=data, timeout=10) as answer:
                body: bytes = answer.read()
                return body
        except (OSError, urllib.error.URLError) as exc:
            raise InfluxError(f"influxd refused {statement!r}: {exc}") from None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "influxd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

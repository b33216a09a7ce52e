"""The demo's InfluxDB 1.x: Debian's influxd on the fixed loopback port of config.toml.

`start(root, port, database)` starts it as the tests do (`tests.influxd`: a
generated config, all data under `root`, HTTP on 127.0.0.1:`port`, no usage
reporting, no internal monitor, no retention), in its own session (Ctrl-C
reaches the demo, which stops it in order), and creates `database`. It
raises `InfluxError` with the log tail when influxd exits, does not answer in
time or refuses the database. The server's `stop()` terminates it and waits;
it is idempotent.
"""

from __future__ import annotations

import http.client
import urllib.error
from pathlib import Path

from demo.errors import DemoError
from tests.influxd import Influxd, InfluxdError


class InfluxError(DemoError):
    """influxd could not be started, or it refused a statement."""


def start(root: Path, port: int, database: str, timeout: float = 30.0) -> Influxd:
    try:
        server = Influxd.start(root, port=port, timeout=timeout, own_session=True)
    except InfluxdError as exc:
        raise InfluxError(str(exc)) from None
    try:
        server.create_database(database)
    except BaseException as exc:  # a Ctrl-C here too: influxd runs in its own session
        server.stop()
        if isinstance(exc, OSError | urllib.error.URLError | http.client.HTTPException):
            raise InfluxError(f"influxd refused CREATE DATABASE {database!r}: {exc}") from None
        raise
    return server

"""Metric sources: InfluxDB 1.x (InfluxQL, `checks.influxql`) and 2.x (Flux, `checks.flux`).

`open_source(config)` picks the source by `config.api`, reads the password
or token from the file the config names (the secret is never logged and
never put in a message) and returns a `MetricSource`. Connections are made
lazily, inside the running event loop, on first use.

Deploy markers: one point per call in the measurement named by
`[influxdb] marker_measurement`, tagged `push_id`, `release`, `phase`
(`start`, `end`, ...) and `verdict` (when known), with a readable `text`
field for graph annotations.
"""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

from checks.series import QUANTILE, MetricSource, Series
from daemon.config import InfluxConfig
from daemon.errors import CheckError

__all__ = ["QUANTILE", "MetricSource", "Series", "marker_line", "open_source", "read_secret"]

log = logging.getLogger("pushguard.influx")


def open_source(config: InfluxConfig) -> MetricSource:
    """The source for `config.api` ("v1" or "v2"); raises CheckError if a secret is unreadable."""
    if config.api == "v2":
        from checks.flux import FluxSource

        token = read_secret(config.token_file, "token_file") if config.token_file else ""
        return FluxSource(config, token)
    from checks.influxql import InfluxQLSource

    password = read_secret(config.password_file, "password_file") \
        if config.password_file else None
    return InfluxQLSource(config, password)


def read_secret(path: Path, key: str) -> str:
    """The first line of a secret file, stripped; the message never holds the content."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckError(f"influxdb.{key}: cannot read {path}: {exc.strerror}",
                         file=str(path)) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: the influxdb.%s file is open to group or others (mode %o); "
                    "chmod 600 it", path, key, stat.S_IMODE(mode))
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise CheckError(f"influxdb.{key}: {path} is empty", file=str(path))
    return secret


def _escape_key(text: str) -> str:
    text = text.replace("\n", " ").replace("\\", "\\\\")
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_string(text: str) -> str:
    return text.replace("\n", " ").replace("\\", "\\\\").replace('"', '\\"')


def marker_line(measurement: str, *, push_id: int, release: str, phase: str,
                verdict: str | None, at: datetime) -> str:
    """One line-protocol point for a deploy marker, with a millisecond timestamp."""
    name = measurement.replace("\n", " ").replace("\\", "\\\\")
    name = name.replace(",", "\\,").replace(" ", "\\ ")
    tags = {"phase": phase, "push_id": str(push_id), "release": release}
    if verdict:
        tags["verdict"] = verdict
    tag_text = ",".join(f"{k}={_escape_key(v)}" for k, v in sorted(tags.items()) if v)
    text = f"push {push_id} {phase}: release {release}" + (f", {verdict}" if verdict else "")
    when = at if at.tzinfo else at.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    return f'{name},{tag_text} text="{_escape_string(text)}",push={push_id}i {ms}'

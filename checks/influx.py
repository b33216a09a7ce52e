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


def _escaped(text: str, specials: str, key: str) -> str:
    """`text` with each of `specials` preceded by a backslash, for a measurement or tag value.

    Line protocol reads a backslash as an escape only before one of those characters
    and keeps it literally elsewhere, so backslashes are left as they are. A trailing
    backslash would escape the separator after it and a newline ends the line: neither
    can be carried, so such a value is refused (CheckError), never rewritten.
    """
    if text.endswith("\\") or "\n" in text:
        raise CheckError(f"{key} {text!r} cannot be written in line protocol: it ends with "
                         "a backslash or holds a newline", value=text)
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def _escape_string(text: str) -> str:
    return text.replace("\n", " ").replace("\\", "\\\\").replace('"', '\\"')


def marker_line(measurement: str, *, push_id: int, release: str, phase: str,
                verdict: str | None, at: datetime) -> str:
    """One line-protocol point for a deploy marker, with a millisecond timestamp.

    Escaping follows the InfluxDB line-protocol reference: commas and spaces in the
    measurement, commas, equals signs and spaces in tag values, double quotes and
    backslashes in the `text` string field (newlines there become spaces). Raises
    CheckError for a measurement or tag value that ends in a backslash or holds a
    newline, which line protocol cannot represent.
    """
    name = _escaped(measurement, ", ", "influxdb.marker_measurement")
    tags = {"phase": phase, "push_id": str(push_id), "release": release}
    if verdict:
        tags["verdict"] = verdict
    tag_text = ",".join(f"{k}={_escaped(v, ',= ', k)}" for k, v in sorted(tags.items()) if v)
    text = f"push {push_id} {phase}: release {release}" + (f", {verdict}" if verdict else "")
    when = at if at.tzinfo else at.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    return f'{name},{tag_text} text="{_escape_string(text)}",push={push_id}i {ms}'

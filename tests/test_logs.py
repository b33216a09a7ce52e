"""Logging: one line per state transition with the same fields, text or JSON."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon import logs
from daemon.models import Rollback
from daemon.store import Store

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What `logs.configure` writes, instead of stderr; the root logger is restored."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = saved
    root.setLevel(level)


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_transitions_are_logged_with_their_fields(
        store: Store, log_format: str, captured: io.StringIO) -> None:
    stream = captured
    logs.configure(log_format, "info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    change = await store.add_change("b" * 40, "title", "ann", Rollback.AUTO, NOW)
    await store.approve(change.id, "bob", NOW)
    lines = [line for line in stream.getvalue().splitlines() if "pending -> approved" in line
             or '"to_state": "approved"' in line]
    assert len(lines) == 1
    if log_format == "json":
        record = json.loads(lines[0])
        assert record["entity"] == "change" and record["entity_id"] == str(change.id)
        assert record["from_state"] == "pending" and record["to_state"] == "approved"
        assert record["actor"] == "bob" and record["level"] == "info"
        assert record["time"].endswith("+00:00")
    else:
        assert lines[0] == (f"INFO pushguard.transitions: change {change.id}: pending -> "
                            "approved by bob: approved by bob")


def test_importing_the_daemon_writes_nothing_to_stderr() -> None:
    # the daemon's stderr is its log (journald, or one JSON record a line): a library's
    # import-time warning there is noise to an operator and breaks JSON parsing. asyncssh
    # 2.24 names DSA classes at import, which cryptography 51 deprecates.
    done = subprocess.run([sys.executable, "-c", "import daemon.service, daemon.cli"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

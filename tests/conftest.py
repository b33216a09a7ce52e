"""Shared pytest set-up: real servers on loopback, started by fixtures."""

pytest_plugins = [
    "tests.fixtures_ssh",
    "tests.fixtures_influx",
    "tests.fixtures_daemon",
]


from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from daemon.store import Store  # noqa: E402


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in a temporary folder."""
    opened = await Store.open(tmp_path / "pushguard.db")
    try:
        yield opened
    finally:
        await opened.close()

"""pytest fixtures: a real influxd on loopback (owned by the guard work).

`influxd` is one server for the session (generated config, data in a
temporary folder, HTTP and RPC on free 127.0.0.1 ports, stopped at the
end); `influx_db` is a fresh database on it per test; `influx_config` an
`[influxdb]` configuration (api v1) pointing at that database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import InfluxConfig
from tests.influxd import Influxd


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd.start(tmp_path_factory.mktemp("influxd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _db_names() -> Iterator[str]:
    return (f"t{i}" for i in itertools.count(1))


@pytest.fixture
def influx_db(influxd: Influxd, _db_names: Iterator[str]) -> str:
    name = next(_db_names)
    influxd.create_database(name)
    return name


def v1_config(url: str, database: str, *, timeout: float = 5.0,
              user: str | None = None, password_file: Path | None = None) -> InfluxConfig:
    """An `[influxdb]` api v1 configuration for tests."""
    return InfluxConfig(api="v1", url=url, database=database, user=user,
                        password_file=password_file, org="", bucket="", token_file=None,
                        timeout=timedelta(seconds=timeout),
                        measurement_prefix="pushguard_deploys")


@pytest.fixture
def influx_config(influxd: Influxd, influx_db: str) -> InfluxConfig:
    return v1_config(influxd.url, influx_db)

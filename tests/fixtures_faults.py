"""pytest fixtures of the chaos, fault, hostile-input, secrets and load tests.

- `fault_fleet` (session): three sshd hosts of these tests on 127.0.0.70-72;
  a test that stops a host, fills its disk or changes its key restores it.
- `fault_shop` (session): shop metrics for `fault_fleet` in database `faults`.
- `influx_proxy`: an `InfluxProxy` in front of the session's influxd.

The test modules load this file with `pytest_plugins = ["tests.fixtures_faults"]`
(it may as well be listed in tests/conftest.py); the helpers they import live
in tests/fixtures_harness.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures_harness import FAULTS_DB, InfluxProxy
from tests.influxd import Influxd
from tests.shopsim import ShopSimulator
from tests.sshfleet import SshFleet


@pytest.fixture(scope="session")
def fault_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    """Three real sshd hosts on 127.0.0.70-72 for the fault tests; a test that
    stops a host or changes its key restores it before it ends."""
    with SshFleet(tmp_path_factory.mktemp("fault-fleet"), 3, first=70) as hosts:
        yield hosts


@pytest.fixture(scope="session")
def fault_shop(fault_fleet: SshFleet, influxd: Influxd) -> Iterator[ShopSimulator]:
    """Shop metrics for `fault_fleet` in database `faults` (written to influxd directly)."""
    influxd.create_database(FAULTS_DB)
    simulator = ShopSimulator(fault_fleet, fault_fleet.deploy_path(), influxd.url, FAULTS_DB)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def influx_proxy(influxd: Influxd) -> Iterator[InfluxProxy]:
    proxy = InfluxProxy(("127.0.0.1", influxd.port)).start()
    yield proxy
    proxy.close()

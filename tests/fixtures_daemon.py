"""pytest fixtures for daemon tests: one 3-host fleet and a simulated shop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.influxd import Influxd
from tests.shopsim import ShopSimulator
from tests.sshfleet import SshFleet


@pytest.fixture(scope="session")
def shop_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    """Three real sshd hosts on 127.0.0.60-62, shared by the daemon tests."""
    with SshFleet(tmp_path_factory.mktemp("shop-fleet"), 3, first=60) as hosts:
        yield hosts


@pytest.fixture(scope="session")
def shop(shop_fleet: SshFleet, influxd: Influxd) -> Iterator[ShopSimulator]:
    """Request and error counts per host in database `e2e`, following what is live."""
    influxd.create_database("e2e")
    simulator = ShopSimulator(shop_fleet, shop_fleet.deploy_path(), influxd.url, "e2e")
    simulator.start()
    yield simulator
    simulator.stop()

"""A simulated service behind a real fleet: metrics that follow what is live.

Each tick, for every host, it reads where the host's `current` symlink points
(on the host's own disk, through `SshHost.local`) and writes request and
error counts to a real influxd: a release whose tree holds a file `BAD` that
reads `1` fails `bad_ratio` of its requests, any other `good_ratio`. So a push that
ships a bad commit makes the error ratio rise only once, and only where, it
is live, as a real regression would. Plain module (no pytest).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request
from pathlib import Path

from tests.sshfleet import SshFleet


class ShopSimulator:
    """Writes `http,service=shop,host=NAME requests=Ni,errors=Ni` every `tick` seconds."""

    def __init__(self, fleet: SshFleet, deploy_path: str, influx_url: str, database: str, *,
                 rps: float = 6000.0, tick: float = 0.25, good_ratio: float = 0.02,
                 bad_ratio: float = 0.3, seed: int = 7) -> None:
        self.fleet = fleet
        self.deploy_path = deploy_path
        self.url = f"{influx_url}/write?db={database}&precision=ms"
        self.rps = rps
        self.tick = tick
        self.good_ratio = good_ratio
        self.bad_ratio = bad_ratio
        self.random = random.Random(seed)
        self.started = time.monotonic()
        self.last_bad = 0.0  # monotonic time a host last served a bad release
        self.incident = False  # every host fails as if bad, whatever is live (not a push)
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shop simulator", daemon=True)

    def start(self) -> ShopSimulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def running_for(self) -> float:
        return time.monotonic() - self.started

    def healthy_for(self) -> float:
        """Seconds since the metrics last showed a bad release (or since the start)."""
        return time.monotonic() - max(self.started, self.last_bad)

    def _is_bad(self, current: Path) -> bool:
        try:
            target = current.readlink()
        except OSError:
            return False
        try:
            return (current.parent / target / "BAD").read_text().strip() == "1"
        except OSError:
            return False

    def _loop(self) -> None:
        # points sit on a fixed grid of `tick`, so every interval the guard sums holds
        # the same number of them, however late this thread wakes up
        tick_ms = int(self.tick * 1000)
        next_ms = (int(time.time() * 1000) // tick_ms + 1) * tick_ms
        while not self._stop.wait(max(0.0, next_ms / 1000 - time.time())):
            now_ms = next_ms
            next_ms += tick_ms
            lines = []
            for host in self.fleet.hosts:
                current = host.local(self.fleet.remote_path(host, self.deploy_path)) / "current"
                bad = self.incident or self._is_bad(current)
                if bad:
                    self.last_bad = time.monotonic()
                ratio = self.bad_ratio if bad else self.good_ratio
                requests = max(1, int(self.random.gauss(self.rps * self.tick,
                                                        (self.rps * self.tick) ** 0.5)))
                mean = requests * ratio  # binomial, by its normal approximation
                errors = min(requests, max(0, round(self.random.gauss(
                    mean, (mean * (1 - ratio)) ** 0.5))))
                lines.append(f"http,service=shop,host={host.name} requests={requests}i,"
                             f"errors={errors}i {now_ms}")
            request = urllib.request.Request(self.url, data="\n".join(lines).encode(),
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2):
                    self.ticks += 1
            except OSError:
                continue  # influxd stopped by a fault test: the service has no metrics now


CHECKS = [
    {"name": "checkout errors", "kind": "ratio", "measurement": "http",
     "bad_field": "errors", "all_field": "requests", "where": {"service": "shop"},
     "bad": "rise", "min_change": 0.5, "min_absolute": 0.005, "critical": True},
    {"name": "checkout throughput", "kind": "count", "measurement": "http",
     "field": "requests", "where": {"service": "shop"}, "bad": "drop", "min_change": 0.3,
     "min_absolute": 0, "critical": True},
]

ACTIVATE = '#!/bin/sh\necho "$PUSHGUARD_RELEASE" > "$PUSHGUARD_PATH/activated"\n'

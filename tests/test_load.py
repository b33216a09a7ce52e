"""Load: many pushes in a row to a fleet of ten real sshd hosts while /metrics is
scraped every second and five clients poll /v1/status; every push recorded,
no request failed, nothing logged at ERROR, and the daemon's memory steady
(its RSS printed at the start, after the warm-up and at the end).

The pushes are started with the deploy button (POST /v1/pushes) as soon as the
previous one ends, so they follow each other without waiting for slots.

`make test` runs a short variant (LOAD_PUSHES, default 3); `make load` runs
the full 25 pushes."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from checks.verdict import Guard
from daemon import schedule
from daemon.config import ScheduleConfig
from daemon.config import load as load_config
from tests.daemon_env import write_tokens
from tests.fixtures_harness import Served, fleet_config, free_port, live_on, serving, wait_until
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.shopsim import ACTIVATE, CHECKS, ShopSimulator
from tests.sshfleet import SshFleet

PUSHES = int(os.environ.get("LOAD_PUSHES", "3"))
HOSTS = 10
POLLERS = 5
BASELINE = 8.0
GUARD = {"baseline": f"{BASELINE:g}s", "warmup": "0s", "bake": "4s", "look_every": "1s"}
# one wave of all ten hosts: the widest fan-out, and one bake a push (the canary wave is
# covered by the end-to-end and chaos tests)
DEPLOY = {"canary": 0, "host_timeout": "30s", "command_timeout": "20s"}
WARM = min(3, PUSHES - 1)  # pushes after which the daemon counts as warmed up
pytestmark = pytest.mark.timeout(90 + 15 * PUSHES)


@pytest.fixture(scope="module")
def load_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    """Ten sshd hosts on 127.0.0.100-109, for this module only."""
    with SshFleet(tmp_path_factory.mktemp("load-fleet"), HOSTS, first=100) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def load_shop(load_fleet: SshFleet, influxd: Influxd) -> Iterator[ShopSimulator]:
    influxd.create_database("load")
    simulator = ShopSimulator(load_fleet, load_fleet.deploy_path(), influxd.url, "load")
    simulator.start()
    yield simulator
    simulator.stop()


@dataclass
class Traffic:
    """The scraper and the pollers: what they asked and what went wrong."""

    served: Served
    stop: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    latency: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)

    def _get(self, path: str, what: str) -> bytes | None:
        began = time.monotonic()
        try:
            with urllib.request.urlopen(self.served.url + path, timeout=10) as answer:
                body: bytes = answer.read()
        except (OSError, urllib.error.HTTPError) as exc:
            self.errors.append(f"{what}: {exc}")
            return None
        self.latency.append((began, time.monotonic() - began))
        self.counts[what] += 1
        return body

    def scrape(self) -> None:
        while not self.stop.wait(1.0):  # Prometheus's pace: once a second
            body = self._get("/metrics", "metrics")
            if body is not None:
                try:
                    families = list(text_string_to_metric_families(body.decode()))
                    assert any(f.name == "pushguard_pushes" for f in families)
                except Exception as exc:  # a broken exposition is an error of the run
                    self.errors.append(f"metrics: not parseable: {exc!r}")
            self.rss.append((time.monotonic(), self.served.rss_kb()))

    def poll(self) -> None:
        while not self.stop.wait(0.1):
            self._get("/v1/status", "status")

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.scrape, name="scraper")]
        threads += [threading.Thread(target=self.poll, name=f"poller {i}")
                    for i in range(POLLERS)]
        for thread in threads:
            thread.start()
        return threads


def test_pushes_in_a_row_under_scraping_and_polling(
        tmp_path: Path, load_fleet: SshFleet, load_shop: ShopSimulator,
        influxd: Influxd) -> None:
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": ACTIVATE, "app.txt": "base\n"})
    tokens = write_tokens(tmp_path / "tokens")
    port = free_port()
    config = fleet_config(tmp_path / "config.toml", load_fleet, repo=repo,
                          influx_url=influxd.url, database="load",
                          tokens_file=tmp_path / "tokens", api_port=port, checks=CHECKS,
                          guard=GUARD, schedule={"every": "1h"},
                          deploy=DEPLOY)
    served = Served(config, port, tokens, tmp_path / "var" / "pushguard.db")
    wait_until(lambda: load_shop.running_for() > BASELINE + 1, 30)
    with serving(served):
        rss_start = served.rss_kb()
        traffic = Traffic(served)
        threads = traffic.start()
        began = time.monotonic()
        try:
            ids = [served.add_change(commit(repo, f"change {n}", {"app.txt": f"{n}\n"}),
                                     f"change {n}") for n in range(PUSHES)]
            halts = 0
            rss_warm: int | None = None
            while True:
                changes = served.call("GET", "/v1/changes?limit=1000")["changes"]
                done = [c for c in changes if c["state"] in ("live", "failed")]
                if rss_warm is None and len(done) >= WARM:
                    rss_warm = served.rss_kb()
                if len(done) == len(ids):
                    break
                status = served.call("GET", "/v1/status")
                if status["state"] == "halted":  # a false alarm: a person looks and resumes
                    halts += 1
                    served.call("POST", "/v1/resume", {"reason": f"load: {status['reason']}"})
                elif status["current_push"] is None:  # the deploy button, pressed when idle
                    served.call("POST", "/v1/pushes", expect=(202, 409))
                assert time.monotonic() - began < 12 * PUSHES + 30, "the pushes took too long"
                time.sleep(0.2)  # the button presser's own pace
            seconds = time.monotonic() - began
        finally:
            traffic.stop.set()
            for thread in threads:
                thread.join(30)
        rss_end = served.rss_kb()
        pushes = served.call("GET", "/v1/pushes?limit=200")["pushes"]
        passed = next((p for p in pushes if p["state"] == "passed"), None)
        judged = served.call("GET", f"/v1/pushes/{passed['id']}")["checks"] if passed else []
        log = served.log_text()
    states = Counter(p["state"] for p in pushes)
    peak = max(kb for _, kb in traffic.rss)
    waits = sorted(wait for _, wait in traffic.latency)
    p50, p99 = waits[len(waits) // 2], waits[int(len(waits) * 0.99)]
    print(f"\nload: {len(pushes)} pushes ({dict(states)}) to {HOSTS} hosts in {seconds:.0f}s "
          f"({seconds / len(ids):.1f}s a push), {halts} halt(s) resumed; "
          f"{traffic.counts['metrics']} scrapes, {traffic.counts['status']} status polls, "
          f"answers p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {waits[-1] * 1000:.0f} ms; "
          f"{len(traffic.errors)} errors")
    print(f"load: daemon RSS at start {rss_start / 1024:.1f} MiB, after {WARM} pushes "
          f"{(rss_warm or rss_end) / 1024:.1f} MiB, at the end {rss_end / 1024:.1f} MiB, "
          f"peak {peak / 1024:.1f} MiB")
    assert not traffic.errors, traffic.errors[:10]
    assert sorted(c for p in pushes for c in p["changes"]) == sorted(ids)  # all recorded
    assert states["passed"] + states["failed"] == len(pushes) == len(ids), states
    assert states["passed"] >= len(ids) - 1, pushes  # at most one false alarm
    # one wave, one bake: each critical check's final look spends the whole budget
    loaded = load_config(config)
    guard = Guard(loaded.guard, loaded.checks, source=None)  # type: ignore[arg-type]
    looks = guard.looks(loaded.guard.bake)
    for check in (c for c in loaded.checks if c.critical):
        final = max((r for r in judged if r["name"] == check.name), key=lambda r: r["look"])
        assert final["wave"] == 1 and final["look"] == looks
        assert final["threshold"] == pytest.approx(
            guard.boundary(check, looks, looks, guard.budget))
    last = next(p for p in pushes if p["state"] == "passed")["release"]
    if pushes[0]["state"] == "passed":
        assert set(live_on(load_fleet).values()) == {last}
    assert traffic.counts["metrics"] >= seconds * 0.8 - 2
    assert traffic.counts["status"] >= POLLERS * seconds
    errors = [line for line in log.splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert not errors, errors[:10]
    # steady: after the warm-up the daemon grows by no more than a little per push
    assert rss_end - (rss_warm or rss_start) < 1024 * (8 + 0.5 * PUSHES), \
        (rss_start, rss_warm, rss_end)


# -- the schedule under load ---------------------------------------------------------

def _every_second() -> ScheduleConfig:
    return ScheduleConfig(days=frozenset(range(7)), window_start=dtime(0, 0),
                          window_end=dtime(23, 59, 59), every=timedelta(seconds=1),
                          jitter=timedelta(0), freezes=(), batch_size=1)


def test_planning_the_next_slot_costs_little_whatever_every_is() -> None:
    now = datetime(2026, 11, 30, 15, 0, 0, 500000, tzinfo=UTC)
    began = time.thread_time()
    slot = schedule.next_slot(_every_second(), UTC, now)
    took = time.thread_time() - began
    assert slot == datetime(2026, 11, 30, 15, 0, 1, tzinfo=UTC)
    assert took < 0.1, f"{took:.2f}s of CPU to find the next slot"

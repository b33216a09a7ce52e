"""Checkout traffic for the shops, and the metrics it measures, written to InfluxDB.

`Traffic(targets, rps, writer)` sends `POST /checkout` requests with Poisson
arrivals at `rps` in total, each to a random target, on a new connection
with a TIMEOUT; at most MAX_IN_FLIGHT at once (one more is shed and counted
as an error, as a load balancer would). Only loopback targets are accepted.

What it measures, per target (host), in the shape the root config.toml's
`[[checks]]` read:

- `http,service=shop,host=NAME requests=Ni,errors=Ni` for every whole second
  (aligned to the epoch, stamped at its start): the requests that completed
  in that second and how many of them failed (HTTP 5xx, refused, reset, timed
  out, shed). A second is written once it is over plus GRACE; a host that
  answered nothing gets zeros. A request that completes after its second was
  written counts in the oldest second still open.
- `http_latency,service=shop,host=NAME ms=F` for every request that got an
  HTTP answer, stamped with its completion time in ns (unique per host): the
  per-request values a `latency_mode = "threshold"` check needs.

`MetricWriter` posts line protocol to `/write`; a failed write is kept (up to
BUFFER_LIMIT lines) and tried again at the next flush. `snapshot()` returns
per-host figures since the previous snapshot, for the screen.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TIMEOUT = 2.0  # seconds per request
MAX_IN_FLIGHT = 128
GRACE = 0.1  # seconds after a second ends before it is written
FLUSH_EVERY = 0.1  # seconds
BUFFER_LIMIT = 500_000  # lines kept while InfluxDB does not take them
ITEMS = ("mug", "tshirt", "poster", "stickers", "hoodie")


@dataclass(frozen=True)
class Target:
    """One shop: its host's name and its checkout URL."""

    name: str
    url: str

    def __post_init__(self) -> None:
        host = urlsplit(self.url).hostname or ""
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"demo traffic goes to loopback addresses only, not {host!r}")


@dataclass
class HostFigures:
    """What one host served since the last snapshot."""

    requests: int = 0
    errors: int = 0
    unanswered: int = 0  # of the errors: refused, reset, timed out or shed
    latencies: list[float] = field(default_factory=list)

    @property
    def error_share(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p95_ms(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


class MetricWriter:
    """Posts line protocol to InfluxDB 1.x; keeps what it could not write (module doc)."""

    def __init__(self, influx_url: str, database: str,
                 on_problem: Callable[[str | None], None]) -> None:
        query = urllib.parse.urlencode({"db": database, "precision": "ns"})
        self.url = f"{influx_url}/write?{query}"
        self.on_problem = on_problem
        self.pending: list[str] = []
        self.written = 0
        self._failing = False

    def write(self, lines: list[str]) -> None:
        self.pending.extend(lines)
        del self.pending[:-BUFFER_LIMIT]
        if not self.pending:
            return
        request = urllib.request.Request(self.url, data="\n".join(self.pending).encode(),
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except (OSError, urllib.error.URLError) as exc:
            if not self._failing:
                self.on_problem(f"metrics not written to InfluxDB (kept, retrying): {exc}")
            self._failing = True
            return
        if self._failing:
            self.on_problem(None)
        self._failing = False
        self.written += len(self.pending)
        self.pending = []


class Traffic:
    """Checkout requests and their metrics (see the module docstring)."""

    def __init__(self, targets: list[Target], rps: float, writer: MetricWriter, *,
                 seed: int | None = None) -> None:
        if not targets or rps <= 0:
            raise ValueError("traffic needs targets and a positive rate")
        self.targets = targets
        self.rps = rps
        self.writer = writer
        self.random = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._buckets: dict[tuple[str, int], list[int]] = {}
        self._latencies: list[tuple[str, int, float]] = []
        self._last_ns: dict[str, int] = {}
        self._cursor = math.floor(time.time())
        self._in_flight = 0
        self._figures = {t.name: HostFigures() for t in targets}
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="checkout")
        self._threads = [threading.Thread(target=self._pace, name="traffic pacer", daemon=True),
                         threading.Thread(target=self._flush_loop, name="metrics writer",
                                          daemon=True)]

    def start(self) -> Traffic:
        self._cursor = math.floor(time.time())
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop sending, wait for the requests in flight, write what is complete."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._flush(time.time())

    def snapshot(self) -> dict[str, HostFigures]:
        """Per-host figures since the previous snapshot."""
        with self._lock:
            figures, self._figures = self._figures, {t.name: HostFigures() for t in self.targets}
        return figures

    # -- sending --------------------------------------------------------------

    def _pace(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            due += self.random.expovariate(self.rps)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if delay < -1.0:  # fell behind (a stalled machine): no burst to catch up
                due = time.monotonic()
            target = self.random.choice(self.targets)
            with self._lock:
                shed = self._in_flight >= MAX_IN_FLIGHT
                if not shed:
                    self._in_flight += 1
            if shed:
                self._record(target.name, time.time_ns(), None, 0.0)
                continue
            self._pool.submit(self._checkout, target)

    def _checkout(self, target: Target) -> None:
        url = urlsplit(target.url)
        body = json.dumps({"item": self.random.choice(ITEMS), "qty": self.random.randint(1, 3)})
        status: int | None = None
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80,
                                              timeout=TIMEOUT)
            try:
                conn.request("POST", url.path or "/", body=body,
                             headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            with self._lock:
                self._in_flight -= 1
        self._record(target.name, time.time_ns(), status,
                     (time.perf_counter() - started) * 1000.0)

    def _record(self, host: str, ended_ns: int, status: int | None, ms: float) -> None:
        failed = status is None or status >= 500
        with self._lock:
            second = max(ended_ns // 1_000_000_000, self._cursor)
            bucket = self._buckets.setdefault((host, second), [0, 0])
            bucket[0] += 1
            bucket[1] += failed
            figures = self._figures[host]
            figures.requests += 1
            figures.errors += failed
            figures.unanswered += status is None
            if status is not None:
                stamp = max(ended_ns, self._last_ns.get(host, 0) + 1)
                self._last_ns[host] = stamp
                self._latencies.append((host, stamp, ms))
                figures.latencies.append(ms)

    # -- writing --------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            self._flush(time.time())

    def _flush(self, now: float) -> None:
        limit = math.floor(now - GRACE)  # seconds before this one are complete
        lines: list[str] = []
        with self._lock:
            for second in range(self._cursor, limit):
                for target in self.targets:
                    requests, errors = self._buckets.pop((target.name, second), (0, 0))
                    lines.append(f"http,service=shop,host={target.name} "
                                 f"requests={requests}i,errors={errors}i {second * 10**9}")
            self._cursor = max(self._cursor, limit)
            cut = limit * 10**9
            keep = [x for x in self._latencies if x[1] >= cut]
            done = [x for x in self._latencies if x[1] < cut]
            self._latencies = keep
        lines += [f"http_latency,service=shop,host={host} ms={ms:.3f} {stamp}"
                  for host, stamp, ms in done]
        if lines or self.writer.pending:
            self.writer.write(lines)


def summary(figures: dict[str, HostFigures], seconds: float) -> str:
    """One line: per host, checkouts a second, error share and p95 latency."""
    parts = []
    for name, f in figures.items():
        p95 = f"{f.p95_ms:.0f}ms" if f.p95_ms is not None else "-"
        unanswered = f" ({f.unanswered} unanswered)" if f.unanswered else ""
        parts.append(f"{name} {f.requests / max(seconds, 1e-9):.0f}/s "
                     f"{100 * f.error_share:.1f}% errors{unanswered} p95 {p95}")
    return " | ".join(parts)

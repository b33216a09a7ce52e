"""API load benchmark: GET /v1/status and GET /metrics while a push runs, against a bare handler.

    .venv/bin/python -m bench.api [--seconds 10] [--clients 50] [--hosts 50] [--history 100]

A server process opens a real store in a temporary folder, writes
`--history` finished pushes (each with `--hosts` hosts and check looks, so
/metrics has years-like rows to aggregate, if small), and then serves, on
loopback, the pushguard API and a bare aiohttp handler (a fixed small JSON
body) from the same event loop, while a simulated push runs against the
same store without pause: `--hosts` hosts per wave, four steps each (a row
written when the step starts, updated when it ends, then the host's live
release), check looks of three checks during each bake, push after push.

This process then loads each target for `--seconds` in all with
`--clients` keep-alive connections, each sending its next request when the
previous answer is complete (a closed loop); the targets take turns in
`--slices` slices, so that other load on the machine weighs on all of them
alike. It prints requests per second
and p50/p99 latency per target, plus the store writes per second the push
made meanwhile. The load generator is a minimal HTTP/1.1 client on asyncio
streams, so the client costs less CPU than the server under test.

Goal (issue 6): status and metrics each reach at least half the bare
throughput with p99 under 50 ms. Loopback only; every phase is timed; the
server process is stopped at the end (and killed if it does not stop).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

from aiohttp import web

from api.app import build_app
from api.auth import Tokens
from daemon.config import ApiConfig
from daemon.models import (
    ChangeState,
    CheckResult,
    Control,
    HostResult,
    Outcome,
    Push,
    PushState,
    QueueState,
    Rollback,
    Trigger,
    Verdict,
)
from daemon.queue import Queue
from daemon.store import Store

STEPS = ("upload", "unpack", "activate", "health")
CHECKS = ("checkout errors", "checkout rate", "p95 latency")


def _now() -> datetime:
    return datetime.now(UTC)


class BenchController:
    """The Controller protocol over the store, as in the tests; `running` set by the push."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.running: int | None = None
        self.live: dict[str, object] | None = None

    def ready(self) -> bool:
        return True

    def current_push(self) -> int | None:
        return self.running

    def next_slot(self, now: datetime) -> datetime | None:
        return now + timedelta(minutes=20)

    def window_state(self, now: datetime) -> str | None:
        return None

    async def settling_until(self, now: datetime) -> datetime | None:
        return None

    async def push_now(self, actor: str) -> Push | None:
        return None

    async def pause(self, actor: str, reason: str) -> Control:
        await self.store.set_queue(QueueState.PAUSED, actor, reason, _now())
        return await self.store.control()

    async def resume(self, actor: str, reason: str) -> Control:
        await self.store.set_queue(QueueState.RUNNING, actor, reason, _now())
        return await self.store.control()

    def progress(self) -> dict[str, object] | None:
        return self.live


@dataclass
class Pusher:
    """Writes what a running push writes, as fast as its simulated hosts allow."""

    store: Store
    control: BenchController
    hosts: int
    step_seconds: float
    writes: int = 0

    async def one_push(self, n: int) -> None:
        change = await self.store.add_change(f"{n:040x}", f"change {n}", "bench",
                                             Rollback.AUTO, _now())
        await self.store.approve(change.id, "bench", _now())
        push = await self.store.claim(batch_size=1, normal_allowed=True,
                                      trigger=Trigger.SCHEDULE, actor="bench", now=_now())
        assert push is not None
        self.control.running = push.id
        await self.store.transition_push(push.id, PushState.DEPLOYING, "bench", "", _now())
        names = [f"web{i:03d}" for i in range(self.hosts)]
        for wave, wave_hosts in enumerate((names[:1], names[1:]), start=1):
            self.control.live = {"push": push.id, "wave": wave, "hosts_done": 0,
                                 "hosts_total": len(wave_hosts), "phase": "deploying"}
            await asyncio.gather(*(self.host(push, wave, h) for h in wave_hosts))
            await self.store.transition_push(push.id, PushState.BAKING, "bench", "", _now())
            await self.bake(push.id, wave)
            if wave == 1:
                await self.store.transition_push(push.id, PushState.DEPLOYING, "bench", "",
                                                 _now())
        await self.store.finish_push(push.id, PushState.PASSED, ChangeState.LIVE, "bench",
                                     "all checks passed", _now(), verdict=Verdict.PASS)
        self.writes += 7
        self.control.running = self.control.live = None

    async def host(self, push: Push, wave: int, host: str) -> None:
        for step in STEPS:
            row = await self.store.host_step_started(push.id, host, wave, step, _now())
            if self.step_seconds:
                await asyncio.sleep(random.uniform(0.2, 1.0) * self.step_seconds)
            await self.store.host_step_ended(row, HostResult(
                push.id, host, wave, step, Outcome.OK, 0, "", 0.1, push.release), _now())
            self.writes += 2
        await self.store.record_live(host, push.release, "ok", push.id, "bench", _now())
        self.writes += 1
        if self.control.live is not None:
            done = int(self.control.live["hosts_done"])  # type: ignore[call-overload]
            self.control.live = {**self.control.live, "hosts_done": done + 1}

    async def bake(self, push_id: int, wave: int) -> None:
        for look in range(1, 4):
            now = _now()
            await self.store.add_check_results(push_id, wave, [CheckResult(
                push_id, name, look, now - timedelta(minutes=5), now, ("SELECT 1",),
                {"bad": 10, "all": 10_000}, {"bad": 11, "all": 10_100}, 0.3, 2.8, Verdict.PASS,
                "no change that matters") for name in CHECKS], now)
            self.writes += 1
            if self.step_seconds:
                await asyncio.sleep(self.step_seconds)


async def _bare(request: web.Request) -> web.Response:
    return web.json_response({"state": "running", "version": "bare"})


async def _serve(root: Path, args: argparse.Namespace, conn: Connection) -> None:
    store = await Store.open(root / "bench.sqlite")
    control = BenchController(store)
    history = Pusher(store, control, args.hosts, 0.0)
    for n in range(args.history):
        await history.one_push(n)
    config = ApiConfig(host="127.0.0.1", port=0, tokens_file=root / "tokens",
                       read_needs_token=False, max_body=65536)
    app = build_app(store=store, queue=Queue(store, root), control=control, api_config=config,
                    tokens=Tokens({}), version="bench", clock=_now,
                    metrics_max_age=args.metrics_max_age)
    bare = web.Application()
    bare.router.add_get("/bare", _bare)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(bare, access_log=None)]
    for runner in runners:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    pusher = Pusher(store, control, args.hosts, 0.05)

    async def push_forever() -> None:
        n = args.history
        while True:
            await pusher.one_push(n)
            n += 1

    task = asyncio.create_task(push_forever())
    conn.send([r.addresses[0][1] for r in runners])
    loop = asyncio.get_running_loop()
    while not await loop.run_in_executor(None, conn.poll, 0.5):  # until the parent says stop
        pass
    conn.recv()
    conn.send((pusher.writes, time.monotonic()))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for runner in reversed(runners):
        await runner.cleanup()
    await store.close()


def server_main(root: str, args: argparse.Namespace, conn: Connection) -> None:
    asyncio.run(_serve(Path(root), args, conn))


async def _client(port: int, path: str, until: float, latencies: list[float],
                  errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head.split(b"\r\n", 1)[0].decode())
    finally:
        writer.close()
        await writer.wait_closed()


@dataclass
class Tally:
    """Latencies and errors of one target, over all its slices."""

    latencies: list[float]
    errors: list[str]
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        cuts = statistics.quantiles(self.latencies, n=100)
        return {"requests": len(self.latencies), "rps": len(self.latencies) / self.seconds,
                "p50": cuts[49] * 1000, "p99": cuts[98] * 1000, "errors": len(self.errors)}


async def load(port: int, path: str, clients: int, seconds: float, tally: Tally) -> None:
    """`clients` closed-loop connections on `path` for `seconds`; adds to `tally`."""
    until = time.perf_counter() + seconds
    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(*(_client(port, path, until, tally.latencies, tally.errors)
                               for _ in range(clients)))
    tally.seconds += seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--history", type=int, default=100)
    parser.add_argument("--metrics-max-age", type=float, default=1.0,
                        help="build_app's metrics_max_age (0: aggregate on every scrape)")
    parser.add_argument("--slices", type=int, default=5,
                        help="each target's time is cut into this many interleaved slices")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="pushguard-bench-") as root:
        parent, child = ctx.Pipe()
        server = ctx.Process(target=server_main, args=(root, args, child), daemon=True)
        server.start()
        try:
            if not parent.poll(300):
                raise SystemExit("the server did not start within 300 s")
            api_port, bare_port = parent.recv()
            started = time.monotonic()
            targets = (("bare aiohttp", bare_port, "/bare"),
                       ("GET /v1/status", api_port, "/v1/status"),
                       ("GET /metrics", api_port, "/metrics"))
            tallies = {name: Tally([], []) for name, _, _ in targets}
            for _, port, path in targets:  # warm-up, not counted
                asyncio.run(load(port, path, args.clients, 0.5, Tally([], [])))
            # interleaved slices: a noisy neighbour slows every target alike
            for _ in range(args.slices):
                for name, port, path in targets:
                    asyncio.run(load(port, path, args.clients, args.seconds / args.slices,
                                     tallies[name]))
            results = {name: tally.summary() for name, tally in tallies.items()}
            parent.send("stop")
            writes, ended = parent.recv() if parent.poll(30) else (0, started)
        finally:
            server.join(30)
            if server.is_alive():
                server.kill()
    print(f"{args.clients} clients, {args.seconds:g} s per target, 2 waves of {args.hosts} hosts "
          f"per push, {args.history} pushes of history, metrics max age "
          f"{args.metrics_max_age:g} s; push writes during the run: "
          f"{writes / max(ended - started, 1e-9):.0f}/s")
    print(f"{'target':<16} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for name, r in results.items():
        print(f"{name:<16} {r['requests']:>9.0f} {r['rps']:>8.0f} {r['p50']:>7.1f} "
              f"{r['p99']:>7.1f} {r['errors']:>6.0f}")
    bare = results["bare aiohttp"]["rps"]
    ok = all(results[n]["rps"] >= bare / 2 and results[n]["p99"] < 50 and
             not results[n]["errors"] for n in ("GET /v1/status", "GET /metrics"))
    print(f"goal (>= half the bare throughput, p99 < 50 ms, no errors): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

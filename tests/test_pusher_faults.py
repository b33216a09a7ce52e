"""The pusher's record when a push goes wrong at a precise point, with the real
Pusher and Store and a stand-in fleet and guard (no SSH, no InfluxDB), because
the faults are injected where no real host or server can be made to fail on cue:
a rollback cut short, a store that refuses the interruption for a while, a claim
whose caller is cancelled or whose daemon is stopping. Faults that real hosts
and a real influxd can show (an inconclusive bake under the rollback policy, a
host that fails after its switch) are tested on them, in tests/test_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import daemon.pusher as pusher_module
from checks.verdict import Look
from daemon.config import load
from daemon.hostrun import HostOutcome
from daemon.models import ChangeState, Outcome, PushState, QueueState, Rollback, Trigger, Verdict
from daemon.notify import Webhooks
from daemon.pusher import Pusher
from daemon.store import Store
from tests.gitrepo import commit, make_repo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


def now() -> datetime:
    return datetime.now(UTC)


class Guard:
    """Every look says `verdict`; the pre-flight passes."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict

    async def preflight(self, now: datetime, **_: Any) -> Look:
        return Look(Verdict.PASS, "ok", ())

    def looks(self, bake: Any) -> int:
        return 1

    async def look(self, **_: Any) -> Look:
        return Look(self.verdict, f"stand-in guard: {self.verdict}", ())

    async def mark(self, **_: Any) -> None:
        pass


@dataclass
class Fleet:
    """Deploys at once; `on_rollback` runs inside a rollback (raise there to cut it short)."""

    on_rollback: Callable[[], Awaitable[None]] | None = None

    async def deploy(self, hosts: Any, release: Any, *, env: Any,
                     on_step: Any = None) -> list[HostOutcome]:
        out = []
        for h in hosts:
            for step in ("connect", "upload", "unpack", "switch", "activate"):
                if on_step:
                    await on_step(h.name, step, "start", None)
                o = HostOutcome(h.name, Outcome.OK, step, None, "", 0.0,
                                release.id if step in ("switch", "activate") else "old")
                if on_step:
                    await on_step(h.name, step, "end", o)
            out.append(o)
        return out

    async def rollback(self, hosts: Any, *, env: Any, on_step: Any = None,
                       from_release: Any = None) -> list[HostOutcome]:
        if self.on_rollback is not None:
            await self.on_rollback()
        return [HostOutcome(h.name, Outcome.OK, "switch", None, "", 0.0, "old")
                for h in hosts]


@dataclass
class Line:
    store: Store
    fleet: Fleet
    pusher: Pusher
    changes: list[int]


@pytest.fixture
async def line_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Line]]]:
    stores: list[Store] = []

    async def make(verdict: Verdict = Verdict.PASS, fleet: Fleet | None = None,
                   **deploy: Any) -> Line:
        repo = make_repo(tmp_path / "app")
        refs = [commit(repo, f"c{i}", {"app.txt": f"{i}\n"}) for i in range(2)]
        base = load(ROOT / "config.toml")
        guard = replace(base.guard, warmup=timedelta(0), bake=timedelta(milliseconds=100),
                        look_every=timedelta(milliseconds=100))
        config = replace(base, daemon=replace(base.daemon, state_dir=tmp_path / "var"),
                         source=replace(base.source, repo=repo), guard=guard,
                         deploy=replace(base.deploy, **deploy), webhooks=())
        store = await Store.open(config.db_path)
        stores.append(store)
        fleet = fleet or Fleet()
        pusher = Pusher(config=config, store=store, fleet=fleet,  # type: ignore[arg-type]
                        guard=Guard(verdict), webhooks=Webhooks(()),  # type: ignore[arg-type]
                        clock=now)
        ids = []
        for i, ref in enumerate(refs):
            change = await store.add_change(ref, f"change {i}", "ada", Rollback.AUTO, now())
            await store.approve(change.id, "bob", now())
            ids.append(change.id)
        return Line(store, fleet, pusher, ids)

    yield make
    for store in stores:
        await store.close()


async def test_a_rollback_cut_short_interrupts_the_push_and_halts_the_line(
        line_factory: Callable[..., Awaitable[Line]]) -> None:
    async def cut() -> None:
        raise RuntimeError("the store went away")

    line = await line_factory(Verdict.FAIL, Fleet(on_rollback=cut), on_regression="rollback")
    push = await line.pusher.request(Trigger.SCHEDULE, "schedule",
                                     normal_allowed=True)
    assert push is not None
    await line.pusher.wait()
    final = await line.store.get_push(push.id)
    assert final.state == PushState.INTERRUPTED and final.finished_at is not None
    assert "rollback was interrupted" in final.reason
    assert (await line.store.get_change(line.changes[0])).state == ChangeState.FAILED
    control = await line.store.control()
    assert control.state == QueueState.HALTED and "while rolling back" in control.reason
    # the next change waits for a person
    assert await line.pusher.request(Trigger.SCHEDULE, "schedule",
                                     normal_allowed=True) is None


async def test_a_push_rolling_back_is_not_counted_until_it_ends(
        line_factory: Callable[..., Awaitable[Line]]) -> None:
    seen: dict[str, Any] = {}
    line: Line

    async def look() -> None:
        seen["figures"] = await line.store.figures((60.0,))
        seen["last"] = await line.store.last_finished_push()
        seen["unfinished"] = [p.id for p in await line.store.unfinished_pushes()]

    line = await line_factory(Verdict.FAIL, Fleet(on_rollback=look), on_regression="rollback")
    push = await line.pusher.request(Trigger.SCHEDULE, "schedule",
                                     normal_allowed=True)
    assert push is not None
    await line.pusher.wait()
    # during the rollback: failed (the verdict is on record) but not ended
    assert seen["figures"]["pushes"] == [] and seen["figures"]["duration"][0] == 0
    assert seen["last"] is None and seen["unfinished"] == [push.id]
    after = await line.store.figures((60.0,))
    assert [tuple(r) for r in after["pushes"]] == [("rolled_back", "fail", 1)]
    assert (await line.store.get_change(line.changes[0])).state == ChangeState.REVERTED


async def test_an_interruption_the_store_refuses_at_first_is_recorded_on_a_retry(
        line_factory: Callable[..., Awaitable[Line]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = pusher_module.interrupt
    tries: list[int] = []

    async def flaky(*args: Any) -> bool:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("store: database is locked")
        return await real(*args)

    async def crash() -> None:
        raise RuntimeError("crash in the middle")

    monkeypatch.setattr(pusher_module, "interrupt", flaky)
    monkeypatch.setattr(pusher_module, "INTERRUPT_RETRIES", (0.05, 0.05, 0.05))
    line = await line_factory(Verdict.PASS)
    line.pusher._bake = lambda *a, **k: crash()  # type: ignore[method-assign]
    push = await line.pusher.request(Trigger.SCHEDULE, "schedule",
                                     normal_allowed=True)
    assert push is not None
    await line.pusher.wait()
    assert len(tries) == 3
    assert (await line.store.get_push(push.id)).state == PushState.INTERRUPTED
    assert (await line.store.control()).state == QueueState.HALTED


@dataclass
class Claim:
    """A request whose claim is held inside the store call until `release` is set."""

    job: asyncio.Task[Any]
    release: asyncio.Event
    claimed: asyncio.Event


async def _claim_under_way(line: Line, monkeypatch: pytest.MonkeyPatch) -> Claim:
    real = line.store.claim
    entered, release, claimed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held(**kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        push = await real(**kwargs)
        claimed.set()
        return push

    monkeypatch.setattr(line.store, "claim", held)
    job = asyncio.create_task(line.pusher.request(Trigger.SCHEDULE, "schedule",
                                                  normal_allowed=True))
    await entered.wait()
    return Claim(job, release, claimed)


async def test_a_caller_cancelled_during_the_claim_leaves_a_push_with_its_task(
        line_factory: Callable[..., Awaitable[Line]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    line = await line_factory(Verdict.PASS)
    claim = await _claim_under_way(line, monkeypatch)
    claim.job.cancel()  # as the scheduler's shutdown cancels a running job
    with pytest.raises(asyncio.CancelledError):
        await claim.job
    claim.release.set()
    await claim.claimed.wait()  # the task is created in the same step as the claim ends
    await line.pusher.wait()
    [push] = await line.store.list_pushes(10, None)
    assert push.state == PushState.PASSED


async def test_a_stop_during_the_claim_gives_the_push_back_without_a_halt(
        line_factory: Callable[..., Awaitable[Line]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    line = await line_factory(Verdict.PASS)
    claim = await _claim_under_way(line, monkeypatch)
    stopping = asyncio.create_task(line.pusher.stop(grace=5))  # runs before the claim ends
    claim.release.set()
    assert await claim.job is None
    await stopping
    [push] = await line.store.list_pushes(10, None)
    assert push.state == PushState.ABORTED
    assert (await line.store.get_change(line.changes[0])).state == ChangeState.APPROVED
    assert (await line.store.control()).state == QueueState.RUNNING


async def test_an_expedited_fix_under_a_pause_over_a_halt_is_compared_with_the_incident(
        line_factory: Callable[..., Awaitable[Line]]) -> None:
    line = await line_factory(Verdict.FAIL)
    failed = await line.pusher.request(Trigger.SCHEDULE, "schedule", normal_allowed=True)
    assert failed is not None
    await line.pusher.wait()
    await line.store.set_queue(QueueState.PAUSED, "ops", "looking into it", now())
    control = await line.store.control()
    assert control.state == QueueState.PAUSED and control.halted_by_push == failed.id
    live = next(e.at for e in await line.store.events(push_id=failed.id, limit=100)
            if e.entity == "push" and e.to_state == PushState.BAKING)
    fix = replace(failed, trigger=Trigger.EXPEDITE)
    started = now()
    start, end = await line.pusher._baseline(fix, started)
    assert (start, end) == (live, started)  # not a whole baseline of healthy minutes

"""The queue: enqueue by ref, approve, cancel, expedite, and the claim rules."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.errors import Busy, Conflict, InvalidTransition, SourceError
from daemon.models import Change, ChangeState, Event, PushState, QueueState, Rollback, Trigger
from daemon.queue import Queue
from daemon.store import Store
from tests.gitrepo import commit, make_repo

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "app")


@pytest.fixture
def commits(repo: Path) -> list[str]:
    return [commit(repo, f"change {i}", {"app.txt": f"v{i}\n"}) for i in range(6)]


@pytest.fixture
def queue(store: Store, repo: Path) -> Queue:
    return Queue(store, repo)


def at(seconds: int) -> datetime:
    return NOW + timedelta(seconds=seconds)


async def claim(store: Store, normal: bool = True) -> list[int]:
    push = await store.claim(batch_size=1, normal_allowed=normal, trigger=Trigger.SCHEDULE,
                             actor="test", now=NOW)
    if push is None:
        return []
    await store.transition_push(push.id, PushState.DEPLOYING, "test", "", NOW)
    await store.transition_push(push.id, PushState.BAKING, "test", "", NOW)
    await store.finish_push(push.id, PushState.PASSED, ChangeState.LIVE, "test", "", NOW)
    return list(push.changes)


async def test_enqueue_resolves_refs(queue: Queue, commits: list[str]) -> None:
    change = await queue.enqueue("HEAD~1", "t", "ann", NOW)
    assert change.ref == commits[-2] and change.state == ChangeState.PENDING
    short = await queue.enqueue(commits[0][:10], "t", "ann", NOW)
    assert short.ref == commits[0]
    with pytest.raises(Conflict, match="already change"):
        await queue.enqueue(commits[0], "again", "ann", NOW)


@pytest.mark.parametrize("ref", ["nope", "--output=/tmp/x", "a b", "$(touch /tmp/pwned)",
                                 "HEAD..main", ""])
async def test_bad_refs_are_clear_errors(queue: Queue, commits: list[str], ref: str) -> None:
    with pytest.raises(SourceError) as info:
        await queue.enqueue(ref, "t", "ann", NOW)
    assert repr(ref) in str(info.value) or "ref" in str(info.value)
    assert not os.path.exists("/tmp/pwned")


async def test_order_is_approval_order_with_expedite_first(
        queue: Queue, store: Store, commits: list[str]) -> None:
    ids = [(await queue.enqueue(ref, f"c{i}", "ann", NOW)).id for i, ref in enumerate(commits)]
    # approved in the order 3, 1, 4, 0; 2 stays pending; 5 approved last but expedited
    for second, change_id in enumerate([ids[3], ids[1], ids[4], ids[0], ids[5]]):
        await queue.approve(change_id, "bob", at(second))
    await queue.expedite(ids[5], "carol", at(10))
    order = []
    while claimed := await claim(store):
        order += claimed
    assert order == [ids[5], ids[3], ids[1], ids[4], ids[0]]
    assert (await store.get_change(ids[2])).state == ChangeState.PENDING


async def test_stopped_queue_takes_only_expedited(queue: Queue, store: Store,
                                                  commits: list[str]) -> None:
    normal = await queue.enqueue(commits[0], "normal", "ann", NOW)
    fix = await queue.enqueue(commits[1], "fix", "ann", NOW)
    await queue.approve(normal.id, "bob", at(1))
    await queue.approve(fix.id, "bob", at(2))
    await store.set_queue(QueueState.HALTED, "pusher", "push 1 failed", NOW)
    assert await claim(store) == []  # nothing expedited yet
    await queue.expedite(fix.id, "carol", at(3))
    assert await claim(store) == [fix.id]
    assert await claim(store) == []  # still halted for the normal change
    assert await claim(store, normal=True) == []
    await store.set_queue(QueueState.RUNNING, "dave", "fixed", NOW)
    assert await claim(store, normal=False) == []  # outside the window
    assert await claim(store) == [normal.id]


async def test_cancel_and_expedite_are_guarded(queue: Queue, store: Store,
                                               commits: list[str]) -> None:
    change = await queue.enqueue(commits[0], "t", "ann", NOW)
    await queue.approve(change.id, "bob", NOW)
    await claim(store)
    with pytest.raises(InvalidTransition):
        await queue.cancel(change.id, "carol", "too late", NOW)
    with pytest.raises(InvalidTransition):
        await queue.expedite(change.id, "carol", NOW)
    other = await queue.enqueue(commits[1], "t2", "ann", NOW)
    cancelled = await queue.cancel(other.id, "carol", "not needed", NOW)
    assert cancelled.state == ChangeState.CANCELLED
    again = await queue.enqueue(commits[1], "t2 again", "ann", NOW)  # allowed after a cancel
    assert again.id != other.id


async def test_claim_while_a_push_runs_is_busy(queue: Queue, store: Store,
                                               commits: list[str]) -> None:
    for ref in commits[:2]:
        change = await queue.enqueue(ref, "t", "ann", NOW)
        await queue.approve(change.id, "bob", NOW)
    first = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.API,
                              actor="a", now=NOW)
    assert first is not None
    with pytest.raises(Busy):
        await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.API, actor="b",
                          now=NOW)


CLAIMER = r"""
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path
from daemon.errors import Busy
from daemon.models import Change, ChangeState, Event, PushState, Trigger
from daemon.store import Store

async def main() -> None:
    store = await Store.open(Path(sys.argv[1]))
    mine = []
    now = datetime.now(UTC)
    for _ in range(400):
        try:
            push = await store.claim(batch_size=1, normal_allowed=True,
                                     trigger=Trigger.SCHEDULE, actor=sys.argv[2], now=now)
        except Busy:
            await asyncio.sleep(0.002)
            continue
        if push is None:
            break
        mine += push.changes
        await store.transition_push(push.id, PushState.DEPLOYING, sys.argv[2], "", now)
        await store.finish_push(push.id, PushState.FAILED, ChangeState.FAILED, sys.argv[2],
                                "", now)
    await store.close()
    print(json.dumps(mine))

asyncio.run(main())
"""


async def test_fifty_concurrent_claimers_never_share_a_change(tmp_path: Path) -> None:
    """50 processes, each with its own connection, claim from one queue at once."""
    path = tmp_path / "claims.db"
    store = await Store.open(path)
    ids = []
    for i in range(60):
        change = await store.add_change(f"{i:040x}", f"c{i}", "ann", Rollback.AUTO, NOW)
        await store.approve(change.id, "bob", at(i))
        ids.append(change.id)
    await store.close()
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLAIMER, str(path), f"claimer{n}",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent) for n in range(50)]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert all(p.returncode == 0 for p in procs)
    claimed = [cid for out, _ in outputs for cid in json.loads(out)]
    assert sorted(claimed) == ids  # every change exactly once
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT change_id, COUNT(*) FROM push_changes GROUP BY change_id")
        assert all(n == 1 for _, n in rows)


async def read_all(path: Path) -> tuple[dict[int, Change], list[Event]]:
    store = await Store.open(path)
    try:
        changes = {c.id: c for c in await store.list_changes(limit=100000)}
        return changes, await store.events(limit=100000)
    finally:
        await store.close()


WRITER = r"""
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from daemon.models import Rollback
from daemon.store import Store

async def main() -> None:
    store = await Store.open(Path(sys.argv[1]))
    i = 0
    while True:
        now = datetime.now(UTC)
        change = await store.add_change(f"{i:040x}", f"c{i}", "ann", Rollback.AUTO, now)
        await store.approve(change.id, "bob", now)
        print(change.id, flush=True)  # only after both writes have committed
        i += 1

asyncio.run(main())
"""


def test_killed_writer_loses_nothing_it_committed(tmp_path: Path) -> None:
    path = tmp_path / "kill.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    reported = []
    for line in proc.stdout:
        reported.append(int(line))
        if len(reported) >= 150:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    reported += [int(line) for line in proc.stdout.read().split()]
    proc.stdout.close()
    changes, events = asyncio.run(read_all(path))
    for change_id in reported:
        assert changes[change_id].state == ChangeState.APPROVED
    # the record and the audit log agree for every change, including one cut off mid-way
    for change in changes.values():
        mine = [e.to_state for e in events if e.entity == "change" and e.entity_id == change.id]
        expected = ["pending"] if change.state == ChangeState.PENDING else ["pending", "approved"]
        assert mine == expected


async def test_approve_needs_a_pending_change(queue: Queue, store: Store,
                                              commits: list[str]) -> None:
    change = await queue.enqueue(commits[0], "t", "ann", NOW)
    await queue.approve(change.id, "bob", NOW)
    with pytest.raises(InvalidTransition):  # approved twice
        await queue.approve(change.id, "bob", NOW)
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.API,
                             actor="a", now=NOW)
    assert push is not None
    with pytest.raises(InvalidTransition):  # being pushed
        await queue.approve(change.id, "eve", NOW)
    assert (await store.get_change(change.id)).approved_by == "bob"
    await store.transition_push(push.id, PushState.DEPLOYING, "test", "", NOW)
    await store.finish_push(push.id, PushState.FAILED, ChangeState.FAILED, "test", "", NOW)
    with pytest.raises(InvalidTransition):  # failed: only requeue sends it out again
        await queue.approve(change.id, "eve", NOW)
    again = await queue.requeue(change.id, "carol", "fixed the config", at(5))
    assert again.state == ChangeState.APPROVED


async def test_pause_and_resume_refuse_to_do_nothing(queue: Queue, store: Store) -> None:
    with pytest.raises(Conflict) as info:
        await queue.resume("ann", "go", NOW)
    assert info.value.code == "not_stopped"
    assert (await queue.pause("ann", "lunch", at(1))).state == QueueState.PAUSED
    with pytest.raises(Conflict) as info:
        await queue.pause("bob", "again", at(2))
    assert info.value.code == "already_paused"
    assert (await store.control()).reason == "lunch"
    await store.set_queue(QueueState.HALTED, "pusher", "push 1 failed", at(3))
    assert (await queue.pause("bob", "looking", at(4))).state == QueueState.PAUSED
    assert (await queue.resume("ann", "fixed", at(5))).state == QueueState.RUNNING
    assert [e.to_state for e in await store.events()] == ["paused", "halted", "paused",
                                                          "running"]

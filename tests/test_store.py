"""The SQLite store: open, reopen, migrate; WAL; transitions and their events."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.errors import Conflict, InvalidTransition, NotFound, StoreError
from daemon.migrations import MIGRATIONS
from daemon.models import (
    TRANSITIONS,
    ChangeState,
    PushState,
    QueueState,
    Rollback,
    Trigger,
)
from daemon.store import Store

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
REF = "a" * 40


async def test_new_database_reopen_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pushguard.db"
    store = await Store.open(path)
    try:
        assert await store.journal_mode() == "wal"
        change = await store.add_change(REF, "first", "ann", Rollback.AUTO, NOW)
    finally:
        await store.close()
    store = await Store.open(path)
    try:
        assert (await store.get_change(change.id)).title == "first"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        applied = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
        assert applied == [name for name, _ in MIGRATIONS]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_migrating_an_older_database(tmp_path: Path) -> None:
    """A database made before the migrations table existed gets every migration."""
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()  # an empty database file, as an old version would leave
    store = await Store.open(path)
    try:
        assert (await store.control()).state == QueueState.RUNNING
    finally:
        await store.close()


async def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO _migrations VALUES ('999_future', 'now')")
    with pytest.raises(StoreError, match="999_future"):
        await Store.open(path)


async def test_unwritable_place_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the store"):
        await Store.open(blocker / "pushguard.db")


async def test_every_transition_lands_in_events(store: Store) -> None:
    change = await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    await store.approve(change.id, "bob", NOW + timedelta(seconds=1))
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.SCHEDULE,
                             actor="schedule", now=NOW + timedelta(seconds=2))
    assert push is not None
    await store.transition_push(push.id, PushState.DEPLOYING, "pusher", "wave 1", NOW)
    await store.transition_push(push.id, PushState.BAKING, "pusher", "bake", NOW)
    await store.finish_push(push.id, PushState.PASSED, ChangeState.LIVE, "pusher", "ok", NOW,
                            verdict="pass")
    await store.set_queue(QueueState.PAUSED, "carol", "lunch", NOW)
    events = await store.events()
    seen = [(e.entity, e.from_state, e.to_state) for e in events]
    assert seen == [
        ("change", None, "pending"),
        ("change", "pending", "approved"),
        ("push", None, "planned"),
        ("change", "approved", "pushing"),
        ("push", "planned", "deploying"),
        ("push", "deploying", "baking"),
        ("push", "baking", "passed"),
        ("change", "pushing", "live"),
        ("queue", "running", "paused"),
    ]
    assert events[-1].actor == "carol" and events[-1].reason == "lunch"
    final = await store.get_push(push.id)
    assert final.verdict == "pass" and final.finished_at is not None
    assert (await store.get_change(change.id)).state == ChangeState.LIVE


async def test_invalid_transition_names_both_states(store: Store) -> None:
    change = await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    with pytest.raises(InvalidTransition) as info:
        await store.transition_change(change.id, ChangeState.LIVE, "x", "", NOW)
    assert str(info.value) == f"change {change.id}: cannot go from 'pending' to 'live'"
    assert len(await store.events()) == 1  # nothing was written by the refused change


async def test_a_change_and_the_halt_it_causes_are_one_transaction(store: Store) -> None:
    change = await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    with pytest.raises(InvalidTransition):  # refused: neither the change nor the halt
        await store.transition_change(change.id, ChangeState.LIVE, "x", "", NOW, halt="no")
    assert (await store.control()).state == QueueState.RUNNING
    assert len(await store.events()) == 1
    await store.approve(change.id, "bob", NOW)
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.SCHEDULE,
                             actor="schedule", now=NOW)
    assert push is not None
    await store.transition_change(change.id, ChangeState.FAILED, "recovery", "stranded", NOW,
                                  push.id, halt="stranded; resume")
    assert (await store.get_change(change.id)).state == ChangeState.FAILED
    control = await store.control()
    assert control.state == QueueState.HALTED and control.halted_by_push == push.id
    assert control.reason == "stranded; resume"


async def test_last_restored_is_the_last_halt_lifted(store: Store) -> None:
    assert await store.last_restored() is None
    await store.set_queue(QueueState.PAUSED, "carol", "lunch", NOW)
    await store.set_queue(QueueState.RUNNING, "carol", "back", NOW + timedelta(minutes=1))
    assert await store.last_restored() is None  # a pause is no incident
    await store.set_queue(QueueState.HALTED, "pusher", "push 1 failed", NOW + timedelta(2))
    await store.set_queue(QueueState.RUNNING, "ann", "fixed", NOW + timedelta(3))
    assert await store.last_restored() == NOW + timedelta(3)


async def test_duplicate_ref_and_missing_records(store: Store) -> None:
    await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    with pytest.raises(Conflict, match="already change"):
        await store.add_change(REF, "again", "ann", Rollback.AUTO, NOW)
    with pytest.raises(NotFound):
        await store.get_change(999)
    with pytest.raises(NotFound):
        await store.get_push(999)


def test_transition_table_is_closed() -> None:
    """Every target state is itself a state of the table (no dangling names)."""
    for entity, table in TRANSITIONS.items():
        for source, targets in table.items():
            assert targets <= set(table), (entity, source)


async def test_strings_are_stored_literally(store: Store) -> None:
    title = "'); DROP TABLE changes; -- $(touch /tmp/pwned) \u202e\n\u00e9"
    change = await store.add_change(REF, title, "Robert'); --", Rollback.NEVER, NOW)
    again = await store.get_change(change.id)
    assert again.title == title and again.author == "Robert'); --"
    assert again.rollback == Rollback.NEVER


async def test_ending_a_push_says_so_when_a_change_is_not_pushing(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    change = await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    await store.approve(change.id, "bob", NOW)
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.SCHEDULE,
                             actor="schedule", now=NOW)
    assert push is not None
    await store.transition_change(change.id, ChangeState.FAILED, "recovery", "stranded", NOW,
                                  push.id)
    await store.transition_push(push.id, PushState.DEPLOYING, "pusher", "", NOW)
    await store.transition_push(push.id, PushState.BAKING, "pusher", "", NOW)
    with caplog.at_level("WARNING", logger="pushguard.transitions"):
        await store.finish_push(push.id, PushState.PASSED, ChangeState.LIVE, "pusher", "", NOW)
    assert (await store.get_change(change.id)).state == ChangeState.FAILED
    assert any(f"change {change.id} is failed, not pushing" in r.getMessage()
               for r in caplog.records)


async def test_a_pause_over_a_halt_keeps_the_halt(store: Store) -> None:
    """halted -> paused -> running settles like halted -> running; the fix path still
    clears a halt."""
    change = await store.add_change(REF, "t", "ann", Rollback.AUTO, NOW)
    await store.approve(change.id, "bob", NOW)
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.SCHEDULE,
                             actor="schedule", now=NOW)
    assert push is not None
    at = [NOW + timedelta(minutes=n) for n in range(10)]
    await store.set_queue(QueueState.HALTED, "pusher", "push 1 failed", at[1], push.id)
    assert await store.set_queue(QueueState.PAUSED, "carol", "looking", at[2],
                                 expect=[QueueState.RUNNING, QueueState.HALTED])
    control = await store.control()
    assert control.state == QueueState.PAUSED and control.halted_by_push == push.id
    assert await store.last_restored() is None  # still stopped
    await store.set_queue(QueueState.RUNNING, "ann", "fixed", at[3])
    assert await store.last_restored() == at[3]
    assert (await store.control()).halted_by_push is None
    await store.set_queue(QueueState.PAUSED, "carol", "lunch", at[4])
    assert (await store.control()).halted_by_push is None  # a plain pause holds no halt
    await store.set_queue(QueueState.RUNNING, "carol", "back", at[5])
    assert await store.last_restored() == at[3]  # a plain pause is no incident
    # an expedited fix that passes clears the halt by itself
    await store.set_queue(QueueState.HALTED, "pusher", "push 1 failed", at[6], push.id)
    assert await store.set_queue(QueueState.RUNNING, "pusher", "fix passed", at[7], push.id,
                                 expect=[QueueState.HALTED])
    assert await store.last_restored() == at[7]
    assert (await store.control()).halted_by_push is None

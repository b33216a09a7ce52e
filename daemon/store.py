"""All SQL of pushguard.

One dedicated writer thread owns the sqlite-utils `Database` (a connection
works only in the thread that made it); every read and write is a plain
function run on that thread, and `Store` is the async face over it. Every
state change goes through `_transition`, which checks the transition table
and appends to `events` in the same transaction, so the audit log and the
records can never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from daemon import records
from daemon.errors import Busy, Conflict, InvalidTransition, NotFound, StoreError
from daemon.migrations import MIGRATIONS
from daemon.models import (
    Change,
    ChangeState,
    CheckResult,
    Control,
    Event,
    HostResult,
    HostState,
    Push,
    PushState,
    QueueState,
    Rollback,
    Trigger,
    allowed,
)

T = TypeVar("T")
log = logging.getLogger("pushguard.transitions")

_TABLES = {"change": "changes", "push": "pushes", "queue": "control"}
# A push has ended when it has `finished_at`: only `finish_push` sets it. Unfinished are
# planned, deploying and baking pushes, and a failed one whose rollback is under way (the
# verdict is recorded first, the end when the hosts are back).
UNFINISHED_SQL = "finished_at IS NULL"


@contextlib.contextmanager
def write(db: Database) -> Iterator[Database]:
    """One write transaction, taken with BEGIN IMMEDIATE.

    IMMEDIATE takes the write lock up front, so a transaction that reads and
    then writes (a claim) can never lose a race to another connection
    between its read and its write. Nested use becomes a savepoint.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def iso(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return at.isoformat()


class Store:
    """The async face of the SQLite store; open with `await Store.open(path)`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: Database | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pushguard-store")

    @classmethod
    async def open(cls, path: Path) -> Store:
        store = cls(path)
        try:
            await store._run(store._open_on_thread)
        except BaseException:
            store._executor.shutdown(wait=True)
            raise
        return store

    def _open_on_thread(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = Database(self.path)
            db.execute("PRAGMA busy_timeout = 5000")
            db.enable_wal()
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA synchronous = FULL")  # a halt or a failed push survives a power cut
            _migrate(db)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}", path=str(self.path)) \
                from exc
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close_on_thread)
        self._executor.shutdown(wait=True)

    def _close_on_thread(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(db, *args)` on the writer thread; sqlite errors become StoreError."""
        return await self._run(self._guarded, fn, args)

    def _guarded(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._db is None:
            raise StoreError("the store is closed")
        try:
            return fn(self._db, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"store: {exc}") from exc

    # -- the public operations, each one transaction ------------------------

    async def journal_mode(self) -> str:
        return await self.call(lambda db: str(db.execute("PRAGMA journal_mode").fetchone()[0]))

    async def add_change(self, ref: str, title: str, author: str, rollback: Rollback,
                         now: datetime, actor: str | None = None) -> Change:
        """Add a pending change; the event names `actor` (who asked: the API token's
        name), the author when no actor is given."""
        return await self.call(add_change, ref, title, author, rollback, now, actor)

    async def get_change(self, change_id: int) -> Change:
        return await self.call(get_change, change_id)

    async def list_changes(self, state: ChangeState | None = None, limit: int = 100,
                           after: int = 0) -> list[Change]:
        return await self.call(list_changes, state, limit, after)

    async def approve(self, change_id: int, approver: str, now: datetime,
                      actor: str | None = None) -> Change:
        """Approve a pending change as `approver`; the event names `actor` (who asked:
        the API token's name), the approver when no actor is given."""
        return await self.call(approve, change_id, approver, now, actor)

    async def set_expedite(self, change_id: int, actor: str, now: datetime) -> Change:
        return await self.call(set_expedite, change_id, actor, now)

    async def transition_change(self, change_id: int, to: ChangeState, actor: str, reason: str,
                                now: datetime, push_id: int | None = None, *,
                                halt: str | None = None) -> Change:
        """Move a change; with `halt`, halt the queue with that reason in the same
        transaction."""
        def run(db: Database) -> Change:
            with write(db):
                _transition(db, "change", change_id, to, actor, reason, now, push_id)
                if halt is not None:
                    set_queue(db, QueueState.HALTED, actor, halt, now, push_id, ())
            return get_change(db, change_id)
        return await self.call(run)

    async def claim(self, *, batch_size: int, normal_allowed: bool, trigger: Trigger,
                    actor: str, now: datetime) -> Push | None:
        return await self.call(claim, batch_size, normal_allowed, trigger, actor, now)

    async def transition_push(self, push_id: int, to: PushState, actor: str, reason: str,
                              now: datetime, **fields: Any) -> Push:
        return await self.call(transition_push, push_id, to, actor, reason, now, fields)

    async def finish_push(self, push_id: int, to: PushState, change_to: ChangeState,
                          actor: str, reason: str, now: datetime, *, halt: str | None = None,
                          **fields: Any) -> Push:
        """End a push and its changes; with `halt`, halt the queue with that reason in the
        same transaction (a crash can never leave a failed push behind a running line)."""
        return await self.call(finish_push, push_id, to, change_to, actor, reason, now, fields,
                               halt)

    async def get_push(self, push_id: int) -> Push:
        return await self.call(get_push, push_id)

    async def list_pushes(self, limit: int = 20, before: int | None = None) -> list[Push]:
        return await self.call(list_pushes, limit, before)

    async def unfinished_pushes(self) -> list[Push]:
        return await self.call(unfinished_pushes)

    async def stranded_changes(self) -> list[tuple[int, int]]:
        """(push, change) pairs whose push is finished but whose change is still pushing."""
        return await self.call(stranded_changes)

    async def last_finished_push(self) -> Push | None:
        return await self.call(last_finished_push)

    async def last_restored(self) -> datetime | None:
        """When the queue last ran again after a halt (directly or through a pause), if ever;
        None while it is still stopped by the latest halt."""
        return await self.call(last_restored)

    async def host_step_started(self, push_id: int, host: str, wave: int, step: str,
                                now: datetime) -> int:
        return await self.call(host_step_started, push_id, host, wave, step, now)

    async def host_step_ended(self, row_id: int, result: HostResult, now: datetime) -> None:
        await self.call(host_step_ended, row_id, result, now)

    async def host_results(self, push_id: int) -> list[HostResult]:
        return await self.call(host_results, push_id)

    async def add_check_results(self, push_id: int, wave: int,
                                results: Sequence[CheckResult], now: datetime) -> None:
        await self.call(add_check_results, push_id, wave, results, now)

    async def check_results(self, push_id: int) -> list[dict[str, Any]]:
        return await self.call(check_results, push_id)

    async def record_live(self, host: str, release: str | None, outcome: str,
                          push_id: int | None, actor: str, now: datetime) -> None:
        await self.call(record_live, host, release, outcome, push_id, actor, now)

    async def hosts(self) -> list[HostState]:
        return await self.call(hosts)

    async def control(self) -> Control:
        return await self.call(control)

    async def set_queue(self, to: QueueState, actor: str, reason: str, now: datetime,
                        push_id: int | None = None, expect: Iterable[QueueState] = ()) -> bool:
        """Move the queue to `to`; False (and nothing written) when it is not in `expect`."""
        return await self.call(set_queue, to, actor, reason, now, push_id, tuple(expect))

    async def events(self, after: int = 0, limit: int = 100,
                     push_id: int | None = None) -> list[Event]:
        return await self.call(events, after, limit, push_id)

    async def counts(self) -> dict[str, int]:
        return await self.call(counts)

    async def figures(self, buckets: tuple[float, ...]) -> dict[str, Any]:
        return await self.call(figures, buckets)


# -- migrations -------------------------------------------------------------

def _migrate(db: Database) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row["name"] for row in db.query("SELECT name FROM _migrations")}
    known = {name for name, _ in MIGRATIONS}
    unknown = done - known
    if unknown:
        raise StoreError(f"the database has migrations this version does not know: "
                         f"{sorted(unknown)}; refusing to run an older pushguard on it")
    for name, migration in MIGRATIONS:
        if name in done:
            continue
        with write(db):
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))",
                       [name])


# -- transitions ------------------------------------------------------------

def _transition(db: Database, entity: str, entity_id: int, to: str, actor: str, reason: str,
                now: datetime, push_id: int | None = None, fields: dict[str, Any] | None = None,
                ) -> str:
    """Check and apply one state change and append its event; returns the old state.

    Must run inside a transaction (`write(db)`).
    """
    table = _TABLES[entity]
    row = db.execute(f"SELECT state FROM {table} WHERE id = ?", [entity_id]).fetchone()
    if row is None:
        raise NotFound(f"{entity} {entity_id} does not exist", entity=entity, id=entity_id)
    old = str(row[0])
    if not allowed(entity, old, to):
        raise InvalidTransition(entity, entity_id, old, to)
    updates: dict[str, Any] = dict(fields or {})
    updates["state"] = str(to)
    if entity != "queue":
        updates["updated_at"] = iso(now)
    assignments = ", ".join(f"{column} = ?" for column in updates)
    db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", [*updates.values(), entity_id])
    _event(db, now, entity, entity_id, old, str(to), actor, reason, push_id)
    return old


def _event(db: Database, now: datetime, entity: str, entity_id: object, old: str | None,
           new: str, actor: str, reason: str, push_id: int | None) -> None:
    db.execute(
        "INSERT INTO events (at, entity, entity_id, from_state, to_state, actor, reason, push_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [iso(now), entity, str(entity_id), old, new, actor, reason, push_id],
    )
    log.info("%s %s: %s -> %s by %s: %s", entity, entity_id, old, new, actor, reason,
             extra={"entity": entity, "entity_id": str(entity_id), "from_state": old,
                    "to_state": new, "actor": actor, "why": reason, "push": push_id})


# -- changes ----------------------------------------------------------------

def add_change(db: Database, ref: str, title: str, author: str, rollback: Rollback,
               now: datetime, actor: str | None = None) -> Change:
    with write(db):
        clash = db.execute("SELECT id, state FROM changes WHERE ref = ? AND state != 'cancelled'",
                           [ref]).fetchone()
        if clash is not None:
            raise Conflict(f"commit {ref} is already change {clash[0]} ({clash[1]})",
                           ref=ref, change=clash[0], state=clash[1])
        cursor = db.execute(
            "INSERT INTO changes (ref, title, author, state, expedite, rollback, created_at,"
            " updated_at) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
            [ref, title, author, str(rollback), iso(now), iso(now)],
        )
        change_id = int(cursor.lastrowid or 0)
        by = actor or author
        _event(db, now, "change", change_id, None, ChangeState.PENDING, by,
               f"added {ref[:12]}: {title}" + (f" (author {author})" if by != author else ""),
               None)
    return get_change(db, change_id)


def get_change(db: Database, change_id: int) -> Change:
    rows = list(db.query("SELECT * FROM changes WHERE id = ?", [change_id]))
    if not rows:
        raise NotFound(f"change {change_id} does not exist", id=change_id)
    return records.change(rows[0])


def list_changes(db: Database, state: ChangeState | None, limit: int, after: int) -> list[Change]:
    if state is None:
        rows = db.query("SELECT * FROM changes WHERE id > ? ORDER BY id LIMIT ?", [after, limit])
    else:
        rows = db.query("SELECT * FROM changes WHERE state = ? AND id > ? ORDER BY id LIMIT ?",
                        [str(state), after, limit])
    return [records.change(row) for row in rows]


def approve(db: Database, change_id: int, approver: str, now: datetime,
            actor: str | None = None) -> Change:
    """Approve a `pending` change; InvalidTransition from any other state.

    The table also allows `pushing -> approved` (the pusher's postponed or
    aborted pushes) and `failed`/`reverted -> approved` (the requeue path);
    neither is an approval, so the state is checked here, in the same
    transaction as the change.
    """
    with write(db):
        state = get_change(db, change_id).state
        if state != ChangeState.PENDING:
            raise InvalidTransition("change", change_id, state, ChangeState.APPROVED)
        by = actor or approver
        _transition(db, "change", change_id, ChangeState.APPROVED, by,
                    f"approved by {approver}" + (f" (token {by})" if by != approver else ""),
                    now,
                    fields={"approved_by": approver, "approved_at": iso(now)})
    return get_change(db, change_id)


def set_expedite(db: Database, change_id: int, actor: str, now: datetime) -> Change:
    with write(db):
        change = get_change(db, change_id)
        if change.state not in (ChangeState.PENDING, ChangeState.APPROVED):
            raise InvalidTransition("change", change_id, change.state, "expedited")
        if not change.expedite:
            db.execute("UPDATE changes SET expedite = 1, updated_at = ? WHERE id = ?",
                       [iso(now), change_id])
            _event(db, now, "change", change_id, change.state, change.state, actor,
                   "expedited: goes out first, also while the queue is halted", None)
    return get_change(db, change_id)


# -- pushes -----------------------------------------------------------------

def claim(db: Database, batch_size: int, normal_allowed: bool, trigger: Trigger, actor: str,
          now: datetime) -> Push | None:
    """Take the next approved changes into a new `planned` push, in one transaction.

    Expedited changes come first, then the rest in order of approval. While the
    queue is stopped (`normal_allowed` false, or paused or halted in `control`)
    only expedited changes are taken. Raises Busy while another push is unfinished.
    """
    with write(db):
        running = db.execute(
            f"SELECT id FROM pushes WHERE {UNFINISHED_SQL} ORDER BY id").fetchone()
        if running is not None:
            raise Busy(f"push {running[0]} is still running", push=running[0])
        stopped = control(db).state != QueueState.RUNNING
        only_expedited = stopped or not normal_allowed
        sql = "SELECT * FROM changes WHERE state = 'approved'"
        if only_expedited:
            sql += " AND expedite = 1"
        sql += " ORDER BY expedite DESC, approved_at, id LIMIT ?"
        chosen = [records.change(row) for row in db.query(sql, [batch_size])]
        if not chosen:
            return None
        previous = db.execute(
            "SELECT release FROM pushes WHERE state = 'passed' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        expedited = all(change.expedite for change in chosen)
        cursor = db.execute(
            "INSERT INTO pushes (state, reason, release, previous_release, trigger, started_at,"
            " updated_at) VALUES ('planned', '', ?, ?, ?, ?, ?)",
            [chosen[-1].ref, previous[0] if previous else None,
             str(Trigger.EXPEDITE if expedited and only_expedited else trigger),
             iso(now), iso(now)],
        )
        push_id = int(cursor.lastrowid or 0)
        _event(db, now, "push", push_id, None, PushState.PLANNED, actor,
               f"claimed change(s) {', '.join(str(c.id) for c in chosen)}", push_id)
        for change in chosen:
            db.execute("INSERT INTO push_changes (push_id, change_id) VALUES (?, ?)",
                       [push_id, change.id])
            _transition(db, "change", change.id, ChangeState.PUSHING, actor,
                        f"claimed by push {push_id}", now, push_id)
    return get_push(db, push_id)


def transition_push(db: Database, push_id: int, to: PushState, actor: str, reason: str,
                    now: datetime, fields: dict[str, Any]) -> Push:
    with write(db):
        _transition(db, "push", push_id, to, actor, reason, now, push_id,
                    _push_fields(reason, fields))
    return get_push(db, push_id)


def _push_fields(reason: str, fields: dict[str, Any],
                 finished: datetime | None = None) -> dict[str, Any]:
    """The push's columns to set; `finished` only when the push ends (`finish_push`): a
    push moved to `failed` before its rollback has not ended, and /metrics counts a push
    once, in its end state, when it ends."""
    out = {k: (str(v) if v is not None else None) for k, v in fields.items()}
    if reason:
        out["reason"] = reason
    if finished is not None:
        out["finished_at"] = iso(finished)
    return out


def finish_push(db: Database, push_id: int, to: PushState, change_to: ChangeState, actor: str,
                reason: str, now: datetime, fields: dict[str, Any],
                halt: str | None = None) -> Push:
    """Move a push and all its changes to their end states, and halt the queue with
    `halt` as the reason when given, in one transaction."""
    with write(db):
        _transition(db, "push", push_id, to, actor, reason, now, push_id,
                    _push_fields(reason, fields, now))
        for (change_id,) in db.execute(
            "SELECT change_id FROM push_changes WHERE push_id = ? ORDER BY change_id", [push_id]
        ).fetchall():
            state = get_change(db, change_id).state
            if state == ChangeState.PUSHING and allowed("change", state, change_to):
                _transition(db, "change", change_id, change_to, actor,
                            f"push {push_id} {to}", now, push_id)
            else:
                # only recovery moves a change out of `pushing` behind its push's back;
                # ending the push must not fail over it, but it must not pass unseen
                log.warning("push %s %s: change %s is %s, not pushing; left %s, not moved to %s",
                            push_id, to, change_id, state, state, change_to,
                            extra={"entity": "change", "entity_id": str(change_id),
                                   "from_state": str(state), "to_state": str(change_to),
                                   "actor": actor, "why": "not pushing", "push": push_id})
        if halt is not None:
            set_queue(db, QueueState.HALTED, actor, halt, now, push_id, ())
    return get_push(db, push_id)


def get_push(db: Database, push_id: int) -> Push:
    rows = list(db.query("SELECT * FROM pushes WHERE id = ?", [push_id]))
    if not rows:
        raise NotFound(f"push {push_id} does not exist", id=push_id)
    return records.push(rows[0], _push_change_ids(db, push_id))


def _push_change_ids(db: Database, push_id: int) -> tuple[int, ...]:
    return tuple(int(r[0]) for r in db.execute(
        "SELECT change_id FROM push_changes WHERE push_id = ? ORDER BY change_id", [push_id]))


def list_pushes(db: Database, limit: int, before: int | None) -> list[Push]:
    rows = db.query("SELECT * FROM pushes WHERE id < ? ORDER BY id DESC LIMIT ?",
                    [before if before is not None else 2**62, limit])
    return [records.push(row, _push_change_ids(db, int(row["id"]))) for row in rows]


def unfinished_pushes(db: Database) -> list[Push]:
    rows = db.query(f"SELECT * FROM pushes WHERE {UNFINISHED_SQL} ORDER BY id")
    return [records.push(row, _push_change_ids(db, int(row["id"]))) for row in rows]


def stranded_changes(db: Database) -> list[tuple[int, int]]:
    rows = db.execute(
        "SELECT pc.push_id, pc.change_id FROM push_changes pc"
        " JOIN pushes p ON p.id = pc.push_id JOIN changes c ON c.id = pc.change_id"
        " WHERE c.state = 'pushing' AND p.finished_at IS NOT NULL"  # an ended push
        " ORDER BY pc.push_id, pc.change_id").fetchall()
    return [(int(push_id), int(change_id)) for push_id, change_id in rows]


def last_finished_push(db: Database) -> Push | None:
    rows = list(db.query("SELECT * FROM pushes WHERE finished_at IS NOT NULL "
                         "ORDER BY id DESC LIMIT 1"))
    return records.push(rows[0], _push_change_ids(db, int(rows[0]["id"]))) if rows else None


def last_restored(db: Database) -> datetime | None:
    """When the latest halt ended: the first move to running after the latest halt,
    whatever came between (a person's pause over the halt included)."""
    rows = list(db.query(
        "SELECT at FROM events WHERE entity = 'queue' AND to_state = ? AND id > "
        "(SELECT MAX(id) FROM events WHERE entity = 'queue' AND to_state = ?) "
        "ORDER BY id LIMIT 1", [QueueState.RUNNING.value, QueueState.HALTED.value]))
    return datetime.fromisoformat(rows[0]["at"]) if rows else None


# -- hosts ------------------------------------------------------------------

def host_step_started(db: Database, push_id: int, host: str, wave: int, step: str,
                      now: datetime) -> int:
    cursor = db.execute(
        "INSERT INTO host_results (push_id, host, wave, step, started_at) VALUES (?, ?, ?, ?, ?)",
        [push_id, host, wave, step, iso(now)])
    return int(cursor.lastrowid or 0)


def host_step_ended(db: Database, row_id: int, result: HostResult, now: datetime) -> None:
    db.execute(
        "UPDATE host_results SET step = ?, outcome = ?, exit_status = ?, stderr_tail = ?,"
        " seconds = ?, release = ?, finished_at = ? WHERE id = ?",
        [result.step, str(result.outcome), result.exit_status, result.stderr_tail,
         result.seconds, result.release, iso(now), row_id])


def host_results(db: Database, push_id: int) -> list[HostResult]:
    rows = db.query("SELECT * FROM host_results WHERE push_id = ? ORDER BY id", [push_id])
    return [records.host_result(row) for row in rows]


def record_live(db: Database, host: str, release: str | None, outcome: str,
                push_id: int | None, actor: str, now: datetime) -> None:
    """Record what a host runs, as read back or as just deployed; log a change of release."""
    with write(db):
        row = db.execute("SELECT live_release FROM hosts WHERE name = ?", [host]).fetchone()
        known = row is not None
        old = row[0] if row else None
        if outcome == "ok" or release is not None:
            # a host that failed after its switch (activate, health) runs the new release
            db.execute(
                "INSERT INTO hosts (name, live_release, checked_at, last_outcome, last_push)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " live_release = excluded.live_release, checked_at = excluded.checked_at,"
                " last_outcome = excluded.last_outcome,"
                " last_push = COALESCE(excluded.last_push, last_push)",
                [host, release, iso(now), outcome, push_id])
            if not known or old != release:
                _event(db, now, "host", host, old, release or "none", actor,
                       "live release read back" if push_id is None else f"push {push_id}",
                       push_id)
        else:
            db.execute(
                "INSERT INTO hosts (name, last_outcome, last_push) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_outcome = excluded.last_outcome,"
                " last_push = COALESCE(excluded.last_push, last_push)",
                [host, outcome, push_id])


def hosts(db: Database) -> list[HostState]:
    return [records.host_state(row) for row in db.query("SELECT * FROM hosts ORDER BY name")]


# -- checks -----------------------------------------------------------------

def add_check_results(db: Database, push_id: int, wave: int, results: Sequence[CheckResult],
                      now: datetime) -> None:
    with write(db):
        for r in results:
            db.execute(
                "INSERT INTO check_results (push_id, check_name, wave, look, window_start,"
                " window_end, queries, before, after, statistic, threshold, verdict, reason,"
                " critical, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [push_id, r.check, wave, r.look, iso(r.window_start), iso(r.window_end),
                 json.dumps(list(r.queries)), json.dumps(r.before, default=str),
                 json.dumps(r.after, default=str), _finite(r.statistic), _finite(r.threshold),
                 str(r.verdict), r.reason, int(r.critical), iso(now)])


def _finite(value: float | None) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def check_results(db: Database, push_id: int) -> list[dict[str, Any]]:
    rows = db.query("SELECT * FROM check_results WHERE push_id = ? ORDER BY id", [push_id])
    return [records.check_row(row) for row in rows]


# -- the queue's control state ------------------------------------------------

def control(db: Database) -> Control:
    rows = list(db.query("SELECT * FROM control WHERE id = 1"))
    return records.control(rows[0])


def set_queue(db: Database, to: QueueState, actor: str, reason: str, now: datetime,
              push_id: int | None, expect: tuple[QueueState, ...]) -> bool:
    """Move the queue to `to`; False (nothing written) when it is not in `expect`
    or already there (a halt may be recorded again).

    A pause over a halt keeps `halted_by_push`: the halt is not over until the
    line runs again, and what it drives (the expedited fix's baseline, the
    settling wait after it) must survive a person's pause in between.
    """
    with write(db):
        before = control(db)
        current = before.state
        if expect and current not in expect:
            return False
        if current == to and to != QueueState.HALTED:
            return False
        halted_by = push_id if to == QueueState.HALTED \
            else before.halted_by_push if to == QueueState.PAUSED else None
        _transition(db, "queue", 1, to, actor, reason, now, push_id, {
            "reason": reason, "since": iso(now), "halted_by_push": halted_by})
    return True


# -- audit log and figures ----------------------------------------------------

def events(db: Database, after: int, limit: int, push_id: int | None) -> list[Event]:
    if push_id is None:
        rows = db.query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [after, limit])
    else:
        rows = db.query("SELECT * FROM events WHERE push_id = ? AND id > ? ORDER BY id LIMIT ?",
                        [push_id, after, limit])
    return [records.event(row) for row in rows]


def counts(db: Database) -> dict[str, int]:
    out = {str(state): 0 for state in ChangeState}
    for state, n in db.execute("SELECT state, COUNT(*) FROM changes GROUP BY state"):
        out[str(state)] = int(n)
    return out


def figures(db: Database, buckets: tuple[float, ...]) -> dict[str, Any]:
    """The aggregates that /metrics exposes, in one read: pushes by state and
    verdict, a push-duration histogram over `buckets` (seconds), host results
    by step and outcome, check evaluations by check and verdict, the control
    state, the queue counts and the last finished push."""
    finished = "FROM pushes WHERE finished_at IS NOT NULL"
    seconds = "ROUND((julianday(finished_at) - julianday(started_at)) * 86400.0, 3)"
    under = ", ".join(f"COALESCE(SUM({seconds} <= ?), 0)" for _ in buckets)
    histogram = db.execute(f"SELECT COUNT(*), COALESCE(SUM({seconds}), 0.0), {under} {finished}",
                           list(buckets)).fetchone()
    return {
        "pushes": db.execute(f"SELECT state, COALESCE(verdict, 'none'), COUNT(*) {finished} "
                             "GROUP BY 1, 2").fetchall(),
        "duration": (int(histogram[0]), float(histogram[1]), [int(n) for n in histogram[2:]]),
        "hosts": db.execute("SELECT step, outcome, COUNT(*) FROM host_results "
                            "WHERE outcome IS NOT NULL GROUP BY 1, 2").fetchall(),
        "checks": db.execute("SELECT check_name, verdict, COUNT(*) FROM check_results "
                             "GROUP BY 1, 2").fetchall(),
        "control": control(db),
        "queue": counts(db),
        "last": last_finished_push(db),
    }

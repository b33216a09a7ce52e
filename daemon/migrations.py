"""The schema of the SQLite store, as an append-only list of migrations.

Never edit or reorder a migration that has shipped: add a new one at the
end. `store.Store.open` applies the ones a database has not seen, each in
its own transaction, and records it in `_migrations`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database


def _run_script(db: Database, script: str) -> None:
    """Run each statement of `script` inside the caller's transaction.

    (sqlite3's executescript would commit first, which breaks atomicity.)
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending[:80]!r}")


def _m001_initial(db: Database) -> None:
    _run_script(
        db,
        """
        CREATE TABLE changes (
            id INTEGER PRIMARY KEY,
            ref TEXT NOT NULL,
            title TEXT NOT NULL,
            author TEXT NOT NULL,
            state TEXT NOT NULL,
            approved_by TEXT,
            approved_at TEXT,
            expedite INTEGER NOT NULL DEFAULT 0,
            rollback TEXT NOT NULL DEFAULT 'auto',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        -- one live entry per commit: a ref may come back only after it was cancelled
        CREATE UNIQUE INDEX changes_ref_active ON changes(ref) WHERE state != 'cancelled';
        CREATE INDEX changes_state ON changes(state, expedite, approved_at);

        CREATE TABLE pushes (
            id INTEGER PRIMARY KEY,
            state TEXT NOT NULL,
            verdict TEXT,
            reason TEXT NOT NULL DEFAULT '',
            release TEXT NOT NULL,
            previous_release TEXT,
            trigger TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        );

        CREATE TABLE push_changes (
            push_id INTEGER NOT NULL REFERENCES pushes(id),
            change_id INTEGER NOT NULL REFERENCES changes(id),
            PRIMARY KEY (push_id, change_id)
        );

        CREATE TABLE host_results (
            id INTEGER PRIMARY KEY,
            push_id INTEGER NOT NULL REFERENCES pushes(id),
            host TEXT NOT NULL,
            wave INTEGER NOT NULL,
            step TEXT NOT NULL,
            outcome TEXT,
            exit_status INTEGER,
            stderr_tail TEXT NOT NULL DEFAULT '',
            seconds REAL,
            release TEXT,
            started_at TEXT NOT NULL,
            finished_at TEXT
        );
        CREATE INDEX host_results_push ON host_results(push_id);

        CREATE TABLE check_results (
            id INTEGER PRIMARY KEY,
            push_id INTEGER NOT NULL REFERENCES pushes(id),
            check_name TEXT NOT NULL,
            wave INTEGER NOT NULL,
            look INTEGER NOT NULL,
            window_start TEXT NOT NULL,
            window_end TEXT NOT NULL,
            queries TEXT NOT NULL,
            before TEXT NOT NULL,
            after TEXT NOT NULL,
            statistic REAL,
            threshold REAL,
            verdict TEXT NOT NULL,
            reason TEXT NOT NULL,
            critical INTEGER NOT NULL,
            at TEXT NOT NULL
        );
        CREATE INDEX check_results_push ON check_results(push_id);

        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            entity TEXT NOT NULL,
            entity_id TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            push_id INTEGER REFERENCES pushes(id)
        );
        CREATE INDEX events_push ON events(push_id);

        CREATE TABLE hosts (
            name TEXT PRIMARY KEY,
            live_release TEXT,
            checked_at TEXT,
            last_outcome TEXT,
            last_push INTEGER REFERENCES pushes(id)
        );

        -- the queue's stop flags: one row
        CREATE TABLE control (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            since TEXT,
            halted_by_push INTEGER REFERENCES pushes(id)
        );
        INSERT INTO control (id, state) VALUES (1, 'running');
        """
    )


def _m002_figures_indexes(db: Database) -> None:
    """Keep the /metrics aggregates fast on years of history."""
    _run_script(
        db,
        """
        CREATE INDEX host_results_outcomes ON host_results(step, outcome);
        CREATE INDEX check_results_verdicts ON check_results(check_name, verdict);
        CREATE INDEX pushes_finished ON pushes(finished_at);
        """,
    )


def _m003_queue_events_index(db: Database) -> None:
    """Find the queue's last restart after a halt without scanning every event."""
    _run_script(db, "CREATE INDEX events_entity ON events(entity, to_state, id);\n")


MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("001_initial", _m001_initial),
    ("002_figures_indexes", _m002_figures_indexes),
    ("003_queue_events_index", _m003_queue_events_index),
]

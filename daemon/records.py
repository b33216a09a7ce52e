"""Rows of the store turned into records (and nothing else).

sqlite-utils hands rows back as dicts of plain values; JSON columns come
back as strings. These functions are the one place that knows the column
names and types.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from daemon.models import (
    Change,
    ChangeState,
    Control,
    Event,
    HostResult,
    HostState,
    Outcome,
    Push,
    PushState,
    QueueState,
    Rollback,
    Trigger,
    Verdict,
)


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _required_time(text: Any) -> datetime:
    return datetime.fromisoformat(str(text))


def change(row: dict[str, Any]) -> Change:
    return Change(
        id=int(row["id"]),
        ref=row["ref"],
        title=row["title"],
        author=row["author"],
        state=ChangeState(row["state"]),
        approved_by=row["approved_by"],
        approved_at=_time(row["approved_at"]),
        expedite=bool(row["expedite"]),
        rollback=Rollback(row["rollback"]),
        created_at=_required_time(row["created_at"]),
        updated_at=_required_time(row["updated_at"]),
    )


def push(row: dict[str, Any], change_ids: tuple[int, ...]) -> Push:
    return Push(
        id=int(row["id"]),
        state=PushState(row["state"]),
        verdict=Verdict(row["verdict"]) if row["verdict"] else None,
        reason=row["reason"] or "",
        release=row["release"],
        previous_release=row["previous_release"],
        trigger=Trigger(row["trigger"]),
        changes=change_ids,
        started_at=_required_time(row["started_at"]),
        finished_at=_time(row["finished_at"]),
    )


def host_result(row: dict[str, Any]) -> HostResult:
    return HostResult(
        push_id=int(row["push_id"]),
        host=row["host"],
        wave=int(row["wave"]),
        step=row["step"],
        # no outcome yet: the step was started and has not ended (or the daemon died in it)
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        exit_status=row["exit_status"],
        stderr_tail=row["stderr_tail"] or "",
        seconds=float(row["seconds"] or 0.0),
        release=row["release"],
    )


def check_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": row["check_name"],
        "wave": row["wave"],
        "look": row["look"],
        "verdict": row["verdict"],
        "reason": row["reason"],
        "critical": bool(row["critical"]),
        "statistic": row["statistic"],
        "threshold": row["threshold"],
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        "queries": json.loads(row["queries"]),
        "before": json.loads(row["before"]),
        "after": json.loads(row["after"]),
        "at": row["at"],
    }


def event(row: dict[str, Any]) -> Event:
    entity_id: int | str = row["entity_id"]
    if isinstance(entity_id, str) and entity_id.isdigit():
        entity_id = int(entity_id)
    return Event(
        id=int(row["id"]),
        at=_required_time(row["at"]),
        entity=row["entity"],
        entity_id=entity_id,
        from_state=row["from_state"],
        to_state=row["to_state"],
        actor=row["actor"],
        reason=row["reason"],
        push_id=row["push_id"],
    )


def host_state(row: dict[str, Any]) -> HostState:
    return HostState(
        name=row["name"],
        live_release=row["live_release"],
        checked_at=_time(row["checked_at"]),
        last_outcome=Outcome(row["last_outcome"]) if row["last_outcome"] else None,
        last_push=row["last_push"],
    )


def control(row: dict[str, Any]) -> Control:
    return Control(
        state=QueueState(row["state"]),
        reason=row["reason"] or "",
        since=_time(row["since"]),
        halted_by_push=row["halted_by_push"],
    )

"""The queue of approved changes: the rules over the store.

Enqueue resolves a ref to a full commit id in the configured repository;
approve records who approved; cancel and expedite are guarded by the change's
state. Claiming the next batch is one store transaction (`Store.claim`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from daemon.errors import InvalidTransition, SourceError, Unchanged
from daemon.models import Change, ChangeState, Control, QueueState, Rollback
from daemon.release import resolve_ref
from daemon.store import Store

MAX_TITLE = 500
MAX_NAME = 200


def _clean_text(field: str, value: str, limit: int) -> str:
    if "\x00" in value:
        raise SourceError(f"{field} must not contain NUL", field=field)
    if len(value) > limit:
        raise SourceError(f"{field} is longer than {limit} characters", field=field)
    if not value.strip():
        raise SourceError(f"{field} must not be empty", field=field)
    return value


class Queue:
    """Enqueue, approve, cancel and expedite changes; pause and resume the line."""

    def __init__(self, store: Store, repo: Path) -> None:
        self.store = store
        self.repo = repo

    async def enqueue(self, ref: str, title: str, author: str, now: datetime,
                      rollback: Rollback = Rollback.AUTO, *, actor: str | None = None) -> Change:
        """Add `ref` as a pending change by `author`; the audit log names `actor`
        (who asked, e.g. the API token), or the author when no actor is given."""
        title = _clean_text("title", title, MAX_TITLE)
        author = _clean_text("author", author, MAX_NAME)
        commit = await resolve_ref(self.repo, ref)
        return await self.store.add_change(commit, title, author, rollback, now, actor)

    async def approve(self, change_id: int, approver: str, now: datetime, *,
                      actor: str | None = None) -> Change:
        """Record `approver` as the change's approver; the audit log names `actor`
        (who asked, e.g. the API token), or the approver when no actor is given."""
        approver = _clean_text("approver", approver, MAX_NAME)
        return await self.store.approve(change_id, approver, now, actor)

    async def cancel(self, change_id: int, actor: str, reason: str, now: datetime) -> Change:
        return await self.store.transition_change(
            change_id, ChangeState.CANCELLED, actor, reason or "cancelled", now)

    async def expedite(self, change_id: int, actor: str, now: datetime) -> Change:
        return await self.store.set_expedite(change_id, actor, now)

    async def requeue(self, change_id: int, actor: str, reason: str, now: datetime) -> Change:
        """Send a failed or reverted change out again (a person's decision, on the record)."""
        change = await self.store.get_change(change_id)
        if change.state not in (ChangeState.FAILED, ChangeState.REVERTED):
            raise InvalidTransition("change", change_id, change.state, ChangeState.APPROVED)
        return await self.store.transition_change(
            change_id, ChangeState.APPROVED, actor, reason or "approved again", now)

    async def pause(self, actor: str, reason: str, now: datetime) -> Control:
        """A person stops the line (over a halt too, which the pause keeps); the control
        state after it. Unchanged (`already_paused`, 409) when it is already paused."""
        if not await self.store.set_queue(QueueState.PAUSED, actor, reason, now,
                                          expect=[QueueState.RUNNING, QueueState.HALTED]):
            raise Unchanged("the queue is already paused", "already_paused",
                            state=str(QueueState.PAUSED))
        return await self.store.control()

    async def resume(self, actor: str, reason: str, now: datetime) -> Control:
        """A person restarts a paused or halted line; the control state after it.
        Unchanged (`not_stopped`, 409) when it is running."""
        if not await self.store.set_queue(QueueState.RUNNING, actor, reason, now,
                                          expect=[QueueState.PAUSED, QueueState.HALTED]):
            raise Unchanged("the queue is running: there is nothing to resume", "not_stopped",
                            state=str(QueueState.RUNNING))
        return await self.store.control()

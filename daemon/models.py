"""Records and states.

Records are frozen dataclasses; states are string enums; `TRANSITIONS` is
the one table of allowed state changes, checked by `store.transition` for
every change, push and queue state change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class ChangeState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    PUSHING = "pushing"
    LIVE = "live"
    REVERTED = "reverted"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PushState(StrEnum):
    PLANNED = "planned"
    DEPLOYING = "deploying"
    BAKING = "baking"
    PASSED = "passed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"
    ABORTED = "aborted"


class QueueState(StrEnum):
    """The queue's own control state: who, if anyone, stopped the line."""

    RUNNING = "running"
    PAUSED = "paused"  # by a person
    HALTED = "halted"  # by the daemon, after a failed or interrupted push


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    API = "api"
    EXPEDITE = "expedite"


class Rollback(StrEnum):
    AUTO = "auto"
    NEVER = "never"  # an irreversible change (a schema migration): never rolled back


class Outcome(StrEnum):
    """What happened on one host in one step of a push."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    HOST_KEY_REJECTED = "host-key-rejected"
    SKIPPED = "skipped"


_C = ChangeState
_P = PushState
_Q = QueueState

TRANSITIONS: dict[str, dict[str, frozenset[str]]] = {
    "change": {
        _C.PENDING: frozenset({_C.APPROVED, _C.CANCELLED}),
        _C.APPROVED: frozenset({_C.PUSHING, _C.CANCELLED}),
        # back to approved: the push never touched a host (postponed, aborted)
        _C.PUSHING: frozenset({_C.LIVE, _C.FAILED, _C.REVERTED, _C.APPROVED}),
        _C.LIVE: frozenset({_C.REVERTED}),
        # a person may send a failed or reverted change out again, on the record
        _C.FAILED: frozenset({_C.APPROVED, _C.CANCELLED}),
        _C.REVERTED: frozenset({_C.APPROVED, _C.CANCELLED}),
        _C.CANCELLED: frozenset(),
    },
    "push": {
        _P.PLANNED: frozenset({_P.DEPLOYING, _P.ABORTED, _P.INTERRUPTED}),
        _P.DEPLOYING: frozenset({_P.BAKING, _P.FAILED, _P.ABORTED, _P.INTERRUPTED}),
        _P.BAKING: frozenset({_P.DEPLOYING, _P.PASSED, _P.FAILED, _P.INTERRUPTED}),
        # a rollback under way ends rolled back, or interrupted (`recovery.interrupt`)
        _P.FAILED: frozenset({_P.ROLLED_BACK, _P.INTERRUPTED}),
        _P.PASSED: frozenset(),
        _P.ROLLED_BACK: frozenset(),
        _P.INTERRUPTED: frozenset(),
        _P.ABORTED: frozenset(),
    },
    "queue": {
        _Q.RUNNING: frozenset({_Q.PAUSED, _Q.HALTED}),
        _Q.PAUSED: frozenset({_Q.RUNNING, _Q.HALTED}),
        _Q.HALTED: frozenset({_Q.RUNNING, _Q.PAUSED, _Q.HALTED}),
    },
}

FINISHED_PUSH_STATES = frozenset(
    {_P.PASSED, _P.FAILED, _P.ROLLED_BACK, _P.INTERRUPTED, _P.ABORTED}
)


def allowed(entity: str, from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS[entity].get(from_state, frozenset())


@dataclass(frozen=True)
class Change:
    id: int
    ref: str
    title: str
    author: str
    state: ChangeState
    approved_by: str | None
    approved_at: datetime | None
    expedite: bool
    rollback: Rollback
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Push:
    id: int
    state: PushState
    verdict: Verdict | None
    reason: str
    release: str
    previous_release: str | None
    trigger: Trigger
    changes: tuple[int, ...]
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class HostResult:
    push_id: int
    host: str
    wave: int
    step: str
    outcome: Outcome | None  # None: the step started and has not ended
    exit_status: int | None
    stderr_tail: str
    seconds: float
    release: str | None = None


@dataclass(frozen=True)
class CheckResult:
    push_id: int
    check: str
    look: int
    window_start: datetime
    window_end: datetime
    queries: tuple[str, ...]
    before: dict[str, object]
    after: dict[str, object]
    statistic: float | None
    threshold: float | None
    verdict: Verdict
    reason: str
    critical: bool = True


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    entity: str
    entity_id: int | str
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    push_id: int | None


@dataclass(frozen=True)
class HostState:
    name: str
    live_release: str | None
    checked_at: datetime | None
    last_outcome: Outcome | None
    last_push: int | None


@dataclass(frozen=True)
class Control:
    """The queue's stop flags: paused by a person, halted by the daemon."""

    state: QueueState
    reason: str
    since: datetime | None
    halted_by_push: int | None

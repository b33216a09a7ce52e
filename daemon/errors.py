"""One exception tree for pushguard.

Every error carries structured fields so that the CLI can print it and the
API can map it to its one JSON error shape without parsing messages.
"""

from __future__ import annotations

from collections.abc import Sequence


class PushguardError(Exception):
    """Base of every error pushguard raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details


class ConfigError(PushguardError):
    """The configuration is unusable; `problems` lists every one found."""

    code = "bad_config"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems), problems=list(self.problems))


class StoreError(PushguardError):
    """The SQLite store failed or was asked for something impossible."""

    code = "store_error"


class NotFound(StoreError):
    """A record asked for by id does not exist."""

    code = "not_found"


class Conflict(StoreError):
    """The request conflicts with what is recorded (a duplicate, a busy pusher)."""

    code = "conflict"


class Unchanged(Conflict):
    """A request to put the queue where it already is (pause a paused line, resume a
    running one); `code` says which (`already_paused`, `not_stopped`)."""

    def __init__(self, message: str, code: str, **details: object) -> None:
        super().__init__(message, **details)
        self.code = code


class InvalidTransition(StoreError):
    """A state change that the transition table does not allow."""

    code = "invalid_transition"

    def __init__(self, entity: str, entity_id: object, from_state: str, to_state: str) -> None:
        # str(): the states are often StrEnums, whose repr is not what a person reads
        from_state, to_state = str(from_state), str(to_state)
        super().__init__(
            f"{entity} {entity_id}: cannot go from {from_state!r} to {to_state!r}",
            entity=entity,
            id=entity_id,
            from_state=from_state,
            to_state=to_state,
        )
        self.from_state = from_state
        self.to_state = to_state


class SourceError(PushguardError):
    """The source repository cannot resolve or archive a ref."""

    code = "bad_ref"


class HostError(PushguardError):
    """A step on one host failed; carries host, step, exit status and stderr tail."""

    code = "host_error"

    def __init__(
        self,
        message: str,
        *,
        host: str,
        step: str,
        exit_status: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(
            message, host=host, step=step, exit_status=exit_status, stderr_tail=stderr_tail
        )
        self.host = host
        self.step = step
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class CheckError(PushguardError):
    """A metric source could not answer (down, slow, a bad query).

    `queries` holds the resolved statement(s) the source was asked, when there were
    any, so a failed check's evidence shows what failed.
    """

    code = "check_error"

    def __init__(self, message: str, *, queries: Sequence[str] = (), **details: object) -> None:
        super().__init__(message, **details)
        self.queries = tuple(queries)


class Busy(Conflict):
    """A push is already running; the trigger was not taken."""

    code = "busy"


class NotReady(PushguardError):
    """The daemon is starting or stopping and cannot serve the request."""

    code = "not_ready"

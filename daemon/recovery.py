"""Crash recovery: pushes that cannot finish become `interrupted`, and the queue halts.

`interrupt` records one unfinished push (the pusher calls it when a push's
task dies; `recover` for every push a crash left behind). `recover` runs at
start-up, before anything else may push: it interrupts every unfinished
push, fails changes stranded by a rollback that stopped midway, and reads
back the release every host runs, so that the record matches the fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from daemon.config import HostConfig
from daemon.fleet import Fleet
from daemon.models import ChangeState, PushState
from daemon.store import Store


async def interrupt(store: Store, push_id: int, why: str, now: datetime) -> bool:
    """Mark an unfinished push `interrupted`; its changes go back to the queue if no
    host was touched, else to `failed`; the queue halts with a reason to act on.

    A failed push whose rollback did not end (no `finished_at`) is unfinished too:
    its hosts may run either release, so its changes fail and the queue halts.
    Returns False (and changes nothing) for a push that has ended."""
    results = await store.host_results(push_id)
    touched = sorted({r.host for r in results if r.step not in ("connect",)})
    last = results[-1] if results else None
    where = f" at {last.step} on {last.host}" if last else " before any host was touched"
    change_to = ChangeState.FAILED if touched else ChangeState.APPROVED
    push = await store.get_push(push_id)
    if push.finished_at is not None:  # ended (the store's rule: `UNFINISHED_SQL`)
        return False
    rolling_back = push.state == PushState.FAILED
    hosts = ", ".join(touched) if touched else "none"
    reason = f"{why}{where}"
    if rolling_back:
        reason = f"{push.reason}; the rollback was interrupted{where}: {why}"
        where = f" while rolling back{where}"
        change_to = ChangeState.FAILED
    await store.finish_push(
        push_id, PushState.INTERRUPTED, change_to, "pusher", reason, now,
        halt=f"push {push_id} was interrupted{where} ({why}); hosts touched: {hosts}. Check "
        f"what runs where (GET /v1/hosts), then resume or push a fix")
    return True


async def recover(store: Store, fleet: Fleet, hosts: Sequence[HostConfig], now: datetime,
                  clock: Callable[[], datetime]) -> list[int]:
    """At start-up: interrupt every unfinished push and read back every host's release.

    Returns the ids of the pushes it interrupted.
    """
    unfinished = await store.unfinished_pushes()
    for push in unfinished:
        await interrupt(store, push.id, "the daemon restarted during the push", now)
    for push_id, change_id in await store.stranded_changes():
        # the push ended (a rollback was under way) but its change never did
        why = f"push {push_id} ended while change {change_id} was going out (stopped mid-rollback)"
        await store.transition_change(
            change_id, ChangeState.FAILED, "recovery", why, now, push_id,
            halt=f"{why}; check what runs where (GET /v1/hosts), then resume")
        unfinished.append(await store.get_push(push_id))
    for outcome in await fleet.read_live(hosts):
        await store.record_live(outcome.host, outcome.release, str(outcome.outcome), None,
                                "recovery", clock())
    return [push.id for push in unfinished]

"""Runs one push end to end, and owns the task that runs it.

Whoever asks (the schedule, the deploy button, an expedited fix) goes
through `Pusher.request`; the claim in the store is the one arbiter, so two
triggers at the same moment start one push and the other gets `Busy`.

A push: claim -> pre-flight -> build the release -> canary wave -> bake ->
the rest -> bake -> verdict -> on fail halt the queue (or roll back, by
policy) -> record. Every step is written to the store before it acts and
after it ends; a crash anywhere leaves a record that `daemon.recovery` turns
into an `interrupted` push and a halted queue at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from checks.verdict import Guard, Look
from daemon.config import Config, HostConfig
from daemon.errors import Busy, PushguardError
from daemon.fleet import Fleet
from daemon.hostrun import HostOutcome, StepCallback
from daemon.models import (
    ChangeState,
    HostResult,
    Outcome,
    Push,
    PushState,
    QueueState,
    Rollback,
    Trigger,
    Verdict,
)
from daemon.notify import Webhooks
from daemon.recovery import interrupt
from daemon.release import Release, build_release
from daemon.store import Store

log = logging.getLogger("pushguard.pusher")
ACTOR = "pusher"
ROLLBACK_WAVE = 0  # host results of a rollback are recorded as wave 0
INTERRUPT_RETRIES = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds between tries to record one
INTERRUPT_WAIT = 15.0  # seconds stop() waits for an interruption to be recorded


class Stopping(Exception):
    """The daemon is stopping: the push ends here as `interrupted`."""


@dataclass
class Progress:
    """What the running push is doing, for `/v1/status` and `pushguard watch`."""

    push: int
    phase: str = "planned"
    wave: int = 0
    waves: int = 0
    hosts_total: int = 0
    hosts_done: int = 0
    look: int = 0
    looks: int = 0
    hosts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"push": self.push, "phase": self.phase, "wave": self.wave,
                "waves": self.waves, "hosts_total": self.hosts_total,
                "hosts_done": self.hosts_done, "look": self.look, "looks": self.looks,
                "hosts": dict(self.hosts)}


@dataclass(frozen=True)
class Failure:
    """Why a wave did not pass. `halts` is False only for a bake without a verdict
    that `on_inconclusive = "pass"` lets through: the push goes on, and is recorded
    as passed with verdict `inconclusive`, never as a pass of the guard."""

    verdict: Verdict
    reason: str
    halts: bool = True


def waves(hosts: Sequence[HostConfig], canary: int) -> list[list[HostConfig]]:
    """The canary wave (first `canary` hosts), then the rest; empty waves dropped."""
    first, rest = list(hosts[:canary]), list(hosts[canary:])
    return [wave for wave in (first, rest) if wave]


class Pusher:
    """One push at a time; `request` starts it, `stop` ends it cleanly."""

    def __init__(self, *, config: Config, store: Store, fleet: Fleet, guard: Guard,
                 webhooks: Webhooks, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.store = store
        self.fleet = fleet
        self.guard = guard
        self.webhooks = webhooks
        self.clock = clock
        self.progress: Progress | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._interrupting: asyncio.Future[None] | None = None

    # -- asking for a push ---------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def request(self, trigger: Trigger, actor: str, *, normal_allowed: bool) -> Push | None:
        """Claim the next batch and start pushing it; Busy if a push is running.

        Returns the new push, or None when nothing may go out now. The claim and the
        task that owns its push are one step, shielded from the caller: a caller
        cancelled in between (the scheduler's shutdown cancels a running job) must not
        leave a claimed push without a task, which start-up would find interrupted.
        """
        inner = asyncio.ensure_future(self._request(trigger, actor, normal_allowed))
        inner.add_done_callback(_retrieve)
        return await asyncio.shield(inner)

    async def _request(self, trigger: Trigger, actor: str, normal_allowed: bool) -> Push | None:
        async with self._lock:
            if self._stopping.is_set():
                raise Busy("the daemon is stopping")
            if self.busy and self.progress is not None:
                raise Busy(f"push {self.progress.push} is running", push=self.progress.push)
            if normal_allowed and await self.settling_until(self.clock()) is not None:
                normal_allowed = False  # only an expedited fix goes out while it settles
            push = await self.store.claim(batch_size=self.config.schedule.batch_size,
                                          normal_allowed=normal_allowed, trigger=trigger,
                                          actor=actor, now=self.clock())
            if push is None:
                return None
            if self._stopping.is_set():  # stop() began during the claim: give it back
                await self.store.finish_push(push.id, PushState.ABORTED, ChangeState.APPROVED,
                                             ACTOR, "postponed: the daemon is stopping",
                                             self.clock())
                return None
            self.progress = Progress(push=push.id)
            self._task = asyncio.create_task(self._run(push), name=f"push {push.id}")
            return push

    async def settling_until(self, now: datetime) -> datetime | None:
        """After a halt, normal changes wait until a whole `guard.baseline` has passed
        since the line was restored, so that no baseline holds the incident's minutes:
        the moment that wait ends, or None when there is none."""
        restored = await self.store.last_restored()
        if restored is None or restored + self.config.guard.baseline <= now:
            return None
        return restored + self.config.guard.baseline

    async def wait(self) -> None:
        """Wait for the running push, if any, to end (for tests and shutdown)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self, grace: float) -> None:
        """Let the current host step end (up to `grace` seconds), then stop the push.

        A push that cannot finish is recorded as interrupted and the queue halted.
        """
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace), self._lock:
                pass  # a claim under way ends first: with its task, or given back
        if self._task is not None and not self._task.done():
            _done, pending = await asyncio.wait({self._task}, timeout=grace)
            if pending:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._interrupting is not None and not self._interrupting.done():
            # recording the interruption outlives the cancelled task (it is shielded)
            await asyncio.wait({self._interrupting}, timeout=INTERRUPT_WAIT)

    # -- one push --------------------------------------------------------------

    async def _run(self, push: Push) -> None:
        try:
            await self._push(push)
        except (Stopping, asyncio.CancelledError):
            await self._record_interrupt(push.id, "the daemon stopped during the push")
        except Exception as exc:
            log.exception("push %d crashed", push.id)
            await self._record_interrupt(push.id, f"internal error: {exc}")
        finally:
            self.progress = None

    async def _record_interrupt(self, push_id: int, why: str) -> None:
        self._interrupting = asyncio.ensure_future(self._interrupt(push_id, why))
        await asyncio.shield(self._interrupting)

    async def _push(self, push: Push) -> None:
        started = self.clock()
        self.webhooks.emit("started", f"push {push.id} started: {push.release[:12]}",
                           {"push": push.id, "release": push.release})
        if not await self._preflight(push):
            return
        release = await self._build(push)
        if release is None:
            return
        await self.guard.mark(push_id=push.id, release=release.id, phase="start", verdict=None,
                              at=self.clock())
        baseline = await self._baseline(push, started)
        touched: list[HostConfig] = []
        failure: Failure | None = None
        unjudged: list[Failure] = []  # bakes without a verdict, passed by policy
        plan = waves(self.config.hosts, self.config.deploy.canary)
        assert self.progress is not None
        self.progress.waves = len(plan)
        for number, hosts in enumerate(plan, start=1):
            failure = await self._deploy_wave(push, release, number, hosts, touched)
            if failure is None:
                failure = await self._bake(push, number, baseline)
            if failure is not None and not failure.halts:
                unjudged.append(failure)
                failure = None
            if failure is not None:
                break
        await self._conclude(push, release, failure, touched, unjudged)

    async def _preflight(self, push: Push) -> bool:
        assert self.progress is not None
        self.progress.phase = "preflight"
        look = await self.guard.preflight(self.clock())
        await self.store.add_check_results(push.id, 0, look.results, self.clock())
        degraded = look.verdict == Verdict.FAIL
        unavailable = look.verdict == Verdict.INCONCLUSIVE and "unavailable" in look.reason
        if degraded and push.trigger == Trigger.EXPEDITE:
            # a fix forward goes into the incident on purpose: that is what it is for
            log.warning("push %d: service degraded before an expedited fix; pushing it: %s",
                        push.id, look.reason)
            return True
        if not (degraded or unavailable):
            return True
        why = ("service already degraded, not pushing into an incident: " if degraded
               else "cannot read the metrics before the push: ") + look.reason
        await self.store.finish_push(push.id, PushState.ABORTED, ChangeState.APPROVED, ACTOR,
                                     f"postponed: {why}", self.clock())
        self.webhooks.emit("postponed", f"push {push.id} postponed: {why}", {"push": push.id})
        return False

    async def _build(self, push: Push) -> Release | None:
        assert self.progress is not None
        self.progress.phase = "build"
        try:
            return await build_release(self.config.source.repo, push.release,
                                       self.config.releases_dir)
        except PushguardError as exc:
            why = f"cannot build release {push.release[:12]}: {exc.message}"
            await self.store.finish_push(push.id, PushState.ABORTED, ChangeState.FAILED, ACTOR,
                                         why, self.clock())
            self.webhooks.emit("failed", f"push {push.id}: {why}", {"push": push.id})
            return None

    def _env(self, push: Push) -> dict[str, str]:
        return {"PUSHGUARD_PUSH": str(push.id)}

    async def _deploy_wave(self, push: Push, release: Release, number: int,
                           hosts: list[HostConfig], touched: list[HostConfig]) -> Failure | None:
        if self._stopping.is_set():
            raise Stopping
        assert self.progress is not None
        self.progress.phase, self.progress.wave = "deploying", number
        self.progress.hosts_total, self.progress.hosts_done = len(hosts), 0
        names = ", ".join(h.name for h in hosts)
        await self.store.transition_push(push.id, PushState.DEPLOYING, ACTOR,
                                         f"wave {number}: {names}", self.clock(),
                                         previous_release=await self._fleet_release())
        touched.extend(hosts)
        outcomes = await self.fleet.deploy(hosts, release, env=self._env(push),
                                           on_step=self._recorder(push.id, number))
        bad = [o for o in outcomes if o.outcome != Outcome.OK]
        for outcome in outcomes:
            await self.store.record_live(outcome.host, outcome.release, str(outcome.outcome),
                                         push.id, ACTOR, self.clock())
        if bad:
            return Failure(Verdict.FAIL, f"wave {number}: " + "; ".join(map(_describe, bad)))
        return None

    async def _fleet_release(self) -> str | None:
        """The release most of the fleet ran before this push (for the record)."""
        releases = [h.live_release for h in await self.store.hosts() if h.live_release]
        return max(set(releases), key=releases.count) if releases else None

    def _recorder(self, push_id: int, wave: int) -> StepCallback:
        """A step callback that writes each host step before it acts and after it ends."""
        rows: dict[tuple[str, str], int] = {}

        async def on_step(host: str, step: str, phase: str, outcome: HostOutcome | None) -> None:
            now = self.clock()
            progress = self.progress
            if phase == "start":
                rows[host, step] = await self.store.host_step_started(push_id, host, wave,
                                                                       step, now)
                if progress is not None:
                    progress.hosts[host] = step
                return
            assert outcome is not None
            row = rows.pop((host, step), None)
            if row is None:  # a step that ended without a start (connect)
                row = await self.store.host_step_started(push_id, host, wave, step, now)
            await self.store.host_step_ended(row, _host_result(push_id, wave, outcome), now)
            last_step = outcome.outcome not in (Outcome.OK, Outcome.SKIPPED) or step == "prune"
            if progress is not None and last_step:
                progress.hosts[host] = "done" if outcome.outcome == Outcome.OK \
                    else str(outcome.outcome)
                progress.hosts_done += 1

        return on_step

    async def _baseline(self, push: Push, started: datetime) -> tuple[datetime, datetime]:
        """The window the bakes compare with: `guard.baseline` before the push.

        An expedited fix while the queue is halted by a failed push is compared
        with the incident only: its baseline starts no earlier than the moment
        the failed push's first wave went live, so healthy minutes from before
        the incident do not blur the comparison. Other pushes are claimed only
        once a whole baseline has passed since the line was restored after a
        halt (`settling_until`), so the incident's minutes do not blur theirs.
        """
        start = started - self.config.guard.baseline
        control = await self.store.control()
        # halted, or paused by a person over the halt (which keeps `halted_by_push`)
        if push.trigger == Trigger.EXPEDITE and control.state != QueueState.RUNNING \
                and control.halted_by_push is not None:
            for event in await self.store.events(push_id=control.halted_by_push, limit=1000):
                if event.entity == "push" and event.to_state == PushState.BAKING:
                    start = max(start, event.at)
                    break
        return start, started

    async def _bake(self, push: Push, wave: int,
                    baseline: tuple[datetime, datetime]) -> Failure | None:
        """Watch the checks after a wave; a Failure on clear evidence or no verdict.

        With `on_inconclusive = "extend:D"` the looks are planned over bake + D
        from the start, so the false-alarm budget is spent once over all of
        them; the end of the bake is a decision point where a pass ends early.
        """
        guard = self.config.guard
        assert self.progress is not None
        await self.store.transition_push(push.id, PushState.BAKING, ACTOR,
                                         f"wave {wave} live; baking {guard.bake}", self.clock())
        live_at = self.clock()
        looks = self.guard.looks(guard.bake)
        total = self.guard.looks(guard.bake + guard.extend) \
            if guard.on_inconclusive == "extend" else looks
        self.progress.phase, self.progress.looks = "baking", total
        look = await self._looks(push, wave, live_at, baseline, {looks, total}, total)
        if look.verdict == Verdict.FAIL:
            return Failure(Verdict.FAIL, f"wave {wave}: {look.reason}")
        if look.verdict == Verdict.PASS:
            return None
        if guard.on_inconclusive == "pass":
            log.warning("push %d wave %d inconclusive, passing by policy: %s",
                        push.id, wave, look.reason)
            return Failure(Verdict.INCONCLUSIVE, f"wave {wave}: no verdict: {look.reason}",
                           halts=False)
        return Failure(Verdict.INCONCLUSIVE, f"wave {wave}: no verdict: {look.reason}")

    async def _looks(self, push: Push, wave: int, live_at: datetime,
                     baseline: tuple[datetime, datetime], decisions: set[int],
                     looks: int) -> Look:
        """Look every `look_every` until a fail, or a pass at a decision point."""
        guard = self.config.guard
        look = Look(Verdict.INCONCLUSIVE, "no look was made", ())
        assert self.progress is not None
        for number in range(1, looks + 1):
            due = live_at + guard.warmup + guard.look_every * number
            await self._sleep_until(due)
            self.progress.look = number
            after = (live_at + guard.warmup, self.clock())
            look = await self.guard.look(push_id=push.id, wave=wave,
                                         waves=self.progress.waves, baseline=baseline,
                                         after=after, look=number, looks=looks,
                                         final=number in decisions)
            await self.store.add_check_results(push.id, wave, look.results, self.clock())
            if look.verdict == Verdict.FAIL or (look.verdict == Verdict.PASS
                                                and number in decisions):
                break
        return look

    async def _sleep_until(self, due: datetime) -> None:
        delay = (due - self.clock()).total_seconds()
        if delay > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                return
        if self._stopping.is_set():
            raise Stopping

    # -- the end of a push --------------------------------------------------------

    async def _conclude(self, push: Push, release: Release, failure: Failure | None,
                        touched: list[HostConfig], unjudged: Sequence[Failure] = ()) -> None:
        now = self.clock()
        if failure is None:
            why, verdict = "every wave passed", Verdict.PASS
            if unjudged:
                why = 'passed by policy (on_inconclusive = "pass"): ' + "; ".join(
                    u.reason for u in unjudged)
                verdict = Verdict.INCONCLUSIVE
            final = await self.store.finish_push(push.id, PushState.PASSED, ChangeState.LIVE,
                                                 ACTOR, why, now, verdict=verdict)
            await self._marker(final, release)
            self.webhooks.emit("passed", f"push {push.id} passed: {release.id[:12]}",
                               {"push": push.id, "release": release.id})
            await self._fix_forward(final)
            return
        changes = [await self.store.get_change(cid) for cid in push.changes]
        irreversible = any(c.rollback == Rollback.NEVER for c in changes)
        rollback = (self.config.deploy.on_regression == "rollback"
                    and failure.verdict == Verdict.FAIL)
        if rollback and not irreversible:
            await self._roll_back(push, release, failure, touched)
            return
        # an inconclusive bake (the metrics unavailable, say) is no evidence against the
        # change: it halts for a person instead of reverting a change that may be fine
        why = failure.reason + (" (irreversible change: not rolled back)" if rollback else "")
        halt = f"push {push.id} failed: {why}"
        final = await self.store.finish_push(push.id, PushState.FAILED, ChangeState.FAILED,
                                             ACTOR, why, now, halt=halt, verdict=failure.verdict)
        self._halted(push.id, halt)
        await self._marker(final, release)

    async def _roll_back(self, push: Push, release: Release, failure: Failure,
                         touched: list[HostConfig]) -> None:
        """Record the verdict, roll the touched hosts back, then record the outcome.

        The push is `failed` but unfinished (no `finished_at`) and its changes stay
        `pushing` until the hosts are back, so a crash or an error in the middle
        leaves a push that `interrupt` (or `recover` at start-up) ends as
        interrupted, with the queue halted, never `reverted` early.
        """
        failed = await self.store.transition_push(push.id, PushState.FAILED, ACTOR,
                                                  failure.reason, self.clock(),
                                                  verdict=failure.verdict)
        assert self.progress is not None
        self.progress.phase = "rolling back"
        # only hosts that run this release go back; one that failed before its switch stays
        outcomes = await self.fleet.rollback(touched, env=self._env(push),
                                             on_step=self._recorder(push.id, ROLLBACK_WAVE),
                                             from_release=release.id)
        for outcome in outcomes:
            await self.store.record_live(outcome.host, outcome.release, str(outcome.outcome),
                                         push.id, ACTOR, self.clock())
        bad = [o for o in outcomes if o.outcome not in (Outcome.OK, Outcome.SKIPPED)]
        await self._marker(failed, release)
        if bad:
            why = f"{failure.reason}; rollback incomplete: " + "; ".join(map(_describe, bad))
            halt = (f"push {push.id} failed and could not be rolled back on "
                    + ", ".join(o.host for o in bad))
            await self.store.finish_push(push.id, PushState.ROLLED_BACK, ChangeState.FAILED,
                                         ACTOR, why, self.clock(), halt=halt)
            self._halted(push.id, halt)
            return
        await self.store.finish_push(push.id, PushState.ROLLED_BACK, ChangeState.REVERTED,
                                     ACTOR, f"{failure.reason}; rolled back", self.clock())
        self.webhooks.emit("failed", f"push {push.id} failed and was rolled back: "
                           f"{failure.reason}", {"push": push.id})

    async def _marker(self, push: Push, release: Release) -> None:
        await self.guard.mark(push_id=push.id, release=release.id, phase="end",
                              verdict=str(push.verdict) if push.verdict else None,
                              at=self.clock())

    def _halted(self, push_id: int, reason: str) -> None:
        """Announce a halt that the store recorded with the push's end."""
        self.webhooks.emit("failed", reason, {"push": push_id})
        self.webhooks.emit("halted", f"queue halted: {reason}", {"push": push_id,
                                                                  "reason": reason})

    async def _fix_forward(self, push: Push) -> None:
        """An expedited fix that passes clears the halt by itself, on the record."""
        control = await self.store.control()
        if control.state != QueueState.HALTED or push.trigger != Trigger.EXPEDITE:
            return
        reason = f"expedited fix push {push.id} passed; halt cleared"
        if await self.store.set_queue(QueueState.RUNNING, ACTOR, reason, self.clock(), push.id,
                                      expect=[QueueState.HALTED]):
            self.webhooks.emit("resumed", reason, {"push": push.id})

    async def _interrupt(self, push_id: int, why: str) -> None:
        """Record a push that cannot finish as interrupted and halt the queue.

        Retried for about a minute (a backup or a person's sqlite3 shell may hold the
        store's lock longer than its busy timeout); until it lands the push stays
        unfinished in the store, so no other push may start. While the daemon stops,
        two tries: start-up recovery finishes the job."""
        for attempt, pause in enumerate((0.0, *INTERRUPT_RETRIES)):
            if attempt >= 2 and self._stopping.is_set():
                break
            await asyncio.sleep(pause)
            try:
                recorded = await interrupt(self.store, push_id, why, self.clock())
            except Exception:
                log.exception("could not record push %d as interrupted (try %d)", push_id,
                              attempt + 1)
                continue
            if recorded:
                self.webhooks.emit("interrupted", f"push {push_id} interrupted: {why}",
                                   {"push": push_id})
                self.webhooks.emit("halted", f"queue halted: push {push_id} interrupted: "
                                   f"{why}", {"push": push_id, "reason": why})
            return
        log.critical("push %d could not be recorded as interrupted; no push can start until "
                     "the store answers and the daemon restarts (start-up recovery)", push_id)


def _host_result(push_id: int, wave: int, outcome: HostOutcome) -> HostResult:
    return HostResult(push_id=push_id, host=outcome.host, wave=wave, step=outcome.step,
                      outcome=outcome.outcome, exit_status=outcome.exit_status,
                      stderr_tail=outcome.stderr_tail, seconds=outcome.seconds,
                      release=outcome.release)


def _describe(outcome: HostOutcome) -> str:
    text = f"{outcome.host} {outcome.outcome} at {outcome.step}"
    if outcome.exit_status is not None:
        text += f" (exit {outcome.exit_status})"
    if outcome.stderr_tail:
        text += f": {outcome.stderr_tail.strip().splitlines()[-1][:200]}"
    return text


def _retrieve(task: asyncio.Future[Push | None]) -> None:
    """Take a shielded request's outcome when its caller was cancelled (no "exception
    was never retrieved" warning for a Busy nobody waits for)."""
    if not task.cancelled():
        task.exception()

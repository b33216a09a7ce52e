"""The daemon end to end: real sshd hosts, a real influxd, metrics that follow
what is live, and the schedule draining the queue hands-off."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from daemon.models import ChangeState, PushState, QueueState, Trigger
from tests.fixtures_daemon import BASELINE, Daemon, current_of
from tests.sshfleet import SshFleet

pytestmark = pytest.mark.timeout(300)


async def test_pushes_pass_then_a_bad_change_halts_and_a_fix_goes_forward(
        daemon_factory: Callable[..., Awaitable[Daemon]], shop_fleet: SshFleet) -> None:
    d = await daemon_factory()
    good = [await d.approve(f"good {n}", {"app.txt": f"good {n}\n"}) for n in range(3)]
    for change_id in good:
        await d.until(lambda c=change_id: d.change_done(c))
    pushes = [await d.push_of(c) for c in good]
    assert [p.state for p in pushes] == [PushState.PASSED] * 3
    assert all(p.trigger == Trigger.SCHEDULE for p in pushes)
    last = (await d.store.get_change(good[-1])).ref
    assert set(current_of(shop_fleet).values()) == {last}
    assert {h.live_release for h in await d.store.hosts()} == {last}
    # each bake is judged with its own share of the budget, the canary's the larger
    rows = [r for r in await d.store.check_results(pushes[0].id)
            if r["name"] == "checkout errors"]
    final = {w: max((r for r in rows if r["wave"] == w), key=lambda r: r["look"])
             for w in (1, 2)}
    assert final[1]["look"] == final[2]["look"]
    assert final[1]["threshold"] < final[2]["threshold"]

    bad = await d.approve("bad: checkout breaks", {"BAD": "1\n", "app.txt": "bad\n"})
    waiting = await d.approve("next feature", {"app.txt": "next\n", "BAD": "0\n"})
    await d.until(lambda: d.change_done(bad))
    push = await d.push_of(bad)
    assert push.state == PushState.FAILED and push.verdict == "fail"
    control = await d.store.control()
    assert control.state == QueueState.HALTED
    assert f"push {push.id} failed" in control.reason and "checkout errors" in control.reason
    evidence = [r for r in await d.store.check_results(push.id) if r["verdict"] == "fail"]
    assert evidence and evidence[0]["name"] == "checkout errors"
    assert evidence[0]["queries"] and evidence[0]["before"] and evidence[0]["after"]
    assert (await d.store.get_change(bad)).state == ChangeState.FAILED
    # slots pass: the halted queue pushes nothing; and, like a team writing its fix, this
    # gives the fix's baseline (which starts when the failed push went live) a full
    # BASELINE of the incident to be compared with
    await asyncio.sleep(BASELINE + 1)
    assert (await d.store.get_change(waiting)).state == ChangeState.APPROVED

    fix = await d.approve("fix checkout", {"app.txt": "fixed\n", "BAD": "0\n"},
                          expedite=True)
    await d.until(lambda: d.change_done(fix))
    fix_push = await d.push_of(fix)
    assert fix_push.trigger == Trigger.EXPEDITE
    assert fix_push.state == PushState.PASSED, fix_push.reason
    control = await d.store.control()
    assert control.state == QueueState.RUNNING and "expedited fix" in control.reason

    # the line moves again once a whole baseline has passed since it was restored, so the
    # next push is compared with healthy minutes only, not with the incident
    await d.until(lambda: d.change_done(waiting), BASELINE + 60)
    after = await d.push_of(waiting)
    assert after.state == PushState.PASSED, after.reason
    events = [e for e in await d.store.events(limit=1000) if e.entity == "queue"]
    assert [(e.from_state, e.to_state) for e in events][:2] == [("running", "halted"),
                                                                ("halted", "running")]
    assert (after.started_at - events[1].at).total_seconds() >= BASELINE


async def test_rollback_policy_returns_touched_hosts(
        daemon_factory: Callable[..., Awaitable[Daemon]], shop_fleet: SshFleet) -> None:
    d = await daemon_factory(deploy={"on_regression": "rollback"})
    good = await d.approve("good", {"app.txt": "good\n"})
    await d.until(lambda: d.change_done(good))
    good_ref = (await d.store.get_change(good)).ref
    assert set(current_of(shop_fleet).values()) == {good_ref}
    bad = await d.approve("bad", {"BAD": "1\n"})
    await d.until(lambda: d.change_done(bad))
    push = await d.push_of(bad)
    assert push.state == PushState.ROLLED_BACK and push.verdict == "fail", push.reason
    assert (await d.store.get_change(bad)).state == ChangeState.REVERTED
    assert set(current_of(shop_fleet).values()) == {good_ref}
    assert {h.live_release for h in await d.store.hosts()} == {good_ref}
    assert (await d.store.control()).state == QueueState.RUNNING

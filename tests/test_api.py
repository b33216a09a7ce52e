"""Every endpoint of the REST API against a real store and a real git repository."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from pytest_aiohttp import AiohttpClient

from api.routes import OPERATIONS
from daemon.models import QueueState, Verdict
from daemon.store import Store
from tests.test_api_harness import (
    DEPLOY,
    HOSTS,
    NOW,
    READ,
    Env,
    approved_change,
    drive_push,
    make_commits,
    start_env,
)


@pytest.fixture
def commits(tmp_path: Path) -> list[str]:
    return make_commits(tmp_path / "app")


@pytest.fixture
async def env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
              commits: list[str]) -> Env:
    return await start_env(aiohttp_client, store, tmp_path, commits)


def aware(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    assert at.tzinfo is not None, text
    return at


async def test_status_of_a_fresh_daemon(env: Env) -> None:
    status, body = await env.call("GET", "/v1/status", token=None)
    assert status == 200
    assert body["state"] == "running" and body["reason"] == ""
    assert body["current_push"] is None and body["last_push"] is None
    assert aware(body["next_slot"]) == env.control.slot
    assert body["queue"] == {s: 0 for s in ("pending", "approved", "pushing", "live",
                                             "reverted", "failed", "cancelled")}
    assert body["version"] == "1.2.3-test" and body["progress"] is None


async def test_status_follows_pause_halt_freeze_and_window(env: Env) -> None:
    status, control = await env.call("POST", "/v1/pause", token=DEPLOY,
                                     json={"reason": "investigating latency"})
    assert status == 200 and control["state"] == "paused"
    assert control["reason"] == "investigating latency" and aware(control["since"]) == NOW
    env.control.window = "frozen"  # a person's pause says more than the calendar
    assert (await env.call("GET", "/v1/status"))[1]["state"] == "paused"
    status, control = await env.call("POST", "/v1/resume", json={"reason": "fine again"})
    assert status == 200 and control["state"] == "running"
    body = (await env.call("GET", "/v1/status"))[1]
    assert body["state"] == "frozen" and "freeze" in body["reason"]
    env.control.window = "outside-window"
    assert (await env.call("GET", "/v1/status"))[1]["state"] == "outside-window"
    env.control.window = None
    await env.store.set_queue(QueueState.HALTED, "pusher", "push 9 failed", NOW)
    body = (await env.call("GET", "/v1/status"))[1]
    assert body["state"] == "halted" and body["reason"] == "push 9 failed"
    status, control = await env.call("POST", "/v1/resume", json={"reason": "fixed forward"})
    assert control["state"] == "running"


async def test_change_lifecycle(env: Env) -> None:
    status, change = await env.call("POST", "/v1/changes", token=DEPLOY, json={
        "ref": "HEAD~1", "title": "faster checkout", "author": "ann", "rollback": "never"})
    assert status == 201
    assert change["ref"] == env.commits[-2] and change["state"] == "pending"
    assert change["author"] == "ann" and change["rollback"] == "never"
    assert change["approved_by"] is None and change["expedite"] is False
    assert aware(change["created_at"]) == NOW == aware(change["updated_at"])
    cid = change["id"]
    assert isinstance(cid, int)
    assert (await env.call("GET", f"/v1/changes/{cid}", token=None)) == (200, change)

    status, approved = await env.call("POST", f"/v1/changes/{cid}/approve", token=DEPLOY)
    assert status == 200 and approved["state"] == "approved" and approved["approved_by"] == "dana"
    status, fast = await env.call("POST", f"/v1/changes/{cid}/expedite")
    assert status == 200 and fast["expedite"] is True

    status, other = await env.call("POST", "/v1/changes", token=DEPLOY, json={
        "ref": env.commits[0], "title": "other"})
    assert other["author"] == "dana" and other["rollback"] == "auto"
    status, named = await env.call("POST", f"/v1/changes/{other['id']}/approve",
                                   json={"approver": "carol"})
    assert named["approved_by"] == "carol"
    status, gone = await env.call("POST", f"/v1/changes/{other['id']}/cancel", token=DEPLOY,
                                  json={"reason": "superseded"})
    assert status == 200 and gone["state"] == "cancelled"

    _, listed = await env.call("GET", "/v1/changes")
    assert [c["id"] for c in listed["changes"]] == [cid, other["id"]]
    _, listed = await env.call("GET", "/v1/changes?state=cancelled")
    assert [c["id"] for c in listed["changes"]] == [other["id"]]
    _, listed = await env.call("GET", f"/v1/changes?after={cid}&limit=1")
    assert [c["id"] for c in listed["changes"]] == [other["id"]]
    _, listed = await env.call("GET", "/v1/changes?limit=1")
    assert [c["id"] for c in listed["changes"]] == [cid]

    _, log = await env.call("GET", "/v1/events")
    cancel = [e for e in log["events"] if e["to_state"] == "cancelled"]
    assert cancel[0]["actor"] == "dana" and cancel[0]["reason"] == "superseded"


async def test_push_now_show_and_list(env: Env) -> None:
    first = await approved_change(env, 1)
    second = await approved_change(env, 2)
    status, push = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 202 and push["changes"] == [first] and push["state"] == "planned"
    assert push["trigger"] == "api" and push["release"] == env.commits[1]
    status, busy = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and busy["error"]["code"] == "busy"
    env.control.live = {"push": push["id"], "wave": 1, "hosts_done": 0, "hosts_total": 1,
                        "phase": "deploying"}
    _, body = await env.call("GET", "/v1/status")
    assert body["current_push"] == push["id"] and body["progress"]["phase"] == "deploying"
    assert body["queue"]["pushing"] == 1 and body["queue"]["approved"] == 1

    await drive_push(env.store, env.clock, push["id"])
    env.control.running = env.control.live = None
    status, detail = await env.call("GET", f"/v1/pushes/{push['id']}", token=None)
    assert status == 200 and detail["state"] == "passed" and detail["verdict"] == "pass"
    assert [h["name"] for h in detail["hosts"]] == list(HOSTS)
    assert detail["hosts"][0] == {"name": "web1", "wave": 1, "outcome": "ok", "step": "activate",
                                  "exit_status": 0, "stderr_tail": "", "seconds": 2.0,
                                  "release": env.commits[1]}
    check = detail["checks"][-1]
    assert check["name"] == "checkout errors" and check["verdict"] == "pass"
    assert check["before"] == {"bad": 3, "all": 1000} and check["after"]["all"] == 1000
    assert check["queries"] and check["statistic"] == 0.4 and check["threshold"] == 2.5
    assert {e["to_state"] for e in detail["events"]} >= {"planned", "deploying", "baking",
                                                         "passed", "live"}
    _, body = await env.call("GET", "/v1/status")
    assert body["last_push"]["id"] == push["id"] and body["last_push"]["verdict"] == "pass"
    assert aware(body["last_push"]["finished_at"]) == env.clock()

    _, again = await env.call("POST", "/v1/pushes", token=DEPLOY)
    await drive_push(env.store, env.clock, again["id"], verdict=Verdict.FAIL)
    assert again["changes"] == [second]
    _, listed = await env.call("GET", "/v1/pushes")
    assert [p["id"] for p in listed["pushes"]] == [again["id"], push["id"]]
    assert listed["pushes"][0]["verdict"] == "fail"
    _, listed = await env.call("GET", f"/v1/pushes?before={again['id']}&limit=1")
    assert [p["id"] for p in listed["pushes"]] == [push["id"]]


async def test_push_now_with_nothing_to_push_says_why(env: Env) -> None:
    status, body = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and body["error"]["code"] == "nothing_to_push"
    await approved_change(env, 1)
    await env.call("POST", "/v1/pause", json={"reason": "lunch"})
    status, body = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and body["error"]["details"] == {"queue": "paused", "window": "open"}
    assert "queue is paused: only expedited" in body["error"]["message"]
    await env.call("POST", "/v1/resume", json={"reason": "back"})
    env.control.window = "outside-window"
    status, body = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and body["error"]["details"]["window"] == "outside-window"
    assert "window is outside-window" in body["error"]["message"]
    env.control.window = None
    env.control.settling = NOW + timedelta(minutes=30)  # after a halt, a clean baseline
    status, body = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and "baseline is clean from" in body["error"]["message"]


async def test_hosts_list_configured_and_recorded(env: Env) -> None:
    _, body = await env.call("GET", "/v1/hosts")
    assert [h["name"] for h in body["hosts"]] == list(HOSTS)
    assert all(h["live_release"] is None and h["last_outcome"] is None for h in body["hosts"])
    await env.store.record_live("db9", "abc", "ok", None, "recovery", NOW)
    await approved_change(env, 3)
    _, push = await env.call("POST", "/v1/pushes")
    await drive_push(env.store, env.clock, push["id"])
    _, body = await env.call("GET", "/v1/hosts", token=READ)
    assert [h["name"] for h in body["hosts"]] == [*HOSTS, "db9"]
    web1 = body["hosts"][0]
    assert web1["live_release"] == env.commits[3] and web1["last_outcome"] == "ok"
    assert web1["last_push"] == push["id"] and aware(web1["checked_at"])


async def test_events_tail_after_and_by_push(env: Env) -> None:
    await approved_change(env, 1)
    _, first = await env.call("GET", "/v1/events?limit=1")
    assert len(first["events"]) == 1 and first["last_id"] == first["events"][0]["id"]
    _, rest = await env.call("GET", f"/v1/events?after={first['last_id']}")
    assert rest["events"][0]["id"] == first["last_id"] + 1
    _, empty = await env.call("GET", f"/v1/events?after={rest['last_id']}")
    assert empty == {"events": [], "last_id": rest["last_id"]}
    _, push = await env.call("POST", "/v1/pushes")
    _, mine = await env.call("GET", f"/v1/events?push={push['id']}")
    assert mine["events"] and all(e["push_id"] == push["id"] for e in mine["events"])
    event = mine["events"][0]
    assert set(event) == {"id", "at", "entity", "entity_id", "from_state", "to_state", "actor",
                          "reason", "push_id"}
    assert event["entity"] == "push" and event["entity_id"] == push["id"]


async def test_livez_and_readyz(env: Env) -> None:
    assert await env.call("GET", "/livez", token=None) == (200, {"status": "ok"})
    async with env.client.head("/readyz") as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert await env.call("GET", "/readyz", token=None) == (200, {"status": "ready"})
    env.control.is_ready = False
    assert (await env.call("GET", "/livez", token=None))[0] == 200
    status, body = await env.call("GET", "/readyz", token=None)
    assert status == 503 and body["error"]["code"] == "not_ready"
    status, body = await env.call("POST", "/v1/pause", json={"reason": "x"})
    assert status == 503 and body["error"]["code"] == "not_ready"


async def test_metrics_endpoint_is_prometheus_text(env: Env) -> None:
    async with env.client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "pushguard_queue_changes" in await resp.text()


async def test_openapi_document_validates_and_covers_every_route(env: Env) -> None:
    status, doc = await env.call("GET", "/v1/openapi.json", token=None)
    assert status == 200
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(op.method, op.path) for op, _ in OPERATIONS}
    routed = {(r.method, r.resource.canonical) for r in env.client.app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    assert routed == documented
    assert doc["info"]["version"] == "1.2.3-test"
    assert doc["paths"]["/v1/pause"]["post"]["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/status"]["get"]["security"] == []


async def test_a_change_being_pushed_cannot_be_approved_or_cancelled(env: Env) -> None:
    cid = await approved_change(env, 1)
    _, push = await env.call("POST", "/v1/pushes", token=DEPLOY)
    for action in ("approve", "cancel"):
        status, body = await env.call("POST", f"/v1/changes/{cid}/{action}", token=DEPLOY)
        assert status == 422 and body["error"]["code"] == "invalid_transition", (action, body)
        assert body["error"]["details"]["from_state"] == "pushing"
    assert (await env.call("GET", f"/v1/changes/{cid}"))[1]["state"] == "pushing"
    env.control.running = None
    await drive_push(env.store, env.clock, push["id"], verdict=Verdict.FAIL)
    # a failed change goes out again only through the requeue path, not by approving it
    status, body = await env.call("POST", f"/v1/changes/{cid}/approve", token=DEPLOY)
    assert status == 422 and body["error"]["details"]["from_state"] == "failed"
    status, body = await env.call("POST", "/v1/pushes", token=DEPLOY)
    assert status == 409 and body["error"]["code"] == "nothing_to_push"


async def test_a_pause_over_a_halt_keeps_the_halt(env: Env) -> None:
    cid = await approved_change(env, 1)
    _, push = await env.call("POST", "/v1/pushes", token=DEPLOY)
    await drive_push(env.store, env.clock, push["id"], verdict=Verdict.FAIL)
    env.control.running = None
    await env.store.set_queue(QueueState.HALTED, "pusher", f"push {push['id']} failed",
                              env.clock(), push["id"])
    status, control = await env.call("POST", "/v1/pause", token=DEPLOY,
                                     json={"reason": "looking"})
    assert status == 200 and control["state"] == "paused"
    assert control["halted_by_push"] == push["id"]
    assert (await env.call("GET", f"/v1/changes/{cid}"))[1]["state"] == "failed"
    env.clock.advance(60)
    status, control = await env.call("POST", "/v1/resume", json={"reason": "ok"})
    assert status == 200 and control["state"] == "running"
    assert control["halted_by_push"] is None
    assert await env.store.last_restored() == env.clock()  # the settling wait starts now


async def test_the_audit_log_names_the_token_not_the_body(env: Env) -> None:
    status, change = await env.call("POST", "/v1/changes", token=DEPLOY, json={
        "ref": env.commits[2], "title": "t", "author": "alice"})
    assert status == 201 and change["author"] == "alice"
    status, change = await env.call("POST", f"/v1/changes/{change['id']}/approve",
                                    token=DEPLOY, json={"approver": "the-cto"})
    assert status == 200 and change["approved_by"] == "the-cto"
    _, mine = await env.call("POST", "/v1/changes", token=DEPLOY, json={
        "ref": env.commits[3], "title": "own"})
    await env.call("POST", f"/v1/changes/{mine['id']}/approve", token=DEPLOY)
    _, log = await env.call("GET", "/v1/events")
    seen = [(e["to_state"], e["actor"], e["reason"]) for e in log["events"]]
    assert seen == [
        ("pending", "dana", f"added {env.commits[2][:12]}: t (author alice)"),
        ("approved", "dana", "approved by the-cto (token dana)"),
        ("pending", "dana", f"added {env.commits[3][:12]}: own"),
        ("approved", "dana", "approved by dana"),
    ]


async def test_pausing_twice_or_resuming_a_running_line_is_409(env: Env) -> None:
    status, body = await env.call("POST", "/v1/resume", json={"reason": "go"})
    assert status == 409 and body["error"]["code"] == "not_stopped"
    await env.call("POST", "/v1/pause", token=DEPLOY, json={"reason": "lunch"})
    _, before = await env.call("GET", "/v1/events")
    status, body = await env.call("POST", "/v1/pause", token=DEPLOY, json={"reason": "again"})
    assert status == 409 and body["error"]["code"] == "already_paused"
    assert (await env.call("GET", "/v1/events"))[1] == before  # nothing recorded
    assert (await env.call("GET", "/v1/status"))[1]["reason"] == "lunch"
    _, doc = await env.call("GET", "/v1/openapi.json", token=None)
    for path in ("/v1/pause", "/v1/resume"):
        assert set(doc["paths"][path]["post"]["responses"]) >= {"200", "409"}, path
        assert "422" not in doc["paths"][path]["post"]["responses"], path

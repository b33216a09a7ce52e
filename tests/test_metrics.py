"""/metrics: Prometheus text, parsed with prometheus-client's parser, follows pushes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from api.routes import API
from daemon.models import QueueState, Verdict
from daemon.store import Store
from tests.test_api_harness import (
    DEPLOY,
    Env,
    approved_change,
    drive_push,
    make_commits,
    start_env,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def commits(tmp_path: Path) -> list[str]:
    return make_commits(tmp_path / "app", 4)


@pytest.fixture
async def env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
              commits: list[str]) -> Env:
    return await start_env(aiohttp_client, store, tmp_path, commits)


async def scrape(env: Env) -> tuple[Samples, dict[str, str]]:
    async with env.client.get("/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_families_and_types(env: Env) -> None:
    samples, types = await scrape(env)
    assert types == {
        "pushguard_pushes": "counter", "pushguard_push_duration_seconds": "histogram",
        "pushguard_host_results": "counter", "pushguard_check_evaluations": "counter",
        "pushguard_queue_changes": "gauge", "pushguard_queue_paused": "gauge",
        "pushguard_queue_halted": "gauge",
        "pushguard_last_push_finished_timestamp_seconds": "gauge",
        "pushguard_build_info": "gauge", "pushguard_ready": "gauge",
        "pushguard_push_running": "gauge", "pushguard_window_state": "gauge",
        "pushguard_scheduler_next_slot_timestamp_seconds": "gauge"}
    assert value(samples, "pushguard_build_info", version="1.2.3-test") == 1
    assert value(samples, "pushguard_queue_changes", state="pending") == 0
    assert value(samples, "pushguard_push_duration_seconds_count") == 0
    assert value(samples, "pushguard_last_push_finished_timestamp_seconds") is None
    assert value(samples, "pushguard_scheduler_next_slot_timestamp_seconds") == (
        env.control.slot.timestamp() if env.control.slot else None)
    assert value(samples, "pushguard_window_state", state="open") == 1


async def test_figures_follow_pushes(env: Env) -> None:
    await approved_change(env, 1)
    await approved_change(env, 2)
    samples, _ = await scrape(env)
    assert value(samples, "pushguard_queue_changes", state="approved") == 2

    _, push = await env.call("POST", "/v1/pushes", token=DEPLOY)
    samples, _ = await scrape(env)
    assert value(samples, "pushguard_push_running") == 1
    assert value(samples, "pushguard_queue_changes", state="pushing") == 1
    await drive_push(env.store, env.clock, push["id"])  # 3 hosts x 2 s, 2 bakes x 60 s
    env.control.running = None
    samples, _ = await scrape(env)
    assert value(samples, "pushguard_pushes_total", state="passed", verdict="pass") == 1
    assert value(samples, "pushguard_push_duration_seconds_count") == 1
    assert value(samples, "pushguard_push_duration_seconds_sum") == pytest.approx(126, abs=0.01)
    assert value(samples, "pushguard_push_duration_seconds_bucket", le="120.0") == 0
    assert value(samples, "pushguard_push_duration_seconds_bucket", le="300.0") == 1
    assert value(samples, "pushguard_host_results_total", step="activate", outcome="ok") == 3
    assert value(samples, "pushguard_check_evaluations_total", check="checkout errors",
                 verdict="pass") == 2
    assert value(samples, "pushguard_queue_changes", state="live") == 1
    assert value(samples, "pushguard_last_push_finished_timestamp_seconds") == (
        env.clock().timestamp())
    assert value(samples, "pushguard_push_running") == 0

    _, push = await env.call("POST", "/v1/pushes", token=DEPLOY)
    await drive_push(env.store, env.clock, push["id"], verdict=Verdict.FAIL)
    await env.store.set_queue(QueueState.HALTED, "pusher", "push 2 failed", env.clock(),
                              push_id=push["id"])
    samples, _ = await scrape(env)
    assert value(samples, "pushguard_pushes_total", state="failed", verdict="fail") == 1
    assert value(samples, "pushguard_push_duration_seconds_count") == 2
    assert value(samples, "pushguard_host_results_total", step="activate", outcome="ok") == 4
    assert value(samples, "pushguard_host_results_total", step="activate", outcome="failed") == 2
    assert value(samples, "pushguard_check_evaluations_total", check="checkout errors",
                 verdict="fail") == 1
    assert value(samples, "pushguard_queue_halted") == 1
    assert value(samples, "pushguard_queue_paused") == 0
    assert value(samples, "pushguard_queue_changes", state="failed") == 1


async def test_gauges_follow_pause_window_and_readiness(env: Env) -> None:
    await env.call("POST", "/v1/pause", json={"reason": "maintenance"})
    env.control.window = "frozen"
    env.control.slot = None
    env.control.is_ready = False
    samples, _ = await scrape(env)
    assert value(samples, "pushguard_queue_paused") == 1
    assert value(samples, "pushguard_window_state", state="frozen") == 1
    assert value(samples, "pushguard_window_state", state="open") == 0
    assert value(samples, "pushguard_scheduler_next_slot_timestamp_seconds") is None
    assert value(samples, "pushguard_ready") == 0


async def test_figures_survive_a_restart(env: Env, aiohttp_client: AiohttpClient,
                                         tmp_path: Path) -> None:
    await approved_change(env, 3)
    _, push = await env.call("POST", "/v1/pushes")
    await drive_push(env.store, env.clock, push["id"])
    await env.store.close()
    reopened = await Store.open(env.store.path)
    try:
        fresh = await start_env(aiohttp_client, reopened, tmp_path, env.commits)
        samples, _ = await scrape(fresh)
        assert value(samples, "pushguard_pushes_total", state="passed", verdict="pass") == 1
        assert value(samples, "pushguard_host_results_total", step="activate",
                     outcome="ok") == 3
    finally:
        await reopened.close()


async def test_concurrent_scrapes_share_one_read(env: Env) -> None:
    exposition = env.client.app[API].metrics
    rendered = await asyncio.gather(*(exposition.render() for _ in range(20)))
    assert all(r is rendered[0] for r in rendered)  # one computation, twenty answers
    later = await exposition.render()
    assert later is not rendered[0] and later == rendered[0]
    responses = await asyncio.gather(*(env.client.get("/metrics") for _ in range(20)))
    for resp in responses:
        assert resp.status == 200 and b"pushguard_ready 1.0" in await resp.read()
        resp.release()


async def test_a_rendering_is_reused_for_max_age(aiohttp_client: AiohttpClient, store: Store,
                                                 tmp_path: Path, commits: list[str]) -> None:
    kept = await start_env(aiohttp_client, store, tmp_path, commits, metrics_max_age=3600)
    before, _ = await scrape(kept)
    await approved_change(kept, 1)
    after, _ = await scrape(kept)
    assert after == before  # within max_age: the same figures, no store read
    assert value(after, "pushguard_queue_changes", state="approved") == 0
    _, status = await kept.call("GET", "/v1/status")
    assert status["queue"]["approved"] == 1  # /v1/status is never cached

"""schemathesis against the live API: no 5xx, and every response fits the document.

The server runs on loopback in its own thread and event loop (schemathesis
calls it synchronously), over a real store seeded with changes and a
finished push, so the read endpoints have records to return. Bounded: a few
dozen examples per operation, derandomized, well under a minute in all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.routes import OPERATIONS
from api.schema import openapi_document
from daemon.models import Rollback, Trigger
from daemon.store import Store
from tests.test_api_harness import ADMIN, Clock, api_config, drive_push, make_app, make_commits

# an over-long string may make the whole body too large: 413 is a rejection too
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]}}})
schema = schemathesis.openapi.from_dict(
    openapi_document(tuple(op for op, _ in OPERATIONS), "test", read_needs_token=False),
    config=CONFIG)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection,
          unsupported_method, allow_header_conformance, ignored_auth]


async def _seed(store: Store, commits: list[str], clock: Clock) -> None:
    for i, ref in enumerate(commits):
        change = await store.add_change(ref, f"change {i}", "seed", Rollback.AUTO, clock())
        await store.approve(change.id, "seed", clock())
    push = await store.claim(batch_size=1, normal_allowed=True, trigger=Trigger.API,
                             actor="seed", now=clock())
    assert push is not None
    await drive_push(store, clock, push.id)


@dataclass
class Live:
    """The server thread's handle: its URL once listening, and how to stop it."""

    commits: list[str]
    started: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None


def _serve(root: Path, live: Live) -> None:
    async def main() -> None:
        live.loop, live.stop = asyncio.get_running_loop(), asyncio.Event()
        store = await Store.open(root / "db.sqlite")
        runner: web.AppRunner | None = None
        try:
            clock = Clock()
            await _seed(store, live.commits, clock)
            app, _control, _queue = make_app(store, root / "app", api_config(root), clock)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            live.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            live.started.set()
            await live.stop.wait()
        finally:
            if runner is not None:
                await runner.cleanup()
            await store.close()
            live.started.set()

    asyncio.run(main())


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("schemathesis")
    live = Live(make_commits(root / "app", 4))
    thread = threading.Thread(target=_serve, args=(root, live), name="api-under-test")
    thread.start()
    try:
        assert live.started.wait(30) and live.url, "the API did not start"
        yield live.url
    finally:
        if live.loop is not None and live.stop is not None:
            live.loop.call_soon_threadsafe(live.stop.set)
        thread.join(30)


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_document(case: Case[Any], live_url: str) -> None:
    case.call_and_validate(base_url=live_url, headers={"Authorization": f"Bearer {ADMIN}"},
                           checks=CHECKS, timeout=10)

"""The aiohttp application of the REST API: its factory and middlewares.

`build_app` wires the handlers of `api.routes` to the daemon's Store, Queue
and Controller. Middlewares, outermost first:

1. `errors.error_middleware`: one JSON error shape for everything.
2. `_guard`: the body limit (a declared Content-Length over
   `api.max_body` is refused before reading; a longer streamed body fails
   when read), then bearer-token auth by the route's role, then readiness
   (mutating calls get 503 while `Controller.ready()` is false).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Protocol

from aiohttp import web

from api import routes
from api.auth import IDENTITY, Role, Tokens, authorize
from api.errors import ApiError, Handler, error_middleware
from api.metrics import Exposition, SingleFlight
from api.schema import openapi_document
from daemon.config import ApiConfig
from daemon.models import Control, Push
from daemon.queue import Queue
from daemon.store import Store

ROLES = web.AppKey[dict[object, Role | None]]("pushguard_roles")


class Controller(Protocol):
    """The daemon side the API needs (implemented by daemon/service.py)."""

    def ready(self) -> bool:
        """True when the store is open and the daemon started (/readyz)."""

    def current_push(self) -> int | None:
        """The id of the push running now, if any."""

    def next_slot(self, now: datetime) -> datetime | None:
        """The next scheduled push slot after `now`, if any."""

    def window_state(self, now: datetime) -> str | None:
        """One of "frozen" and "outside-window"; None inside the push window."""

    async def settling_until(self, now: datetime) -> datetime | None:
        """After a halt, until when normal changes wait for a clean baseline; None if not."""

    async def push_now(self, actor: str) -> Push | None:
        """Claim and start a push; Busy if one runs; None if nothing approved may go."""

    async def pause(self, actor: str, reason: str) -> Control:
        """A person stops the line; the queue's control state after it (Conflict, 409,
        when it is already paused)."""

    async def resume(self, actor: str, reason: str) -> Control:
        """A person restarts the line, also clearing a halt (Conflict, 409, when it is
        running)."""

    def progress(self) -> dict[str, object] | None:
        """The running push's live progress: push, wave, hosts_done, hosts_total, phase."""


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[routes.API]
    if request.content_length is not None and request.content_length > ctx.config.max_body:
        raise web.HTTPRequestEntityTooLarge(ctx.config.max_body, request.content_length)
    role = request.app[ROLES].get(request.match_info.route)
    if role is not None and (role > Role.READ or ctx.config.read_needs_token):
        request[IDENTITY] = authorize(request.headers.get("Authorization"), ctx.tokens, role)
        if role > Role.READ and not ctx.control.ready():
            raise ApiError(503, "not_ready", "the daemon is starting or stopping",
                           {"Retry-After": "1"})
    return await handler(request)


def build_app(*, store: Store, queue: Queue, control: Controller, api_config: ApiConfig,
              tokens: Tokens, version: str, clock: Callable[[], datetime],
              hosts: Sequence[str] = (), metrics_max_age: float = 1.0) -> web.Application:
    """The API application; serve it with `web.AppRunner` (see daemon/service.py).

    `clock` returns aware datetimes; `hosts` are the configured host names,
    listed by /v1/hosts even before anything is recorded for them;
    /metrics figures are reused for up to `metrics_max_age` seconds. The app
    does not own the store, queue or controller: closing them is the
    caller's job. It owns the shared reads of /metrics and /v1/status, closed on cleanup.
    """
    app = web.Application(middlewares=[error_middleware, _guard],
                          client_max_size=api_config.max_body)
    operations = tuple(op for op, _ in routes.OPERATIONS)
    exposition = Exposition(store, control, clock, version, metrics_max_age)
    document = openapi_document(operations, version, api_config.read_needs_token)
    app[routes.API] = routes.ApiContext(
        store=store, queue=queue, control=control, config=api_config, tokens=tokens,
        version=version, clock=clock, hosts=tuple(hosts), metrics=exposition,
        openapi=json.dumps(document).encode())
    status = app[routes.STATUS] = SingleFlight(routes.status_body(app[routes.API]),
                                               "pushguard-status")
    roles: dict[object, Role | None] = {}
    for op, handler in routes.OPERATIONS:
        for method in (op.method, "HEAD") if op.method == "GET" else (op.method,):
            roles[app.router.add_route(method, op.path, handler)] = op.role
    app[ROLES] = roles

    async def single_flights(_app: web.Application) -> AsyncIterator[None]:
        yield
        await status.close()
        await exposition.close()

    app.cleanup_ctx.append(single_flights)
    return app

"""The handlers of the REST API and the table that declares them.

`OPERATIONS` pairs each handler with its `schema.Operation`, which the app
uses to route and to authorize and `schema.openapi_document` uses to
describe it: an endpoint cannot exist undocumented. Handlers read and write
only through the Queue, the Store and the Controller held in the app's
`API` context; reads that belong together run as one call on the store's
thread so they see one consistent state.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from api import schema
from api.auth import IDENTITY, Role, Tokens
from api.errors import ApiError
from api.metrics import Exposition, SingleFlight
from api.schema import (
    Body,
    Field,
    Operation,
    Param,
    host_json,
    iso,
    last_push_json,
    plain,
    push_detail_json,
)
from daemon import store as store_rows
from daemon.config import ApiConfig
from daemon.models import ChangeState, QueueState, Rollback
from daemon.queue import Queue
from daemon.store import Store

if TYPE_CHECKING:
    from api.app import Controller


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiContext:
    """Everything the handlers use; built once by `app.build_app`."""

    store: Store
    queue: Queue
    control: Controller
    config: ApiConfig
    tokens: Tokens
    version: str
    clock: Callable[[], datetime]
    hosts: tuple[str, ...]
    metrics: Exposition
    openapi: bytes


API = web.AppKey[ApiContext]("pushguard_api")
STATUS = web.AppKey[SingleFlight[bytes]]("pushguard_status")


def status_body(ctx: ApiContext) -> Callable[[], Awaitable[bytes]]:
    """The body of /v1/status: one store call, then the controller's live values.

    Run through a SingleFlight, so concurrent requests share one rendering;
    everything in it is read after each of them arrived.
    """
    async def render() -> bytes:
        control, counts, last = await ctx.store.call(lambda db: (
            store_rows.control(db), store_rows.counts(db), store_rows.last_finished_push(db)))
        now = ctx.clock()
        state, reason = str(control.state), control.reason
        window = ctx.control.window_state(now) if control.state == QueueState.RUNNING else None
        if window is not None:  # a person's pause or the daemon's halt says more than the clock
            state = window
            reason = "a freeze is in effect" if window == "frozen" else "outside the push window"
        return json.dumps({
            "state": state, "reason": reason, "current_push": ctx.control.current_push(),
            "next_slot": iso(ctx.control.next_slot(now)), "queue": counts,
            "last_push": last_push_json(last), "progress": ctx.control.progress(),
            "version": ctx.version}, default=str).encode()
    return render


def _json(data: object, status: int = 200, **headers: str) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, headers=headers or None,
                        content_type="application/json")


async def read_body(request: web.Request, body: Body) -> dict[str, str]:
    """The validated JSON body; an empty body is `{}`; any Content-Type is read as JSON."""
    raw = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    if not raw.strip():
        return schema.validate_body(body, {})
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc.msg}", line=exc.lineno,
                       column=exc.colno) from None
    except RecursionError:
        raise ApiError(400, "bad_json", "the body is nested too deeply") from None
    return schema.validate_body(body, data)


def _actor(request: web.Request) -> str:
    """The name of the request's token: the actor of every event it causes (a body's
    author or approver is only recorded on the change)."""
    return request[IDENTITY].name


# -- parameters and bodies --------------------------------------------------------

P_STATE = Param("state", "only changes in this state",
                choices=tuple(s.value for s in ChangeState))
P_AFTER = Param("after", "only records with an id above this (for paging and tailing)")
P_LIMIT = Param("limit", "at most this many records (default 100)", low=1, high=1000)
P_PUSH_LIMIT = Param("limit", "at most this many pushes (default 20)", low=1, high=200)
P_BEFORE = Param("before", "only pushes with an id below this (for paging back)", low=1)
P_PUSH = Param("push", "only the events of this push", low=1)

B_CHANGE = Body("NewChange", (
    Field("ref", "a commit of the source repository (any ref git can resolve)", True, 200),
    Field("title", "what the change does", True, 500),
    Field("author", "who wrote it (default: the token's name); the audit log names the token"),
    Field("rollback", "`never` marks an irreversible change", choices=("auto", "never")),
))
B_APPROVE = Body("Approval", (Field("approver", "who approved (default: the token's name); "
                                              "the audit log names the token"),))
B_CANCEL = Body("Cancellation", (Field("reason", "why", max_len=500),))
B_REASON = Body("Reason", (Field("reason", "why (recorded in the audit log)", True, 500),))
B_EMPTY = Body("Empty")


# -- handlers ---------------------------------------------------------------------------

async def status(request: web.Request) -> web.Response:
    body = await request.app[STATUS].run()
    return web.Response(body=body, content_type="application/json")


async def list_changes(request: web.Request) -> web.Response:
    ctx = request.app[API]
    state = schema.choice_query(request, P_STATE)
    changes = await ctx.store.list_changes(
        ChangeState(state) if state else None,
        limit=schema.int_query(request, P_LIMIT, 100) or 100,
        after=schema.int_query(request, P_AFTER, 0) or 0)
    return _json({"changes": plain(changes)})


async def add_change(request: web.Request) -> web.Response:
    ctx = request.app[API]
    body = await read_body(request, B_CHANGE)
    change = await ctx.queue.enqueue(body["ref"], body["title"],
                                     body.get("author", _actor(request)), ctx.clock(),
                                     Rollback(body.get("rollback", "auto")),
                                     actor=_actor(request))
    return _json(plain(change), 201, Location=f"/v1/changes/{change.id}")


async def get_change(request: web.Request) -> web.Response:
    ctx = request.app[API]
    return _json(plain(await ctx.store.get_change(schema.path_id(request, "change"))))


async def approve(request: web.Request) -> web.Response:
    ctx = request.app[API]
    change_id = schema.path_id(request, "change")
    body = await read_body(request, B_APPROVE)
    change = await ctx.queue.approve(change_id, body.get("approver", _actor(request)),
                                     ctx.clock(), actor=_actor(request))
    return _json(plain(change))


async def cancel(request: web.Request) -> web.Response:
    ctx = request.app[API]
    change_id = schema.path_id(request, "change")
    body = await read_body(request, B_CANCEL)
    change = await ctx.queue.cancel(change_id, _actor(request),
                                    body.get("reason", "cancelled"), ctx.clock())
    return _json(plain(change))


async def expedite(request: web.Request) -> web.Response:
    ctx = request.app[API]
    change_id = schema.path_id(request, "change")
    await read_body(request, B_EMPTY)
    return _json(plain(await ctx.queue.expedite(change_id, _actor(request), ctx.clock())))


async def list_pushes(request: web.Request) -> web.Response:
    ctx = request.app[API]
    pushes = await ctx.store.list_pushes(limit=schema.int_query(request, P_PUSH_LIMIT, 20) or 20,
                                         before=schema.int_query(request, P_BEFORE, None))
    return _json({"pushes": plain(pushes)})


async def get_push(request: web.Request) -> web.Response:
    ctx = request.app[API]
    push_id = schema.path_id(request, "push")
    push, hosts, checks, events = await ctx.store.call(
        lambda db: (store_rows.get_push(db, push_id), store_rows.host_results(db, push_id),
                    store_rows.check_results(db, push_id),
                    store_rows.events(db, 0, 10_000, push_id)))
    return _json(push_detail_json(push, hosts, checks, events))


async def push_now(request: web.Request) -> web.Response:
    ctx = request.app[API]
    await read_body(request, B_EMPTY)
    push = await ctx.control.push_now(_actor(request))
    if push is None:  # say why: an empty queue, a stopped line or a closed window
        queue = str((await ctx.store.control()).state)
        window = ctx.control.window_state(ctx.clock()) or "open"
        settling = await ctx.control.settling_until(ctx.clock())
        why = [f"the queue is {queue}"] if queue != "running" else []
        why += [f"the window is {window}"] if window != "open" else []
        why += [f"after the halt the baseline is clean from {settling.isoformat()}"] \
            if settling is not None else []
        raise ApiError(409, "nothing_to_push", "no approved change may go out now" + (
            f" ({' and '.join(why)}: only expedited changes go out)" if why else ""),
            queue=queue, window=window)
    return _json(plain(push), 202, Location=f"/v1/pushes/{push.id}")


async def pause(request: web.Request) -> web.Response:
    ctx = request.app[API]
    body = await read_body(request, B_REASON)
    return _json(plain(await ctx.control.pause(_actor(request), body["reason"])))


async def resume(request: web.Request) -> web.Response:
    ctx = request.app[API]
    body = await read_body(request, B_REASON)
    return _json(plain(await ctx.control.resume(_actor(request), body["reason"])))


async def hosts(request: web.Request) -> web.Response:
    ctx = request.app[API]
    known = {h.name: h for h in await ctx.store.hosts()}
    names = list(ctx.hosts) + sorted(set(known) - set(ctx.hosts))
    return _json({"hosts": [host_json(name, known.get(name)) for name in names]})


async def events(request: web.Request) -> web.Response:
    ctx = request.app[API]
    after = schema.int_query(request, P_AFTER, 0) or 0
    found = await ctx.store.events(after=after,
                                   limit=schema.int_query(request, P_LIMIT, 100) or 100,
                                   push_id=schema.int_query(request, P_PUSH, None))
    return _json({"events": plain(found),
                  "last_id": found[-1].id if found else after})


async def livez(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if not request.app[API].control.ready():
        raise ApiError(503, "not_ready", "the daemon is starting or stopping",
                       {"Retry-After": "1"})
    return _json({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[API].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; "
                                                             "charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[API].openapi, content_type="application/json")


def _op(method: str, path: str, op_id: str, summary: str, role: Role | None,
        response: str | None, **more: Any) -> Operation:
    return Operation(method, path, op_id, summary, role, response, **more)


_R, _D, _A = Role.READ, Role.DEPLOY, Role.ADMIN
OPERATIONS: Sequence[tuple[Operation, Handler]] = (
    (_op("GET", "/v1/status", "status", "the daemon's state, queue and last push", _R,
         "Status"), status),
    (_op("GET", "/v1/changes", "listChanges", "changes in id order", _R, "ChangeList",
         params=(P_STATE, P_AFTER, P_LIMIT), errors=(400,)), list_changes),
    (_op("POST", "/v1/changes", "addChange", "enqueue a commit as a pending change", _D,
         "Change", status=201, body=B_CHANGE, errors=(409,)), add_change),
    (_op("GET", "/v1/changes/{id}", "getChange", "one change", _R, "Change", errors=(404,)),
     get_change),
    (_op("POST", "/v1/changes/{id}/approve", "approveChange", "approve a pending change", _D,
         "Change", body=B_APPROVE, errors=(404, 422)), approve),
    (_op("POST", "/v1/changes/{id}/cancel", "cancelChange", "cancel a change not yet pushed",
         _D, "Change", body=B_CANCEL, errors=(404, 422)), cancel),
    (_op("POST", "/v1/changes/{id}/expedite", "expediteChange",
         "send a change out first, also while the queue is stopped", _A, "Change",
         body=B_EMPTY, errors=(404, 422)), expedite),
    (_op("GET", "/v1/pushes", "listPushes", "pushes, newest first", _R, "PushList",
         params=(P_PUSH_LIMIT, P_BEFORE), errors=(400,)), list_pushes),
    (_op("GET", "/v1/pushes/{id}", "getPush", "one push with hosts, checks and events", _R,
         "PushDetail", errors=(404,)), get_push),
    (_op("POST", "/v1/pushes", "pushNow", "the deploy button: claim and start a push now",
         _D, "Push", status=202, body=B_EMPTY, errors=(409,)), push_now),
    (_op("POST", "/v1/pause", "pause", "stop the line (a person's pause)", _D, "Control",
         body=B_REASON, errors=(409,)), pause),
    (_op("POST", "/v1/resume", "resume", "restart the line; also clears a halt", _A,
         "Control", body=B_REASON, errors=(409,)), resume),
    (_op("GET", "/v1/hosts", "listHosts", "each host's live release and last outcome", _R,
         "HostList"), hosts),
    (_op("GET", "/v1/events", "listEvents", "the audit log, for tailing", _R, "EventList",
         params=(P_AFTER, P_LIMIT, P_PUSH), errors=(400,)), events),
    (_op("GET", "/metrics", "metrics", "Prometheus text exposition", _R, None), metrics),
    (_op("GET", "/livez", "livez", "the process answers", None, "Health"), livez),
    (_op("GET", "/readyz", "readyz", "the store is open and the daemon started", None,
         "Health"), readyz),
    (_op("GET", "/v1/openapi.json", "openapi", "this document", None, "OpenAPI"), openapi),
)

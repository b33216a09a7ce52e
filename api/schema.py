"""Request validation and the OpenAPI document, from one set of declarations.

A `Body` lists the string fields a POST accepts; `validate_body` enforces it
(unknown fields, wrong types, blank or over-long strings and NUL characters
are a 400 naming the field) and the OpenAPI document describes exactly the
same limits, so schemathesis checks the validator against its own contract.
Query parameters are parsed by `int_query` and `choice_query` the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from aiohttp import web

from api.auth import Role
from api.errors import ApiError, bad_request
from daemon.models import (
    ChangeState,
    Event,
    HostResult,
    HostState,
    Outcome,
    Push,
    PushState,
    QueueState,
    Rollback,
    Trigger,
    Verdict,
)

# a string with at least one non-blank character and no NUL (ECMA-262 and Python agree)
TEXT_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
_TEXT = re.compile(TEXT_PATTERN)
# used with fullmatch: `$` would also match before a trailing newline ("5\n")
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_ID = 2**53  # ids stay exact in JSON numbers


@dataclass(frozen=True)
class Field:
    """One string field of a request body."""

    name: str
    description: str
    required: bool = False
    max_len: int = 200
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Body:
    """A JSON object body of string fields; `name` is its OpenAPI component name."""

    name: str
    fields: tuple[Field, ...] = ()

    @property
    def required(self) -> bool:
        return any(f.required for f in self.fields)


@dataclass(frozen=True)
class Param:
    """A query parameter: an integer in [low, high] or one of `choices`."""

    name: str
    description: str
    low: int = 0
    high: int = MAX_ID
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One endpoint: what the router, the auth middleware and the document need.

    `role` None: no token ever; Role.READ: a read token when the config says
    reads need one; higher roles: always that role or above.
    """

    method: str
    path: str
    op_id: str
    summary: str
    role: Role | None
    response: str | None  # a component name; None: text/plain (metrics)
    status: int = 200
    params: tuple[Param, ...] = ()
    body: Body | None = None
    errors: tuple[int, ...] = ()


def validate_body(body: Body, data: object) -> dict[str, str]:
    """The validated fields of `data`; ApiError 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise bad_request("body", "the body must be a JSON object")
    known = {f.name: f for f in body.fields}
    for key in data:
        if key not in known:
            raise bad_request(str(key), f"unknown field {key!r}; expected one of "
                              f"{sorted(known) or 'none'}")
    out: dict[str, str] = {}
    for f in body.fields:
        if f.name not in data:
            if f.required:
                raise bad_request(f.name, f"{f.name} is required")
            continue
        value = data[f.name]
        if not isinstance(value, str):
            raise bad_request(f.name, f"{f.name} must be a string")
        if not value.isascii() and not _encodable(value):
            raise bad_request(f.name, f"{f.name} must be valid Unicode (a lone surrogate?)")
        if "\x00" in value:
            raise bad_request(f.name, f"{f.name} must not contain NUL characters")
        if len(value) > f.max_len:
            raise bad_request(f.name, f"{f.name} is longer than {f.max_len} characters")
        if not _TEXT.fullmatch(value):
            raise bad_request(f.name, f"{f.name} must not be blank")
        if f.choices and value not in f.choices:
            raise bad_request(f.name, f"{f.name} must be one of {', '.join(f.choices)}")
        out[f.name] = value
    return out


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def int_query(request: web.Request, param: Param, default: int | None) -> int | None:
    """The integer query parameter `param` (or `default`); 400 naming it when malformed."""
    text = request.query.get(param.name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not param.low <= int(text) <= param.high:
        raise bad_request(param.name, f"{param.name} must be an integer from {param.low} "
                          f"to {param.high}")
    return int(text)


def choice_query(request: web.Request, param: Param) -> str | None:
    """The query parameter `param` if given; 400 naming it when not one of its choices."""
    text = request.query.get(param.name)
    if text is not None and text not in param.choices:
        raise bad_request(param.name, f"{param.name} must be one of {', '.join(param.choices)}")
    return text


def path_id(request: web.Request, what: str) -> int:
    """The integer `{id}` of the path; a 404 in the error shape when it cannot be one."""
    text = request.match_info["id"]
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise ApiError(404, "not_found", f"{what} {text!r} does not exist", id=text)
    return int(text)


# -- the OpenAPI document -------------------------------------------------------

def _obj(props: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required else []}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _enum(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_S: dict[str, Any] = {"type": "string"}
_I: dict[str, Any] = {"type": "integer"}
_N: dict[str, Any] = {"type": "number"}
_T: dict[str, Any] = {"type": "string", "format": "date-time"}


def _components() -> dict[str, Any]:
    verdict = _enum(tuple(v.value for v in Verdict))
    outcome = _enum(tuple(o.value for o in Outcome))
    push = {"id": _I, "state": _enum(tuple(p.value for p in PushState)),
            "verdict": _null(verdict), "reason": _S, "release": _S,
            "previous_release": _null(_S), "trigger": _enum(tuple(t.value for t in Trigger)),
            "changes": {"type": "array", "items": _I}, "started_at": _T,
            "finished_at": _null(_T)}
    host_result = {"name": _S, "wave": _I, "step": _S, "outcome": _null(outcome),
                   "exit_status": _null(_I), "stderr_tail": _S, "seconds": _N,
                   "release": _null(_S)}
    check = {"name": _S, "wave": _I, "look": _I, "verdict": verdict, "reason": _S,
             "critical": {"type": "boolean"}, "statistic": _null(_N), "threshold": _null(_N),
             "window_start": _T, "window_end": _T, "queries": {"type": "array", "items": _S},
             "before": {"type": "object"}, "after": {"type": "object"}, "at": _T}
    event = {"id": _I, "at": _T, "entity": _S, "entity_id": {"type": ["integer", "string"]},
             "from_state": _null(_S), "to_state": _S, "actor": _S, "reason": _S,
             "push_id": _null(_I)}
    queue_state = _enum(tuple(q.value for q in QueueState))
    changes_by_state = _obj({c.value: _I for c in ChangeState})
    return {
        "Change": _obj({"id": _I, "ref": _S, "title": _S, "author": _S,
                        "state": _enum(tuple(c.value for c in ChangeState)),
                        "approved_by": _null(_S), "approved_at": _null(_T),
                        "expedite": {"type": "boolean"},
                        "rollback": _enum(tuple(r.value for r in Rollback)),
                        "created_at": _T, "updated_at": _T}),
        "Push": _obj(push),
        "PushDetail": _obj({**push, "hosts": {"type": "array", "items": _obj(host_result)},
                            "checks": {"type": "array", "items": _obj(check)},
                            "events": {"type": "array", "items": _ref("Event")}}),
        "Event": _obj(event),
        "Host": _obj({"name": _S, "live_release": _null(_S), "checked_at": _null(_T),
                      "last_outcome": _null(outcome), "last_push": _null(_I)}),
        "Control": _obj({"state": queue_state, "reason": _S, "since": _null(_T),
                         "halted_by_push": _null(_I)}),
        "Status": _obj({
            "state": _enum(("running", "paused", "halted", "frozen", "outside-window")),
            "reason": _S, "current_push": _null(_I), "next_slot": _null(_T),
            "queue": changes_by_state,
            "last_push": _null(_obj({"id": _I, "verdict": _null(verdict),
                                     "finished_at": _null(_T), "state": _S})),
            "progress": _null({"type": "object"}), "version": _S}),
        "ChangeList": _obj({"changes": {"type": "array", "items": _ref("Change")}}),
        "PushList": _obj({"pushes": {"type": "array", "items": _ref("Push")}}),
        "HostList": _obj({"hosts": {"type": "array", "items": _ref("Host")}}),
        "EventList": _obj({"events": {"type": "array", "items": _ref("Event")},
                           "last_id": _I}),
        "Health": _obj({"status": _S}),
        "OpenAPI": {"type": "object"},
        "Error": _obj({"error": _obj({"code": _S, "message": _S,
                                      "details": {"type": "object"}})}),
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body_schema(body: Body) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in body.fields:
        prop: dict[str, Any] = {"type": "string", "description": f.description}
        if f.choices:
            prop["enum"] = list(f.choices)
        else:
            prop.update(minLength=1, maxLength=f.max_len, pattern=TEXT_PATTERN)
        props[f.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": [f.name for f in body.fields if f.required]}


def _param_schema(p: Param) -> dict[str, Any]:
    if p.choices:
        return {"type": "string", "enum": list(p.choices)}
    return {"type": "integer", "minimum": p.low, "maximum": p.high}


_ERROR_TEXT = {400: "bad input (the details name the field)", 401: "no or unknown token",
               403: "the token's role is too low", 404: "no such record", 409: "conflict",
               413: "the body is too large", 422: "the state does not allow this",
               503: "not ready, or the store is unavailable"}


def _operation(op: Operation, read_needs_token: bool) -> dict[str, Any]:
    content = ({"application/json": {"schema": _ref(op.response)}} if op.response
               else {"text/plain": {"schema": {"type": "string"}}})
    responses: dict[str, Any] = {str(op.status): {"description": op.summary, "content": content}}
    errors = set(op.errors) | {503}
    if op.role is not None and (op.role > Role.READ or read_needs_token):
        errors |= {401, 403}
    if op.body is not None:
        errors |= {400, 413}
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    out: dict[str, Any] = {"operationId": op.op_id, "summary": op.summary,
                           "responses": responses}
    params = [{"name": p.name, "in": "query", "required": False, "description": p.description,
               "schema": _param_schema(p)} for p in op.params]
    if "{id}" in op.path:
        params.insert(0, {"name": "id", "in": "path", "required": True,
                          "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}})
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body.required, "content": {
            "application/json": {"schema": _ref(op.body.name)}}}
    if op.role is not None and (op.role > Role.READ or read_needs_token):
        out["security"] = [{"bearer": []}]
        out["description"] = f"Needs a token of role `{op.role.label}` or above."
    else:
        out["security"] = []
    return out


def openapi_document(operations: tuple[Operation, ...], version: str,
                     read_needs_token: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`, their bodies and the API's objects."""
    paths: dict[str, dict[str, Any]] = {}
    schemas = _components()
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, read_needs_token)
        if op.body is not None:
            schemas[op.body.name] = _body_schema(op.body)
    error = {"description": "an error", "content": {"application/json": {"schema":
                                                                         _ref("Error")}}}
    responses = {f"E{s}": {**error, "description": text} for s, text in _ERROR_TEXT.items()}
    responses["Error"] = error
    return {
        "openapi": "3.1.0",
        "info": {"title": "pushguard", "version": version,
                 "description": "Steer and watch the pushguard continuous-deployment daemon."},
        "paths": paths,
        "components": {"schemas": schemas, "responses": responses, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token from the tokens file (`name role token`)."}}},
    }


# -- the objects on the wire (what the components above describe) ------------------

def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def plain(value: Any) -> Any:
    """A record as JSON values: fields keep their names; times ISO 8601, enums strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def push_detail_json(p: Push, hosts: list[HostResult], checks: list[dict[str, Any]],
                     events: list[Event]) -> dict[str, Any]:
    return {**plain(p), "hosts": [
        {"name": h.host, **{k: v for k, v in plain(h).items() if k not in ("host", "push_id")}}
        for h in hosts], "checks": checks, "events": plain(events)}


def host_json(name: str, h: HostState | None) -> dict[str, Any]:
    """A host's record, or an empty one for a configured host never seen yet."""
    return {**(plain(h) if h else dict.fromkeys(
        ("live_release", "checked_at", "last_outcome", "last_push"))), "name": name}


def last_push_json(p: Push | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"id": p.id, "state": p.state.value, "verdict": p.verdict and p.verdict.value,
            "finished_at": iso(p.finished_at)}

"""The one JSON error shape of the API, and the middleware that produces it.

Every error response, whoever raised it, is
`{"error": {"code": str, "message": str, "details": object}}`:

- `ApiError` (raised by the API's own validation and auth) carries its status;
- aiohttp's own HTTP errors (404, 405, 413, ...) keep their status and headers;
- pushguard's exception tree maps by class: NotFound 404, Busy and Conflict
  409, InvalidTransition 422, SourceError 400, NotReady 503, any other
  StoreError 503 (the store is unavailable, details are logged, not sent);
- anything else is a 500 whose body names only an incident id; the
  traceback goes to the log under that id.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from daemon.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    NotReady,
    PushguardError,
    SourceError,
    StoreError,
)

log = logging.getLogger("pushguard.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# subclasses before their bases: Busy is a Conflict, all but SourceError are StoreErrors
_STATUS_BY_CLASS: tuple[tuple[type[PushguardError], int], ...] = (
    (NotFound, 404),
    (InvalidTransition, 422),
    (Conflict, 409),
    (SourceError, 400),
    (NotReady, 503),
)

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 408: "timeout", 411: "length_required",
    413: "too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    429: "too_many_requests", 431: "headers_too_large",
}

# headers of an aiohttp HTTPException that describe its own (text) body
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


class ApiError(Exception):
    """An error the API answers with `status` and the JSON error shape."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def bad_request(field: str, message: str) -> ApiError:
    """A 400 naming the offending field (body field or query parameter)."""
    return ApiError(400, "bad_request", message, field=field)


def error_response(status: int, code: str, message: str,
                   details: Mapping[str, object] | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": dict(details or {})}}
    return web.Response(status=status, headers=headers,
                        text=json.dumps(body, default=str), content_type="application/json")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
    details: dict[str, object] = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        details["allowed"] = sorted(exc.allowed_methods)
        message = f"{request.method} is not allowed on {request.path}"
    elif isinstance(exc, web.HTTPNotFound):
        message = f"no such endpoint: {request.method} {request.path}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        details["max_body"] = request.client_max_size
        message = f"the request body is larger than {details['max_body']} bytes"
    else:
        message = exc.reason
    code = _HTTP_CODES.get(exc.status, "server_error" if exc.status >= 500 else "http_error")
    return error_response(exc.status, code, message, details, headers)


def map_exception(request: web.Request, exc: Exception) -> web.Response:
    """The error response for any exception a handler raised."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, web.HTTPException):
        return _http_error(request, exc)
    if isinstance(exc, PushguardError):
        for cls, status in _STATUS_BY_CLASS:
            if isinstance(exc, cls):
                return error_response(status, exc.code, exc.message, exc.details)
        if isinstance(exc, StoreError):
            incident = uuid.uuid4().hex[:12]
            log.error("store unavailable (incident %s) on %s %s: %s", incident,
                      request.method, request.path, exc.message)
            return error_response(503, "store_unavailable",
                                  "the store is unavailable; try again shortly",
                                  {"incident": incident}, {"Retry-After": "1"})
    incident = uuid.uuid4().hex[:12]
    log.error("internal error (incident %s) on %s %s", incident, request.method,
              request.path, exc_info=exc)
    return error_response(500, "internal", "internal error; the log has the details",
                          {"incident": incident})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception (and aiohttp's HTTP errors) into the JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return map_exception(request, exc)
    except Exception as exc:
        return map_exception(request, exc)

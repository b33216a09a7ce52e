"""The one JSON error shape, pinned for every status the API answers with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from daemon.errors import StoreError
from daemon.store import Store
from tests.test_api_harness import (
    ADMIN,
    DEPLOY,
    READ,
    Env,
    approved_change,
    make_commits,
    start_env,
)


@pytest.fixture
def commits(tmp_path: Path) -> list[str]:
    return make_commits(tmp_path / "app", 3)


@pytest.fixture
async def env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
              commits: list[str]) -> Env:
    return await start_env(aiohttp_client, store, tmp_path, commits, max_body=2048)


def shape(body: Any, code: str) -> dict[str, Any]:
    """Assert the error shape exactly; return its details."""
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return dict(body["error"]["details"])


async def test_error_shape_for_every_status(env: Env) -> None:
    cid = await approved_change(env, 1)
    cases: list[tuple[int, str, tuple[str, str, str | None, dict[str, Any]]]] = [
        (400, "bad_request", ("POST", "/v1/changes", DEPLOY, {"json": {"ref": "HEAD"}})),
        (400, "bad_ref", ("POST", "/v1/changes", DEPLOY,
                          {"json": {"ref": "no-such-branch", "title": "t"}})),
        (401, "unauthorized", ("POST", "/v1/pause", None, {"json": {"reason": "x"}})),
        (403, "forbidden", ("POST", "/v1/pause", READ, {"json": {"reason": "x"}})),
        (404, "not_found", ("GET", "/v1/changes/999", None, {})),
        (404, "not_found", ("GET", "/v1/nowhere", None, {})),
        (405, "method_not_allowed", ("DELETE", "/v1/changes", ADMIN, {})),
        (409, "conflict", ("POST", "/v1/changes", DEPLOY,
                           {"json": {"ref": "HEAD~1", "title": "again"}})),
        (413, "too_large", ("POST", "/v1/pause", ADMIN, {"data": b"x" * 4096})),
        (422, "invalid_transition", ("POST", f"/v1/changes/{cid}/approve", DEPLOY, {})),
    ]
    for status, code, (method, path, token, kwargs) in cases:
        got, body = await env.call(method, path, token=token, **kwargs)
        assert got == status, (method, path, body)
        shape(body, code)
    env.control.is_ready = False
    got, body = await env.call("GET", "/readyz")
    assert got == 503
    shape(body, "not_ready")


async def test_405_keeps_allow_and_401_challenges(env: Env) -> None:
    async with env.client.put("/v1/pause") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert shape(await resp.json(), "method_not_allowed") == {"allowed": ["POST"]}
    async with env.client.post("/v1/pause", json={"reason": "x"}) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"[1,", b"\xff\xfe", b"[" * 1020 + b"]" * 1020,
                                 b"nul\x00"])
async def test_malformed_json_is_400(env: Env, raw: bytes) -> None:
    status, body = await env.call("POST", "/v1/pause", data=raw,
                                  headers={"Content-Type": "application/json"})
    assert status == 400
    shape(body, "bad_json")


async def test_oversize_body_is_413_declared_or_streamed(env: Env) -> None:
    big = {"reason": "x" * 3000}
    status, body = await env.call("POST", "/v1/pause", json=big)
    assert status == 413 and shape(body, "too_large") == {"max_body": 2048}

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: found while reading
        for _ in range(10):
            yield b" " * 500

    status, body = await env.call("POST", "/v1/pause", data=chunks())
    assert status == 413
    shape(body, "too_large")


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({"reason": "x", "extra": 1}, "extra", "unknown field"),
    ({"reason": 5}, "reason", "must be a string"),
    ({"reason": None}, "reason", "must be a string"),
    ({"reason": "a\x00b"}, "reason", "NUL"),
    ({"reason": "a\ud800"}, "reason", "Unicode"),
    ({"reason": "x" * 501}, "reason", "longer than 500"),
    ({"reason": "   "}, "reason", "blank"),
    ({}, "reason", "required"),
    ([], "body", "JSON object"),
])
async def test_body_validation_names_the_field(env: Env, payload: Any, field: str,
                                               words: str) -> None:
    status, body = await env.call("POST", "/v1/pause", json=payload)
    assert status == 400
    assert shape(body, "bad_request") == {"field": field}
    assert words in body["error"]["message"]


async def test_change_fields_are_validated(env: Env) -> None:
    status, body = await env.call("POST", "/v1/changes", json={
        "ref": "HEAD", "title": "t", "rollback": "sometimes"})
    assert status == 400 and shape(body, "bad_request") == {"field": "rollback"}
    status, body = await env.call("POST", "/v1/changes", json={"ref": "HEAD", "title": "t" * 501})
    assert status == 400 and shape(body, "bad_request") == {"field": "title"}
    status, body = await env.call("POST", "/v1/changes", json={"ref": "--upload-pack=x",
                                                                "title": "t"})
    assert status == 400 and shape(body, "bad_ref")["ref"] == "--upload-pack=x"


@pytest.mark.parametrize(("query", "field"), [
    ("/v1/changes?state=bogus", "state"), ("/v1/changes?limit=0", "limit"),
    ("/v1/changes?limit=1001", "limit"), ("/v1/changes?after=-1", "after"),
    ("/v1/changes?after=1e3", "after"), ("/v1/pushes?before=0", "before"),
    ("/v1/pushes?limit=201", "limit"), ("/v1/events?push=x", "push"),
    ("/v1/events?after=99999999999999999999", "after"),
    ("/v1/changes?limit=5%0A", "limit"), ("/v1/events?after=1%0A", "after"),
])
async def test_query_parameters_are_validated(env: Env, query: str, field: str) -> None:
    status, body = await env.call("GET", query)
    assert status == 400 and shape(body, "bad_request") == {"field": field}


@pytest.mark.parametrize("path", ["/v1/changes/abc", "/v1/changes/0", "/v1/pushes/-1",
                                  "/v1/pushes/99999999999999999999999", "/v1/pushes/7"])
async def test_bad_or_unknown_ids_are_404(env: Env, path: str) -> None:
    status, body = await env.call("GET", path)
    assert status == 404
    shape(body, "not_found")


async def test_internal_errors_leak_nothing(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    async def explode(actor: str, reason: str) -> Any:
        raise RuntimeError("secret /etc/pushguard internals")

    env.control.pause = explode  # type: ignore[method-assign]
    status, body = await env.call("POST", "/v1/pause", json={"reason": "x"})
    assert status == 500
    incident = shape(body, "internal")["incident"]
    assert "secret" not in str(body)
    assert any(incident in r.getMessage() and r.exc_info for r in caplog.records)


async def test_store_failure_is_503_without_sql(env: Env) -> None:
    async def broken(actor: str, reason: str) -> Any:
        raise StoreError("store: disk I/O error in SELECT * FROM control")

    env.control.resume = broken  # type: ignore[method-assign]
    status, body = await env.call("POST", "/v1/resume", json={"reason": "x"})
    assert status == 503 and "SELECT" not in str(body)
    shape(body, "store_unavailable")


@pytest.mark.parametrize("ref", ["HEAD:app.txt", "no-such-branch", "HEAD~99"])
async def test_bad_refs_tell_the_ref_not_the_server(env: Env, ref: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="pushguard.release"):
        status, body = await env.call("POST", "/v1/changes", token=DEPLOY,
                                      json={"ref": ref, "title": "t"})
    assert status == 400 and shape(body, "bad_ref") == {"ref": ref}, body
    assert repr(ref) in body["error"]["message"]
    for secret in (str(env.repo), "fatal", "error:", "stderr"):
        assert secret not in str(body), secret
    assert any(str(env.repo) in r.getMessage() and ref in r.getMessage()
               for r in caplog.records)  # the details stay on the server


async def test_an_id_with_a_trailing_newline_is_404(env: Env) -> None:
    cid = await approved_change(env, 1)
    assert (await env.call("GET", f"/v1/changes/{cid}"))[0] == 200
    status, body = await env.call("GET", f"/v1/changes/{cid}%0A")
    assert status == 404, body
    shape(body, "not_found")

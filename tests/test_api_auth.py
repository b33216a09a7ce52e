"""Bearer tokens by role on every endpoint; the tokens file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from api.auth import Identity, Role, Tokens
from api.routes import OPERATIONS
from daemon.errors import ConfigError
from daemon.store import Store
from tests.test_api_harness import (
    ADMIN,
    DEPLOY,
    READ,
    TOKENS_TEXT,
    Env,
    approved_change,
    make_commits,
    start_env,
)

MUTATING = [(op.method, op.path, op.role) for op, _ in OPERATIONS if op.method != "GET"]
READS = [op.path for op, _ in OPERATIONS if op.method == "GET" and op.role == Role.READ]
OPEN = [op.path for op, _ in OPERATIONS if op.role is None]
TOKEN_OF = {Role.READ: READ, Role.DEPLOY: DEPLOY, Role.ADMIN: ADMIN}


@pytest.fixture
def commits(tmp_path: Path) -> list[str]:
    return make_commits(tmp_path / "app", 3)


@pytest.fixture
async def env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
              commits: list[str]) -> Env:
    return await start_env(aiohttp_client, store, tmp_path, commits)


@pytest.fixture
async def locked(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
                 commits: list[str]) -> Env:
    return await start_env(aiohttp_client, store, tmp_path, commits, read_needs_token=True)


def test_every_mutating_endpoint_needs_deploy_or_admin() -> None:
    assert len(MUTATING) == 7
    assert all(role is not None and role >= Role.DEPLOY for _, _, role in MUTATING)
    roles = {path: role for _, path, role in MUTATING}
    assert roles["/v1/pause"] == Role.DEPLOY and roles["/v1/resume"] == Role.ADMIN
    assert roles["/v1/changes/{id}/expedite"] == Role.ADMIN


async def test_mutating_endpoints_refuse_missing_wrong_and_low_tokens(env: Env) -> None:
    cid = await approved_change(env, 1)
    for method, template, role in MUTATING:
        assert role is not None
        path = template.replace("{id}", str(cid))
        lower = [t for r, t in TOKEN_OF.items() if r < role]
        attempts = [(None, 401), ("x" * 24, 401), (ADMIN + "x", 401), (ADMIN[:-1], 401),
                    *((token, 403) for token in lower)]
        for token, status in attempts:
            got, body = await env.call(method, path, token=token, json={"reason": "r"})
            assert got == status, (method, path, token, body)
            assert body["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")
            assert body["error"]["details"]["needs"] == role.label
        async with env.client.request(method, path, headers={"Authorization": f"Basic {ADMIN}"},
                                      json={}) as resp:
            assert resp.status == 401
    # nothing was done by any refused call
    _, change = await env.call("GET", f"/v1/changes/{cid}")
    assert change["state"] == "approved" and change["expedite"] is False
    assert (await env.call("GET", "/v1/pushes"))[1] == {"pushes": []}


async def existing(env: Env, paths: list[str]) -> list[str]:
    """`paths` with `{id}` filled by a change and a push that exist."""
    cid = await approved_change(env, 1)
    _, push = await env.call("POST", "/v1/pushes")
    return [p.replace("/changes/{id}", f"/changes/{cid}").replace("{id}", str(push["id"]))
            for p in paths]


async def test_reads_are_open_unless_configured(env: Env) -> None:
    for path in await existing(env, READS + OPEN):
        status, _ = await env.call("GET", path, token=None)
        assert status == 200, path


async def test_reads_need_a_token_when_configured(locked: Env) -> None:
    for path in await existing(locked, READS):
        status, body = await locked.call("GET", path, token=None)
        assert status == 401 and body["error"]["code"] == "unauthorized", path
        assert (await locked.call("GET", path, token="y" * 20))[0] == 401
        assert (await locked.call("GET", path, token=READ))[0] == 200, path
    for path in OPEN:  # /livez, /readyz and the document never need one
        assert (await locked.call("GET", path, token=None))[0] == 200, path


def test_tokens_file_parses_roles_and_comments() -> None:
    tokens = Tokens.parse(TOKENS_TEXT, "tokens")
    assert len(tokens) == 3
    assert tokens.identify(READ) == Identity("reader", Role.READ)
    assert tokens.identify(DEPLOY) == Identity("dana", Role.DEPLOY)
    assert tokens.identify(ADMIN) == Identity("ada", Role.ADMIN)
    assert tokens.identify("") is None and tokens.identify(ADMIN + " ") is None
    assert tokens.identify("\udcff") is None


def test_bad_token_lines_name_file_and_line_never_the_token() -> None:
    text = "\n".join([
        "# comment",
        "ann read",                                   # 2: two fields
        "bob superuser bbbbbbbbbbbbbbbbbbbbbbbbb",    # 3: bad role
        "cy deploy tiny9",                            # 4: too short
        "dee admin dddddddddddddddddddddd",           # 5: ok
        "eve read dddddddddddddddddddddd",            # 6: duplicate token
        "fay read ffffffffffffffffffff extra",        # 7: four fields
    ])
    with pytest.raises(ConfigError) as caught:
        Tokens.parse(text, "/etc/pushguard/tokens")
    problems = caught.value.problems
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "6", "7"]
    assert all(p.startswith("/etc/pushguard/tokens:") for p in problems)
    assert "role" in problems[1] and "shorter" in problems[2] and "dee" in problems[3]
    assert not any(secret in str(caught.value) for secret in
                   ("bbbbbbbbbbbb", "dddddddddddd", "ffffffffffff", "tiny9", "superuser"))


def test_load_warns_on_an_open_tokens_file(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS_TEXT)
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, "pushguard.api"):
        assert len(Tokens.load(path)) == 3
    assert not caplog.records
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, "pushguard.api"):
        Tokens.load(path)
    assert "chmod 600" in caplog.text and str(path) in caplog.text
    assert ADMIN not in caplog.text
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        Tokens.load(tmp_path / "missing")

"""The CLI client commands against the live API on loopback (a real store behind it)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient

from daemon.client import register
from daemon.models import Verdict
from daemon.store import Store
from tests.test_api_harness import (
    ADMIN,
    DEPLOY,
    READ,
    Env,
    approved_change,
    drive_push,
    make_commits,
    start_env,
)


@pytest.fixture
def commits(tmp_path: Path) -> list[str]:
    return make_commits(tmp_path / "app", 4)


@pytest.fixture
async def env(aiohttp_client: AiohttpClient, store: Store, tmp_path: Path,
              commits: list[str], monkeypatch: pytest.MonkeyPatch) -> Env:
    started = await start_env(aiohttp_client, store, tmp_path, commits)
    monkeypatch.setenv("PUSHGUARD_URL", str(started.client.make_url("/")))
    for name in ("PUSHGUARD_TOKEN", "PUSHGUARD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return started


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pushguard")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def cli(*argv: str) -> int:
    """Run one command in a thread (it is synchronous; the server runs in this loop)."""
    args = parse(*argv)
    code: int = await asyncio.to_thread(args.func, args)
    return code


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true")
        time.sleep(0.01)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition` (about output a command thread writes) off the event loop."""
    await asyncio.to_thread(_wait, condition)


async def test_queue_commands_round_trip(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("add", "HEAD", "-m", "faster checkout", "--author", "ann",
                     "--token", DEPLOY) == 0
    out = capsys.readouterr().out
    assert "pending" in out and env.commits[-1][:12] in out and "faster checkout (ann)" in out
    assert await cli("add", "HEAD~1", "-m", "schema change", "--irreversible",
                     "--token", DEPLOY, "--json") == 0
    added = json.loads(capsys.readouterr().out)
    assert added["rollback"] == "never" and added["author"] == "dana"
    assert await cli("approve", "1", "--token", DEPLOY) == 0
    assert "approved by dana" in capsys.readouterr().out
    assert await cli("approve", "2", "--as", "carol", "--token", DEPLOY) == 0
    assert await cli("expedite", "2", "--token", ADMIN) == 0
    assert " ! " in capsys.readouterr().out.splitlines()[-1]
    assert await cli("cancel", "2", "-m", "not today", "--token", DEPLOY) == 0
    assert "cancelled" in capsys.readouterr().out
    assert await cli("changes", "--state", "approved") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "approved" in out and "faster checkout" in out
    assert await cli("changes") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


async def test_push_status_show_hosts(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await approved_change(env, 1)
    assert await cli("push", "--token", DEPLOY) == 0
    out = capsys.readouterr().out
    assert "push 1: planned" in out and "pushguard watch 1" in out
    env.control.live = {"push": 1, "wave": 1, "hosts_done": 1, "hosts_total": 3,
                        "phase": "deploying"}
    assert await cli("status") == 0
    out = capsys.readouterr().out
    assert "state      running" in out and "1 pushing" in out
    assert "[##########....................] wave 1 1/3 hosts, deploying" in out
    await drive_push(env.store, env.clock, 1)
    env.control.running = env.control.live = None
    assert await cli("show", "1") == 0
    out = capsys.readouterr().out
    assert "push 1: passed pass" in out and out.count("activate") == 3
    assert "check 'checkout errors' wave 2 look 1: pass" in out and "deploying -> baking" in out
    assert await cli("hosts") == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"web1             "
                                                              f"{env.commits[1][:12]}")
    assert await cli("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["last_push"]["verdict"] == "pass"


async def test_pause_and_resume(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("pause", "-m", "incident 42", "--token", DEPLOY) == 0
    assert capsys.readouterr().out == "queue paused: incident 42\n"
    assert await cli("resume", "-m", "all clear", "--token", ADMIN) == 0
    assert capsys.readouterr().out == "queue running: all clear\n"


async def test_errors_are_one_line_with_code(env: Env, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert await cli("approve", "99", "--token", DEPLOY) == 1
    assert capsys.readouterr().err == "pushguard: 404 not_found: change 99 does not exist\n"
    assert await cli("pause", "-m", "x") == 1
    assert "401 unauthorized" in capsys.readouterr().err
    assert await cli("resume", "-m", "x", "--token", DEPLOY) == 1
    assert "403 forbidden: this needs the admin role" in capsys.readouterr().err
    assert await cli("push", "--token", DEPLOY) == 1
    assert "409 nothing_to_push" in capsys.readouterr().err

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert await cli("status", "--url", f"http://127.0.0.1:{closed}") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pushguard: cannot reach http://127.0.0.1:{closed}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert await cli("status", "--token-file", str(tmp_path / "nope")) == 1
    assert "cannot read the token file" in capsys.readouterr().err


async def test_token_from_env_and_file(env: Env, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHGUARD_TOKEN", READ)
    assert await cli("pause", "-m", "x") == 1
    assert "403" in capsys.readouterr().err
    token_file = tmp_path / "my-token"
    token_file.write_text(f"# mine\n{DEPLOY}\n")
    assert await cli("pause", "-m", "x", "--token-file", str(token_file)) == 0
    assert await cli("resume", "-m", "x", "--token", ADMIN) == 0
    monkeypatch.setenv("PUSHGUARD_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("PUSHGUARD_TOKEN")
    assert await cli("pause", "-m", "again") == 0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [False, True])
async def test_watch_follows_a_push_to_its_verdict(env: Env, tty: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    await approved_change(env, 1)
    watching = asyncio.create_task(cli("watch", "--interval", "0.01"))
    await until(lambda: "waiting for the next one" in out.getvalue())
    _, push = await env.call("POST", "/v1/pushes")
    env.control.live = {"push": push["id"], "wave": 1, "hosts_done": 0, "hosts_total": 1,
                        "phase": "deploying"}
    await until(lambda: "wave 1 0/1 hosts" in out.getvalue())
    await drive_push(env.store, env.clock, push["id"])
    assert await watching == 0
    text = out.getvalue()
    assert ("\r\x1b[K[" in text) is tty
    lines = text.replace("\r\x1b[K", "\n").splitlines()
    assert sum("activate  ok" in line for line in lines) == 3
    assert sum("check 'checkout errors'" in line for line in lines) == 2
    assert any("push 1: - -> planned" in line for line in lines)
    assert lines[-1].startswith("push 1: passed pass")


async def test_watch_of_a_failed_push_exits_3(env: Env, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    await approved_change(env, 2)
    _, push = await env.call("POST", "/v1/pushes")
    await drive_push(env.store, env.clock, push["id"], verdict=Verdict.FAIL)
    assert await cli("watch", str(push["id"]), "--interval", "0.01") == 3
    out = capsys.readouterr().out
    assert "activate  failed" in out and "exit 1: reload failed" in out
    assert out.splitlines()[-1].startswith("push 1: failed fail")


@pytest.mark.parametrize(("argv", "expected"), [
    (["watch", "--interval", "-1"], "--interval"),
    (["watch", "--interval", "0"], "--interval"),
    (["watch", "--interval", "nan"], "--interval"),
    (["status", "--url", "http://[::1"], "http://[::1"),
    (["status", "--url", "127.0.0.1:8470"], "127.0.0.1:8470"),
    (["status", "--url", "http://127.0.0.1:99999"], "127.0.0.1:99999"),
    (["status", "--token", "tökén-ключ-1234567890"], "token"),
    (["status", "--token", "abc\ndef"], "token"),
])
async def test_bad_input_is_one_line_and_exit_2(argv: list[str], expected: str,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PUSHGUARD_URL", "PUSHGUARD_TOKEN", "PUSHGUARD_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert await cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pushguard: ") and err.count("\n") == 1, err
    assert expected in err and "did not answer JSON" not in err, err

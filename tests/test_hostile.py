"""Hostile input against a live `pushguard serve`.

- Fuzzing: hypothesis sends arbitrary methods, paths, ids, query strings,
  headers and bodies (JSON of any shape, bytes that are not UTF-8, nesting
  that is too deep, huge numbers) to a running daemon: never a 5xx, every
  error in the one JSON shape, and the daemon still serves afterwards.
  (tests/test_schemathesis.py checks the API against its document; this one
  goes where the document does not.)
- Shell syntax, quotes, newlines, NUL, unicode, SQL and 1 MB strings in
  refs, titles, authors, approvers and reasons, sent through the API of a
  daemon that then pushes those changes to real sshd hosts: refused (400,
  413) or stored and returned literally, never executed anywhere (no marker
  file appears on any host's disk, in its home, in the shared /tmp or here),
  and the activate command never sees them.
"""

from __future__ import annotations

import http.client
import json
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_env import write_tokens
from tests.fixtures_harness import (
    FAULTS_DB,
    ROOT,
    Served,
    fleet_config,
    free_port,
    live_on,
    serving,
    wait_until,
)
from tests.gitrepo import commit, make_repo
from tests.influxd import Influxd
from tests.sshfleet import SshFleet

pytest_plugins = ["tests.fixtures_faults"]
pytestmark = pytest.mark.timeout(180)

QUICK = {"baseline": "5s", "warmup": "0s", "bake": "1s", "look_every": "1s"}
DUMP_ENV = '#!/bin/sh\nenv > "$PUSHGUARD_PATH/activate.env"\n'


# -- fuzzing a live daemon ----------------------------------------------------------

@dataclass
class Live:
    served: Served
    ids: list[int]
    repo: Path

    def log_since(self, offset: int) -> list[str]:
        return self.served.log_text()[offset:].splitlines()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fault_fleet: SshFleet,
         influxd: Influxd) -> Iterator[Live]:
    """A daemon whose only host is a closed port: pushes the fuzzer starts fail fast and
    touch no fleet. It holds a few pending, approved and cancelled changes."""
    root = tmp_path_factory.mktemp("fuzz")
    repo = make_repo(root / "repo")
    refs = [commit(repo, f"c{i}", {"app.txt": f"{i}\n"}) for i in range(6)]
    tokens = write_tokens(root / "tokens")
    port = free_port()
    config = fleet_config(root / "config.toml", fault_fleet, repo=repo, influx_url=influxd.url,
                          database=FAULTS_DB, tokens_file=root / "tokens", api_port=port,
                          guard=QUICK, schedule={"every": "1h"},
                          deploy={"host_timeout": "3s", "command_timeout": "2s"})
    text = config.read_text()
    for host in fault_fleet.hosts:  # nowhere to connect to
        text = text.replace(f'address = "{host.address}"\nport = {host.port}',
                            f'address = "127.0.0.1"\nport = {free_port()}')
    config.write_text(text)
    served = Served(config, port, tokens, root / "var" / "pushguard.db")
    with serving(served):
        ids = [served.add_change(ref, f"seed {i}") for i, ref in enumerate(refs[:3])]
        ids.append(int(served.call("POST", "/v1/changes", {"ref": refs[3], "title": "p"})["id"]))
        served.call("POST", f"/v1/changes/{ids[0]}/cancel", {"reason": "seed"})
        yield Live(served, ids, repo)


ROUTES = ["/v1/status", "/v1/changes", "/v1/changes/{id}", "/v1/changes/{id}/approve",
          "/v1/changes/{id}/cancel", "/v1/changes/{id}/expedite", "/v1/pushes",
          "/v1/pushes/{id}", "/v1/pause", "/v1/resume", "/v1/hosts", "/v1/events",
          "/metrics", "/livez", "/readyz", "/v1/openapi.json", "/", "/v1", "/v1/nothing",
          "/v1/changes/{id}/{id}"]
PARAMS = ["state", "after", "limit", "before", "push", "id", "q"]
FIELDS = ["ref", "title", "author", "rollback", "approver", "reason", "extra"]
NASTY = ["$(touch /tmp/pwned-fuzz)", "`id`", "' OR '1'='1", "\x00", "\n", "../../etc/passwd",
         "%00", "1e999", "-1", "0", "9" * 40, "NaN", "null", "[]", "{}", "\u202e", "\ud800",
         "never", "auto", "approved", "HEAD", "A" * 2000]

texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=60),
                  st.integers(-2**70, 2**70).map(str))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80),
              st.floats(allow_nan=False), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)),
                                            inner, max_size=5)),
    max_leaves=12)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(FIELDS), texts, max_size=4).map(
        lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"[" * 100_000, b'{"title": "\xff\xfe"}', b'{"ref": 1e999}',
                     b"\xef\xbb\xbf{}", b'{"title": "a", "title": "b"}', b" " * 70_000]),
)
headers = st.fixed_dictionaries({}, optional={
    "Authorization": st.one_of(st.sampled_from(["admin", "read", "deploy", "garbage"]),
                               st.text(st.characters(min_codepoint=32, max_codepoint=255),
                                       max_size=40)),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                     "application/x-www-form-urlencoded", ""]),
})


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, dict[str, str]]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD",
                                   "OPTIONS"]))
    route = draw(st.sampled_from(ROUTES))
    while "{id}" in route:
        ident = draw(st.one_of(st.integers(-5, 8).map(str), texts))
        route = route.replace("{id}", _quote(ident), 1)
    query = draw(st.lists(st.tuples(st.sampled_from(PARAMS), texts), max_size=3))
    path = route + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query)
                    if query else "")
    return method, path, draw(bodies), draw(headers)


def _quote(text: str) -> str:
    """Percent-encoded UTF-8, lone surrogates included (they become invalid UTF-8)."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_fuzzed_requests_never_get_a_5xx(live: Live, request: tuple[str, str, bytes | None,
                                                                      dict[str, str]]) -> None:
    method, path, body, head = request
    auth = head.get("Authorization")
    if auth in live.served.tokens:
        head = {**head, "Authorization": f"Bearer {live.served.tokens[auth]}"}
    status, data, kind = _send(live.served.port, method, path, body, head)
    assert status < 500, (status, data[:300], method, path, body and body[:200], head)
    # aiohttp answers what it cannot parse itself (in text); the app answers the rest
    parser_refused = status == 400 and kind.startswith("text/plain")
    if status >= 400 and method != "HEAD" and data and not parser_refused:
        try:
            error = json.loads(data)["error"]
        except (ValueError, KeyError):
            raise AssertionError(f"not the error shape: {status} {data[:300]!r} for "
                                 f"{method} {path} {head}") from None
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert isinstance(error["details"], dict)


def test_the_daemon_is_whole_after_the_fuzzing(live: Live) -> None:
    served = live.served
    assert served.proc is not None and served.proc.poll() is None
    assert served.call("GET", "/readyz")["status"] == "ready"
    changes = served.call("GET", "/v1/changes?limit=1000")["changes"]
    assert {c["id"] for c in changes} >= set(live.ids)
    own = [line for line in served.log_text().splitlines()
           if line.startswith(("ERROR pushguard", "CRITICAL", "ERROR daemon", "ERROR api"))
           or "internal error" in line]
    assert not own, own


def _send(port: int, method: str, path: str, body: bytes | None,
          head: dict[str, str]) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=head)
        answer = conn.getresponse()
        return answer.status, answer.read(), answer.getheader("Content-Type") or ""
    finally:
        conn.close()


# -- hostile strings, end to end on real hosts -----------------------------------------

def _payloads(tag: str) -> dict[str, str]:
    """Each one would create /tmp/pwned-<tag>-<n> if any shell ever ran it."""
    m = f"/tmp/pwned-{tag}"
    return {
        "dollar": f"$(touch {m}-1)",
        "backticks": f"`touch {m}-2`",
        "single quotes": f"'; touch {m}-3; echo '",
        "double quotes": f'"; touch {m}-4; echo "',
        "newlines": f"fix\ntouch {m}-5\n$(touch {m}-6)",
        "ifs": f"$(touch${{IFS}}{m}-7)",
        "pipes": f"x || touch {m}-8 & touch {m}-9 | cat",
        "unicode": "Ünïcödé ✓ 🚀 \u202e ‮ 漢字 \u200b",
        "sql": "x'); DROP TABLE changes; -- \" OR 1=1; DELETE FROM events; --",
        "format": "%s %d {0} {name} %(x)s \\x00 \\n",
    }


def _pwned(tag: str, fleet: SshFleet, state_dir: Path) -> list[Path]:
    """Every file named pwned-<tag>* in /tmp, here, on each host's disk (outside the
    unpacked releases, whose file names carry the text as data), in its home folder,
    and in the daemon's state folder."""
    found = list(Path("/tmp").glob(f"pwned-{tag}*")) + list(ROOT.glob(f"pwned-{tag}*"))
    for root in [*(h.dir for h in fleet.hosts), state_dir]:
        found += [p for p in root.rglob("*") if f"pwned-{tag}" in p.name
                  and "releases" not in p.parts]
    return found


@pytest.fixture
def hostile(tmp_path: Path, fault_fleet: SshFleet, influxd: Influxd) -> Iterator[Served]:
    repo = make_repo(tmp_path / "repo")
    commit(repo, "base", {"bin/activate": DUMP_ENV, "app.txt": "base\n"})
    tokens = write_tokens(tmp_path / "tokens")
    port = free_port()
    config = fleet_config(tmp_path / "config.toml", fault_fleet, repo=repo,
                          influx_url=influxd.url, database=FAULTS_DB,
                          tokens_file=tmp_path / "tokens", api_port=port, guard=QUICK,
                          schedule={"every": "2s", "batch_size": 4},
                          deploy={"canary": 3})
    served = Served(config, port, tokens, tmp_path / "var" / "pushguard.db")
    with serving(served):
        yield served


def test_shell_syntax_and_sql_are_stored_literally_and_never_run(
        hostile: Served, fault_fleet: SshFleet, tmp_path: Path) -> None:
    served = hostile
    tag = secrets.token_hex(4)
    payloads = _payloads(tag)
    repo = tmp_path / "repo"
    sent: dict[int, tuple[str, str]] = {}
    for n, (name, text) in enumerate(payloads.items()):
        # the commit itself carries them too: its message and its file names
        ref = commit(repo, text, {"app.txt": f"{n}\n", f"files/{name}-{n}": text,
                                  f"files/$(touch pwned-{tag}-f{n})": "x\n",
                                  f"files/--checkpoint-action=exec=touch pwned-{tag}-c{n}": "y\n"})
        title, author = f"{name}: {text}", f"{text} <{name}>"
        change = served.call("POST", "/v1/changes", {"ref": ref, "title": title,
                                                     "author": author})
        assert (change["title"], change["author"]) == (title, author)
        approved = served.call("POST", f"/v1/changes/{change['id']}/approve",
                               {"approver": text})
        assert approved["approved_by"] == text
        sent[int(change["id"])] = (title, author)
    for name, text in payloads.items():  # as refs they are not commits: refused, not run
        reply = served.send("POST", "/v1/changes", {"ref": text, "title": name})
        assert reply.status == 400, (name, reply)
        reply = served.send("POST", "/v1/changes", {"ref": f"HEAD {text}", "title": name})
        assert reply.status == 400, (name, reply)
    for query in ("changes?state=approved' OR 1=1 --", "changes?after=0 OR 1=1",
                  "changes?limit=1;DROP TABLE changes", "changes?state=$(touch /tmp/pwned-x)",
                  "events?push=1 UNION SELECT * FROM changes", "pushes?before=1) OR (1=1"):
        assert served.send("GET", "/v1/" + urllib.parse.quote(query, safe="=?")
                           ).status == 400, query

    def all_done() -> bool:
        states = {c["state"] for c in served.call("GET", "/v1/changes?limit=1000")["changes"]}
        return states <= {"live", "failed"} and bool(states)
    wait_until(all_done, 120, 0.2, "the hostile changes were not all pushed")

    changes = {c["id"]: c for c in served.call("GET", "/v1/changes?limit=1000")["changes"]}
    assert set(changes) == set(sent)
    for change_id, (title, author) in sent.items():  # stored and returned literally
        assert (changes[change_id]["title"], changes[change_id]["author"]) == (title, author)
        assert changes[change_id]["state"] == "live", changes[change_id]
    events = served.call("GET", "/v1/events?limit=1000")["events"]
    reasons = "\n".join(e["reason"] for e in events)
    assert all(title in reasons for title, _ in sent.values())
    pushes = served.call("GET", "/v1/pushes?limit=200")["pushes"]
    assert {p["state"] for p in pushes} == {"passed"}, pushes
    assert sorted(c for p in pushes for c in p["changes"]) == sorted(sent)
    last = pushes[0]["release"]
    assert set(live_on(fault_fleet).values()) == {last}
    for host in fault_fleet.hosts:  # the tree came across literally, as data
        app = host.local(fault_fleet.deploy_path())
        tree = app / "releases" / last / "files"
        assert (tree / f"$(touch pwned-{tag}-f{len(sent) - 1})").read_text() == "x\n"
        env = (app / "activate.env").read_text()
        assert f"PUSHGUARD_RELEASE={last}" in env
        assert tag not in env and "DROP TABLE" not in env  # activate never sees them
    assert not _pwned(tag, fault_fleet, tmp_path / "var"), _pwned(tag, fault_fleet, tmp_path)
    assert not list(Path("/tmp").glob("pwned-x*"))


def test_nul_over_long_and_one_megabyte_strings_are_refused(live: Live) -> None:
    served = live.served
    ref = commit(live.repo, "ok", {"app.txt": "nul\n"})
    mega = "A" * (1 << 20)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"ref": ref, "title": "a\x00b"}, 400),
        ({"ref": ref + "\x00", "title": "nul"}, 400),
        ({"ref": ref, "title": "t", "author": "\x00"}, 400),
        ({"ref": ref, "title": "é" * 501}, 400),
        ({"ref": ref, "title": "   \n\t "}, 400),
        ({"ref": ref, "title": mega}, 413),
        ({"ref": mega, "title": "t"}, 413),
        ({"ref": ref, "title": "t", "author": mega}, 413),
    ]
    for body, status in cases:
        reply = served.send("POST", "/v1/changes", body)
        assert reply.status == status, (str(body)[:80], reply.status, reply.body[:200])
        assert set(reply.json()["error"]) == {"code", "message", "details"}
    assert served.send("POST", "/v1/pause", {"reason": mega}).status == 413
    assert served.send("POST", "/v1/pause", {"reason": "x\x00"}).status == 400
    # and it still works
    ok = served.call("POST", "/v1/changes", {"ref": ref, "title": "é" * 500,
                                             "author": "ünïcödé ✓"})
    assert ok["title"] == "é" * 500 and ok["author"] == "ünïcödé ✓"
    assert served.call("GET", "/readyz")["status"] == "ready"


def test_malformed_http_is_refused_without_an_error_in_the_log(live: Live) -> None:
    served = live.served
    offset = len(served.log_text())
    mega = "A" * (1 << 20)
    for path, head in ((f"/v1/changes?state={mega}", {}), ("/v1/status", {"X-Big": mega}),
                       ("/v1/status", {"X-Bad": "a\x01b"})):
        try:
            status = _send(served.port, "GET", path, None, head)[0]
        except (ConnectionError, http.client.RemoteDisconnected):
            status = 400  # the server may drop such a request without an answer
        assert 400 <= status < 500  # refused by the HTTP server, never a 5xx
    assert served.call("GET", "/readyz")["status"] == "ready"
    noisy = [line for line in live.log_since(offset)
             if line.startswith(("ERROR", "Traceback"))]
    assert not noisy, noisy


def test_a_title_cannot_forge_a_log_line(live: Live) -> None:
    """The text log (for the journal) keeps one record on one line: a newline in a title
    or an author must not start a line that looks like the daemon's own."""
    served = live.served
    offset = len(served.log_text())
    forged = "CRITICAL pushguard.pusher: push 999 passed; halt cleared by root"
    ref = commit(live.repo, "log", {"app.txt": "log\n"})
    change = served.call("POST", "/v1/changes", {
        "ref": ref, "title": f"harmless\n{forged}", "author": f"dev\r\n{forged} (author)"})
    assert change["title"] == f"harmless\n{forged}"
    wait_until(lambda: "(author)" in served.log_text()[offset:], 10)  # one write per record
    lines = live.log_since(offset)
    assert not [line for line in lines if line.startswith("CRITICAL")], \
        [line for line in lines if "CRITICAL" in line]

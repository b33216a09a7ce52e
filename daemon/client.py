"""The `pushguard` client commands: thin, synchronous calls of the REST API.

`register(sub)` adds: status, changes, add, approve, cancel, expedite, push,
pause, resume, show, hosts and watch. Each takes --url (or PUSHGUARD_URL,
default http://127.0.0.1:8470), --token, --token-file (or PUSHGUARD_TOKEN,
PUSHGUARD_TOKEN_FILE) and --json (print the API's JSON as is).

Exit codes: 0 done; 1 the API could not be reached or answered with an
error (one line on stderr: the status, the error code and the message);
2 bad usage (also a bad URL, token or interval: one line); 3 `watch` saw the
push end without passing; 130 interrupted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8470"
NOT_PASSED = 3


class ClientError(Exception):
    """A one-line explanation for the user; the command exits 1."""


class UsageError(ClientError):
    """Bad input on the command line or in the environment; the command exits 2."""


# a longer poll interval is a mistake; a far longer one overflows time.sleep
_MAX_INTERVAL = 3600.0


class Api:
    """The REST API at `url`, called with an optional bearer token."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        _check_url(url)
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, str] | None = None) -> Any:
        """The decoded JSON answer; ClientError for transport and API errors."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ClientError(_api_error(exc)) from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}") from None
        except ValueError as exc:
            raise ClientError(f"{self.url}{path} did not answer JSON: {exc}") from None


def _check_url(url: str) -> None:
    """UsageError unless `url` is an http(s) URL with a host (and a valid port)."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        ok = False
    if not ok:
        raise UsageError(f"bad API URL {url!r} (--url or PUSHGUARD_URL): expected "
                         "http://HOST:PORT")


def _check_token(token: str) -> str:
    # an HTTP header carries Latin-1 at most, and the server's tokens have no spaces
    if not all(33 <= ord(c) < 127 for c in token):
        raise UsageError("the token holds spaces, control or non-ASCII characters; "
                         "tokens are printable ASCII (check --token, --token-file, "
                         "PUSHGUARD_TOKEN)")
    return token


def _api_error(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
        return f"{exc.code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{exc.code} {exc.reason}"


def _token(args: Args) -> str | None:
    if args.token:
        return _check_token(str(args.token))
    path = args.token_file or os.environ.get("PUSHGUARD_TOKEN_FILE")
    if not path and os.environ.get("PUSHGUARD_TOKEN"):
        return _check_token(os.environ["PUSHGUARD_TOKEN"])
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the token file {path}: {exc}") from None
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return _check_token(line.strip())
    raise ClientError(f"the token file {path} holds no token")


Args = argparse.Namespace


# -- output -----------------------------------------------------------------------

def _short(ref: str | None) -> str:
    return (ref or "-")[:12]


def _change_line(c: dict[str, Any]) -> str:
    by = f", approved by {c['approved_by']}" if c["approved_by"] else ""
    flags = "!" if c["expedite"] else " "
    return (f"{c['id']:>5} {c['state']:<9} {flags} {_short(c['ref'])}  {c['title']} "
            f"({c['author']}{by})")


def _host_line(h: dict[str, Any]) -> str:
    line = (f"  {h['name']:<12} wave {h['wave']}  {h['step']:<9} {h['outcome'] or 'running':<9}"
            f" {h['seconds']:6.1f}s")
    if h["outcome"] not in (None, "ok"):
        tail = (h["stderr_tail"] or "").strip().splitlines()
        line += f"  exit {h['exit_status']}" + (f": {tail[-1]}" if tail else "")
    return line


def _check_line(c: dict[str, Any]) -> str:
    return (f"  check {c['name']!r} wave {c['wave']} look {c['look']}: {c['verdict']}"
            f" - {c['reason']}")


def _event_line(e: dict[str, Any]) -> str:
    return (f"{e['at'][11:19]} {e['entity']} {e['entity_id']}: {e['from_state'] or '-'} -> "
            f"{e['to_state']} by {e['actor']}" + (f": {e['reason']}" if e["reason"] else ""))


def _push_line(p: dict[str, Any]) -> str:
    verdict = f" {p['verdict']}" if p["verdict"] else ""
    changes = ", ".join(str(c) for c in p["changes"])
    return (f"push {p['id']}: {p['state']}{verdict}, release {_short(p['release'])}, "
            f"change(s) {changes}" + (f" - {p['reason']}" if p["reason"] else ""))


def _bar(progress: dict[str, Any], width: int = 30) -> str:
    done, total = int(progress.get("hosts_done", 0)), max(int(progress.get("hosts_total", 0)), 1)
    filled = min(width, width * done // total)
    return (f"[{'#' * filled}{'.' * (width - filled)}] wave {progress.get('wave', '?')} "
            f"{done}/{total} hosts, {progress.get('phase', '')}")


# -- commands -----------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """A command that is one API call: what to send, and how to print the answer."""

    method: str
    path: Callable[[Args], str]
    lines: Callable[[Any], list[str]]
    body: Callable[[Args], dict[str, str]] | None = None

    def __call__(self, api: Api, args: Args, out: TextIO) -> int:
        answer = api.call(self.method, self.path(args),
                          None if self.body is None else self.body(args))
        text = [json.dumps(answer, indent=2)] if args.json else self.lines(answer)
        for line in text:
            print(line, file=out)
        return 0


def _given(**names: str) -> Callable[[Args], dict[str, str]]:
    """A body of the options given: field name -> attribute of the parsed arguments."""
    return lambda args: {k: getattr(args, a) for k, a in names.items() if getattr(args, a)}


def _status_lines(s: dict[str, Any]) -> list[str]:
    last = s["last_push"]
    rows = [("state", s["state"] + (f" ({s['reason']})" if s["reason"] else "")),
            ("push", "none running" if s["current_push"] is None else
             f"{s['current_push']}" + (f" {_bar(s['progress'])}" if s["progress"] else "")),
            ("next slot", s["next_slot"] or "none"),
            ("queue", ", ".join(f"{n} {k}" for k, n in s["queue"].items() if n) or "empty"),
            ("last push", "none" if last is None else
             f"{last['id']} {last['verdict'] or last['state']} at {last['finished_at']}"),
            ("version", s["version"])]
    return [f"{key:<10} {value}" for key, value in rows]


def _show_lines(push: dict[str, Any]) -> list[str]:
    return [_push_line(push),
            f"  started {push['started_at']}, finished {push['finished_at'] or '-'}",
            *(_host_line(h) for h in push["hosts"]), *(_check_line(c) for c in push["checks"]),
            *("  " + _event_line(e) for e in push["events"])]


def _change(change: dict[str, Any]) -> list[str]:
    return [_change_line(change)]


STATUS = Call("GET", lambda a: "/v1/status", _status_lines)
CHANGES = Call("GET", lambda a: f"/v1/changes?limit={a.limit}" + (
    f"&state={a.state}" if a.state else ""), lambda r: [_change_line(c) for c in r["changes"]])
ADD = Call("POST", lambda a: "/v1/changes", _change, lambda a: {
    "ref": a.ref, "title": a.message, **_given(author="author")(a),
    **({"rollback": "never"} if a.irreversible else {})})
APPROVE = Call("POST", lambda a: f"/v1/changes/{a.id}/approve", _change,
               _given(approver="approver"))
CANCEL = Call("POST", lambda a: f"/v1/changes/{a.id}/cancel", _change, _given(reason="message"))
EXPEDITE = Call("POST", lambda a: f"/v1/changes/{a.id}/expedite", _change, _given())
PUSH = Call("POST", lambda a: "/v1/pushes", lambda p: [
    _push_line(p), f"follow it with: pushguard watch {p['id']}"], _given())


def _queue(verb: str) -> Call:
    return Call("POST", lambda a: f"/v1/{verb}", lambda c: [
        f"queue {c['state']}: {c['reason']}"], _given(reason="message"))


PAUSE, RESUME = _queue("pause"), _queue("resume")
SHOW = Call("GET", lambda a: f"/v1/pushes/{a.push}", _show_lines)
HOSTS = Call("GET", lambda a: "/v1/hosts", lambda r: [
    f"{h['name']:<16} {_short(h['live_release']):<12}  {h['last_outcome'] or '-':<18}"
    f" push {h['last_push'] or '-'}" for h in r["hosts"]])


class _Watch:
    """Follows one push: prints each host step and check as it ends, and each event."""

    def __init__(self, api: Api, push_id: int, out: TextIO) -> None:
        self.api, self.push_id, self.out = api, push_id, out
        self.tty = out.isatty()
        self.after = 0
        self.hosts: set[int] = set()
        self.checks = 0
        self.shown = ""
        self.stage: tuple[object, object] | None = None

    def say(self, line: str) -> None:
        if self.tty and self.shown:  # the bar is on the last line: clear it first
            self.out.write("\r\x1b[K")
        print(line, file=self.out)
        if self.tty and self.shown:
            self.out.write(self.shown)
        self.out.flush()

    def progress(self, progress: dict[str, Any] | None) -> None:
        """Redraw the bar on a terminal; elsewhere, a line when the wave or phase moves."""
        if progress is None or progress.get("push") != self.push_id:
            return
        bar = _bar(progress)
        if self.tty and bar != self.shown:
            self.out.write("\r\x1b[K" + bar)
            self.out.flush()
            self.shown = bar
        stage = (progress.get("wave"), progress.get("phase"))
        if not self.tty and stage != self.stage:
            print(bar, file=self.out)
            self.stage = stage

    def tick(self) -> dict[str, Any] | None:
        """One poll; the push when it has finished."""
        found = self.api.call("GET", f"/v1/events?after={self.after}&push={self.push_id}")
        for event in found["events"]:
            self.say(_event_line(event))
        self.after = found["last_id"]
        push = self.api.call("GET", f"/v1/pushes/{self.push_id}")
        for i, host in enumerate(push["hosts"]):
            if host["outcome"] is not None and i not in self.hosts:
                self.hosts.add(i)
                self.say(_host_line(host))
        for check in push["checks"][self.checks:]:
            self.say(_check_line(check))
        self.checks = len(push["checks"])
        if push["finished_at"] is not None:
            return dict(push)
        self.progress(self.api.call("GET", "/v1/status")["progress"])
        return None


def _watch(api: Api, args: Args, out: TextIO) -> int:
    """Follow push `args.push`, or the running one, or the next one to start."""
    if not 0 < args.interval <= _MAX_INTERVAL:  # also false for nan
        raise UsageError(f"--interval: expected seconds between 0 and {_MAX_INTERVAL:g}, "
                         f"got {args.interval:g}")
    push_id = args.push
    waiting = False
    while push_id is None:
        push_id = api.call("GET", "/v1/status")["current_push"]
        if push_id is None:
            if not waiting:
                print("no push is running; waiting for the next one (Ctrl-C to stop)",
                      file=out, flush=True)
                waiting = True
            time.sleep(args.interval)
    watcher = _Watch(api, int(push_id), out)
    while (push := watcher.tick()) is None:
        time.sleep(args.interval)
    if watcher.tty:
        out.write("\r\x1b[K")
    print(_push_line(push), file=out)
    return 0 if push["state"] == "passed" else NOT_PASSED


Command = Callable[[Api, Args, TextIO], int]


def _run(command: Command, args: Args) -> int:
    try:
        api = Api(args.url or os.environ.get("PUSHGUARD_URL") or DEFAULT_URL, _token(args))
        return command(api, args, sys.stdout)
    except UsageError as exc:
        print(f"pushguard: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"pushguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the `pushguard` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the API (env PUSHGUARD_URL, default {DEFAULT_URL})")
    common.add_argument("--token", help="a bearer token (env PUSHGUARD_TOKEN; visible in ps)")
    common.add_argument("--token-file", help="a file holding the token "
                        "(env PUSHGUARD_TOKEN_FILE)")
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    def add(name: str, summary: str, command: Command) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=summary, description=summary, parents=[common])
        parser.set_defaults(func=lambda args: _run(command, args))
        return parser

    add("status", "the daemon's state, queue and last push", STATUS)
    p = add("changes", "list changes", CHANGES)
    p.add_argument("--state", choices=("pending", "approved", "pushing", "live", "reverted",
                                       "failed", "cancelled"))
    p.add_argument("--limit", type=int, default=100)
    p = add("add", "enqueue a commit as a change", ADD)
    p.add_argument("ref", metavar="REF")
    p.add_argument("-m", "--message", required=True, metavar="TITLE")
    p.add_argument("--author")
    p.add_argument("--irreversible", action="store_true", help="never roll this change back")
    p = add("approve", "approve a change", APPROVE)
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--as", dest="approver", metavar="NAME", help="default: the token's name")
    p = add("cancel", "cancel a change", CANCEL)
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("-m", "--message", metavar="WHY")
    p = add("expedite", "send a change out first, also while stopped (admin)", EXPEDITE)
    p.add_argument("id", type=int, metavar="ID")
    add("push", "push now: claim the next approved change and start a push", PUSH)
    for name, summary, call in (("pause", "stop the line", PAUSE),
                                ("resume", "restart it; also clears a halt (admin)", RESUME)):
        p = add(name, summary, call)
        p.add_argument("-m", "--message", required=True, metavar="WHY")
    p = add("show", "one push: hosts, checks and events", SHOW)
    p.add_argument("push", type=int, metavar="PUSH")
    add("hosts", "each host's live release and last outcome", HOSTS)
    p = add("watch", "follow a push live (default: the running or next one)", _watch)
    p.add_argument("push", type=int, nargs="?", metavar="PUSH")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

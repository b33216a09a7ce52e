"""The story the demo plays, step by step, through the REST API.

1. Three changes are added (two harmless ones, then the one that breaks 30 %
   of the checkouts); they are approved once the guard has a baseline.
2. The daemon pushes them one per slot: the harmless ones pass; the bad one
   fails on the canary or the fleet and the queue halts with the reason,
   and the push record holds the evidence.
3. Once the guard's baseline window holds only the incident (the fix is
   judged against it), a fix is added, approved and expedited: it goes out
   although the queue is halted, passes, and the halt clears by itself.

`Story.play()` checks every step as it happens and returns a `Report`: one
line per expectation, `ok` only if all held. A step that did not happen
within its time ends the story early (the report says which). The story
never sleeps for a fixed time: it waits on conditions read from the API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from daemon.client import Api, ClientError
from daemon.tomlread import parse_duration
from demo import repo
from demo.config import Timings
from demo.events import EventTail
from demo.screen import Screen
from demo.traffic import Traffic, summary

T = TypeVar("T")
DONE = ("live", "failed", "reverted", "cancelled")
TRAFFIC_EVERY = 20.0  # seconds between traffic lines on the screen


class StoryError(Exception):
    """A step did not happen as told."""


@dataclass
class Report:
    lines: list[tuple[bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.lines) and all(ok for ok, _ in self.lines)

    def expect(self, ok: bool, text: str) -> None:
        self.lines.append((ok, text))
        if not ok:
            raise StoryError(text)


def seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


class Story:
    """Plays the story against the daemon at `url` (see the module docstring)."""

    def __init__(self, *, url: str, tokens: dict[str, str], refs: dict[str, str],
                 timings: Timings, screen: Screen, traffic: Traffic,
                 traffic_age: Callable[[], float], hints: dict[str, list[str]],
                 token_files: dict[str, str]) -> None:
        self.deploy = Api(url, tokens["deploy"])
        self.admin = Api(url, tokens["admin"])
        self.read = Api(url, tokens["read"])
        self.refs = refs
        self.timings = timings
        self.screen = screen
        self.traffic = traffic
        self.traffic_age = traffic_age
        self.hints = hints
        self.token_files = token_files
        self.tail = EventTail(self.read, screen)
        self.report = Report()
        self.changes: dict[str, int] = {}
        self._traffic_shown = time.monotonic()

    # -- the story ------------------------------------------------------------------

    def play(self) -> Report:
        self.tail.start()
        try:
            self._play()
        except StoryError as exc:
            if not self.report.lines or self.report.lines[-1][1] != str(exc):
                self.report.lines.append((False, str(exc)))
        except ClientError as exc:
            self.report.lines.append((False, f"the API refused a step: {exc}"))
        finally:
            self.tail.poll()
            self.tail.stop()
        return self.report

    def _play(self) -> None:
        say = self.screen.say
        say("step", "three changes are added to the queue: two harmless ones, then one that "
                    "breaks 30% of the checkouts")
        self._show_call("deploy", "POST", "/v1/changes", {
            "ref": self.refs["catalog"][:12], "title": repo.title("catalog")})
        for key in ("catalog", "receipt", "bad"):
            self.changes[key] = self._add(key)
        self._wait_for_baseline()
        say("step", "a reviewer approves them; the daemon pushes one change per slot "
                    f"(every {self.timings.every}): canary web1 first, bake, then the rest")
        self._show_call("deploy", "POST", f"/v1/changes/{self.changes['catalog']}/approve", {})
        for key in ("catalog", "receipt", "bad"):
            self.deploy.call("POST", f"/v1/changes/{self.changes[key]}/approve",
                             {"approver": "reviewer"})
        for key in ("catalog", "receipt"):
            push = self._until_pushed(key)
            self.report.expect(push["state"] == "passed" and push["verdict"] == "pass",
                               f"push {push['id']} ({repo.title(key)}) passed: "
                               f"{push['reason']}")
        bad = self._until_pushed("bad")
        self.report.expect(push_failed(bad), f"push {bad['id']} of the bad change failed "
                                             f"({bad['verdict']}): {bad['reason'][:300]}")
        self._expect_evidence(bad)
        status = self._until(lambda: self._status_if("halted"), self._push_time(),
                             "the queue to halt")
        self.report.expect(f"push {bad['id']}" in status["reason"],
                           f"queue halted: {status['reason'][:300]}")
        self._show_halt(bad, status)
        self._fix_forward(bad)

    def _fix_forward(self, bad: dict[str, Any]) -> None:
        say = self.screen.say
        self._wait_for_incident_baseline(bad)
        say("step", f"a developer commits a fix ({self.refs['fix'][:12]}); it is added, "
                    "approved and expedited: an expedited change goes out even while the "
                    "queue is halted")
        self.changes["fix"] = self._add("fix")
        self.deploy.call("POST", f"/v1/changes/{self.changes['fix']}/approve",
                         {"approver": "reviewer"})
        self._show_call("admin", "POST", f"/v1/changes/{self.changes['fix']}/expedite", {})
        self.admin.call("POST", f"/v1/changes/{self.changes['fix']}/expedite", {})
        fix = self._until_pushed("fix", extra=seconds(self.timings.baseline))
        self.report.expect(fix["state"] == "passed" and fix["verdict"] == "pass"
                           and fix["trigger"] == "expedite",
                           f"push {fix['id']} of the fix ({fix['trigger']}) {fix['state']}: "
                           f"{fix['reason']}")
        status = self._until(lambda: self._status_if("running"), 30, "the halt to clear")
        self.report.expect("expedited fix" in status["reason"],
                           f"halt cleared: {status['reason']}")
        hosts = self.read.call("GET", "/v1/hosts")
        live = {h["name"]: h.get("live_release") for h in hosts.get("hosts", hosts)}
        self.report.expect(set(live.values()) == {self.refs["fix"]},
                           f"every host runs the fix {self.refs['fix'][:12]}: "
                           + ", ".join(f"{k} {str(v)[:12]}" for k, v in sorted(live.items())))
        say("ok", "the story is complete: good changes went out, the bad one was caught and "
                  "halted the line, and the fix went forward and cleared the halt")

    # -- steps ----------------------------------------------------------------------

    def _add(self, key: str) -> int:
        change = self.deploy.call("POST", "/v1/changes", {
            "ref": self.refs[key], "title": repo.title(key), "author": repo.author(key)})
        return int(change["id"])

    def _wait_for_baseline(self) -> None:
        need = seconds(self.timings.baseline) + 2 * seconds(self.timings.look_every)
        left = need - self.traffic_age()
        if left > 0:
            self.screen.say("step", f"waiting {left:.0f}s until the guard has a baseline: "
                                    f"it compares each push against the {self.timings.baseline}"
                                    " of metrics before it")
        self._until(lambda: self.traffic_age() >= need, need + 5, "a baseline of metrics")

    def _wait_for_incident_baseline(self, bad: dict[str, Any]) -> None:
        """Give the guard a baseline that lies wholly after the bad release went live.

        The fix's push is judged against the baseline window before it; one that
        still holds the healthy minutes before the incident shows a trend and no
        clear level, and the guard would call the fix inconclusive.
        """
        live = [e for e in bad["events"] if e["entity"] == "push"
                and e["to_state"] == "baking" and str(e["reason"]).startswith("wave 1 live")]
        if not live:
            return
        went_bad = datetime.fromisoformat(live[0]["at"]).timestamp()
        ready = went_bad + seconds(self.timings.baseline) + 2 * seconds(self.timings.look_every)
        left = ready - time.time()
        if left > 0:
            self.screen.say("step", f"the team reads the evidence and writes a fix; meanwhile "
                                    f"the line stays halted. The fix will be judged against "
                                    f"the {self.timings.baseline} before its push, so the demo "
                                    f"lets that window fill with the incident: {left:.0f}s")
        self._until(lambda: time.time() >= ready, left + 5, "the incident's baseline")

    def _until_pushed(self, key: str, extra: float = 0.0) -> dict[str, Any]:
        """Wait until the change `key` is done; its push (with checks), shown on screen."""
        change_id = self.changes[key]
        self._until(lambda: self._change_done(change_id), self._push_time() * 3 + extra,
                    f"change {change_id} ({repo.title(key)}) to go out")
        push = self._until(lambda: self._push_of(change_id), 10, f"the push of change {change_id}")
        self._show_checks(push)
        return push

    def _expect_evidence(self, push: dict[str, Any]) -> None:
        failed = [c for c in push["checks"] if c["verdict"] == "fail"]
        self.report.expect(bool(failed) and all(c["queries"] and c["before"] and c["after"]
                                                for c in failed),
                           f"push {push['id']} holds the evidence: " + ", ".join(
                               f"{c['name']} (wave {c['wave']}, look {c['look']}, z="
                               f"{_num(c['statistic'])} >= {_num(c['threshold'])})"
                               for c in failed))

    # -- reading the API ------------------------------------------------------------

    def _change_done(self, change_id: int) -> bool:
        change = self.read.call("GET", f"/v1/changes/{change_id}")
        return change["state"] in DONE

    def _push_of(self, change_id: int) -> dict[str, Any] | None:
        listing = self.read.call("GET", "/v1/pushes?limit=50")
        for push in listing.get("pushes", []):
            if change_id in push["changes"] and push["state"] not in ("aborted", "planned",
                                                                        "deploying", "baking"):
                detail: dict[str, Any] = self.read.call("GET", f"/v1/pushes/{push['id']}")
                return detail
        return None

    def _status_if(self, state: str) -> dict[str, Any] | None:
        status: dict[str, Any] = self.read.call("GET", "/v1/status")
        return status if status["state"] == state else None

    def _push_time(self) -> float:
        """Generous time for one push: two bakes, deploys and a slot."""
        return 2 * (seconds(self.timings.bake) + 30) + seconds(self.timings.every) + 30

    def _until(self, what: Callable[[], T | None], timeout: float, why: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            self.tail.poll()
            value = what()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StoryError(f"timed out after {timeout:.0f}s waiting for {why}")
            self._show_traffic()
            time.sleep(0.5)  # polling the API for a condition

    # -- the screen -----------------------------------------------------------------

    def _show_call(self, role: str, method: str, path: str, body: dict[str, str]) -> None:
        """The curl command that does what the story does next."""
        token = f"$(cat {self.token_files[role]})"
        data = f" -d '{json.dumps(body)}'" if body else ""
        self.screen.say("cmd", f"curl -s -X {method} -H \"Authorization: Bearer {token}\""
                               f"{data} {self.deploy.url}{path}")

    def _show_traffic(self) -> None:
        now = time.monotonic()
        if self.screen.headless or now - self._traffic_shown < TRAFFIC_EVERY:
            return
        self.screen.say("traffic", summary(self.traffic.snapshot(), now - self._traffic_shown))
        self._traffic_shown = now

    def _show_checks(self, push: dict[str, Any]) -> None:
        last: dict[tuple[int, str], dict[str, Any]] = {}
        for check in push["checks"]:
            if check["wave"] > 0:
                last[check["wave"], check["name"]] = check
        lines = [f"wave {wave} look {c['look']}: {c['verdict']:<12} {c['name']}: "
                 f"{c['reason']}" for (wave, _), c in sorted(last.items())]
        self.screen.block(lines or ["(no check results)"])

    def _show_halt(self, bad: dict[str, Any], status: dict[str, Any]) -> None:
        say = self.screen.say
        say("bad", f"the line is stopped. GET /v1/status says: {status['state']}: "
                   f"{status['reason'][:400]}")
        for check in (c for c in bad["checks"] if c["verdict"] == "fail"):
            say("note", f"evidence of push {bad['id']}: {check['name']} (wave {check['wave']}, "
                        f"look {check['look']}): {check['reason']}")
            before, after = check["before"], check["after"]
            self.screen.block([f"before {before.get('window')}: {_value(before)}",
                               f"after  {after.get('window')}: {_value(after)}",
                               f"query: {check['queries'][0] if check['queries'] else '-'}"])
            break
        self.screen.block([line.replace("{push}", str(bad["id"]))
                           for line in self.hints.get("halt", [])], kind="cmd")


def push_failed(push: dict[str, Any]) -> bool:
    return bool(push["state"] == "failed" and push["verdict"] == "fail")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _value(side: dict[str, Any]) -> str:
    value, unit = side.get("value"), side.get("unit")
    if not isinstance(value, int | float):
        return "-"
    shown = f"{100 * value:.2f}%" if unit == "ratio" else f"{value:.4g} {unit or ''}"
    events, exposure = side.get("events"), side.get("exposure")
    if isinstance(events, int | float) and isinstance(exposure, int | float):
        shown += f" ({events:.0f} of {exposure:.0f})" if unit == "ratio" else \
            f" ({events:.0f} in {exposure:.0f}s)"
    return shown

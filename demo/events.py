"""Follow the daemon's audit log (`GET /v1/events?after=`) and show each event.

`EventTail(api, screen).start()` polls every `interval` seconds from a
thread and prints one line per event as it arrives (`after` is the last
event id seen). A poll that fails is shown once, and
once more when the API answers again. `describe(event)` is the line of one
event. When the daemon postpones a push (it will not push into a degraded
service) and then retries it every few seconds, the first postponement is
shown and the retries' events are not, until a push starts deploying.
"""

from __future__ import annotations

import threading
from typing import Any

from daemon.client import Api, ClientError
from demo.screen import Screen

Event = dict[str, Any]
REASON_WIDTH = 240


def _short(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(event: Event) -> tuple[str, str]:
    """(screen kind, line) for one audit-log event."""
    entity, ident = event["entity"], event["entity_id"]
    old, new, reason = event.get("from_state"), event["to_state"], event.get("reason") or ""
    actor = event.get("actor") or "?"
    if entity == "queue":
        kind = "bad" if new == "halted" else "ok" if new == "running" else "event"
        return kind, f"queue {old} -> {new} ({actor}): {_short(reason, 600)}"
    if entity == "host":
        return "event", f"host {ident} now runs {str(new)[:12]} ({_short(reason)})"
    if entity == "push":
        kind = {"passed": "ok", "failed": "bad", "interrupted": "bad"}.get(new, "event")
        return kind, f"push {ident} {old or 'new'} -> {new}: {_short(reason)}"
    if old == new:
        return "event", f"{entity} {ident}: {_short(reason)} ({actor})"
    return "event", f"{entity} {ident} {old or 'new'} -> {new} ({actor}): {_short(reason)}"


def _retry_noise(event: Event) -> bool:
    """The events of one more postponed attempt: claim, back to approved, aborted."""
    new = event["to_state"]
    if event["entity"] == "push":
        return new in ("planned", "aborted")
    return event["entity"] == "change" and new in ("pushing", "approved") \
        and event.get("from_state") in ("approved", "pushing")


class EventTail:
    """Prints the audit log as it grows (see the module docstring)."""

    def __init__(self, api: Api, screen: Screen, interval: float = 0.5) -> None:
        self.api = api
        self.screen = screen
        self.interval = interval
        self.after = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._retrying = False
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="event tail", daemon=True)

    def start(self) -> EventTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> None:
        """Fetch and show the new events (also called by the story, to be up to date)."""
        with self._lock:
            try:
                answer = self.api.call("GET", f"/v1/events?after={self.after}&limit=500")
            except ClientError as exc:
                # once stopping, the daemon may already be gone (a second signal can cut
                # stop() short of joining this thread): that is not news
                if not self._failing and not self._stop.is_set():
                    self.screen.say("bad", f"cannot read the audit log: {exc}")
                self._failing = True
                return
            if self._failing:
                self.screen.say("ok", "the audit log answers again")
            self._failing = False
            for event in answer.get("events", []):
                self.after = max(self.after, int(event["id"]))
                self._show(event)

    def _show(self, event: Event) -> None:
        entity, new = event["entity"], event["to_state"]
        if entity == "push" and new == "deploying":
            self._retrying = False
        elif self._retrying and _retry_noise(event):
            return  # the daemon tries the same push again; said once already
        if entity == "push" and new == "aborted" and "postponed" in str(event.get("reason")):
            self._retrying = True
            self.screen.say("note", f"push {event['entity_id']} {_short(event['reason'])}")
            self.screen.say("note", "(the daemon tries again on its own; the retries are not "
                                    "shown one by one)")
            return
        kind, line = describe(event)
        self.screen.say(kind, line)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

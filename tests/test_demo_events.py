"""demo.events.EventTail: the audit log on the demo's screen."""

from __future__ import annotations

import io
from typing import Any

from daemon.client import Api, ClientError
from demo.events import EventTail
from demo.screen import Screen


class Down(Api):
    """An API that cannot be reached."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9", None)

    def call(self, method: str, path: str, body: dict[str, str] | None = None) -> Any:
        raise ClientError("cannot reach http://127.0.0.1:9: [Errno 111] Connection refused")


def test_an_unreachable_api_is_said_once_while_running_and_not_at_all_once_stopping() -> None:
    out = io.StringIO()
    tail = EventTail(Down(), Screen(out, headless=True))
    tail.poll()
    tail.poll()
    assert out.getvalue().count("cannot read the audit log") == 1

    out = io.StringIO()
    tail = EventTail(Down(), Screen(out, headless=True), interval=60.0).start()
    tail.stop()
    tail.poll()  # as the thread's last poll, when the daemon has stopped first
    assert out.getvalue() == ""

"""A stand-in chat room: receives the daemon's webhooks and shows their text.

`HookReceiver.start(url, show)` listens on the loopback host and port of
`url` (a `[[webhooks]] url` of the config) and calls `show(text)` with the
`text` field of every JSON body posted to it, answering 204. It returns
None (and listens nowhere) when `url` is not a loopback http:// URL or its
port is taken: the daemon then logs its failed deliveries, nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 65536


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], show: Callable[[str], None]) -> None:
        self.show = show
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        text = body.get("text") if isinstance(body, dict) else None
        self.server.show(str(text) if text else json.dumps(body)[:300])
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Not logged: `show` prints what matters."""


class HookReceiver:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="webhooks",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    @classmethod
    def start(cls, url: str, show: Callable[[str], None]) -> HookReceiver | None:
        parts = urlsplit(url)
        try:
            loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
        except ValueError:
            loopback = False
        if parts.scheme != "http" or not loopback or parts.port is None:
            return None
        try:
            server = _Server((parts.hostname or "", parts.port), show)
        except OSError:
            return None
        receiver = cls(server)
        receiver._thread.start()
        return receiver

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._server.server_close()

#!/usr/bin/env python3
"""The demo shop: a checkout service in one file, Python standard library only.

    GET  /health      200 {"status": "ok", "release": ..., "pid": ...}
    POST /checkout    body {"item": ID, "qty": N} (GET /checkout?item=ID&qty=N works too)
                      200 {"order": ..., "total_cents": ...}; 400 unknown item or bad
                      quantity; 502 the payment provider declined; 500 a bug

`python3 shop.py --host H --port P --release ID --pid-file FILE` listens on H:P
with SO_REUSEPORT, so a new release can start beside the old one; it writes
its pid to FILE once it listens (that is the "I am up" signal bin/activate
waits for); on SIGTERM it stops accepting, finishes the requests in flight
and exits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import payments  # noqa: E402  (the release's own module, next to this file)

CATALOG: dict[str, int] = json.loads((HERE / "catalog.json").read_text())["prices_cents"]
MAX_BODY = 4096


class Shop(ThreadingHTTPServer):
    """The HTTP server; handler threads are joined on close (graceful stop)."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # the listen backlog: bursts wait here, not in SYN retries

    def __init__(self, address: tuple[str, int], release: str) -> None:
        self.release = release
        self.orders = itertools.count(1)
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # the old release still listens on this port while the new one starts
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    server: Shop
    server_version = "demo-shop/1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self.answer(200, {"status": "ok", "release": self.server.release,
                              "pid": os.getpid()})
        elif url.path == "/checkout":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            self.checkout(query)
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/checkout":
            self.answer(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.answer(413, {"error": "body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.answer(400, {"error": "body is not JSON"})
            return
        self.checkout(body if isinstance(body, dict) else {})

    def checkout(self, order: dict[str, Any]) -> None:
        item = str(order.get("item", ""))
        try:
            qty = int(order.get("qty", 1))
        except (TypeError, ValueError):
            qty = 0
        if item not in CATALOG or not 1 <= qty <= 10:
            self.answer(400, {"error": "unknown item or bad quantity"})
            return
        total = CATALOG[item] * qty
        try:
            charge = payments.charge(total)
        except payments.Declined as exc:
            self.answer(502, {"error": str(exc)})
            return
        except Exception as exc:  # a bug: answer 500 as any web framework would
            self.answer(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
            return
        self.answer(200, {"order": next(self.server.orders), "total_cents": total,
                          "charge": charge})

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the traffic generator measures them."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--release", default=HERE.name)
    parser.add_argument("--pid-file", type=Path, required=True)
    args = parser.parse_args()
    # blocked here, and so in every thread started from here on: the signals stay
    # pending until sigwait below takes them, whichever thread the kernel picked
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = Shop((args.host, args.port), args.release)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    args.pid_file.write_text(f"{os.getpid()}\n")
    print(f"shop {args.release[:12]} (pid {os.getpid()}) listening on "
          f"{args.host}:{args.port}", flush=True)
    signal.sigwait(stop)
    server.shutdown()
    serving.join()
    server.server_close()
    print(f"shop {args.release[:12]} (pid {os.getpid()}) stopped", flush=True)


if __name__ == "__main__":
    main()

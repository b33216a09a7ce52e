#!/usr/bin/env python3
"""The demo shop: a checkout service in one file, Python standard library only.

    GET  /health      200 {"status": "ok", "release": ..., "pid": ...}
    POST /checkout    body {"item": ID, "qty": N} (GET /checkout?item=ID&qty=N works too)
                      200 {"order": ..., "total_cents": ...}; 400 unknown item or bad
                      quantity; 502 the payment provider declined; 500 a bug

`python3 shop.py --host H --port P --release ID --pid-file FILE --handoff SOCK`
listens on H:P; it writes its pid to FILE once it listens (that is the "I am
up" signal bin/activate waits for); on SIGTERM it stops accepting, finishes the
requests in flight and exits.

A new release starts beside the old one and takes over the old one's
listening socket instead of opening its own: the running shop hands it out
over the Unix socket SOCK (SCM_RIGHTS), so both accept from one queue while
they overlap and the old one's exit drops nothing. With two sockets on the
port (SO_REUSEPORT), the connections that the kernel had already queued on
the old socket were reset when it closed: about one request per switch.
Without a running shop (the first start, or after a crash) it binds H:P
itself (still with SO_REUSEPORT, so that it can start beside a shop that
does not hand off).
"""

from __future__ import annotations

import argparse
import contextlib
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

    def __init__(self, address: tuple[str, int], release: str,
                 inherited: socket.socket | None) -> None:
        self.release = release
        self.orders = itertools.count(1)
        super().__init__(address, Handler, bind_and_activate=False)
        if inherited is not None:
            self.socket.close()
            self.socket = inherited
        else:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise
        # shared with the other release while both run: whichever loses the race
        # for a connection gets EAGAIN (ignored by socketserver) instead of blocking
        self.socket.setblocking(False)

    def server_bind(self) -> None:
        # a shop that does not hand its socket over may still listen on this port
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def inherit(handoff: Path, address: tuple[str, int]) -> socket.socket | None:
    """The running shop's listening socket on `address`, handed over through the Unix
    socket `handoff`; None when no shop runs there (or it listens elsewhere)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            unix.settimeout(5.0)
            unix.connect(str(handoff))
            _, fds, _, _ = socket.recv_fds(unix, 16, 1)
    except OSError:  # no file, nobody listening (a crashed shop's file), a timeout
        return None
    if not fds:
        return None
    inherited = socket.socket(fileno=fds[0])
    if inherited.getsockname()[:2] != address:
        inherited.close()
        return None
    return inherited


class Handoff:
    """Hands this shop's listening socket to the next release (module doc): a Unix
    socket at `path`, bound beside it and renamed over it, so the path always names a
    shop that can answer."""

    def __init__(self, path: Path, listener: socket.socket) -> None:
        self.path = path
        self.listener = listener
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fresh = path.with_name(f"{path.name}.{os.getpid()}")
        fresh.unlink(missing_ok=True)
        self.unix.bind(str(fresh))
        self.unix.listen(4)
        os.replace(fresh, path)
        self.identity = _identity(path)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.unix.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the new shop gave up waiting
                socket.send_fds(conn, [b"L"], [self.listener.fileno()])

    def close(self) -> None:
        """Stop handing out; remove the path unless the next release owns it now."""
        if _identity(self.path) == self.identity:
            self.path.unlink(missing_ok=True)
        self.unix.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
    parser.add_argument("--handoff", type=Path,
                        help="Unix socket through which releases hand over the listener")
    args = parser.parse_args()
    # blocked here, and so in every thread started from here on: the signals stay
    # pending until sigwait below takes them, whichever thread the kernel picked
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    address = (args.host, args.port)
    inherited = inherit(args.handoff, address) if args.handoff else None
    server = Shop(address, args.release, inherited)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    handoff = None
    if args.handoff:
        try:
            handoff = Handoff(args.handoff, server.socket)
        except OSError as exc:  # a path too long for a Unix socket, say: serve anyway
            print(f"shop {args.release[:12]}: cannot hand the listener over through "
                  f"{args.handoff} ({exc}); the next release will bind its own", flush=True)
    args.pid_file.write_text(f"{os.getpid()}\n")
    how = "took over the listener on" if inherited is not None else "listening on"
    print(f"shop {args.release[:12]} (pid {os.getpid()}) {how} {args.host}:{args.port}",
          flush=True)
    signal.sigwait(stop)
    if handoff is not None:
        handoff.close()
    server.shutdown()
    serving.join()
    server.server_close()  # the listener lives on in the next release, if one took it
    print(f"shop {args.release[:12]} (pid {os.getpid()}) stopped", flush=True)


if __name__ == "__main__":
    main()

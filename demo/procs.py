"""The processes the demo starts, and how every one of them ends.

- `become_subreaper()`: the shops that bin/activate detaches with `setsid`
  are orphans once their SSH session ends; with this they are re-parented to
  the demo process instead of init, so `descendants()` finds every one.
- `Ledger`: a file of `pid start-time name` lines, one per process the demo
  starts. A later run calls `end_leftovers()` first: it ends every listed
  process that still runs with the same start time (a recycled pid is never
  hit), with its descendants, and every shop named by a pid file.
- `Reaper`: a thread that collects orphans that died (zombies re-parented to
  the demo), but never a child the demo waits for itself (`keep()`).
- `end(pids)`: SIGTERM, wait up to a deadline, then SIGKILL.
- `hold_lock(path)`: one demo at a time; only a run that holds the lock may
  end an earlier run's leftovers.

Processes are only ever signalled by pid; nothing here matches names.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants come to this process; False where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None if it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                out[int(entry)] = (int(fields[1]), fields[0])
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, parents before their children."""
    children: dict[int, list[int]] = {}
    for child, (parent, state) in _table().items():
        if state not in ("Z", "X"):
            children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found.extend(kids)
        todo.extend(kids)
    return found


def end(pids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM each of `pids`, wait up to `grace` seconds for all to end, SIGKILL the rest."""
    pending = [pid for pid in pids if running(pid)]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the processes' exit
        pending = [pid for pid in pending if running(pid)]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Ledger:
    """The pid file of one demo run (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, name: str, pid: int) -> None:
        """Record `pid` (started by the demo) under `name`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(f"{pid} {start_time(pid) or 0} {name}\n")

    def alive(self) -> list[tuple[int, str]]:
        """(pid, name) of the recorded processes that still run as recorded."""
        out: list[tuple[int, str]] = []
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            pid_text, started, name = [*line.split(maxsplit=2), "", "", ""][:3]
            if not pid_text.isdigit():
                continue
            pid = int(pid_text)
            if running(pid) and str(start_time(pid)) == started:
                out.append((pid, name))
        return out


def hold_lock(path: Path) -> IO[bytes] | None:
    """An exclusive lock on `path` for as long as the returned file stays open;
    None if another process holds it. The file records the holder's pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.open("ab+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None
    file.truncate(0)
    file.write(f"{os.getpid()}\n".encode())
    file.flush()
    return file


def shop_pids(pid_files: Iterable[Path]) -> list[int]:
    """The running shops named by `pid_files` (only processes running shop.py)."""
    out = []
    for file in pid_files:
        with contextlib.suppress(OSError, ValueError):
            pid = int(file.read_text().strip())
            if running(pid) and "shop.py" in command_line(pid):
                out.append(pid)
    return out


def end_leftovers(ledger: Ledger, pid_files: Iterable[Path]) -> list[str]:
    """End what a previous run left running; one line per process ended."""
    found = ledger.alive()
    pids = [pid for pid, _ in found]
    lines = [f"{name} (pid {pid})" for pid, name in found]
    for pid in list(pids):
        pids.extend(descendants(pid))
    shops = shop_pids(pid_files)
    lines += [f"shop (pid {pid})" for pid in shops if pid not in pids]
    end([*pids, *shops])
    return lines


class Reaper:
    """Collects orphans that died; never a pid that `keep()` returns (see the module doc)."""

    def __init__(self, keep: Callable[[], set[int]], interval: float = 0.5) -> None:
        self._keep = keep
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def reap(self) -> None:
        me, keep = os.getpid(), self._keep()
        for pid, (parent, state) in _table().items():
            if parent == me and state == "Z" and pid not in keep:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.reap()

"""`make demo-check`: the demo's whole story, headless, and nothing left running after it.

Runs the entry point of `make demo-check` (`python -m demo --check`) as a
child, which starts real sshd hosts, influxd, the shops and the daemon, plays
the story and stops everything. The test passes only if the story happened
(exit status 0, the report says so) and no process the demo started is still
running afterwards: an sshd, influxd or daemon whose command line names this
checkout's var/demo, or a shop.

Skipped when a `make demo` holds the demo's lock (it owns the same ports), or
when not root (the hosts need mount namespaces and port 22xx sshd).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.repo import title

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(420)


def _command_lines() -> dict[tuple[int, str], str]:
    """(pid, start time) -> command line of every process."""
    out: dict[tuple[int, str], str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry), fields[19]] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return out


def _demo_processes() -> dict[tuple[int, str], str]:
    """The processes that look like ones the demo starts."""
    mine = str(ROOT / "var" / "demo") + "/"
    return {key: line for key, line in _command_lines().items()
            if (mine in line and any(name in line for name in ("sshd", "influxd", "pushguard")))
            or ("shop.py" in line and "--pid-file" in line)}


def _demo_running() -> bool:
    lock = ROOT / "var" / "demo.lock"
    if not lock.exists():
        return False
    with lock.open("rb") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's hosts need root")
def test_demo_check_plays_the_story_and_leaves_nothing_running() -> None:
    if _demo_running():
        pytest.skip("a `make demo` is running on this checkout (it owns the demo's ports)")
    before = set(_demo_processes())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "demo", "--check"], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=400, check=False)
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"demo-check failed ({done.returncode}):\n{output[-8000:]}"
    assert "every step happened" in output
    report = output[output.rindex("report ("):]
    steps = [rf"ok  push \d+ \({re.escape(title('catalog'))}\) passed",
             rf"ok  push \d+ \({re.escape(title('receipt'))}\) passed",
             r"ok  push (\d+) of the bad change failed", r"ok  push \d+ holds the evidence",
             r"ok  queue halted: push \d+ failed", r"ok  push \d+ of the fix \(expedite\) passed",
             r"ok  halt cleared", r"ok  every host runs the fix"]
    for step in steps:
        assert re.search(step, report), f"no {step!r} in the report:\n{report}"
    left = {key: line for key, line in _demo_processes().items() if key not in before}
    assert not left, "left running after demo-check:\n" + "\n".join(
        f"{pid}: {line}" for (pid, _), line in left.items())
    print(f"demo-check took {took:.0f}s")

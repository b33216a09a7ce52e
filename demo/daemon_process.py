"""The pushguard daemon as a child of the demo: `pushguard serve -c CONFIG`.

`DaemonProcess.start(config, log, cwd, api_url)` starts this virtualenv's
`pushguard serve` in its own session (Ctrl-C reaches the demo, which stops
the daemon in order), with stdout and stderr appended to `log`.
`wait_ready()` returns once `GET {api_url}/readyz` answers 200, or raises
`DemoError` with the log's tail if the daemon exits or is not ready within
READY_TIMEOUT. `stop()`
sends SIGTERM (the daemon lets the current host step end and records an
unfinished push as interrupted), waits up to STOP_GRACE, then kills.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from demo.errors import DemoError

READY_TIMEOUT = 60.0
STOP_GRACE = 40.0


def pushguard_command() -> list[str]:
    """The pushguard command of this virtualenv."""
    script = Path(sys.executable).parent / "pushguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon"]


class DaemonProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, api_url: str) -> None:
        self.process = process
        self.log = log
        self.api_url = api_url

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, config: Path, log: Path, cwd: Path, api_url: str) -> DaemonProcess:
        with log.open("ab") as out:
            process = subprocess.Popen([*pushguard_command(), "serve", "-c", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, cwd=cwd,
                                       start_new_session=True)
        return cls(process, log, api_url)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._ready():
            if self.process.poll() is not None:
                raise DemoError(f"the daemon exited with {self.process.returncode}:\n"
                                f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"the daemon was not ready within {READY_TIMEOUT:g}s:\n"
                                f"{self.log_tail()}")
            time.sleep(0.2)  # polling /readyz

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

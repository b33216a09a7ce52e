"""What the demo prints: one line per step, with the time, from any thread.

`Screen.say(kind, text)` prints `HH:MM:SS  <mark> text`; marks tell the kind
of line at a glance (`step`, `ok`, `bad`, `note`, `event`, `hook`,
`traffic`, `cmd`). Colour only on a terminal (and never with NO_COLOR).
`headless` screens (make demo-check) leave out the follow-along lines (`cmd`
and `traffic`). `block(lines)` prints indented lines under the last one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

MARKS = {"step": ("==>", "1;36"), "ok": (" ok", "32"), "bad": ("!!!", "1;31"),
         "note": ("  -", "0"), "event": ("  >", "33"), "hook": ("  @", "35"),
         "traffic": ("  ~", "2"), "cmd": ("  $", "2")}
FOLLOW_ALONG = ("cmd", "traffic")


class Screen:
    def __init__(self, out: TextIO = sys.stdout, *, headless: bool = False) -> None:
        self.out = out
        self.headless = headless
        self.colour = out.isatty() and not os.environ.get("NO_COLOR")
        self._lock = threading.Lock()

    def say(self, kind: str, text: str) -> None:
        if self.headless and kind in FOLLOW_ALONG:
            return
        mark, colour = MARKS.get(kind, ("   ", "0"))
        stamp = time.strftime("%H:%M:%S")
        if self.colour:
            mark = f"\033[{colour}m{mark}\033[0m"
        with self._lock:
            print(f"{stamp} {mark} {text}", file=self.out, flush=True)

    def block(self, lines: list[str], kind: str = "note") -> None:
        if self.headless and kind in FOLLOW_ALONG:
            return
        with self._lock:
            for line in lines:
                print(f"             {line}", file=self.out)
            self.out.flush()

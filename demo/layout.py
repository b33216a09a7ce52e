"""Where the demo keeps its files: under `var/demo/` of the checkout.

The SSH key files, the tokens file, the source repository and the daemon's
state are where the root config.toml names them (`var/...`); everything else
the demo writes is here, and each run starts by wiping `var/demo/`. The run
lock sits beside it, so that wiping never removes a lock that is held.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path  # the checkout

    @property
    def root_config(self) -> Path:
        return self.root / "config.toml"

    @property
    def demo(self) -> Path:
        return self.root / "var" / "demo"

    @property
    def run_lock(self) -> Path:
        return self.root / "var" / "demo.lock"

    @property
    def config(self) -> Path:
        return self.demo / "config.toml"

    @property
    def ledger(self) -> Path:
        return self.demo / "pids"

    @property
    def fleet(self) -> Path:
        return self.demo / "fleet"

    @property
    def influx(self) -> Path:
        return self.demo / "influxd"

    @property
    def work_tree(self) -> Path:
        return self.demo / "app-work"

    @property
    def daemon_log(self) -> Path:
        return self.demo / "pushguard.log"

    def token_file(self, role: str) -> Path:
        """A file holding only the token of `role` (for PUSHGUARD_TOKEN_FILE and curl)."""
        return self.demo / f"{role}.token"

    def shop_pid_files(self) -> list[Path]:
        return sorted(self.fleet.glob("hosts/*/app/shared/shop.pid*"))

    def rel(self, path: Path) -> str:
        """`path` relative to the checkout when it is inside it, for the screen."""
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(self.root.resolve()))
        return str(path)

"""Config files for daemon tests: the root config.toml's shape, test timings.

Plain module (no pytest), so the demo can reuse it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Section = Mapping[str, Any]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(name: str, values: Section, array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    return "\n".join([head, *(f"{k} = {_value(v)}" for k, v in values.items())]) + "\n"


def write_tokens(path: Path) -> dict[str, str]:
    """A tokens file with one token per role; returns role -> token."""
    tokens = {role: secrets.token_hex(16) for role in ("read", "deploy", "admin")}
    path.write_text("".join(f"{role}-user {role} {token}\n" for role, token in tokens.items()))
    path.chmod(0o600)
    return tokens


def write_config(path: Path, *, state_dir: Path, repo: Path, hosts: Sequence[Section],
                 ssh: Section, influx_url: str, database: str = "shop",
                 api_port: int = 0, tokens_file: Path, checks: Sequence[Section] = (),
                 deploy: Section | None = None, guard: Section | None = None,
                 schedule: Section | None = None, webhooks: Sequence[Section] = ()) -> Path:
    """Write a complete config with fast test timings; any section can be overridden."""
    parts = [
        _table("daemon", {"state_dir": str(state_dir), "timezone": "UTC"}),
        _table("api", {"listen": f"127.0.0.1:{api_port}", "tokens_file": str(tokens_file),
                       "read_needs_token": False}),
        _table("schedule", {"days": "mon-sun", "window": "00:00-24:00", "every": "1h",
                            "jitter": "0s", "freezes": [], "batch_size": 1,
                            **(schedule or {})}),
        _table("source", {"repo": str(repo)}),
        _table("deploy", {"path": "/srv/app", "keep_releases": 3,
                          "activate": "\"$PUSHGUARD_PATH/current/bin/activate\"",
                          "canary": 1, "concurrency": 10, "host_timeout": "20s",
                          "command_timeout": "10s", "on_regression": "halt",
                          **(deploy or {})}),
        _table("ssh", ssh),
        *(_table("hosts", host, array=True) for host in hosts),
        _table("influxdb", {"api": "v1", "url": influx_url, "database": database,
                            "timeout": "2s"}),
        _table("guard", {"baseline": "20s", "warmup": "1s", "bake": "4s",
                         "look_every": "1s", "false_alarm": 0.01, "seasonal": "off",
                         "on_inconclusive": "halt",
                         # most tests push without a guard; the config must say so
                         "allow_unguarded": not any(c.get("critical", True) for c in checks),
                         **(guard or {})}),
        *(_table("checks", check, array=True) for check in checks),
        *(_table("webhooks", hook, array=True) for hook in webhooks),
    ]
    path.write_text("\n".join(parts))
    return path

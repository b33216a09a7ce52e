"""The demo's config file and tokens.

`write(root_config, target, timings, deploy_path)` writes `target` as a copy
of the root config.toml with only these lines changed, each marked
`# demo: ...`:

- `[schedule]` days, window, every, jitter and freezes: pushes at any hour,
  every `timings.every` (the root file keeps production timings);
- `[guard]` baseline, warmup, bake and look_every: `timings`; on_inconclusive
  "extend:" one more bake (see DEMO below);
- relative paths (`state_dir`, `tokens_file`, `repo`, `key_file`,
  `known_hosts`, `password_file`, `token_file`) made absolute, since the copy
  lives in another folder but must name the same files;
- `[deploy] path`, only when `deploy_path` is given (hosts without their own
  mount namespace, see tests/sshfleet.py).

It then loads the result with `daemon.config.load` and returns it; a key the
root file lacks is added to its section. `write_tokens(path)` writes a
`name role token` file (mode 0600) with one fresh token per role.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from daemon import config as daemon_config

ROLES = ("read", "deploy", "admin")
HEADER = ("# Written by `make demo`: {root} with the lines marked `demo:` changed\n"
          "# (timings that work at any hour, and paths made absolute). Edit {root}.\n\n")
PATH_KEYS = {"daemon": ("state_dir",), "api": ("tokens_file",), "source": ("repo",),
             "ssh": ("key_file", "known_hosts"), "influxdb": ("password_file", "token_file")}
_SECTION = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)(.*)$")
_STRING = re.compile(r'^"([^"\\]*)"')


@dataclass(frozen=True)
class Timings:
    """How fast the demo runs: schedule and guard durations, and the traffic rate."""

    every: str
    baseline: str
    warmup: str
    bake: str
    look_every: str
    rps: float  # checkout requests per second over all shops

    def schedule(self) -> dict[str, object]:
        return {"days": "mon-sun", "window": "00:00-24:00", "every": self.every,
                "jitter": "0s", "freezes": []}

    def guard(self) -> dict[str, object]:
        return {"baseline": self.baseline, "warmup": self.warmup, "bake": self.bake,
                "look_every": self.look_every, "on_inconclusive": f"extend:{self.bake}"}


# The guard passes a push only when its data rule out a severe change, and
# with no history before the demo it judges the fleet wave against a baseline
# that ended a whole canary bake earlier, which holds the previous push's
# restart blips: baselines of about four times the push and enough checkouts
# per interval keep harmless pushes from ending "inconclusive" most of the
# time, and a bake that ends inconclusive is extended once by a bake's length
# (`on_inconclusive = "extend:..."`, as an operator with short bakes would set).
# `make demo`: a person watches; the story reaches the halt in about 6 minutes.
DEMO = Timings(every="30s", baseline="120s", warmup="5s", bake="30s", look_every="5s", rps=100)
# `make demo-check`: the same story headless, in windows of seconds.
CHECK = Timings(every="2s", baseline="35s", warmup="1s", bake="6s", look_every="1s", rps=400)


def _toml(value: object) -> str:
    return json.dumps(value)  # strings and lists of strings: JSON is valid TOML here


def rewrite(text: str, base: Path, replace: dict[str, dict[str, object]]) -> str:
    """`text` with the values of `replace[section][key]` set and relative paths made
    absolute against `base` (see the module docstring)."""
    out: list[str] = []
    section = ""
    done: set[tuple[str, str]] = set()

    def missing(name: str) -> list[str]:
        return [f"{key} = {_toml(value)}   # demo: added"
                for key, value in replace.get(name, {}).items() if (name, key) not in done]

    for line in text.splitlines():
        head = _SECTION.match(line)
        if head and not line.lstrip().startswith("#"):
            out.extend(missing(section))
            done.update((section, key) for key in replace.get(section, {}))
            section = head[1]
        match = _KEY.match(line)
        if match and not head:
            indent, key, eq, rest = match.groups()
            if key in replace.get(section, {}):
                old = rest.split("#", 1)[0].strip()
                line = (f"{indent}{key}{eq}{_toml(replace[section][key])}"
                        f"   # demo: config.toml has {old}")
                done.add((section, key))
            elif key in PATH_KEYS.get(section, ()):
                value = _STRING.match(rest)
                if value and not Path(value[1]).is_absolute():
                    line = (f"{indent}{key}{eq}{_toml(str(base / value[1]))}"
                            f"   # demo: config.toml has {_toml(value[1])}, relative to it")
        out.append(line)
    out.extend(missing(section))
    return "\n".join(out) + "\n"


def write(root_config: Path, target: Path, timings: Timings,
          deploy_path: str | None = None) -> daemon_config.Config:
    """Write the demo config (module docstring) and return it loaded; ConfigError if bad."""
    replace: dict[str, dict[str, object]] = {"schedule": timings.schedule(),
                                             "guard": timings.guard()}
    if deploy_path is not None:
        replace["deploy"] = {"path": deploy_path}
    text = HEADER.format(root=root_config) + rewrite(
        root_config.read_text(), root_config.resolve().parent, replace)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return daemon_config.load(target)


def write_tokens(path: Path) -> dict[str, str]:
    """A fresh tokens file (mode 0600), one token per role; returns role -> token."""
    tokens = {role: secrets.token_urlsafe(24) for role in ROLES}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write("# written by `make demo`: name role token\n")
        file.writelines(f"demo-{role} {role} {token}\n" for role, token in tokens.items())
    os.chmod(path, 0o600)
    return tokens

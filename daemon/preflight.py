"""What a loaded config names must be usable before the daemon starts.

`config.load` reads and validates the file alone; `check` looks at what the
file points to: the files the daemon reads at start or at the first push, the
source repository and the API's listen host. `pushguard check-config` (the
unit's ExecStartPre gate) and `pushguard serve` both run it, so the gate
refuses exactly what the daemon could not start or push with.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from daemon.config import Config
from daemon.errors import ConfigError


def check(config: Config) -> None:
    """Raise ConfigError listing every named file, folder or host that cannot be used.

    Each problem names the config file and the dotted key. Files are opened
    for reading as the running user, so permissions count.
    """
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{config.file}: {key}: {message}")

    files = [("api.tokens_file", config.api.tokens_file),
             ("ssh.key_file", config.ssh.key_file),
             ("ssh.known_hosts", config.ssh.known_hosts)]
    if config.influxdb.password_file is not None:
        files.append(("influxdb.password_file", config.influxdb.password_file))
    if config.influxdb.token_file is not None:
        files.append(("influxdb.token_file", config.influxdb.token_file))
    for key, path in files:
        if (reason := _unreadable(path)) is not None:
            bad(key, f"cannot read {path}: {reason}")
    repo = config.source.repo
    if not repo.is_dir():
        bad("source.repo", f"cannot use {repo}: no such folder")
    elif not os.access(repo, os.R_OK | os.X_OK):
        bad("source.repo", f"cannot read {repo}: permission denied")
    try:
        socket.getaddrinfo(config.api.host, config.api.port, type=socket.SOCK_STREAM,
                           flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        bad("api.listen", f"cannot resolve the host {config.api.host!r}: "
                          f"{getattr(exc, 'strerror', None) or exc}")
    if problems:
        raise ConfigError(problems)


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as a file by this process, or None if it can."""
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "a folder, not a file"
    except OSError as exc:
        return exc.strerror or str(exc)

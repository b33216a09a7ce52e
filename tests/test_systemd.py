"""systemd: the unit verifies and is hardened; the daemon speaks sd_notify in order."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_env import write_config, write_tokens
from tests.gitrepo import commit, make_repo

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "pushguard.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point the unit at this checkout's install
    unit = tmp_path / "pushguard.service"
    unit.write_text(UNIT.read_text().replace("/opt/pushguard", str(ROOT)))
    assert (ROOT / ".venv" / "bin" / "pushguard").exists()
    result = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "pushguard.service" not in result.stderr, result.stderr


@needs_analyze
def test_unit_exposure_is_at_most_2() -> None:
    result = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for pushguard\.service: ([\d.]+)",
                      result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_has_what_the_issue_asks() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=pushguard",
                 "LoadCredential=tokens:", "Restart=on-failure", "TimeoutStopSec=",
                 "DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                 "ExecStart=/opt/pushguard/.venv/bin/pushguard serve"):
        assert line in text, line


def test_a_config_error_stops_the_restarts(tmp_path: Path) -> None:
    """`serve` exits with the status the unit names in RestartPreventExitStatus= on a
    bad config, so Restart=on-failure does not loop on it. systemd applies that
    setting to the main process only, so no ExecStartPre= may stand in for it."""
    text = UNIT.read_text()
    match = re.search(r"^RestartPreventExitStatus=(\d+)$", text, re.M)
    assert match, "no RestartPreventExitStatus="
    assert "ExecStartPre=" not in text
    config, _ = _quiet_config(tmp_path)
    (tmp_path / "tokens").unlink()
    result = subprocess.run([sys.executable, "-m", "daemon", "serve", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == int(match.group(1)), result.stderr
    assert "api.tokens_file" in result.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def _quiet_config(tmp_path: Path) -> tuple[Path, int]:
    """A config whose hosts and InfluxDB are unreachable (closed loopback ports)."""
    repo = make_repo(tmp_path / "repo")
    commit(repo, "first", {"README": "x\n"})
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "known_hosts").write_text("")
    (tmp_path / "ssh" / "id").write_text("")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(
        tmp_path / "config.toml", state_dir=tmp_path / "var", repo=repo,
        hosts=[{"name": "web1", "address": "127.0.0.1", "port": 1}],
        ssh={"user": "deploy", "key_file": str(tmp_path / "ssh" / "id"),
             "known_hosts": str(tmp_path / "ssh" / "known_hosts"), "connect_timeout": "2s"},
        influx_url="http://127.0.0.1:1", api_port=port,
        tokens_file=tmp_path / "tokens")
    write_tokens(tmp_path / "tokens")
    return config, port


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_ready_watchdog_stopping_in_order(tmp_path: Path,
                                          notify_socket: tuple[socket.socket, Path]) -> None:
    sock, path = notify_socket
    config, port = _quiet_config(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve", "-c", str(config)],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    messages: list[tuple[float, str]] = []
    ready_accepting = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                continue
            messages.append((time.monotonic(), data))
            if "READY=1" in data and ready_accepting is None:
                ready_accepting = _accepts(port)
            if sum("WATCHDOG=1" in m for _, m in messages) >= 4:
                break
        assert ready_accepting is True, (messages, proc.stderr)
        proc.send_signal(signal.SIGTERM)
        stop_deadline = time.monotonic() + 20
        while time.monotonic() < stop_deadline:
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except TimeoutError:
                if proc.poll() is not None:
                    break
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
    kinds = [m.split("\n")[0] for _, m in messages]
    first_ready = next(i for i, k in enumerate(kinds) if k == "READY=1")
    watchdogs = [t for (t, m) in messages if "WATCHDOG=1" in m]
    stopping = [i for i, (_, m) in enumerate(messages) if "STOPPING=1" in m]
    assert all(i > first_ready for i, k in enumerate(kinds) if k == "WATCHDOG=1"), kinds
    assert len(watchdogs) >= 4
    gaps = [b - a for a, b in itertools.pairwise(watchdogs)]
    assert all(0.3 < gap < 0.9 for gap in gaps), gaps  # half of WatchdogSec=1s
    assert stopping and stopping[0] > first_ready, stderr
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in messages)


def test_readme_install_lets_the_service_read_what_it_reads() -> None:
    """ExecStart runs as the dynamic user: the files it opens itself (the config,
    known_hosts) must be readable by others; secrets reach it as credentials."""
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    text = UNIT.read_text()
    config = re.search(r"^ExecStart=\S+ serve -c (\S+)", text, re.M)
    assert config
    assert "(readable by root only is fine" not in install
    assert f"`{config.group(1)}` (mode 0644" in install
    for name, source in re.findall(r"^LoadCredential=([\w-]+):(\S+)$", text, re.M):
        assert source in install and f"/run/credentials/pushguard.service/{name}" \
            in install, name

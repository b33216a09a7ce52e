"""pytest fixtures: real sshd hosts on loopback and a source repository to deploy.

- `ssh_fleet` (session): six real OpenSSH hosts (tests/sshfleet.py). Tests
  that stop or freeze a host restore it before they end.
- `deploy_path`: a deploy root of this test's own on every host, so tests
  sharing the session fleet never see each other's releases.
- `app_repo` (session): a git repository with four commits (`AppRepo`).
- `make_fleet`: builds `daemon.fleet.Fleet` objects for this test with the
  given `[deploy]` values and closes them after the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.config import DeployConfig, SshConfig
from daemon.fleet import Fleet
from daemon.release import Release, build_release
from tests.sshfleet import SshFleet

FLEET_SIZE = 6

_ACTIVATE = '"$PUSHGUARD_PATH/current/bin/activate"'

# bin/activate of the test application: records which release it activated
_ACTIVATE_SCRIPT = """#!/bin/sh
echo "$PUSHGUARD_RELEASE" > "$PUSHGUARD_PATH/activated"
"""


@dataclass(frozen=True)
class AppRepo:
    """The test application's repository: `commits` oldest first, `releases` built."""

    path: Path
    commits: tuple[str, ...]
    releases: tuple[Release, ...]

    def git(self, *args: str) -> bytes:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True,
                              capture_output=True, timeout=30).stdout


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    with SshFleet(tmp_path_factory.mktemp("sshfleet"), FLEET_SIZE) as fleet:
        yield fleet


@pytest.fixture
def deploy_path(ssh_fleet: SshFleet, request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)
    return ssh_fleet.deploy_path(f"t/{name}")


def _commit(repo: Path, message: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}
    for argv in (["add", "-A"], ["commit", "-q", "-m", message]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, env=env, timeout=30)
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return out.strip()


def _write_tree(repo: Path, version: int) -> None:
    """Version 1..4 of the application; files appear, change and disappear."""
    (repo / "bin").mkdir(exist_ok=True)
    (repo / "bin" / "activate").write_text(_ACTIVATE_SCRIPT)
    (repo / "bin" / "activate").chmod(0o755)
    (repo / "VERSION").write_text(f"{version}\n")
    (repo / "static" / "css").mkdir(parents=True, exist_ok=True)
    (repo / "static" / "css" / "site.css").write_text(f"body {{ margin: {version}px }}\n")
    (repo / "data.bin").write_bytes(bytes(range(256)) * (version * 40))
    (repo / "file with spaces.txt").write_text("spaces are fine\n")
    old = repo / "old.txt"
    if version == 1:
        old.write_text("only in version 1\n")
    elif old.exists():
        old.unlink()
    if version >= 2:
        (repo / "new.txt").write_text(f"since version 2, now {version}\n")
        link = repo / "current-version"
        if not link.is_symlink():
            link.symlink_to("VERSION")


@pytest.fixture(scope="session")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> AppRepo:
    base = tmp_path_factory.mktemp("app")
    repo = base / "app"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, timeout=30)
    commits = []
    for version in range(1, 5):
        _write_tree(repo, version)
        commits.append(_commit(repo, f"version {version}"))
    releases = tuple(asyncio.run(build_release(repo, c, base / "releases")) for c in commits)
    return AppRepo(path=repo, commits=tuple(commits), releases=releases)


def deploy_config(path: str, **changes: Any) -> DeployConfig:
    """A `[deploy]` section for tests: fast deadlines, the repo's bin/activate."""
    config = DeployConfig(
        path=path, keep_releases=5, activate=_ACTIVATE, health_url=None,
        health_timeout=timedelta(seconds=2), canary=1, concurrency=50,
        host_timeout=timedelta(seconds=30), command_timeout=timedelta(seconds=20),
        on_regression="halt",
    )
    return replace(config, **changes)


MakeFleet = Callable[..., Fleet]


@pytest.fixture
async def make_fleet(ssh_fleet: SshFleet, deploy_path: str) -> AsyncIterator[MakeFleet]:
    """`make_fleet(ssh=None, **deploy_changes)` -> a Fleet over the session hosts."""
    made: list[Fleet] = []

    def make(ssh: SshConfig | None = None, **changes: Any) -> Fleet:
        changes.setdefault("path", deploy_path)
        fleet = Fleet(ssh or ssh_fleet.ssh_config(), deploy_config(**changes),
                      ssh_fleet.host_configs())
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        await fleet.close()

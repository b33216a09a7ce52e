"""The release of a commit: its tree as a `git archive` tar.gz, built once.

A release is kept in the state directory by commit id
(`<state_dir>/releases/<commit>.tar.gz`) and reused by every later push of
the same commit. Its size and SHA-256 digest are recorded with it so that
the push record says exactly what went out.

git is always run with an argument vector, never through a shell; refs are
validated first and refs that could be read as options are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import SourceError

_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # fullmatch: `$` allows a "\n"
_MAX_REF = 256
_GIT_LOCATION_VARS = frozenset({"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE",
                                "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"})
_GIT_TIMEOUT = 120.0  # seconds; archiving a large tree is the slowest case

log = logging.getLogger("pushguard.release")


@dataclass(frozen=True)
class Release:
    """One built release. `id` names its folder on the hosts (`releases/<id>`)."""

    id: str  # the full commit id
    commit: str
    archive: Path
    size: int
    sha256: str


async def resolve_ref(repo: Path, ref: str) -> str:
    """Return the full commit id that `ref` names in `repo`.

    Raises SourceError naming the ref if it is empty, starts with '-', holds
    control characters, is too long, or does not name a commit. Its message
    and details name only the ref (they reach API clients); the repository's
    path and git's stderr are logged instead.
    """
    _check_ref(ref)
    try:
        status, out, err = await _git(repo, "rev-parse", "--verify", "--quiet",
                                      "--end-of-options", f"{ref}^{{commit}}")
    except SourceError as exc:
        log.error("cannot resolve ref %r: %s", ref, exc.message)
        raise SourceError(f"cannot resolve ref {ref!r}: the source repository does not "
                          "exist or cannot be read (the daemon's log says which)",
                          ref=ref) from exc
    commit = out.decode(errors="replace").strip()
    reason = err.decode(errors="replace")[-500:].strip()
    # `rev-parse --verify --quiet` says nothing and exits 1 for a ref that names no
    # commit; anything else (exit 128, a message) is git unable to read the repository
    if status != 0 and (status != 1 or reason):
        log.error("cannot resolve ref %r in %s: git exit %s: %s", ref, repo, status,
                  reason or "no stderr")
        raise SourceError(f"cannot resolve ref {ref!r}: git cannot read the source "
                          "repository (the daemon's log says why)", ref=ref)
    if status != 0 or not _COMMIT_ID.fullmatch(commit):
        log.info("ref %r names no commit in %s (git exit %s)", ref, repo, status)
        raise SourceError(f"unknown ref {ref!r}: it names no commit of the source repository",
                          ref=ref)
    return commit


async def build_release(repo: Path, commit: str, releases_dir: Path) -> Release:
    """Build (or reuse) `<releases_dir>/<commit>.tar.gz`, the tree of `commit`.

    `commit` must be a full commit id present in `repo` (SourceError if not).
    The archive is written to a temporary file and renamed into place, so a
    crash never leaves a partial archive under the final name.
    """
    if not _COMMIT_ID.fullmatch(commit):
        raise SourceError(f"not a full commit id: {commit!r}", ref=commit)
    status, _, err = await _git(repo, "cat-file", "-e", f"{commit}^{{commit}}")
    if status != 0:
        raise SourceError(f"commit {commit} is not in {repo}", ref=commit, repo=str(repo),
                          stderr=err.decode(errors="replace")[-500:])
    archive = releases_dir / f"{commit}.tar.gz"
    if not await asyncio.to_thread(archive.is_file):
        await _archive(repo, commit, archive)
    size, digest = await asyncio.to_thread(_size_and_digest, archive)
    return Release(id=commit, commit=commit, archive=archive, size=size, sha256=digest)


async def _archive(repo: Path, commit: str, archive: Path) -> None:
    await asyncio.to_thread(archive.parent.mkdir, parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.{secrets.token_hex(6)}.tmp")
    try:
        status, _, err = await _git(repo, "archive", "--format=tar.gz",
                                    f"--output={tmp}", commit)
        if status != 0:
            raise SourceError(f"git archive of {commit} failed", ref=commit,
                              stderr=err.decode(errors="replace")[-500:])
        await asyncio.to_thread(_fsync_and_rename, tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


def _check_ref(ref: str) -> None:
    if not ref or ref.startswith("-") or len(ref) > _MAX_REF \
            or any(ord(c) < 32 or c == "\x7f" for c in ref):
        raise SourceError(f"invalid ref {ref!r}", ref=ref)


def _size_and_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fsync_and_rename(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as file:
        os.fsync(file.fileno())
    os.replace(tmp, final)


def _git_env() -> dict[str, str]:
    # a GIT_DIR inherited from a hook would point git at another repository
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


async def _git(repo: Path, *args: str) -> tuple[int, bytes, bytes]:
    """Run git in `repo` with `args` as an argument vector; (status, stdout, stderr)."""
    if not await asyncio.to_thread(repo.is_dir):
        raise SourceError(f"source repository {repo} does not exist", repo=str(repo))
    # the service's (dynamic) user does not own the repository, and git >= 2.35.2
    # refuses a repository owned by someone else unless it is named safe, by the
    # real path git itself sees after -C
    real = await asyncio.to_thread(os.path.realpath, repo)
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "-c", f"safe.directory={real}", "-C", str(repo), *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_git_env(),
        )
    except OSError as exc:
        raise SourceError(f"cannot run git: {exc}", repo=str(repo)) from exc
    try:
        async with asyncio.timeout(_GIT_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SourceError(f"git {args[0]} timed out after {_GIT_TIMEOUT:.0f}s",
                          repo=str(repo)) from None
    return proc.returncode or 0, out, err

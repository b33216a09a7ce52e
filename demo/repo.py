"""The demo's source repository: the shop in `demo/app/` and the commits of the story.

`build(repo, work)` writes a fresh bare repository at `repo` (cloned from a
work tree at `work`) whose `main` holds, in order, the commits of `SERIES`:
the first release, two harmless changes, a change that makes 30 % of the
checkouts fail, and the fix for it. Each commit is built from the one before
by exact text edits; an edit that does not match exactly once is a bug here
(ValueError). Returns the commit ids by key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parent / "app"


@dataclass(frozen=True)
class Edit:
    """Replace `old` (which must occur exactly once) by `new` in `path`."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Commit:
    key: str
    title: str
    author: str
    edits: tuple[Edit, ...]


_PAY_OLD = '''def charge(cents: int) -> str:
    """Charge `cents`; the provider's charge id, or Declined."""
    time.sleep(min(ROUND_TRIP + random.expovariate(1.0 / TAIL), 0.5))
'''
_PAY_POOLED = '''POOL = 8  # provider connections kept open between charges
STALE_SHARE = 0.3  # share of pooled connections the provider closed meanwhile


def charge(cents: int) -> str:
    """Charge `cents` over a pooled connection; the provider's charge id, or Declined."""
    time.sleep(min(ROUND_TRIP + random.expovariate(1.0 / TAIL), 0.5))
    if random.random() < STALE_SHARE:  # the pooled connection was closed by the provider
        raise ConnectionResetError("pooled provider connection was reset by the peer")
'''
_PAY_FIXED = '''def _reconnect() -> None:
    """Open a new provider connection (a local handshake, about a millisecond)."""
    time.sleep(0.001)


def charge(cents: int) -> str:
    """Charge `cents` over a pooled connection; the provider's charge id, or Declined."""
    if random.random() < STALE_SHARE:  # closed by the provider while it sat in the pool
        _reconnect()
    time.sleep(min(ROUND_TRIP + random.expovariate(1.0 / TAIL), 0.5))
'''
_ORDER_OLD = '''        self.answer(200, {"order": next(self.server.orders), "total_cents": total,
                          "charge": charge})'''
_ORDER_NEW = '''        self.answer(200, {"order": next(self.server.orders), "total_cents": total,
                          "charge": charge, "release": self.server.release[:12]})'''

SERIES: tuple[Commit, ...] = (
    Commit("base", "shop: first release", "Ada", ()),
    Commit("catalog", "catalog: add gloves for the winter", "Grace", (
        Edit("catalog.json", '"hoodie": 5500', '"hoodie": 5500,\n    "gloves": 1500'),)),
    Commit("receipt", "checkout: say which release served the order", "Ken", (
        Edit("shop.py", _ORDER_OLD, _ORDER_NEW),)),
    Commit("bad", "payments: keep provider connections in a pool (faster checkouts)",
           "Alan", (Edit("payments.py", _PAY_OLD, _PAY_POOLED),)),
    Commit("fix", "payments: reconnect when the provider closed a pooled connection",
           "Alan", (Edit("payments.py", _PAY_POOLED.split("\n\n\n")[1], _PAY_FIXED),)),
)


def _git(cwd: Path, *args: str, author: str = "Ada") -> str:
    email = f"{author.lower()}@shop.invalid"
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": email,
           "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": email,
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    done = subprocess.run(["git", "-C", str(cwd), *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def _apply(work: Path, edit: Edit) -> None:
    file = work / edit.path
    text = file.read_text()
    if text.count(edit.old) != 1:
        raise ValueError(f"demo repo: the edit of {edit.path} matches "
                         f"{text.count(edit.old)} times, not once")
    file.write_text(text.replace(edit.old, edit.new))


def build(repo: Path, work: Path) -> dict[str, str]:
    """Write the repository (replacing any at `repo` and `work`); commit ids by key."""
    for folder in (repo, work):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(APP, work, ignore=shutil.ignore_patterns("__pycache__"))
    _git(work, "init", "-q", "-b", "main")
    refs: dict[str, str] = {}
    for commit in SERIES:
        for edit in commit.edits:
            _apply(work, edit)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", commit.title, author=commit.author)
        refs[commit.key] = _git(work, "rev-parse", "HEAD")
    _git(work.parent, "clone", "-q", "--bare", str(work), str(repo))
    return refs


def title(key: str) -> str:
    """The commit title of the change `key`."""
    return next(c.title for c in SERIES if c.key == key)


def author(key: str) -> str:
    return next(c.author for c in SERIES if c.key == key)

"""daemon.release against real git repositories made in tmp."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from daemon.errors import SourceError
from daemon.release import build_release, resolve_ref
from tests.fixtures_ssh import AppRepo
from tests.gitrepo import commit, make_repo


async def test_resolve_ref_gives_the_full_commit_id(app_repo: AppRepo) -> None:
    newest = app_repo.commits[-1]
    assert await resolve_ref(app_repo.path, "HEAD") == newest
    assert await resolve_ref(app_repo.path, "main") == newest
    assert await resolve_ref(app_repo.path, newest[:10]) == newest
    assert await resolve_ref(app_repo.path, "HEAD~3") == app_repo.commits[0]


async def test_resolve_ref_peels_an_annotated_tag(app_repo: AppRepo) -> None:
    app_repo.git("-c", "user.name=Ada", "-c", "user.email=ada@example.com",
                 "tag", "-f", "-a", "-m", "v2", "v2", app_repo.commits[1])
    assert await resolve_ref(app_repo.path, "v2") == app_repo.commits[1]


@pytest.mark.parametrize("ref", [
    "no-such-branch",
    "0" * 40,
    "-c",
    "--output=/tmp/pwned",
    "HEAD\nmain",
    "",
    "x" * 300,
    "$(touch /tmp/pwned)",
])
async def test_resolve_ref_refuses_bad_and_unknown_refs(app_repo: AppRepo, ref: str) -> None:
    pwned = Path("/tmp/pwned")
    pwned.unlink(missing_ok=True)
    with pytest.raises(SourceError) as caught:
        await resolve_ref(app_repo.path, ref)
    assert repr(ref) in caught.value.message
    assert caught.value.details["ref"] == ref
    assert not pwned.exists()


async def test_resolve_ref_in_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        await resolve_ref(tmp_path / "nope", "HEAD")


async def test_build_records_size_and_digest_and_holds_the_tree(
    app_repo: AppRepo, tmp_path: Path
) -> None:
    commit = app_repo.commits[1]
    release = await build_release(app_repo.path, commit, tmp_path / "releases")
    assert (release.id, release.commit) == (commit, commit)
    assert release.archive == tmp_path / "releases" / f"{commit}.tar.gz"
    data = release.archive.read_bytes()
    assert release.size == len(data)
    assert release.sha256 == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = {m.name for m in tar.getmembers() if not m.isdir()}
    tree = app_repo.git("ls-tree", "-r", "--name-only", "-z", commit).split(b"\0")
    assert names == {name.decode() for name in tree if name}
    assert list((tmp_path / "releases").iterdir()) == [release.archive]  # no temp files


async def test_build_once_then_reuse(app_repo: AppRepo, tmp_path: Path) -> None:
    first = await build_release(app_repo.path, app_repo.commits[0], tmp_path)
    inode = first.archive.stat().st_ino
    again = await build_release(app_repo.path, app_repo.commits[0], tmp_path)
    assert again == first
    assert again.archive.stat().st_ino == inode


@pytest.mark.parametrize("commit", ["0" * 40, "f" * 40, "HEAD", "abc", "-" + "0" * 39])
async def test_build_refuses_a_missing_or_partial_commit(
    app_repo: AppRepo, tmp_path: Path, commit: str
) -> None:
    with pytest.raises(SourceError) as caught:
        await build_release(app_repo.path, commit, tmp_path)
    assert commit in caught.value.message
    assert not list(tmp_path.iterdir())


async def test_resolve_ref_errors_name_the_ref_only(tmp_path: Path) -> None:
    """They reach API clients: no server path, no git stderr (both are logged)."""
    with pytest.raises(SourceError) as caught:
        await resolve_ref(tmp_path / "nope", "HEAD")
    assert str(tmp_path) not in caught.value.message
    assert caught.value.details == {"ref": "HEAD"}


def _foreign_repo(tmp_path: Path) -> tuple[Path, str]:
    """A repository owned by another uid, as the source repo is for the unit's
    DynamicUser: git >= 2.35.2 refuses it ("dubious ownership") unless told."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the repository to another uid")
    repo = make_repo(tmp_path / "foreign")
    head = commit(repo, "first", {"README": "x\n"})
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, 65534, 65534)
    return repo, head


async def test_a_repository_owned_by_another_user_is_read(tmp_path: Path) -> None:
    repo, head = _foreign_repo(tmp_path)
    assert await resolve_ref(repo, "HEAD") == head
    release = await build_release(repo, head, tmp_path / "releases")
    assert release.commit == head
    (tmp_path / "link").symlink_to(repo)  # git checks the real path
    assert await resolve_ref(tmp_path / "link", "HEAD") == head


async def test_a_git_failure_is_logged_with_gits_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "not-a-repo"
    repo.mkdir()
    with pytest.raises(SourceError) as caught:
        await resolve_ref(repo, "HEAD")
    assert caught.value.details == {"ref": "HEAD"}
    assert str(tmp_path) not in caught.value.message
    assert "not a git repository" in caplog.text

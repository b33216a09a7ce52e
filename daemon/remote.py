"""What runs on the hosts: the shell scripts of a deploy, and the quoting rules.

Each script runs as `timeout ... sh -c SCRIPT sh ARGS...`: values only ever
arrive as positional parameters, never inside the script text, and the
values a change brings reach the activate command only as exported,
shell-quoted variables (`exports`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Remote scripts. Each runs as `timeout ... sh -c SCRIPT sh ARGS...`: values
# only ever arrive as positional parameters, never inside the script text.
PREPARE = """set -e
mkdir -p -- "$1/releases"
cd -- "$1"
readlink current || true
if [ -d "releases/$2" ]; then echo have; else echo need; fi"""

UNPACK = """set -e
cd -- "$1/releases"
if [ -d "$2" ]; then rm -f -- "$3"; exit 0; fi
echo "$4  $3" | sha256sum -c --status - || { echo "upload digest mismatch" >&2; exit 65; }
t=$(mktemp -d ".tmp-$2.XXXXXX")
tar -xzf "$3" -C "$t" || { rm -rf -- "$t" "$3"; exit 66; }
chmod 755 "$t"
mv -T -- "$t" "$2"
rm -f -- "$3"
"""

SWITCH = """set -e
cd -- "$1"
[ -d "releases/$2" ] || { echo "release $2 is not unpacked" >&2; exit 67; }
touch "releases/$2"
old=$(readlink current || true)
if [ -n "$old" ] && [ "$old" != "releases/$2" ]; then
  ln -sfn -- "$old" .previous.tmp && mv -T .previous.tmp previous
fi
ln -sfn -- "releases/$2" .current.tmp && mv -T .current.tmp current"""

ROLLBACK = """set -e
cd -- "$1"
cur=$(readlink current || true)
if [ -n "$2" ] && [ "$cur" != "releases/$2" ]; then echo "skip $cur"; exit 0; fi
prev=$(readlink previous) || { echo "no previous release recorded" >&2; exit 68; }
[ -d "$prev" ] || { echo "previous release $prev is gone" >&2; exit 69; }
ln -sfn -- "$prev" .current.tmp && mv -T .current.tmp current
if [ -n "$cur" ]; then ln -sfn -- "$cur" .previous.tmp && mv -T .previous.tmp previous; fi
echo "live $prev"
"""

PRUNE = """set -e
cd -- "$1/releases"
cur=$(readlink ../current || true); prev=$(readlink ../previous || true); n=0
for d in $(ls -1t); do
  n=$((n + 1))
  case "releases/$d" in "$cur"|"$prev") continue ;; esac
  if [ "$n" -gt "$2" ]; then rm -rf -- "$d"; fi
done
find . -maxdepth 1 -name '.*' ! -name . -mmin +60 -exec rm -rf -- {} +"""

READ_LIVE = 'readlink -- "$1/current" || true'


def exports(env: Mapping[str, str]) -> str:
    """`export K='v' ...` for the activate script; ValueError on a bad name or a NUL."""
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        if "\0" in value:
            raise ValueError(f"environment value of {name} holds a NUL character")
    values = {"PUSHGUARD_PUSH": "", **env}
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items())


def check_release_id(release_id: str) -> None:
    if not RELEASE_ID.match(release_id):
        raise ValueError(f"not a release id: {release_id!r}")


def release_of(target: str) -> str | None:
    """`releases/<id>` (a symlink target) -> `<id>`; anything else -> None."""
    head, _, tail = target.strip().rpartition("/")
    return tail if head.endswith("releases") and tail else None

"""Bearer tokens and roles.

The tokens file holds one token per line: `name role token`, where role is
`read`, `deploy` or `admin` (each role may do what the roles before it may).
Blank lines and lines starting with `#` are skipped. A bad line is a
ConfigError naming the file and the line number, never the line itself (it
may hold a token). Tokens are compared with `hmac.compare_digest` against
every known token, so the time taken does not depend on which one matched,
and they are never logged.
"""

from __future__ import annotations

import hmac
import logging
import stat
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from aiohttp import web

from api.errors import ApiError
from daemon.errors import ConfigError

log = logging.getLogger("pushguard.api")

MIN_TOKEN = 16


class Role(IntEnum):
    """Ordered roles: a token may do what its role and every lower role may."""

    READ = 1
    DEPLOY = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Identity:
    """Who a request is from: the token's name and role."""

    name: str
    role: Role


@dataclass(frozen=True)
class _Entry:
    identity: Identity
    secret: bytes


class Tokens:
    """The known tokens; `identify` maps a presented token to its Identity."""

    def __init__(self, entries: dict[str, Identity]) -> None:
        """`entries` maps token -> identity (use `parse` or `load` for files)."""
        self._entries = tuple(_Entry(identity, token.encode()) for token, identity in
                              entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str, source: str) -> Tokens:
        """Tokens from the text of a tokens file; ConfigError lists every bad line."""
        problems: list[str] = []
        entries: dict[str, Identity] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{number}"
            fields = line.split()
            if len(fields) != 3:
                problems.append(f"{where}: expected `name role token`, found {len(fields)} "
                                "field(s)")
                continue
            name, role_text, token = fields
            if role_text not in ("read", "deploy", "admin"):
                # the value is not echoed: with the columns swapped it is the token
                problems.append(f"{where}: the second field (the role) must be read, "
                                "deploy or admin")
            elif len(token) < MIN_TOKEN:
                problems.append(f"{where}: the token of {name!r} is shorter than "
                                f"{MIN_TOKEN} characters")
            elif token in entries:
                problems.append(f"{where}: the token of {name!r} is already used by "
                                f"{entries[token].name!r}")
            else:
                entries[token] = Identity(name, Role[role_text.upper()])
        if problems:
            raise ConfigError(problems)
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read the tokens file; warn when group or others may read it."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read the tokens file: {exc}"]) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: the tokens file is open to group or others (mode %o); "
                        "chmod 600 it", path, stat.S_IMODE(mode))
        tokens = cls.parse(text, str(path))
        if not tokens:
            log.warning("%s holds no tokens: every call that changes something will be "
                        "refused", path)
        return tokens

    def identify(self, presented: str) -> Identity | None:
        """The identity whose token equals `presented`, in constant time over all tokens."""
        try:
            given = presented.encode()
        except UnicodeEncodeError:  # lone surrogates from a mangled header: no token has them
            return None
        found: Identity | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.secret, given):
                found = entry.identity
        return found


IDENTITY = web.RequestKey[Identity]("pushguard_identity")


def authorize(authorization: str | None, tokens: Tokens, needed: Role) -> Identity:
    """The identity behind an `Authorization: Bearer` header, if its role suffices.

    No or malformed header, or an unknown token: ApiError 401 (with
    `WWW-Authenticate`); a known token of a lower role: ApiError 403.
    """
    challenge = {"WWW-Authenticate": 'Bearer realm="pushguard"'}
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "this needs `Authorization: Bearer <token>`",
                       challenge, needs=needed.label)
    identity = tokens.identify(presented.strip())
    if identity is None:
        raise ApiError(401, "unauthorized", "unknown token", challenge, needs=needed.label)
    if identity.role < needed:
        raise ApiError(403, "forbidden", f"this needs the {needed.label} role; "
                       f"{identity.name} has {identity.role.label}",
                       needs=needed.label, has=identity.role.label)
    return identity

"""Strict, error-collecting reading of TOML tables.

A `Table` hands out typed values by key and records every problem (missing,
unknown, mistyped or bad values) in a shared list instead of stopping at the
first, so that `check-config` can print them all. Every message names the
file, the dotted key and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

REQUIRED: Any = object()  # the default that marks a key as required
# no setting wants more; far longer ones overflow date arithmetic later
LONGEST = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """Parse "500ms", "30s", "10m", "2h" or "1d"; raise ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration like \"30s\", \"10m\" or \"2h\", got {text!r}")
    try:
        return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        raise ValueError(f"the duration is too long: {text!r}") from None


def format_duration(value: timedelta) -> str:
    """"1d", "90s", "0.5s": the shortest of days or seconds that says `value`."""
    seconds = value.total_seconds()
    if seconds and seconds % 86400 == 0:
        return f"{seconds / 86400:g}d"
    return f"{seconds:g}s"


def _type_name(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Table:
    """One TOML table being read; `finish()` reports the keys nobody asked for."""

    def __init__(self, file: Path, prefix: str, data: dict[str, Any], errors: list[str],
                 *, absent: bool = False, asked: set[str] | None = None) -> None:
        # absent: the table itself is missing (already reported), so its keys are not
        self.absent = absent
        # every dotted key the reader asked for (list indexes dropped), for the docs test
        self.asked = asked if asked is not None else set()
        self.file = file
        self.prefix = prefix
        self.data = data
        self.errors = errors
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.errors.append(f"{self.file}: {self.key(name)}: {message}")

    def has(self, name: str) -> bool:
        return name in self.data

    def _raw(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        self.asked.add(re.sub(r"\[\d+\]", "", self.key(name)))
        if name in self.data:
            return self.data[name]
        if default is REQUIRED and not self.absent:
            self.error(name, "missing (required)")
        return REQUIRED

    def _typed(
        self, name: str, default: Any, types: tuple[type, ...], expected: str, fallback: Any
    ) -> Any:
        value = self._raw(name, default)
        if value is REQUIRED:
            return fallback if default is REQUIRED else default
        # bool is an int in Python; a TOML `true` is never a number here
        if isinstance(value, bool) and bool not in types:
            self.error(name, f"expected {expected}, got {_type_name(value)}")
            return fallback
        if not isinstance(value, types):
            self.error(name, f"expected {expected}, got {_type_name(value)}")
            return fallback
        return value

    def text(self, name: str, default: Any = REQUIRED, *, nonempty: bool = True) -> str:
        value: str = self._typed(name, default, (str,), "a string", "")
        if nonempty and isinstance(self.data.get(name), str) and not value.strip():
            self.error(name, "expected a non-empty string")
        return value

    def optional_str(self, name: str) -> str | None:
        if name not in self.data:
            self._raw(name, None)
            return None
        return self.text(name)

    def integer(self, name: str, default: Any = REQUIRED, *, low: int | None = None,
            high: int | None = None) -> int:
        value: int = self._typed(name, default, (int,), "an integer", low or 0)
        return int(self._bounded(name, value, low, high))

    def number(self, name: str, default: Any = REQUIRED, *, low: float | None = None,
              high: float | None = None) -> float:
        value = float(self._typed(name, default, (int, float), "a number", low or 0.0))
        if not math.isfinite(value):  # TOML has nan and inf; no setting wants them
            self.error(name, f"expected a finite number, got {value}")
            return value
        return float(self._bounded(name, value, low, high))

    def _bounded(self, name: str, value: Any, low: Any, high: Any) -> Any:
        if name not in self.data:
            return value
        if low is not None and value < low:
            self.error(name, f"expected at least {low}, got {value}")
        elif high is not None and value > high:
            self.error(name, f"expected at most {high}, got {value}")
        return value

    def flag(self, name: str, default: Any = REQUIRED) -> bool:
        value: bool = self._typed(name, default, (bool,), "true or false", False)
        return value

    def duration(self, name: str, default: Any = REQUIRED, *,
                 minimum: timedelta = timedelta(0),
                 maximum: timedelta = LONGEST) -> timedelta:
        text = self._typed(name, default, (str,), 'a duration string like "30s"', None)
        if text is None:
            return timedelta(0)
        if isinstance(text, timedelta):
            return text
        try:
            value = parse_duration(text)
        except ValueError as exc:
            self.error(name, str(exc))
            return timedelta(0)
        if value < minimum:
            self.error(name, f"expected at least {minimum.total_seconds():g}s, got {text!r}")
        elif value > maximum:
            self.error(name, f"expected at most {format_duration(maximum)}, got {text!r}")
            return maximum
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = REQUIRED) -> str:
        value = self.text(name, default)
        if name in self.data and isinstance(value, str) and value not in choices:
            wanted = ", ".join(repr(c) for c in choices)
            self.error(name, f"expected one of {wanted}, got {value!r}")
        return value

    def str_list(self, name: str, default: Any = REQUIRED) -> tuple[str, ...]:
        value = self._typed(name, default, (list, tuple), "an array of strings", [])
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.error(f"{name}[{i}]", f"expected a string, got {_type_name(item)}")
            else:
                out.append(item)
        return tuple(out)

    def str_map(self, name: str) -> tuple[tuple[str, str], ...]:
        """An optional inline table of string to string, as sorted pairs."""
        value = self._typed(name, {}, (dict,), "a table of strings", {})
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if not isinstance(v, str):
                self.error(f"{name}.{k}", f"expected a string, got {_type_name(v)}")
            else:
                out.append((str(k), v))
        return tuple(sorted(out))

    def table(self, name: str, *, required: bool = True) -> Table:
        value = self._typed(name, REQUIRED if required else {}, (dict,), "a table", {})
        absent = self.absent or not isinstance(self.data.get(name), dict)
        return Table(self.file, self.key(name), value, self.errors, absent=absent,
                     asked=self.asked)

    def tables(self, name: str, *, required: bool = True) -> list[Table]:
        value = self._typed(name, REQUIRED if required else [], (list,), "an array of tables", [])
        out: list[Table] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.error(f"{name}[{i}]", f"expected a table, got {_type_name(item)}")
                continue
            out.append(Table(self.file, f"{self.key(name)}[{i}]", item, self.errors,
                             asked=self.asked))
        return out

    def path(self, name: str, base: Path, default: Any = REQUIRED) -> Path:
        """A path; relative paths are taken from the config file's folder."""
        text = self.text(name, default)
        return (base / text) if text else base

    def check(self, name: str, ok: bool, message: str) -> None:
        """Record a value-level problem found by the caller."""
        if ok or name not in self.data:
            return
        self.error(name, message)

    def finish(self) -> None:
        for name in sorted(set(self.data) - self._seen):
            self.error(name, "unknown key")

    def parse(self, name: str, fn: Callable[[Table], T]) -> T:
        sub = self.table(name)
        result = fn(sub)
        sub.finish()
        return result

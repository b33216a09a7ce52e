"""Check declarations: the `[[checks]]` tables of config.toml.

A check says what to read (measurement, fields and tag filters, or a raw
query template), which direction is bad, and the smallest change that
matters. The statistics in `checks.stats` decide; this module only declares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from daemon.tomlread import REQUIRED, Table


class Kind(StrEnum):
    COUNT = "count"  # throughput: events per window
    RATIO = "ratio"  # bad events / all events
    LATENCY = "latency"  # fraction slower than the baseline's p95, or per-interval percentiles
    GAUGE = "gauge"  # CPU, memory: per-interval values


class Direction(StrEnum):
    RISE = "rise"
    DROP = "drop"


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class CheckSpec:
    """One metric comparison.

    `field` is the value field for count, gauge and latency; `bad_field` and
    `all_field` the numerator and denominator fields of a ratio. `query`, when
    set, replaces the generated query: a template with `{start}`, `{stop}`,
    `{interval}` placeholders. `latency_mode` is `threshold` (per-request
    values: the share slower than the baseline's p95) or `percentiles`
    (per-interval percentiles: a rank test). `step` is the length of the
    intervals the statistics work on (None: the guard's `look_every`).
    """

    name: str
    kind: Kind
    measurement: str
    field: str
    bad_field: str
    all_field: str
    where: tuple[tuple[str, str], ...]
    query: str | None
    bad: Direction
    min_change: float
    min_absolute: float
    critical: bool
    latency_mode: str = "threshold"
    step: timedelta | None = None

    @property
    def is_rate(self) -> bool:
        """Compared as events over an exposure (`checks.stats.compare_rates`): a count,
        a ratio, or latency as the share slower than the baseline's p95; gauges and
        percentiles get a rank test instead."""
        return self.kind in (Kind.COUNT, Kind.RATIO) or (
            self.kind == Kind.LATENCY and self.latency_mode == "threshold")


def parse_check(t: Table) -> CheckSpec:
    """Read one `[[checks]]` table; problems are recorded in the table's error list."""
    kind = t.choice("kind", tuple(k.value for k in Kind))
    query = t.optional_str("query")
    needs_fields = query is None
    measurement = t.text("measurement", "" if not needs_fields else REQUIRED)
    field = ""
    bad_field = ""
    all_field = ""
    if kind == Kind.RATIO:
        bad_field = t.text("bad_field", "" if not needs_fields else REQUIRED)
        all_field = t.text("all_field", "" if not needs_fields else REQUIRED)
    elif kind in (Kind.COUNT, Kind.GAUGE, Kind.LATENCY):
        field = t.text("field", "" if not needs_fields else REQUIRED)
    latency_mode = "threshold"
    if kind == Kind.LATENCY:
        latency_mode = t.choice("latency_mode", ("threshold", "percentiles"), "threshold")
    for key, value in (("measurement", measurement), ("field", field),
                       ("bad_field", bad_field), ("all_field", all_field)):
        t.check(key, not value or bool(_IDENT.match(value)),
                f"expected a measurement or field name (letters, digits, _ . -), got {value!r}")
    where = t.str_map("where")
    for key, _ in where:
        t.check("where", bool(_IDENT.match(key)),
                f"expected tag names of letters, digits, _ . -, got {key!r}")
    if query is not None and kind == Kind.LATENCY and latency_mode == "threshold":
        t.error("query", "a raw query cannot serve latency_mode = \"threshold\" (it needs the "
                "baseline's p95); use measurement and field, or latency_mode = \"percentiles\"")
    step = t.duration("step", "0s")
    if t.has("step") and (step < timedelta(seconds=1) or step.total_seconds() % 1):
        t.error("step", f"expected whole seconds, at least 1s, got {t.data['step']!r}")
    bad = t.choice("bad", ("rise", "drop"), "drop" if kind == Kind.COUNT else "rise")
    min_change = t.number("min_change", 0.2, low=0.0)
    min_absolute = t.number("min_absolute", 0.0, low=0.0)
    critical = t.flag("critical", True)
    name = t.text("name")
    t.finish()
    return CheckSpec(
        name=name,
        kind=Kind(kind) if kind in Kind.__members__.values() else Kind.COUNT,
        measurement=measurement,
        field=field,
        bad_field=bad_field,
        all_field=all_field,
        where=where,
        query=query,
        bad=Direction(bad) if bad in ("rise", "drop") else Direction.RISE,
        min_change=min_change,
        min_absolute=min_absolute,
        critical=critical,
        latency_mode=latency_mode,
        step=step if step >= timedelta(seconds=1) else None,
    )

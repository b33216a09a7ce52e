"""config.toml, read once into frozen dataclasses.

Every problem is collected and raised together as one `ConfigError` whose
lines each name the file, the dotted key and what was expected. Secrets are
never read here: the config names the files that hold them.
"""

from __future__ import annotations

import ipaddress
import re
import string
import tomllib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from checks.spec import CheckSpec, parse_check
from daemon.errors import ConfigError
from daemon.tomlread import LONGEST, Table, format_duration

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# of a push's false-alarm budget, for the canary bake (checks.verdict)
CANARY_SHARE = 0.67
WEBHOOK_EVENTS = ("started", "passed", "failed", "halted", "resumed", "interrupted", "postponed")


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    timezone: ZoneInfo


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    tokens_file: Path
    read_needs_token: bool
    max_body: int


@dataclass(frozen=True)
class Freeze:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class ScheduleConfig:
    days: frozenset[int]  # 0 is Monday
    window_start: time
    window_end: time
    every: timedelta
    jitter: timedelta
    freezes: tuple[Freeze, ...]
    batch_size: int


@dataclass(frozen=True)
class SourceConfig:
    repo: Path


@dataclass(frozen=True)
class DeployConfig:
    path: str
    keep_releases: int
    activate: str
    health_url: str | None
    health_timeout: timedelta
    canary: int
    concurrency: int
    host_timeout: timedelta
    command_timeout: timedelta
    on_regression: str  # "halt" | "rollback"


@dataclass(frozen=True)
class SshConfig:
    user: str
    key_file: Path
    known_hosts: Path
    connect_timeout: timedelta
    keepalive: timedelta


@dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    port: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class InfluxConfig:
    api: str  # "v1" | "v2"
    url: str
    database: str
    user: str | None
    password_file: Path | None
    org: str
    bucket: str
    token_file: Path | None
    timeout: timedelta
    measurement_prefix: str


@dataclass(frozen=True)
class GuardConfig:
    baseline: timedelta
    warmup: timedelta
    bake: timedelta
    look_every: timedelta
    false_alarm: float
    seasonal_days: int  # 0 is off
    on_inconclusive: str  # "halt" | "pass" | "extend"
    extend: timedelta
    canary_share: float = CANARY_SHARE  # of false_alarm for the canary bake; the fleet: the rest


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    events: tuple[str, ...]
    timeout: timedelta
    retries: int


@dataclass(frozen=True)
class Config:
    file: Path
    daemon: DaemonConfig
    api: ApiConfig
    schedule: ScheduleConfig
    source: SourceConfig
    deploy: DeployConfig
    ssh: SshConfig
    hosts: tuple[HostConfig, ...]
    influxdb: InfluxConfig
    guard: GuardConfig
    checks: tuple[CheckSpec, ...]
    webhooks: tuple[WebhookConfig, ...]

    @property
    def db_path(self) -> Path:
        return self.daemon.state_dir / "pushguard.db"

    @property
    def releases_dir(self) -> Path:
        return self.daemon.state_dir / "releases"


def load(path: Path | str, asked: set[str] | None = None) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem.

    `asked`, when given, collects every dotted key the reader looked for.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{file}: cannot read: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
    errors: list[str] = []
    base = file.resolve().parent
    root = Table(file, "", raw, errors, asked=asked)
    daemon = root.parse("daemon", lambda t: _daemon(t, base))
    tz = daemon.timezone
    config = Config(
        file=file,
        daemon=daemon,
        api=root.parse("api", lambda t: _api(t, base)),
        schedule=root.parse("schedule", lambda t: _schedule(t, tz)),
        source=root.parse("source", lambda t: SourceConfig(repo=t.path("repo", base))),
        deploy=root.parse("deploy", _deploy),
        ssh=root.parse("ssh", lambda t: _ssh(t, base)),
        hosts=_hosts(root),
        influxdb=root.parse("influxdb", lambda t: _influx(t, base)),
        guard=root.parse("guard", _guard_and_opt_out),
        checks=_checks(root),
        webhooks=tuple(_webhook(t) for t in root.tables("webhooks", required=False)),
    )
    root.finish()
    _check_together(root, config)
    if errors:
        raise ConfigError(errors)
    return config


def _daemon(t: Table, base: Path) -> DaemonConfig:
    state_dir = t.path("state_dir", base)
    name = t.text("timezone", "UTC")
    tz = ZoneInfo("UTC")
    try:
        tz = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        t.error("timezone", f"expected an IANA time zone like \"Europe/Berlin\", got {name!r}")
    return DaemonConfig(state_dir=state_dir, timezone=tz)


def _api(t: Table, base: Path) -> ApiConfig:
    listen = t.text("listen", "127.0.0.1:8470")
    host, _, port_text = listen.rpartition(":")
    port = 0
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        t.error("listen", f"expected HOST:PORT like \"127.0.0.1:8470\", got {listen!r}")
    else:
        port = int(port_text)
    return ApiConfig(
        host=host.strip("[]"),
        port=port,
        tokens_file=t.path("tokens_file", base),
        read_needs_token=t.flag("read_needs_token", False),
        max_body=t.integer("max_body", 65536, low=1024, high=16 * 1024 * 1024),
    )


_WINDOW = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


def parse_days(text: str) -> frozenset[int]:
    """"mon-fri", "mon,wed,fri", "sat-sun" -> weekday numbers (0 is Monday)."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise ValueError(f"expected day names like \"mon-fri\" or \"mon,wed\", got {text!r}")
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if last else a
        if b < a:
            raise ValueError(f"day range {part!r} runs backwards")
        days.update(range(a, b + 1))
    return frozenset(days)


def _schedule(t: Table, tz: ZoneInfo) -> ScheduleConfig:
    days: frozenset[int] = frozenset(range(5))
    days_text = t.text("days", "mon-fri")
    try:
        days = parse_days(days_text)
    except ValueError as exc:
        t.error("days", str(exc))
    window = t.text("window", "09:00-17:00")
    start, end = time(9), time(17)
    match = _WINDOW.match(window)
    if not match or int(match[1]) > 23 or int(match[3]) > 24 or int(match[2]) > 59 \
            or int(match[4]) > 59:
        t.error("window", f"expected HH:MM-HH:MM like \"09:00-17:00\", got {window!r}")
    elif match[3] == "24" and match[4] != "00":
        t.error("window", f"a window may end at 24:00 but not after it, got {window!r}")
    else:
        start = time(int(match[1]), int(match[2]))
        end = time(23, 59, 59) if match[3] == "24" else time(int(match[3]), int(match[4]))
        if end <= start:
            t.error("window", f"the window ends before it starts: {window!r}")
    # a slot a day at most: the slots are laid out per day
    every = t.duration("every", "20m", minimum=timedelta(seconds=1), maximum=timedelta(days=1))
    jitter = t.duration("jitter", "0s")
    if every and jitter >= every:
        t.error("jitter", "expected less than `every`")
    freezes: list[Freeze] = []
    for i, text in enumerate(t.str_list("freezes", [])):
        try:
            freezes.append(_freeze(text, tz))
        except ValueError as exc:
            t.error(f"freezes[{i}]", str(exc))
    return ScheduleConfig(
        days=days,
        window_start=start,
        window_end=end,
        every=every,
        jitter=jitter,
        freezes=tuple(freezes),
        batch_size=t.integer("batch_size", 1, low=1, high=100),
    )


def _freeze(text: str, tz: ZoneInfo) -> Freeze:
    first, sep, last = text.partition("/")
    if not sep:
        raise ValueError(f"expected START/END like \"2026-12-24T00:00/2026-12-27T00:00\", "
                         f"got {text!r}")
    try:
        start = datetime.fromisoformat(first)
        end = datetime.fromisoformat(last)
    except ValueError:
        raise ValueError(f"expected ISO date-times START/END, got {text!r}") from None
    start = start if start.tzinfo else start.replace(tzinfo=tz)
    end = end if end.tzinfo else end.replace(tzinfo=tz)
    if end <= start:
        raise ValueError(f"the freeze ends before it starts: {text!r}")
    return Freeze(start=start, end=end)


def _deploy(t: Table) -> DeployConfig:
    path = t.text("path", "/srv/app")
    t.check("path", path.startswith("/") and "'" not in path and "\n" not in path,
            f"expected an absolute path without quotes, got {path!r}")
    health_url = t.optional_str("health_url")
    if health_url is not None:
        t.check("health_url", health_url.startswith(("http://", "https://")),
                f"expected an http:// or https:// URL, got {health_url!r}")
        if (problem := _health_url_problem(health_url)) is not None:
            t.error("health_url", problem)
    host_timeout = t.duration("host_timeout", "2m", minimum=timedelta(seconds=1))
    command_timeout = t.duration("command_timeout", "60s", minimum=timedelta(seconds=1))
    return DeployConfig(
        path=path.rstrip("/") or "/",
        keep_releases=t.integer("keep_releases", 5, low=2, high=1000),
        activate=t.text("activate"),
        health_url=health_url,
        health_timeout=t.duration("health_timeout", "30s", minimum=timedelta(seconds=1)),
        canary=t.integer("canary", 1, low=0, high=10000),
        concurrency=t.integer("concurrency", 50, low=1, high=10000),
        host_timeout=host_timeout,
        command_timeout=command_timeout,
        on_regression=t.choice("on_regression", ("halt", "rollback"), "halt"),
    )


# what daemon.hostrun fills into deploy.health_url per host
HEALTH_URL_FIELDS = ("address", "name", "port")


def _health_url_problem(template: str) -> str | None:
    """Why `template` cannot be filled per host, or None."""
    allowed = ", ".join(f"{{{f}}}" for f in HEALTH_URL_FIELDS)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        unknown = [f for f in fields if f not in HEALTH_URL_FIELDS]
        if unknown:
            return f"unknown field {{{unknown[0]}}} in {template!r}; the fields are {allowed}"
        template.format(address="192.0.2.1", name="web1", port=22)
    except (ValueError, IndexError, KeyError) as exc:
        return f"not a template with the fields {allowed} ({exc}): {template!r}"
    return None


def _ssh(t: Table, base: Path) -> SshConfig:
    return SshConfig(
        user=t.text("user"),
        key_file=t.path("key_file", base),
        known_hosts=t.path("known_hosts", base),
        connect_timeout=t.duration("connect_timeout", "10s", minimum=timedelta(seconds=1)),
        keepalive=t.duration("keepalive", "15s", minimum=timedelta(seconds=1)),
    )


_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def _host(t: Table) -> HostConfig:
    name = t.text("name")
    t.check("name", bool(_HOST_NAME.match(name)),
            f"expected letters, digits, '.', '-' or '_', got {name!r}")
    address = t.text("address")
    if address and not _is_address(address):
        t.error("address", f"expected an IP address or a host name, got {address!r}")
    host = HostConfig(
        name=name,
        address=address,
        port=t.integer("port", 22, low=1, high=65535),
        tags=t.str_list("tags", []),
    )
    t.finish()
    return host


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(re.match(r"^[A-Za-z0-9]([A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?$", text))


def _hosts(root: Table) -> tuple[HostConfig, ...]:
    hosts = tuple(_host(t) for t in root.tables("hosts"))
    if root.has("hosts") and isinstance(root.data["hosts"], list) and not hosts:
        root.error("hosts", "expected at least one [[hosts]] table, got an empty list")
    names = [h.name for h in hosts]
    for name in sorted({n for n in names if names.count(n) > 1}):
        root.error("hosts", f"host name {name!r} is used more than once")
    return hosts


def _influx(t: Table, base: Path) -> InfluxConfig:
    api = t.choice("api", ("v1", "v2"), "v1")
    url = t.text("url")
    t.check("url", url.startswith(("http://", "https://")),
            f"expected an http:// or https:// URL, got {url!r}")
    v1, v2 = api == "v1", api == "v2"
    password_file = t.optional_str("password_file")
    token_file = t.optional_str("token_file")
    config = InfluxConfig(
        api=api,
        url=url.rstrip("/"),
        database=t.text("database") if v1 else t.text("database", ""),
        user=t.optional_str("user"),
        password_file=base / password_file if password_file else None,
        org=t.text("org") if v2 else t.text("org", ""),
        bucket=t.text("bucket") if v2 else t.text("bucket", ""),
        token_file=base / token_file if token_file else None,
        timeout=t.duration("timeout", "10s", minimum=timedelta(milliseconds=100)),
        measurement_prefix=t.text("marker_measurement", "pushguard_deploys"),
    )
    if v2 and token_file is None:
        t.error("token_file", "missing (required when api = \"v2\")")
    return config


def _guard_and_opt_out(t: Table) -> GuardConfig:
    guard = parse_guard(t)
    # config.toml only (not a scenario's guard): read here, used by _check_together
    t.flag("allow_unguarded", False)
    return guard


def _check_together(root: Table, config: Config) -> None:
    """Rules over more than one table: each problem names one key."""
    if not root.errors:  # a half-read config would give follow-on errors
        _check_bake(root, config.guard, config.checks)
        _check_hosts_apart(root, config.deploy, config.hosts)
    guard = root.data.get("guard")
    allowed = isinstance(guard, dict) and guard.get("allow_unguarded") is True
    if not allowed and not any(check.critical for check in config.checks):
        root.error("checks", "no critical check: every push would pass unguarded; add a "
                             "[[checks]] table with critical = true, or set "
                             "[guard] allow_unguarded = true to push without a guard")


def _check_bake(root: Table, guard: GuardConfig, checks: tuple[CheckSpec, ...]) -> None:
    g = root.table("guard")
    if guard.look_every.total_seconds() % 1:
        # InfluxQL's GROUP BY time() grid is whole seconds; a fractional look misaligns it
        g.error("look_every", f"expected whole seconds, got {g.data['look_every']!r}")
    if guard.warmup + guard.look_every > guard.bake:
        g.error("warmup", "`warmup` + `look_every` must fit in `bake`, or no look ever "
                          f"judges (warmup {format_duration(guard.warmup)}, look_every "
                          f"{format_duration(guard.look_every)}, bake "
                          f"{format_duration(guard.bake)})")
        return
    judged = guard.bake - guard.warmup
    for i, check in enumerate(checks):
        if check.step is not None and check.step > judged:
            root.error(f"checks[{i}].step",
                       f"{format_duration(check.step)} is longer than `bake` - `warmup` "
                       f"({format_duration(judged)}): no interval would ever be judged")


def _check_hosts_apart(root: Table, deploy: DeployConfig, hosts: tuple[HostConfig, ...]) -> None:
    if "{name}" in deploy.path:
        return  # hosts sharing one machine deploy to folders of their own
    seen: dict[tuple[str, int], str] = {}
    for host in hosts:
        where = (host.address.lower(), host.port)
        if where in seen:
            root.error("hosts", f"{host.address} port {host.port} is used by more than one "
                                f"host ({seen[where]!r} and {host.name!r}); they would deploy "
                                "into the same deploy.path: put {name} in it to share a "
                                "machine")
        else:
            seen[where] = host.name


def parse_guard(t: Table) -> GuardConfig:
    """The `[guard]` table (also a scenario file's `guard` object)."""
    seasonal = t.text("seasonal", "off")
    seasonal_days = 0
    if seasonal != "off":
        match = re.match(r"^([1-7])d$", seasonal)
        if match:
            seasonal_days = int(match[1])
        else:
            t.error("seasonal", f"expected \"off\" or \"1d\" to \"7d\", got {seasonal!r}")
    policy = t.text("on_inconclusive", "halt")
    extend = timedelta(0)
    if policy.startswith("extend:"):
        try:
            from daemon.tomlread import parse_duration

            extend = parse_duration(policy.removeprefix("extend:"))
            policy = "extend"
            if extend > LONGEST:
                t.error("on_inconclusive", f"expected an extension of at most "
                                           f"{format_duration(LONGEST)}, got {extend}")
        except ValueError as exc:
            t.error("on_inconclusive", str(exc))
    elif policy not in ("halt", "pass"):
        t.error("on_inconclusive",
                f"expected \"halt\", \"pass\" or \"extend:DURATION\", got {policy!r}")
    guard = GuardConfig(
        baseline=t.duration("baseline", "30m", minimum=timedelta(seconds=1)),
        warmup=t.duration("warmup", "1m"),
        bake=t.duration("bake", "10m", minimum=timedelta(seconds=1)),
        look_every=t.duration("look_every", "30s", minimum=timedelta(seconds=1)),
        false_alarm=t.number("false_alarm", 0.01, low=1e-6, high=0.5),
        seasonal_days=seasonal_days,
        on_inconclusive=policy,
        extend=extend,
        canary_share=t.number("canary_share", CANARY_SHARE, low=0.05, high=0.95),
    )
    if guard.look_every > guard.bake:
        t.error("look_every", "expected at most `bake`")
    return guard


def _checks(root: Table) -> tuple[CheckSpec, ...]:
    checks = tuple(parse_check(t) for t in root.tables("checks", required=False))
    names = [c.name for c in checks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        root.error("checks", f"check name {name!r} is used more than once")
    return checks


def _webhook(t: Table) -> WebhookConfig:
    url = t.text("url")
    t.check("url", url.startswith(("http://", "https://")),
            f"expected an http:// or https:// URL, got {url!r}")
    events = t.str_list("events", list(WEBHOOK_EVENTS))
    for i, event in enumerate(events):
        if event not in WEBHOOK_EVENTS:
            t.error(f"events[{i}]", f"expected one of {', '.join(WEBHOOK_EVENTS)}, got {event!r}")
    hook = WebhookConfig(
        url=url,
        events=events,
        timeout=t.duration("timeout", "5s", minimum=timedelta(milliseconds=100)),
        retries=t.integer("retries", 3, low=0, high=10),
    )
    t.finish()
    return hook

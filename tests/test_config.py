"""config.toml: the working sandbox config loads; every kind of bad config is
refused with exit status 2 and a message naming the file and the key; the
README documents every key."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from daemon import config
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GOOD = (ROOT / "config.toml").read_text()


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", "-c", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def sandbox(tmp_path: Path, text: str = GOOD) -> Path:
    """`text` as tmp_path/config.toml, with the files its relative paths name."""
    for name in ("var/tokens", "var/ssh/id_ed25519", "var/ssh/known_hosts"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "var/demo/app.git").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_root_config_is_valid(tmp_path: Path) -> None:
    result = run_check(sandbox(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    loaded = config.load(ROOT / "config.toml")
    assert loaded.schedule.every == timedelta(minutes=20)
    assert [h.address for h in loaded.hosts] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert loaded.deploy.on_regression == "halt"


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('[guard]\n', '[guard]\nbogus = 1\n', "guard.bogus", "unknown key"),
        ('canary = 1 ', 'canary = "one" ', "deploy.canary", "expected an integer"),
        ('user = "root"', '', "ssh.user", "missing"),
        ('every = "20m"', 'every = "20 minutes"', "schedule.every", "expected a duration"),
        ('window = "09:00-17:00"', 'window = "17:00-09:00"', "schedule.window",
         "ends before it starts"),
        ('window = "09:00-17:00"', 'window = "9 to 5"', "schedule.window", "HH:MM-HH:MM"),
        ('bake = "10m"', 'bake = "-"', "guard.bake", "expected a duration"),
        ('canary_share = 0.67', 'canary_share = 1.0', "guard.canary_share",
         "expected at most 0.95"),
        ('canary_share = 0.67', 'canary_share = nan', "guard.canary_share",
         "expected a finite number"),
        ('false_alarm = 0.01', 'false_alarm = inf', "guard.false_alarm",
         "expected a finite number"),
        ('on_regression = "halt"', 'on_regression = "pray"', "deploy.on_regression",
         "expected one of"),
        ('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"', "daemon.timezone",
         "time zone"),
        ('kind = "ratio"', 'kind = "vibes"', "checks[0].kind", "expected one of"),
        ('read_needs_token = false', 'read_needs_token = "no"', "api.read_needs_token",
         "true or false"),
        ('"2026-12-24T00:00/2026-12-27T00:00"', '"2026-12-27T00:00/2026-12-24T00:00"',
         "schedule.freezes[0]", "ends before it starts"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, old: str, new: str, key: str,
                                       expected: str) -> None:
    assert old in GOOD, old
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace(old, new, 1))
    result = run_check(bad)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if f": {key}:" in line]
    assert lines, result.stderr
    assert str(bad) in lines[0] and expected in lines[0], lines


def test_empty_host_list_is_refused(tmp_path: Path) -> None:
    text = "hosts = []\n" + re.sub(r"\[\[hosts\]\].*?(?=\[influxdb\])", "", GOOD, flags=re.S)
    bad = tmp_path / "nohosts.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    assert any("hosts" in p and "at least one" in p for p in info.value.problems)


def test_every_error_is_reported_not_just_the_first(tmp_path: Path) -> None:
    bad = tmp_path / "many.toml"
    bad.write_text(GOOD.replace('every = "20m"', 'every = "x"')
                   .replace('canary = 1 ', 'canary = -1 ').replace('[guard]\n', '[guard]\nz = 1\n'))
    result = run_check(bad)
    assert result.returncode == 2
    for key in ("schedule.every", "deploy.canary", "guard.z"):
        assert f": {key}:" in result.stderr


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[daemon\n")
    result = run_check(bad)
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = run_check(tmp_path / "absent.toml")
    assert result.returncode == 2 and "no such file" in result.stderr


def test_v2_needs_org_bucket_and_token_file(tmp_path: Path) -> None:
    bad = tmp_path / "v2.toml"
    bad.write_text(GOOD.replace('api = "v1"', 'api = "v2"'))
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    text = "\n".join(info.value.problems)
    for key in ("influxdb.org", "influxdb.bucket", "influxdb.token_file"):
        assert key in text


def test_readme_documents_every_key() -> None:
    asked: set[str] = set()
    config.load(ROOT / "config.toml", asked)
    readme = (ROOT / "README.md").read_text()
    keys = {key for key in asked if "." in key}
    missing = sorted(key for key in keys if f"`{key}`" not in readme)
    assert not missing, f"README.md does not document: {missing}"


def test_days_parsing() -> None:
    assert config.parse_days("mon-fri") == frozenset(range(5))
    assert config.parse_days("mon,wed,sun") == frozenset({0, 2, 6})
    with pytest.raises(ValueError):
        config.parse_days("fri-mon")


@pytest.mark.parametrize(("key", "spoil"), [
    ("api.tokens_file", lambda d: (d / "var/tokens").unlink()),
    ("api.tokens_file", lambda d: ((d / "var/tokens").unlink(), (d / "var/tokens").mkdir())),
    ("source.repo", lambda d: (d / "var/demo/app.git").rmdir()),
    ("ssh.key_file", lambda d: (d / "var/ssh/id_ed25519").unlink()),
    ("ssh.known_hosts", lambda d: (d / "var/ssh/known_hosts").unlink()),
])
def test_check_config_and_serve_refuse_what_serve_cannot_use(
        tmp_path: Path, key: str, spoil: Callable[[Path], object]) -> None:
    """The unit's ExecStartPre gate must refuse what `serve` would fail on."""
    path = sandbox(tmp_path)
    spoil(tmp_path)
    for argv in (["check-config", "-c", str(path)],
                 ["serve", "-c", str(path), "--log-level", "error"]):
        result = subprocess.run([sys.executable, "-m", "daemon", *argv], capture_output=True,
                                text=True, cwd=ROOT, timeout=60, check=False)
        assert result.returncode == 2, (argv, result.stderr)
        assert f"{path}: {key}: cannot " in result.stderr, result.stderr
    assert not (tmp_path / "var/pushguard.db").exists()


def test_check_config_refuses_an_unresolvable_listen_host(tmp_path: Path) -> None:
    path = sandbox(tmp_path, GOOD.replace('listen = "127.0.0.1:8470"',
                                          'listen = "no-such-host.invalid:8470"'))
    result = run_check(path)
    assert result.returncode == 2
    assert f"{path}: api.listen: cannot resolve" in result.stderr, result.stderr


NO_CHECKS = re.sub(r"\[\[checks\]\].*?(?=\[\[webhooks\]\])", "", GOOD, flags=re.S)


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('every = "20m"', 'every = "99999999999d"', "schedule.every", "too long"),
        ('every = "20m"', 'every = "3000000d"', "schedule.every", "at most 1d"),
        ('every = "20m"', 'every = "25h"', "schedule.every", "at most 1d"),
        ('bake = "10m"', 'bake = "9999999999999999999999s"', "guard.bake", "too long"),
        ('baseline = "30m"', 'baseline = "400d"', "guard.baseline", "at most 366d"),
        ('on_inconclusive = "halt"', 'on_inconclusive = "extend:99999999999d"',
         "guard.on_inconclusive", "too long"),
        ('look_every = "30s"', 'look_every = "2500ms"', "guard.look_every", "whole seconds"),
        ('warmup = "1m"', 'warmup = "10m"', "guard.warmup",
         "`warmup` + `look_every` must fit in `bake`"),
        ('warmup = "1m"', 'warmup = "585s"', "guard.warmup",
         "`warmup` + `look_every` must fit in `bake`"),
        ('kind = "ratio"', 'kind = "ratio"\nstep = "10m"', "checks[0].step",
         "longer than `bake` - `warmup`"),
        ('health_url = "http://{address}:8080/health"',
         'health_url = "http://{adress}:8080/health"', "deploy.health_url", "{adress}"),
        ('health_url = "http://{address}:8080/health"',
         'health_url = "http://{address:8080/health"', "deploy.health_url", "template"),
        ('health_url = "http://{address}:8080/health"',
         'health_url = "http://{0}:8080/health"', "deploy.health_url", "{0}"),
        ('address = "127.0.0.3"', 'address = "127.0.0.2"', "hosts",
         "127.0.0.2 port 2222 is used by more than one host"),
        ('window = "09:00-17:00"', 'window = "09:00-24:30"', "schedule.window", "24:00"),
    ],
)
def test_more_bad_configs_name_the_key(tmp_path: Path, old: str, new: str, key: str,
                                       expected: str) -> None:
    assert old in GOOD, old
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    lines = [p for p in info.value.problems if f": {key}: " in p]
    assert lines and expected in lines[0], info.value.problems


def test_good_edges_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    for old, new in [('window = "09:00-17:00"', 'window = "09:00-24:00"'),
                     ('every = "20m"', 'every = "1d"'),
                     ('warmup = "1m"', 'warmup = "570s"'),
                     ('kind = "ratio"', 'kind = "ratio"\nstep = "9m"'),
                     ('health_url = "http://{address}:8080/health"',
                      'health_url = "http://{name}.web:{port}/health"'),
                     ('path = "/srv/app"', 'path = "/srv/app/{name}"')]:
        path.write_text(GOOD.replace(old, new, 1))
        config.load(path)
    same = GOOD.replace('address = "127.0.0.3"', 'address = "127.0.0.2"', 1)
    path.write_text(same.replace('path = "/srv/app"', 'path = "/srv/{name}/app"', 1))
    assert len({h.address for h in config.load(path).hosts}) == 2


@pytest.mark.parametrize("text", [
    NO_CHECKS,
    GOOD.replace("critical = true", "critical = false"),
], ids=["no-checks", "all-advisory"])
def test_a_config_without_a_critical_check_is_refused_unless_allowed(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "unguarded.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    lines = [p for p in info.value.problems if ": checks: " in p]
    assert lines and "no critical check" in lines[0] and "unguarded" in lines[0], lines
    path.write_text(text.replace("[guard]\n", "[guard]\nallow_unguarded = true\n", 1))
    assert not [c for c in config.load(path).checks if c.critical]

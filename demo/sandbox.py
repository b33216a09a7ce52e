"""Everything `make demo` runs, started in order and stopped in reverse.

`Sandbox(root, timings, screen).start()`:

1. ends what an earlier run left running (its ledger and the shops' pid
   files), refuses to go on while another pushguard holds the state
   directory, and wipes `var/demo` and the daemon's state in `var/` (the
   database and the release archives: the sandbox's own);
2. checks that every port it will listen on is free (a `DemoError` names
   the first one taken);
3. starts influxd, the sshd hosts (writing the SSH key files), builds the
   source repository, writes the tokens and the demo config, installs the
   first release on every host, starts the traffic, the webhook receiver and
   finally the daemon, and returns once the daemon's `/readyz` answers.

`stop()` stops all of it in reverse order and then ends every process that
still descends from the demo (the demo is a subreaper, so that includes the
shops); it is idempotent and safe after a partial start. Every process the
demo starts is recorded in the ledger. One demo runs at a time per checkout:
`start()` first takes `var/demo.lock` (DemoError if another run holds it),
so leftovers are only ever ended when their run is over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from daemon import config as daemon_config
from daemon.config import Config
from demo import config as demo_config
from demo import hosts as demo_hosts
from demo import influx, procs, repo
from demo.daemon_process import DaemonProcess, pushguard_command
from demo.errors import DemoError
from demo.layout import Layout
from demo.screen import Screen
from demo.traffic import MetricWriter, Target, Traffic
from demo.webhooks import HookReceiver
from tests.influxd import Influxd


class Sandbox:
    """See the module docstring."""

    def __init__(self, root: Path, timings: demo_config.Timings, screen: Screen) -> None:
        self.layout = Layout(root)
        self.timings = timings
        self.screen = screen
        self.ledger = procs.Ledger(self.layout.ledger)
        self.base: Config = daemon_config.load(self.layout.root_config)
        self.config: Config = self.base
        self.refs: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.influx: Influxd | None = None
        self.hosts: demo_hosts.Hosts | None = None
        self.traffic: Traffic | None = None
        self.traffic_started = 0.0
        self.hooks: HookReceiver | None = None
        self.daemon: DaemonProcess | None = None
        self.reaper = procs.Reaper(self._own_children)
        self._lock: IO[bytes] | None = None
        self._stopped = False

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api.host}:{self.config.api.port}"

    # -- start -------------------------------------------------------------------

    def start(self) -> None:
        say = self.screen.say
        self._lock = procs.hold_lock(self.layout.run_lock)
        if self._lock is None:
            raise DemoError(f"another demo is running ({self.layout.run_lock} is held); "
                            "stop it first (Ctrl-C in its terminal)")
        procs.become_subreaper()
        self._clean_slate()
        fleet_plan = demo_hosts.plan(self.base)
        self._check_ports(fleet_plan)
        say("step", f"InfluxDB on {self.base.influxdb.url}, database {self.base.influxdb.database}")
        self.influx = influx.start(self.layout.influx, _port(self.base.influxdb.url),
                                   self.base.influxdb.database)
        self.ledger.add("influxd", self.influx.pid)
        self._start_hosts(fleet_plan)
        self.refs = repo.build(self.base.source.repo, self.layout.work_tree)
        say("ok", f"source repository {self.layout.rel(self.base.source.repo)}: "
                  f"{len(self.refs)} commits")
        self._write_config_and_tokens()
        say("step", f"installing the first release ({self.refs['base'][:12]}) on every host, "
                    "with pushguard's own fleet code; each host starts its shop")
        demo_hosts.install(self.config, self.refs["base"])
        self.reaper.start()  # from here on the demo starts no short-lived subprocesses
        self._start_traffic(fleet_plan)
        self._start_hooks()
        self._start_daemon()

    def _clean_slate(self) -> None:
        ended = procs.end_leftovers(self.ledger, self.layout.shop_pid_files())
        if ended:
            self.screen.say("note", "ended what an earlier run left running: " + ", ".join(ended))
        state = self.base.daemon.state_dir
        _check_unlocked(state / "pushguard.lock")
        shutil.rmtree(self.layout.demo, ignore_errors=True)
        shutil.rmtree(self.base.releases_dir, ignore_errors=True)
        for name in ("pushguard.db", "pushguard.db-wal", "pushguard.db-shm"):
            (state / name).unlink(missing_ok=True)
        self.layout.demo.mkdir(parents=True)

    def _check_ports(self, fleet_plan: demo_hosts.FleetPlan) -> None:
        wanted = [("127.0.0.1", _port(self.base.influxdb.url), "InfluxDB"),
                  (self.base.api.host, self.base.api.port, "the pushguard API")]
        for i in range(fleet_plan.count):
            address = f"127.0.0.{fleet_plan.first + i}"
            wanted += [(address, fleet_plan.port, f"sshd of {fleet_plan.prefix}{i + 1}"),
                       (address, fleet_plan.shop_port, f"the shop of {fleet_plan.prefix}{i + 1}")]
        for address, port, what in wanted:
            if _free(address, port):
                continue
            if what == "InfluxDB" and _influx_answers(self.base.influxdb.url):
                raise DemoError(f"an InfluxDB already listens on {address}:{port} (Debian's "
                                "influxdb service starts one when the package is installed); "
                                "stop it (`systemctl stop influxdb`) and run the demo again")
            raise DemoError(f"{address}:{port} ({what}) is taken by another process; "
                            "stop it and run the demo again (`ss -ltnp` shows who)")

    def _start_hosts(self, fleet_plan: demo_hosts.FleetPlan) -> None:
        self.hosts = demo_hosts.Hosts.create(fleet_plan, self.layout.fleet)
        names = ", ".join(f"{fleet_plan.prefix}{i + 1}" for i in range(fleet_plan.count))
        where = (f"each with its own {fleet_plan.app_path} (mount namespace)"
                 if self.hosts.namespaced else
                 f"sharing one disk (no mount namespaces here): {self.hosts.deploy_path()}")
        self.screen.say("step", f"SSH hosts {names} on 127.0.0.{fleet_plan.first}.."
                                f"{fleet_plan.first + fleet_plan.count - 1}:{fleet_plan.port}, "
                                f"{where}")
        try:
            self.hosts.start()
        finally:
            for i, pid in enumerate(self.hosts.sshd_pids()):
                self.ledger.add(f"sshd {fleet_plan.prefix}{i + 1}", pid)

    def _write_config_and_tokens(self) -> None:
        assert self.hosts is not None
        deploy_path = None if self.hosts.namespaced else self.hosts.deploy_path()
        self.config = demo_config.write(self.layout.root_config, self.layout.config,
                                        self.timings, deploy_path)
        self.tokens = demo_config.write_tokens(self.config.api.tokens_file)
        for role, token in self.tokens.items():
            file = self.layout.token_file(role)
            file.write_text(token + "\n")
            file.chmod(0o600)
        t = self.timings
        self.screen.say("ok", f"{self.layout.rel(self.layout.config)}: config.toml with "
                              f"demo timings (pushes any day, any hour, every {t.every}; "
                              f"baseline {t.baseline}, warm-up {t.warmup}, bake {t.bake}, a "
                              f"look every {t.look_every}); tokens in "
                              f"{self.layout.rel(self.config.api.tokens_file)}")
        checked = subprocess.run(
            [*pushguard_command(), "check-config", "-c", str(self.layout.config)],
            capture_output=True, text=True, timeout=60, check=False)
        if checked.returncode != 0:
            raise DemoError(f"pushguard check-config refused the demo config:\n"
                            f"{checked.stdout}{checked.stderr}")
        self.screen.block(checked.stdout.splitlines())

    def _start_traffic(self, fleet_plan: demo_hosts.FleetPlan) -> None:
        writer = MetricWriter(self.base.influxdb.url, self.base.influxdb.database,
                              lambda text: self.screen.say("bad" if text else "ok",
                                                           text or "metrics written again"))
        targets = [Target(name, url) for name, url in fleet_plan.checkout_urls().items()]
        self.traffic = Traffic(targets, self.timings.rps, writer).start()
        self.traffic_started = time.monotonic()
        self.screen.say("step", f"traffic: {self.timings.rps:g} checkouts a second to the "
                                f"{len(targets)} shops; per-host requests, errors and "
                                "latency go to InfluxDB every second")

    def _start_hooks(self) -> None:
        for hook in self.config.webhooks:
            receiver = HookReceiver.start(hook.url, lambda text: self.screen.say("hook", text))
            if receiver is not None:
                self.hooks = receiver
                self.screen.say("ok", f"a stand-in chat room receives the webhooks at {hook.url}")
                return

    def _start_daemon(self) -> None:
        self.screen.say("step", f"the daemon: {' '.join(pushguard_command())} serve -c "
                                f"{self.layout.rel(self.layout.config)} (log: "
                                f"{self.layout.rel(self.layout.daemon_log)})")
        self.daemon = DaemonProcess.start(self.layout.config, self.layout.daemon_log,
                                          self.layout.root, self.api_url)
        self.ledger.add("pushguard", self.daemon.pid)
        self.daemon.wait_ready()
        self.screen.say("ok", f"pushguard is ready: {self.api_url}")

    def daemon_log_tail(self) -> str:
        return self.daemon.log_tail() if self.daemon else ""

    def seconds_of_traffic(self) -> float:
        return time.monotonic() - self.traffic_started if self.traffic_started else 0.0

    # -- stop ----------------------------------------------------------------------

    def _own_children(self) -> set[int]:
        """The children the demo waits for itself (the reaper leaves them alone)."""
        pids = {p.pid for p in (self.daemon, self.influx) if p is not None}
        if self.hosts is not None:
            pids.update(self.hosts.sshd_pids())
        return pids

    def stop(self) -> bool:
        """Stop everything in reverse order (module docstring); idempotent.

        False (and nothing done) when stopped already or never started: the
        processes of another run are not this one's to stop.
        """
        if self._stopped or self._lock is None:
            return False
        self._stopped = True
        steps: list[tuple[str, Callable[[], object]]] = [
            ("the daemon", self.daemon.stop if self.daemon else _nothing),
            ("the traffic", self.traffic.stop if self.traffic else _nothing),
            ("the webhook receiver", self.hooks.stop if self.hooks else _nothing),
            ("the shops", lambda: procs.end(procs.shop_pids(self.layout.shop_pid_files()))),
            ("the SSH hosts", self.hosts.stop if self.hosts else _nothing),
            ("InfluxDB", self.influx.stop if self.influx else _nothing)]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # go on: everything else must still stop
                self.screen.say("bad", f"stopping {what}: {exc}")
        self.reaper.stop()
        procs.end(procs.descendants(os.getpid()))
        self.reaper.reap()
        self._lock.close()
        return True


def _nothing() -> None:
    """A stop step for a part that never started."""


def _port(url: str) -> int:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise DemoError(f"the demo runs InfluxDB on 127.0.0.1 with an explicit port; "
                        f"config.toml [influxdb] url is {url}")
    return parts.port


def _free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise DemoError(f"cannot use {address}:{port}: {exc.strerror}") from None
    return True


def _influx_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
            return answer.headers.get("X-Influxdb-Version") is not None
    except (OSError, urllib.error.URLError):
        return False


def _check_unlocked(lock: Path) -> None:
    """DemoError if a pushguard daemon (not the demo's) holds the state directory."""
    if not lock.exists():
        return
    with lock.open("rb+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = file.read().decode(errors="replace").strip() or "?"
            raise DemoError(f"a pushguard daemon (pid {holder}) runs on {lock.parent}; "
                            "stop it first: the demo starts from a clean state") from None
        with contextlib.suppress(OSError):
            fcntl.flock(file, fcntl.LOCK_UN)

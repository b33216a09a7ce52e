"""The demo's fleet: real sshd hosts as the root config's `[[hosts]]` name them.

`plan(config)` checks that the configured fleet is one the sandbox can build
(addresses 127.0.0.N, N+1, ... with one port and names PREFIX1, PREFIX2, ...;
a health URL with a port) and says how; a `DemoError` names what does not fit.

`Hosts.create(plan, base)` prepares them with `tests.sshfleet.SshFleet` (each
in its own mount namespace with its own `[deploy] path`, where the machine
allows it); `start()` starts every sshd, writes the client key and
known_hosts where `[ssh]` names them, and each host's
`<deploy path>/shared/host.env` (SHOP_HOST, SHOP_PORT: where the shop of that
host listens, read by bin/activate). `install(config, commit)` deploys one
commit to every host with pushguard's own code (`daemon.release`,
`daemon.fleet`), so the shops serve before the daemon starts; it raises
`DemoError` with each host's failure.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from daemon.config import Config
from daemon.fleet import Fleet
from daemon.hostrun import HostOutcome
from daemon.models import Outcome
from daemon.release import build_release
from demo.errors import DemoError
from tests.sshfleet import SshFleet, SshHost


@dataclass(frozen=True)
class FleetPlan:
    """What `SshFleet` needs to build the configured hosts."""

    first: int  # last octet of the first address
    count: int
    port: int
    prefix: str
    app_path: str
    shop_port: int
    key_file: Path
    known_hosts: Path

    def checkout_urls(self) -> dict[str, str]:
        return {f"{self.prefix}{i + 1}": f"http://127.0.0.{self.first + i}:{self.shop_port}"
                "/checkout" for i in range(self.count)}


def plan(config: Config) -> FleetPlan:
    hosts = config.hosts
    where = f"{config.file} [[hosts]]"
    match = re.fullmatch(r"([A-Za-z_-]+)1", hosts[0].name)
    octet = re.fullmatch(r"127\.0\.0\.(\d+)", hosts[0].address)
    if not match or not octet:
        raise DemoError(f"{where}: the demo builds hosts named PREFIX1, PREFIX2, ... on "
                        f"127.0.0.N, N+1, ...; the first host is {hosts[0].name} on "
                        f"{hosts[0].address}")
    first, prefix = int(octet[1]), match[1]
    for i, host in enumerate(hosts):
        if (host.name, host.address, host.port) != (f"{prefix}{i + 1}",
                                                    f"127.0.0.{first + i}", hosts[0].port):
            raise DemoError(f"{where}: host {i + 1} should be {prefix}{i + 1} on "
                            f"127.0.0.{first + i} port {hosts[0].port}, not {host.name} on "
                            f"{host.address} port {host.port}")
    if config.ssh.user != getpass.getuser():
        raise DemoError(f"{config.file} [ssh] user: the demo's sshd hosts log in as "
                        f"{getpass.getuser()!r}, the config says {config.ssh.user!r}")
    health = config.deploy.health_url
    port = urlsplit(health.format(address="127.0.0.1", name="x", port=0)).port \
        if health else None
    if port is None:
        raise DemoError(f"{config.file} [deploy] health_url: the demo needs a URL with the "
                        f"shop's port, like \"http://{{address}}:8080/health\"")
    return FleetPlan(first=first, count=len(hosts), port=hosts[0].port, prefix=prefix,
                     app_path=config.deploy.path, shop_port=port, key_file=config.ssh.key_file,
                     known_hosts=config.ssh.known_hosts)


class Hosts:
    """The running sshd hosts of the demo."""

    def __init__(self, fleet: SshFleet, fleet_plan: FleetPlan) -> None:
        self.fleet = fleet
        self.plan = fleet_plan

    @classmethod
    def create(cls, fleet_plan: FleetPlan, base: Path) -> Hosts:
        """Prepare (not start) the hosts; `namespaced` and `deploy_path()` are then known."""
        fleet = SshFleet(base, fleet_plan.count, app_path=fleet_plan.app_path,
                         first=fleet_plan.first, port=fleet_plan.port,
                         name_prefix=fleet_plan.prefix)
        return cls(fleet, fleet_plan)

    @property
    def namespaced(self) -> bool:
        return self.fleet.namespaced

    def deploy_path(self) -> str:
        return self.fleet.deploy_path()

    def start(self) -> None:
        """Start every sshd (or none), then write the client files and host.env files."""
        self.fleet.start()
        for source, target in ((self.fleet.key_file, self.plan.key_file),
                               (self.fleet.known_hosts, self.plan.known_hosts)):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o600)
        for host in self.fleet.hosts:
            env = self.shared(host) / "host.env"
            env.parent.mkdir(parents=True, exist_ok=True)
            env.write_text(f"SHOP_HOST={host.address}\nSHOP_PORT={self.plan.shop_port}\n")

    def shared(self, host: SshHost) -> Path:
        """The local folder that is `<deploy path>/shared` on `host`."""
        return host.local(self.fleet.remote_path(host, self.deploy_path()) + "/shared")

    def shop_pid_files(self) -> list[Path]:
        return [self.shared(h) / name for h in self.fleet.hosts
                for name in ("shop.pid", "shop.pid.new")]

    def sshd_pids(self) -> list[int]:
        return [h.process.pid for h in self.fleet.hosts if h.process is not None]

    def stop(self) -> None:
        self.fleet.close()


def install(config: Config, commit: str) -> None:
    """Deploy `commit` to every configured host; DemoError naming each failed host."""
    outcomes = asyncio.run(_install(config, commit))
    bad = [o for o in outcomes if o.outcome != Outcome.OK]
    if bad:
        raise DemoError("the first release did not start on " + "; ".join(
            f"{o.host} ({o.outcome} at {o.step}: {o.stderr_tail.strip()[-300:]})" for o in bad))


async def _install(config: Config, commit: str) -> list[HostOutcome]:
    release = await build_release(config.source.repo, commit, config.releases_dir)
    fleet = Fleet(config.ssh, config.deploy, config.hosts)
    try:
        return list(await fleet.deploy(config.hosts, release, env={}))
    finally:
        await fleet.close()

"""Fan-out benchmark: pushguard's Fleet against parallel-ssh on loopback sshd hosts.

    .venv/bin/python -m bench.fanout [--sizes 1,10,50] [--repeat 3] [--mb 1]

Starts `max(sizes)` real OpenSSH hosts on 127.0.0.2... (tests/sshfleet.py),
builds one release of about `--mb` MB (incompressible) from a throw-away git
repository, and for each fleet size deploys it `--repeat` times with
pushguard's `Fleet.deploy` and with Debian's parallel-ssh (`parallel-scp` of
the archive, then one `parallel-ssh` running the same unpack, switch,
activate and prune script). Every run goes to a fresh folder, so every run
uploads. The reference gets its `releases/` folders made before its clock
starts; pushguard makes its own inside its run.

Printed per size (medians over the repeats): wall time, CPU seconds of the
pushing side (pushguard: this process, `RUSAGE_SELF`; parallel-ssh: its
processes and their ssh/scp children, `RUSAGE_CHILDREN`), CPU per host, and
the ratios pushguard/reference. Goals: at 50 hosts pushguard's wall time is
at most the reference's and its CPU per host per push is at most 10 ms.

Loopback only, bounded: every subprocess and every deploy has a timeout, and
all sshd processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import DeployConfig
from daemon.fleet import Fleet
from daemon.models import Outcome
from daemon.release import Release, build_release, resolve_ref
from tests.sshfleet import SshFleet, SshHost

ACTIVATE = '"$PUSHGUARD_PATH/current/bin/activate"'
RUN_TIMEOUT = 300.0  # seconds for one deploy of one tool

# the reference's work after the upload, with the same steps as pushguard's
REFERENCE_SCRIPT = """set -e
P=$1; ID=$2; SUM=$3; KEEP=$4; ACT=$5
cd "$P/releases"
echo "$SUM  .upload.tar.gz" | sha256sum -c --status -
t=$(mktemp -d ".tmp-$ID.XXXXXX"); tar -xzf .upload.tar.gz -C "$t"; chmod 755 "$t"
mv -T "$t" "$ID"; rm -f .upload.tar.gz
cd "$P"; old=$(readlink current || true)
if [ -n "$old" ]; then ln -sfn "$old" .previous.tmp && mv -T .previous.tmp previous; fi
ln -sfn "releases/$ID" .current.tmp && mv -T .current.tmp current
(cd current && PUSHGUARD_RELEASE=$ID PUSHGUARD_PATH=$P sh -c "$ACT")
cd releases; n=0
for d in $(ls -1t); do n=$((n + 1)); if [ "$n" -gt "$KEEP" ]; then rm -rf -- "$d"; fi; done
"""


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_repo(folder: Path, megabytes: float) -> Path:
    """A git repository whose one commit is ~`megabytes` MB of incompressible data."""
    repo = folder / "repo"
    (repo / "bin").mkdir(parents=True)
    (repo / "data.bin").write_bytes(os.urandom(int(megabytes * 1_000_000)))
    (repo / "README").write_text("bench release\n")
    activate = repo / "bin" / "activate"
    activate.write_text('#!/bin/sh\necho "$PUSHGUARD_RELEASE" > "$PUSHGUARD_PATH/activated"\n')
    activate.chmod(0o755)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True, env=env, timeout=60)
    return repo


def deploy_config(path: str, concurrency: int) -> DeployConfig:
    return DeployConfig(
        path=path, keep_releases=5, activate=ACTIVATE, health_url=None,
        health_timeout=timedelta(seconds=10), canary=1, concurrency=concurrency,
        host_timeout=timedelta(seconds=RUN_TIMEOUT), command_timeout=timedelta(seconds=60),
        on_regression="halt",
    )


async def run_pushguard(fleet: SshFleet, hosts: Sequence[SshHost], release: Release,
                        path: str) -> Run:
    configs = [host.host_config() for host in hosts]
    pusher = Fleet(fleet.ssh_config(), deploy_config(path, concurrency=50), configs)
    try:
        cpu, start = self_cpu(), time.monotonic()
        outcomes = await asyncio.wait_for(
            pusher.deploy(configs, release, env={"PUSHGUARD_PUSH": "bench"}), RUN_TIMEOUT)
        run = Run(time.monotonic() - start, self_cpu() - cpu)
    finally:
        await pusher.close()
    bad = [o for o in outcomes if o.outcome is not Outcome.OK]
    if bad:
        raise SystemExit(f"pushguard deploy failed: {bad[:3]}")
    return run


def run_reference(fleet: SshFleet, hosts: Sequence[SshHost], release: Release, path: str,
                  workdir: Path) -> Run:
    hosts_file = workdir / "pssh-hosts"
    hosts_file.write_text("".join(f"{fleet.user}@{h.address}:{h.port}\n" for h in hosts))
    common = ["-h", str(hosts_file), "-p", str(len(hosts)), "-t", str(int(RUN_TIMEOUT)),
              "-x", "-F /dev/null",
              "-O", f"IdentityFile={fleet.key_file}", "-O", "IdentitiesOnly=yes",
              "-O", f"UserKnownHostsFile={fleet.known_hosts}",
              "-O", "StrictHostKeyChecking=yes", "-O", "BatchMode=yes"]
    for host in hosts:  # the layout the reference script expects, made off the clock
        fleet_path = fleet.remote_path(host, path)
        host.local(fleet_path + "/releases").mkdir(parents=True, exist_ok=True)
    script = shlex.join(["sh", "-c", REFERENCE_SCRIPT, "sh", path, release.id,
                         release.sha256, "5", ACTIVATE])
    cpu, start = children_cpu(), time.monotonic()
    _pssh(["parallel-scp", *common, str(release.archive), f"{path}/releases/.upload.tar.gz"])
    _pssh(["parallel-ssh", *common, script])
    return Run(time.monotonic() - start, children_cpu() - cpu)


def _pssh(argv: list[str]) -> None:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT + 30, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({result.returncode}):\n{result.stdout[-2000:]}"
                         f"\n{result.stderr[-2000:]}")


def check_live(fleet: SshFleet, hosts: Sequence[SshHost], path: str, release: Release) -> None:
    """Every host's `current` points at the release and its activate ran."""
    for host in hosts:
        root = host.local(fleet.remote_path(host, path))
        target = os.readlink(root / "current")
        activated = (root / "activated").read_text().strip()
        if target != f"releases/{release.id}" or activated != release.id:
            raise SystemExit(f"{host.name}: current -> {target}, activated {activated}")


def measure(fleet: SshFleet, release: Release, size: int, repeat: int,
            workdir: Path) -> tuple[list[Run], list[Run]]:
    hosts = fleet.hosts[:size]
    ours: list[Run] = []
    theirs: list[Run] = []
    for attempt in range(repeat):
        path = fleet.deploy_path(f"bench/pg-{size}-{attempt}")
        ours.append(asyncio.run(run_pushguard(fleet, hosts, release, path)))
        check_live(fleet, hosts, path, release)
        path = fleet.deploy_path(f"bench/pssh-{size}-{attempt}")
        theirs.append(run_reference(fleet, hosts, release, path, workdir))
        check_live(fleet, hosts, path, release)
    return ours, theirs


def report(size: int, ours: list[Run], theirs: list[Run]) -> str:
    def med(runs: list[Run], field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in runs))

    rows = []
    for tool, runs in (("pushguard", ours), ("parallel-ssh", theirs)):
        wall, cpu = med(runs, "wall"), med(runs, "cpu")
        rows.append(f"{size:>5}  {tool:<12}  {wall:>7.3f}  {cpu:>7.3f}  {cpu / size * 1000:>9.1f}")
    rows.append(f"{size:>5}  {'ratio':<12}  {med(ours, 'wall') / med(theirs, 'wall'):>7.2f}  "
                f"{med(ours, 'cpu') / med(theirs, 'cpu'):>7.2f}  {'':>9}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,50", help="fleet sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size and tool")
    parser.add_argument("--mb", type=float, default=1.0, help="release size in MB")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="pushguard-bench-") as tmp:
        workdir = Path(tmp)
        repo = make_repo(workdir, args.mb)
        commit = asyncio.run(resolve_ref(repo, "HEAD"))
        release = asyncio.run(build_release(repo, commit, workdir / "releases"))
        with SshFleet(workdir / "fleet", max(sizes)) as fleet:
            print(f"release {release.size / 1e6:.2f} MB; {max(sizes)} sshd hosts on loopback "
                  f"({'mount namespaces' if fleet.namespaced else 'per-host paths'}); "
                  f"{os.cpu_count()} CPUs; medians of {args.repeat} runs")
            print("hosts  tool           wall_s    cpu_s  cpu/host_ms")
            for size in sizes:
                ours, theirs = measure(fleet, release, size, args.repeat, workdir)
                print(report(size, ours, theirs), flush=True)


if __name__ == "__main__":
    main()

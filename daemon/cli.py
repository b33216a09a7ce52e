"""The `pushguard` command: serve, check-config, judge, and the REST client commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from daemon import config as config_module
from daemon.errors import ConfigError

DEFAULT_CONFIG = os.environ.get("PUSHGUARD_CONFIG", "config.toml")


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = config_module.load(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(summary(config))
    return 0


def summary(config: config_module.Config) -> str:
    s = config.schedule
    days = ",".join(config_module.DAY_NAMES[d] for d in sorted(s.days))
    checks = ", ".join(f"{c.name} ({c.kind}{'' if c.critical else ', advisory'})"
                       for c in config.checks) or "none"
    return "\n".join([
        f"{config.file}: ok",
        f"  state dir   {config.daemon.state_dir} ({config.daemon.timezone.key})",
        f"  api         http://{config.api.host}:{config.api.port}"
        f" (read needs token: {'yes' if config.api.read_needs_token else 'no'})",
        f"  schedule    {days} {s.window_start:%H:%M}-{s.window_end:%H:%M} every "
        f"{s.every.total_seconds():g}s, {len(s.freezes)} freeze(s), batch {s.batch_size}",
        f"  source      {config.source.repo}",
        f"  fleet       {len(config.hosts)} host(s), canary {config.deploy.canary}, "
        f"on regression: {config.deploy.on_regression}",
        f"  influxdb    {config.influxdb.api} at {config.influxdb.url}",
        f"  checks      {checks}",
        f"  webhooks    {len(config.webhooks)}",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushguard",
        description="Push approved changes to a fleet, watch the metrics, stop the line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a config file and print a summary")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

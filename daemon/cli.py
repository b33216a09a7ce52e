"""The `pushguard` command: serve, check-config, judge, and the REST client commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from daemon import client, logs, preflight
from daemon import config as config_module
from daemon.errors import ConfigError, PushguardError

log = logging.getLogger("pushguard")

DEFAULT_CONFIG = os.environ.get("PUSHGUARD_CONFIG", "config.toml")


def _load(path: str) -> config_module.Config:
    """The config at `path`, and what it names usable (ConfigError if not)."""
    config = config_module.load(path)
    preflight.check(config)
    return config


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
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


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    return asyncio.run(_run(config))


async def _run(config: config_module.Config) -> int:
    from daemon.service import Service  # the server side is only imported to serve

    service = Service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except PushguardError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    await stop.wait()
    log.info("stopping: letting the current host step end")
    deploy = config.deploy
    await service.stop(grace=min(deploy.host_timeout, deploy.command_timeout).total_seconds()
                       + 5.0)
    log.info("stopped")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from checks import scenario

    return scenario.main(list(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushguard",
        description="Push approved changes to a fleet, watch the metrics, stop the line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate a config file and print a summary")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file")
    check.set_defaults(func=_check_config)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       default="info")
    serve.set_defaults(func=_serve)
    judge = sub.add_parser("judge", help="replay one scenario file through the guard",
                           add_help=False)
    judge.add_argument("rest", nargs=argparse.REMAINDER)
    judge.set_defaults(func=_judge)
    client.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

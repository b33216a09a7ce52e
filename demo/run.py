"""`make demo` and `make demo-check`: `python -m demo [--check]` from the repository root.

Without `--check` (make demo): starts the sandbox (see `demo.sandbox`) with
timings a person can follow, plays the story (see `demo.story`) with every
step on the screen, then keeps everything running for a look around until
Ctrl-C, or for at most LINGER (an hour). With `--check` (make demo-check):
the same story headless with timings of seconds; prints a short report and
exits 0 only if every step happened. Either way Ctrl-C (SIGINT), SIGTERM or
SIGHUP stops everything the demo started, and nothing is left running.

Exit status: 0 the story happened; 1 a step did not happen; 2 the sandbox
could not start; 130 stopped by a signal before the story was over.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from daemon.client import Api
from daemon.errors import ConfigError
from demo import config as demo_config
from demo.errors import DemoError
from demo.events import EventTail
from demo.sandbox import Sandbox
from demo.screen import Screen
from demo.story import Report, Story

ROOT = Path(__file__).resolve().parents[1]
LINGER = 3600.0  # seconds everything keeps running after the story (make demo)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def hints(sandbox: Sandbox) -> dict[str, list[str]]:
    """The follow-along commands, by moment (`{push}`: the failed push's id)."""
    url = sandbox.api_url
    admin = sandbox.layout.token_file("admin").relative_to(ROOT)
    pg = ".venv/bin/pushguard"
    return {
        "start": [
            f"cd {ROOT}",
            f"curl -s {url}/v1/status",
            f"curl -s '{url}/v1/events?after=0'",
            f"curl -s '{url}/v1/changes?state=approved'",
            f"curl -s {url}/v1/pushes",
            f"curl -s {url}/v1/hosts",
            f"{pg} status        # or: {pg} watch (follows the running push)",
            f"export PUSHGUARD_TOKEN_FILE={admin}   # tokens: var/demo/{{read,deploy,admin}}"
            ".token",
        ],
        "halt": [
            f"curl -s {url}/v1/status",
            f"curl -s {url}/v1/pushes/{{push}}          # hosts, checks, evidence, events",
            f"{pg} show {{push}}",
            f"curl -s -X POST -H \"Authorization: Bearer $(cat {admin})\" "
            f"-d '{{\"reason\": \"looked at it\"}}' {url}/v1/resume   # what a person would do",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="headless, with timings of seconds; exit 0 only if every step "
                             "happened (make demo-check)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo runs sshd hosts in mount namespaces: run it as root", file=sys.stderr)
        return 2
    # SIGINT too: a shell that starts the demo in the background ignores it
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    screen = Screen(headless=args.check)
    timings = demo_config.CHECK if args.check else demo_config.DEMO
    started = time.monotonic()
    try:
        sandbox = Sandbox(ROOT, timings, screen)
    except ConfigError as exc:
        screen.say("bad", "config.toml: " + "; ".join(exc.problems))
        return 2
    report: Report | None = None
    try:
        sandbox.start()
        setup = time.monotonic() - started
        tips = hints(sandbox)
        screen.say("cmd", "follow along in another terminal:")
        screen.block(tips["start"], kind="cmd")
        assert sandbox.traffic is not None
        story = Story(url=sandbox.api_url, tokens=sandbox.tokens, refs=sandbox.refs,
                      timings=timings, screen=screen, traffic=sandbox.traffic,
                      traffic_age=sandbox.seconds_of_traffic, hints=tips,
                      token_files={role: sandbox.layout.rel(sandbox.layout.token_file(role))
                                   for role in sandbox.tokens})
        report = story.play()
        _print_report(screen, report, setup, time.monotonic() - started)
        if not report.ok:
            screen.say("note", "the end of the daemon's log:")
            screen.block(sandbox.daemon_log_tail().splitlines())
        if not args.check:
            _linger(screen, story.tail.after, sandbox)
        return 0 if report.ok else 1
    except DemoError as exc:
        screen.say("bad", str(exc))
        return 2
    except ConfigError as exc:
        screen.say("bad", "the demo config: " + "; ".join(exc.problems))
        return 2
    except KeyboardInterrupt:
        screen.say("note", "stopping")
        return 130 if report is None else 0 if report.ok else 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        if sandbox.stop():
            screen.say("ok", f"everything the demo started has stopped "
                             f"({time.monotonic() - started:.0f}s in all)")


def _print_report(screen: Screen, report: Report, setup: float, total: float) -> None:
    screen.say("step", f"report ({'every step happened' if report.ok else 'FAILED'}; "
                       f"set-up {setup:.0f}s, story {total - setup:.0f}s)")
    screen.block([f"{'ok ' if ok else 'NOT'} {text}" for ok, text in report.lines])


def _linger(screen: Screen, after: int, sandbox: Sandbox) -> None:
    """Keep everything running (and the audit log on screen) until a signal, or LINGER."""
    until = time.strftime("%H:%M", time.localtime(time.time() + LINGER))
    screen.say("step", "everything keeps running: try the commands above; Ctrl-C stops it "
                       f"all (it stops by itself at {until})")
    tail = EventTail(Api(sandbox.api_url, sandbox.tokens["read"]), screen)
    tail.after = after
    tail.start()
    deadline = time.monotonic() + LINGER
    try:
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 60.0))  # a signal ends the wait (KeyboardInterrupt)
        screen.say("note", f"{LINGER / 3600:g} hour(s) after the story: stopping by itself")
    finally:
        tail.stop()


if __name__ == "__main__":
    sys.exit(main())

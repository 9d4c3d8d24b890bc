"""vasticlaude logs: more of the job's log than `status` shows, or follow it live.

Reads `job.log` from the run dir on the instance (stdout and stderr of the job, plus
the wrapper's start and end lines). Long lines are cut at --width characters and
control bytes removed, so binary output cannot flood the terminal or the context.
With --follow it streams new lines until the job ends, reconnecting (2/4/8/16 s
backoff) when the SSH connection drops; the job itself never notices.

Usage: vasticlaude logs [--experiment X] [--instance ID] [-n LINES] [--grep TEXT] [--follow]

JSON (--json, not with --follow) data: {"experiment", "instance_id", "lines": [...], "truncated": bool}

Exit codes: 0 ok · 1 no log yet · 3 SSH/API trouble.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.ops import logs


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude logs", __doc__)
    console.add_instance_flags(p)
    p.add_argument("-n", "--lines", type=console.number(10_000_000, whole=True), default=100, help="lines from the end (default 100)")
    p.add_argument("--grep", help="only lines containing this text")
    p.add_argument("--width", type=console.number(1_000_000, whole=True), default=400, help="cut lines longer than this")
    p.add_argument("--follow", action="store_true", help="stream new lines until the job ends")
    return p


def human(data: dict) -> str:
    return "" if data.get("followed") else "\n".join(data["lines"])


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, exit_code=lambda data: 0)


def run(args: argparse.Namespace) -> dict:
    bound = console.bind(args)
    if args.follow:
        return logs.follow(bound, args.lines, args.width, args.grep)
    return logs.tail(bound, args.lines, args.width, args.grep)

"""vasticlaude logs: more of the job's log than `status` shows, or follow it live.

Reads `job.log` from the run dir on the instance (stdout and stderr of the job, plus
the wrapper's start and end lines). Long lines are cut at --width characters and
control bytes removed, so binary output cannot flood the terminal or the context.
With --follow it streams new lines until the job ends, reconnecting (2/4/8/16 s
backoff) when the SSH connection drops; the job itself never notices.

Usage: vasticlaude logs [--experiment X] [--instance ID] [--node I] [-n LINES] [--grep TEXT] [--follow]

Several nodes (`up --nodes N`): the group's name shows node 0's log (rank 0, the one that
checkpoints), `--node I` another node's; each node is also the experiment `<group>-n<I>`.

JSON (--json, not with --follow) data: {"experiment", "instance_id", "lines": [...], "truncated": bool}

Exit codes: 0 ok · 1 no log yet · 3 SSH/API trouble.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.errors import USAGE, Error
from vasticlaude.ops import logs, nodes


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude logs", __doc__)
    console.add_instance_flags(p)
    p.add_argument("-n", "--lines", type=console.number(10_000_000, whole=True), default=100, help="lines from the end (default 100)")
    p.add_argument("--grep", help="only lines containing this text")
    p.add_argument("--width", type=console.number(1_000_000, whole=True), default=400, help="cut lines longer than this")
    p.add_argument("--follow", action="store_true", help="stream new lines until the job ends")
    p.add_argument("--node", type=console.number(63, zero=True, whole=True), help="several nodes: which node's log (default 0)")
    return p


def human(data: dict) -> str:
    return "" if data.get("followed") else "\n".join(data["lines"])


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, exit_code=lambda data: 0)


def run(args: argparse.Namespace) -> dict:
    group = nodes.group_of(args.experiment)
    if group is not None:
        args.experiment = nodes.member(args.experiment, args.node or 0)
    elif args.node is not None:
        raise Error("not_nodes", f"{args.experiment or 'this experiment'} runs on one node",
                    "Drop --node; it is for experiments rented with up --nodes N.", USAGE)
    bound = console.bind(args)
    if args.follow:
        return logs.follow(bound, args.lines, args.width, args.grep)
    return logs.tail(bound, args.lines, args.width, args.grep)

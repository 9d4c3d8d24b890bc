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
import shlex
import subprocess
import sys
import time

from . import command
from .errors import API, FAILED, Error
from .output import progress
from .remote import Layout
from .ssh import BACKOFF, CONNECTION_FAILED, ssh_argv
from .ssh import run as ssh_run
from .target import bind

CLEAN = "LC_ALL=C tr -d '\\000-\\010\\013\\014\\016-\\037'"


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude logs", __doc__)
    command.add_instance_flags(p)
    p.add_argument("-n", "--lines", type=int, default=100, help="lines from the end (default 100)")
    p.add_argument("--grep", help="only lines containing this text")
    p.add_argument("--width", type=int, default=400, help="cut lines longer than this")
    p.add_argument("--follow", action="store_true", help="stream new lines until the job ends")
    return p


def _reader(log: str, lines: int, width: int, grep: str | None, follow: bool) -> str:
    """Shell that prints the log's last `lines` lines (of those matching `grep`, when given)."""
    match = f"grep --line-buffered -F -e {shlex.quote(grep)}" if grep else ""
    if follow:
        source = f"tail -n {int(lines)} -F {log}" + (f" | {match}" if match else "")
    else:
        source = (f"{match} {log} | tail -n {int(lines)}" if match else f"tail -n {int(lines)} {log}")
    return f"[ -f {log} ] || {{ echo '@@nolog'; exit 0; }}; {source} | cut -c1-{int(width)} | {CLEAN}"


def run(args: argparse.Namespace) -> dict:
    bound = bind(args)
    log = shlex.quote(Layout(bound.experiment).run + "/job.log")
    route = bound.route()
    if args.follow:
        follow(route, Layout(bound.experiment), args)
        return {"experiment": bound.experiment, "instance_id": bound.instance_id, "lines": [], "followed": True}
    proc = ssh_run(route, _reader(log, args.lines, args.width, args.grep, False), timeout=60)
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if lines[:1] == ["@@nolog"]:
        raise Error("no_log", f"{bound.experiment} has no job log yet", "Start it with 'vasticlaude run -- CMD'.", FAILED)
    return {"experiment": bound.experiment, "instance_id": bound.instance_id, "lines": lines,
            "truncated": len(lines) >= args.lines}


def follow(route, layout: Layout, args: argparse.Namespace) -> None:
    """Stream the log; stop when the wrapper has ended; reconnect on dropped connections."""
    log, run_dir = shlex.quote(layout.run + "/job.log"), shlex.quote(layout.run)
    stop_when_done = (f"( while [ ! -f {run_dir}/exit_code ]; do sleep 2; done; sleep 1; "
                      f"pkill -P $$ tail 2>/dev/null ) & ")
    lines, failures = args.lines, 0
    while failures <= len(BACKOFF):
        cmd = stop_when_done + _reader(log, lines, args.width, args.grep, True)
        proc = subprocess.Popen(ssh_argv(route, cmd), stdout=sys.stdout.buffer, stdin=subprocess.DEVNULL)
        if proc.wait() != CONNECTION_FAILED:
            return
        pause = BACKOFF[min(failures, len(BACKOFF) - 1)]
        failures += 1
        progress(f"vasticlaude: connection lost; reconnecting in {pause:g} s")
        time.sleep(pause)
        lines = 0  # what was shown stays shown; carry on from the end
    raise Error("ssh_failed", "could not keep following the log", "The job keeps running; try again later.", API)


def human(data: dict) -> str:
    return "" if data.get("followed") else "\n".join(data["lines"])


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human, exit_code=lambda data: 0)

"""The job's log over SSH: its tail (grep, cut), or followed until the job ends, reconnecting on drops.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time

from vasticlaude.core.retry import ssh_pauses
from vasticlaude.errors import API, FAILED, Error
from vasticlaude.ops.binding import Bound
from vasticlaude.output import progress, redact
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import CONNECTION_FAILED, remember, ssh_argv
from vasticlaude.remote.ssh import run as ssh_run

CLEAN = "LC_ALL=C tr -d '\\000-\\010\\013\\014\\016-\\037'"


def _reader(log: str, lines: int, width: int, grep: str | None) -> str:
    """Shell that prints the log's last `lines` lines (of those matching `grep`, when given)."""
    match = f"grep -F -e {shlex.quote(grep)}" if grep else ""
    source = (f"{match} {log} | tail -n {int(lines)}" if match else f"tail -n {int(lines)} {log}")
    return f"[ -f {log} ] || {{ echo '@@nolog'; exit 0; }}; {source} | cut -c1-{int(width)} | {CLEAN}"


def _follower(log: str, run_dir: str, lines: int, width: int, grep: str | None) -> str:
    """Shell that follows the log until the wrapper has ended. Only `tail` is ended (by its pid:
    images may lack pkill), so what cut and tr still buffer is flushed, not lost."""
    match = f" | grep --line-buffered -F -e {shlex.quote(grep)}" if grep else ""
    return (f'P={run_dir}/.follow.$$; [ -f {log} ] || {{ echo @@nolog; exit 0; }}; '
            f'( {{ tail -n {int(lines)} -F {log} & echo $! > "$P"; wait; }}{match} | cut -c1-{int(width)} | {CLEAN} ) '
            f'& R=$!; while [ ! -f {run_dir}/exit_code ] && kill -0 "$R" 2>/dev/null; do sleep 2; done; sleep 1; '
            'kill "$(cat "$P" 2>/dev/null)" 2>/dev/null; wait; rm -f "$P"')


def tail(bound: Bound, lines: int, width: int = 400, grep: str | None = None) -> dict:
    """The last `lines` lines of the job's log (of those containing `grep`), each cut at `width`."""
    log = shlex.quote(Layout(bound.experiment).run + "/job.log")
    proc = ssh_run(bound.route(), _reader(log, lines, width, grep), timeout=60)
    got = redact(proc.stdout.decode("utf-8", "replace")).splitlines()
    if got[:1] == ["@@nolog"]:
        raise Error("no_log", f"{bound.experiment} has no job log yet", "Start it with 'vasticlaude run -- CMD'.", FAILED)
    return {"experiment": bound.experiment, "instance_id": bound.instance_id, "lines": got,
            "truncated": len(got) >= lines}


def follow(bound: Bound, lines: int, width: int = 400, grep: str | None = None) -> dict:
    """Stream the log to stdout; stop when the wrapper has ended; reconnect on dropped connections."""
    route, layout = bound.route(), Layout(bound.experiment)
    log, run_dir = shlex.quote(layout.run + "/job.log"), shlex.quote(layout.run)
    pauses, failures, ways, switched = ssh_pauses(), 0, route.both(), False
    while failures <= len(pauses):
        cmd = _follower(log, run_dir, lines, width, grep)
        proc = subprocess.Popen(ssh_argv(ways[0], cmd), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for line in proc.stdout:  # line by line, each with its secrets masked (the job's log is its own)
            sys.stdout.buffer.write(redact(line.decode("utf-8", "replace")).encode("utf-8"))
            sys.stdout.buffer.flush()
        if proc.wait() != CONNECTION_FAILED:
            if ways[0] is not route:
                remember(ways[0])
            return {"experiment": bound.experiment, "instance_id": bound.instance_id, "lines": [], "followed": True}
        if len(ways) > 1 and not switched:  # the other route (direct / Vast's proxy) at once, same lines
            ways, switched = ways[::-1], True
            continue
        switched = False
        pause = pauses[min(failures, len(pauses) - 1)]
        failures += 1
        progress(f"vasticlaude: connection lost; reconnecting in {pause:g} s")
        time.sleep(pause)
        lines = 0  # what was shown stays shown; carry on from the end
    raise Error("ssh_failed", "could not keep following the log", "The job keeps running; try again later.", API)



"""vasticlaude run: start the experiment's command on its instance, detached, and return.

The command runs under a wrapper rendered from templates/run.sh.j2, started with
setsid/nohup in its own session and process group: a dropped SSH connection or a
closed Claude session cannot stop it. The wrapper keeps everything in files that
`vasticlaude status` reads: job.log (stdout+stderr), exit_code, started_at,
ended_at, heartbeat (every --heartbeat s). The job gets:
  VASTICLAUDE_CHECKPOINT_DIR  save checkpoints here (pulled home, used to resume)
  VASTICLAUDE_OUTPUT_DIR      write results here (what `pull` brings back)
  VASTICLAUDE_RESUME          1 when the checkpoint dir already holds a checkpoint
  VASTICLAUDE_EXPERIMENT, VASTICLAUDE_RUN_DIR
It runs in the pushed code folder (`vasticlaude push` first) unless --workdir says
otherwise. After starting, it watches for a second so a command that fails at once
(a typo, a missing file) is reported now rather than at the next status.

Usage: vasticlaude run [--experiment X] [--instance ID] [--env K=V ...] [--restart] -- CMD [ARGS...]

JSON (--json) data: {"experiment", "instance_id", "command", "run_dir", "workdir",
  "state": "running" | "exited", "exit_code": int|null, "log_tail": [lines]}

Exit codes: 0 started (or exited at once with 0) · 1 refused (already running; no
command) or the command failed at once · 2 usage · 3 SSH/API trouble.
"""
from __future__ import annotations

import argparse
import re
import shlex
import time

from . import command, state
from .errors import FAILED, USAGE, Error
from .output import progress
from .remote import Layout
from .ssh import Route, run as ssh_run
from .target import bind
from .templates import render

HEARTBEAT = 15
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# One SSH round trip: refuse if a run is live, install the wrapper (by rename: a running
# bash reads its script as it goes, so the old file must not change under it), start it
# detached, then watch a second for a command that fails at once.
LAUNCH = ('mkdir -p {run} || exit 1; {guard}'
          'cat > {run}/run.sh.new && chmod +x {run}/run.sh.new && mv -f {run}/run.sh.new {run}/run.sh || exit 1; '
          'rm -f {run}/exit_code {run}/ended_at {run}/signal {run}/job_pid; '
          'setsid nohup bash {run}/run.sh >/dev/null 2>&1 </dev/null & '
          'for i in 1 2 3 4 5; do sleep 0.2; [ -f {run}/exit_code ] && break; done; '
          'echo "@@exit=$(cat {run}/exit_code 2>/dev/null)"; tail -n 8 {run}/job.log 2>/dev/null | cut -c1-300')
GUARD = ('if [ -f {run}/job_pid ] && [ ! -f {run}/exit_code ] && kill -0 "$(cat {run}/job_pid)" 2>/dev/null; '
         'then echo "@@busy"; exit 0; fi; ')


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude run", __doc__)
    command.add_target_flags(p)
    p.add_argument("--experiment", help="experiment id (default: the only live one)")
    p.add_argument("--instance", type=int, help="instance id instead of an experiment")
    p.add_argument("--workdir", help="folder on the instance, relative to its $HOME (default: the pushed code)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the job")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT, help="seconds between heartbeats")
    p.add_argument("--restart", action="store_true", help="start even if a run of this experiment is still going")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to run")
    return p


def run(args: argparse.Namespace) -> dict:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        raise Error("no_command", "no command given", "Put it after --, e.g. vasticlaude run -- python train.py", USAGE)
    env = _env(args.env)
    bound = bind(args)
    layout = Layout(bound.experiment)
    workdir = args.workdir or layout.code
    cmd = argv[0] if len(argv) == 1 else shlex.join(argv)
    script = render("run.sh.j2", experiment=bound.experiment, command=cmd, run_dir=layout.run,
                    checkpoint_dir=layout.checkpoints, output_dir=layout.outputs, workdir=workdir,
                    heartbeat=args.heartbeat, env=env)
    result = _launch(bound.route(), layout, script, args.restart)
    _record(bound.experiment, bound.instance_id, cmd, workdir, result)
    return {"experiment": bound.experiment, "instance_id": bound.instance_id, "command": cmd,
            "run_dir": layout.run, "workdir": workdir, **result}


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(key):
            raise Error("bad_env", f"--env {pair!r} is not NAME=VALUE", "", USAGE)
        env[key] = value
    return env


def _launch(route: Route, layout: Layout, script: str, restart: bool) -> dict:
    run_dir = shlex.quote(layout.run)
    guard = "" if restart else GUARD.format(run=run_dir)
    proc = ssh_run(route, LAUNCH.format(run=run_dir, guard=guard), input_bytes=script.encode(), timeout=60)
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    if out[:1] == ["@@busy"]:
        raise Error("already_running", f"a run of {layout.experiment} is still going",
                    "Watch it with 'vasticlaude status', or add --restart to start another.", FAILED)
    marker = next((line for line in out if line.startswith("@@exit=")), "@@exit=")
    code = marker[len("@@exit="):].strip()
    tail = [line for line in out if not line.startswith("@@")]
    if code:
        return {"state": "exited", "exit_code": int(code), "log_tail": tail}
    return {"state": "running", "exit_code": None, "log_tail": tail}


def _record(experiment: str, instance_id: int, cmd: str, workdir: str, result: dict) -> None:
    with state.experiment(experiment) as exp:
        runs = exp.setdefault("runs", [])
        runs.append({"at": time.time(), "instance_id": instance_id, "command": cmd, "workdir": workdir,
                     "immediate_exit": result["exit_code"]})
        exp["command"] = cmd
    state.append_event(experiment, "run", instance_id=instance_id, command=cmd, state=result["state"],
                       exit_code=result["exit_code"])
    if result["state"] == "exited":
        progress(f"vasticlaude: the command exited at once with code {result['exit_code']}")


def human(data: dict) -> str:
    if data["state"] == "exited":
        tail = "\n".join("  " + line for line in data["log_tail"][-5:])
        return f"{data['experiment']}: `{data['command']}` exited at once with code {data['exit_code']}\n{tail}"
    return (f"{data['experiment']}: started `{data['command']}` on instance {data['instance_id']} (detached).\n"
            f"  watch: vasticlaude status --experiment {data['experiment']}")


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human, exit_code=_exit_code)


def _exit_code(data: dict) -> int:
    return FAILED if data["state"] == "exited" and data["exit_code"] else 0

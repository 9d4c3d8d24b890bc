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

Beside the job the same SSH call starts the instance's watchdog (templates/watchdog.sh.j2,
README "Guards"), so an instance nobody watches cannot bill on: it stops the job and the
instance when the experiment's budget or hours are used up (for the budget the SIGTERM comes
one --kill-grace early, so even a job that ignores it is gone at the budget), and after the job ends it waits
--grace s for `vasticlaude pull`, then destroys (pulled, or --disposable) or stops the
instance. It uses the instance's own restricted key, never the account's. A live watchdog
of an earlier run is retired first, so it cannot stop the instance under the new run.
--no-watchdog is unsafe: the instance then bills until someone tears it down.

Usage: vasticlaude run [--experiment X] [--instance ID] [--env K=V ...] [--restart]
                       [--budget-usd USD] [--max-hours H] [--grace S] [--check S] [--kill-grace S]
                       [--on-end destroy-if-pulled|destroy|stop] [--disposable] [--no-watchdog] -- CMD [ARGS...]
Defaults: the budget `up --budget-usd` or an earlier run set, else budget.experiment_usd;
budget.experiment_hours minus the hours the experiment has already run; the "guard" block of
.vasticlaude/config.json. Refused (exit 1) when the experiment's budget or hours are used up.

JSON (--json) data: {"experiment", "instance_id", "command", "run_dir" and "workdir" (only when not the
  usual ~/vasticlaude/<experiment>/run and …/code),
  "state": "running" | "exited", "exit_code": int (once exited), "log_tail": [lines],
  "guard": {"watchdog": bool, "alive": bool, "budget_usd", "max_hours", "on_end",
            "store": true (only with a results store)}} (null limits left out; the guard's
  timings — check_s, grace_s, kill_grace_s — and its $/h are in the experiment's experiment.json)

Several nodes (an experiment rented with `up --nodes N`): the command starts on every node,
each with MASTER_ADDR (node 0's overlay address), MASTER_PORT, NODE_RANK, RANK, WORLD_SIZE (the
nodes: one process per node), NNODES and NODE_ADDR, for commands that launch themselves. With
--torchrun a Python script (`python train.py ARGS`) runs as `torchrun --nnodes N --nproc-per-node
<GPUs> --node-rank i --rdzv-backend c10d --rdzv-endpoint <node 0>:<port> --rdzv-id <experiment>
train.py ARGS`. --budget-usd is the group's, split evenly into the nodes' watchdogs. JSON data
then: {"experiment", "command", "torchrun", "endpoint", "state", "exit_code", "log_tail",
"nodes": [{"node", "experiment", "instance_id", "address", "state", "exit_code", "log_tail", "guard"}], "guard"}.

Exit codes: 0 started (or exited at once with 0) · 1 refused (already running; no
command; the budget or hours are already used up) or the command failed at once ·
2 usage · 3 SSH/API trouble.
"""
from __future__ import annotations

import argparse
import re
import shlex

from vasticlaude import console
from vasticlaude.core.faults import last_words
from vasticlaude.errors import Error
from vasticlaude.errors import FAILED, USAGE
from vasticlaude.ops import job, nodes
from vasticlaude.remote.layout import Layout

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude run", __doc__)
    console.add_instance_flags(p)
    p.add_argument("--workdir", help="folder on the instance, relative to its $HOME (default: the pushed code)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the job")
    p.add_argument("--heartbeat", type=console.number(3600, whole=True), default=job.HEARTBEAT, help="seconds between heartbeats")
    p.add_argument("--restart", action="store_true", help="start even if a run of this experiment is still going")
    p.add_argument("--nodes", type=console.number(64, whole=True), help="expect this many nodes (the experiment's, from up --nodes)")
    p.add_argument("--torchrun", action="store_true", help="several nodes: run the Python script under torchrun (c10d rendezvous at node 0)")
    p.add_argument("--master-port", type=console.number(65535, whole=True), help="several nodes: rendezvous port (default: up's)")
    g = p.add_argument_group("guard (the on-instance watchdog; defaults from the config's budget and guard blocks)")
    g.add_argument("--budget-usd", type=console.USD, help="the experiment's spend cap: at it the job is stopped, then the instance")
    g.add_argument("--max-hours", type=console.HOURS, help="hours this run may last (default: budget.experiment_hours left)")
    g.add_argument("--grace", type=console.SECONDS_OR_ZERO, metavar="S", help="seconds after the job ends to wait for `pull` (default 600)")
    g.add_argument("--on-end", choices=job.ON_END, help="after the grace: destroy if pulled, else stop (default) | destroy | stop")
    g.add_argument("--disposable", action="store_true", help="same as --on-end destroy: nothing on the instance matters")
    g.add_argument("--check", type=console.number(3600), metavar="S", help="seconds between the watchdog's checks (default 15)")
    g.add_argument("--kill-grace", type=console.number(86400, zero=True), metavar="S", help="SIGTERM to SIGKILL, time to checkpoint (default 60)")
    g.add_argument("--no-watchdog", action="store_true", help="UNSAFE: no guard; the instance bills until torn down")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to run")
    return p


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(key):
            raise Error("bad_env", f"--env {pair!r} is not NAME=VALUE", "", USAGE)
        env[key] = value
    return env


def human(data: dict) -> str:
    if data["state"] == "exited":
        tail = "\n".join("  " + line for line in data["log_tail"][-5:])
        return f"{data['experiment']}: `{data['command']}` exited at once with code {data['exit_code']}\n{tail}"
    if "nodes" in data:
        return (f"{data['experiment']}: started `{data['command']}` on {len(data['nodes'])} nodes, rendezvous at "
                f"{data['endpoint']}" + (" (torchrun)" if data["torchrun"] else "") + "\n"
                + "\n".join(f"  node {n['node']}: instance {n['instance_id']} at {n['address']}, {n['state']}"
                            for n in data["nodes"])
                + f"\n  guard: {guard_line(data['guard'])} (each node)\n  watch: vasticlaude watch --experiment {data['experiment']}")
    return (f"{data['experiment']}: started `{data['command']}` on instance {data['instance_id']} (detached).\n"
            f"  guard: {guard_line(data['guard'])}\n"
            f"  watch: vasticlaude status --experiment {data['experiment']}")


def guard_line(guard: dict) -> str:
    if not guard["watchdog"]:
        return "NONE (--no-watchdog): the instance bills until you run 'vasticlaude down'"
    if not guard["alive"]:
        return "the watchdog did not start: nothing guards this instance"
    limits = [f"${guard['budget_usd']:g} budget" if guard["budget_usd"] is not None else "no budget",
              f"{guard['max_hours']:.2f} h" if guard["max_hours"] is not None else "no hour limit"]
    return (f"watchdog on ({', '.join(limits)}; after the job: {guard['grace_s']:g} s grace, then "
            f"{guard['on_end']})")


def explain(data: dict, code: int) -> Error:
    last = last_words(data["log_tail"]) or "no output"
    exp = data["experiment"]
    return Error("command_failed", f"the command exited at once with code {data['exit_code']} (`{last[:160]}`)",
                 f"Read vasticlaude logs --experiment {exp}, fix the code, then vasticlaude push --experiment {exp} "
                 f"and vasticlaude run --experiment {exp} -- CMD again.", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, exit_code=_exit_code, json_view=_json_view, explain=explain)


SHOWN = ("watchdog", "alive", "budget_usd", "max_hours", "on_end", "store")  # the rest stays in experiment.json


def _json_view(data: dict) -> dict:
    """--json: of the guard what bounds the spend and what happens at the end (`store` only when on; its
    timings, $/h and own figures stay in experiment.json); the folders on the instance only where they are
    not the usual ones (Claude reads every byte)."""
    guard = {k: v for k, v in (data.get("guard") or {}).items()
             if k in SHOWN and v is not None and not (k == "store" and not v)}
    usual = Layout(data["experiment"]) if data.get("experiment") else None
    folders = {k: data[k] for k, std in (("run_dir", "run"), ("workdir", "code"))
               if k in data and not (usual and data[k] == getattr(usual, std))}
    kept = {k: v for k, v in data.items() if k not in ("run_dir", "workdir") and not (k == "exit_code" and v is None)}
    return {**kept, **folders, "guard": guard}


def _exit_code(data: dict) -> int:
    return FAILED if data["state"] == "exited" and data["exit_code"] else 0


def run(args: argparse.Namespace) -> dict:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not argv:
        raise Error("no_command", "no command given", "Put it after --, e.g. vasticlaude run -- python train.py", USAGE)
    if args.on_end is not None and args.on_end not in job.ON_END:
        raise Error("bad_guard", f"--on-end must be one of {', '.join(job.ON_END)}", "", USAGE)
    spec = job.JobSpec(command=argv[0] if len(argv) == 1 else shlex.join(argv), env=_env(args.env),
                       workdir=args.workdir, heartbeat=args.heartbeat, restart=args.restart, guard=guard_ask(args))
    group = nodes.group_of(args.experiment)
    if group is not None or args.nodes or args.torchrun:
        if group is None or (args.nodes and args.nodes != group["count"]):
            have = f"has {group['count']} nodes" if group else "is not a multi-node experiment"
            raise Error("bad_nodes", f"experiment {args.experiment} {have}",
                        "Rent the nodes with vasticlaude up --experiment X --nodes N first.", USAGE)
        return nodes.run(console.connect(args), args.experiment, argv, spec, args.torchrun, args.master_port)
    return job.start(console.bind(args), spec)


def guard_ask(args: argparse.Namespace) -> job.GuardAsk:
    return job.GuardAsk(budget_usd=args.budget_usd, max_hours=args.max_hours, grace_s=args.grace,
                        check_s=args.check, kill_grace_s=args.kill_grace,
                        on_end="destroy" if args.disposable else args.on_end, watchdog=not args.no_watchdog)

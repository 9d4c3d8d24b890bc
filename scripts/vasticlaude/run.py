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
instance when the experiment's budget or hours are used up, and after the job ends it waits
--grace s for `vasticlaude pull`, then destroys (pulled, or --disposable) or stops the
instance. It uses the instance's own restricted key, never the account's. A live watchdog
of an earlier run is retired first, so it cannot stop the instance under the new run.
--no-watchdog is unsafe: the instance then bills until someone tears it down.

Usage: vasticlaude run [--experiment X] [--instance ID] [--env K=V ...] [--restart]
                       [--budget-usd USD] [--max-hours H] [--grace S] [--check S] [--kill-grace S]
                       [--on-end destroy-if-pulled|destroy|stop] [--disposable] [--no-watchdog] -- CMD [ARGS...]
Defaults: the budget an earlier run of the experiment set, else budget.experiment_usd;
budget.experiment_hours minus the hours the experiment has already run; the "guard" block of
.vasticlaude/config.json. Refused (exit 1) when the experiment's budget or hours are used up.

JSON (--json) data: {"experiment", "instance_id", "command", "run_dir", "workdir",
  "state": "running" | "exited", "exit_code": int|null, "log_tail": [lines],
  "guard": {"watchdog": bool, "alive": bool, "budget_usd", "max_hours", "grace_s", "on_end",
            "check_s", "kill_grace_s", "dph", "already_spent_usd"}}

Exit codes: 0 started (or exited at once with 0) · 1 refused (already running; no
command; the budget or hours are already used up) or the command failed at once ·
2 usage · 3 SSH/API trouble.
"""
from __future__ import annotations

import argparse
import re
import secrets
import shlex
import time

from . import budget, command, config, costing, state
from .errors import FAILED, USAGE, Error
from .output import progress
from .remote import Layout
from .ssh import Route, run as ssh_run
from .target import Bound, bind
from .templates import render

HEARTBEAT = 15
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ON_END = ("destroy-if-pulled", "destroy", "stop")
# One SSH round trip: refuse if a run is live, install the wrapper and the watchdog (by rename:
# a running shell reads its script as it goes, so the old file must not change under it; both
# come on stdin, split at a random marker line), retire an earlier run's watchdog (it would
# stop the instance under the new run), start both detached in their own sessions, then
# watch a second for a command that fails at once.
LAUNCH = ('mkdir -p {run} || exit 1; {busy}rm -f {run}/watchdog.sh.new; '
          "awk -v a={run}/run.sh.new -v b={run}/watchdog.sh.new '$0 == \"{split}\" {{ f = 1; next }} "
          "{{ print > (f ? b : a) }}' || exit 1; "
          'chmod +x {run}/run.sh.new && mv -f {run}/run.sh.new {run}/run.sh || exit 1; '
          'o=$(cat {run}/watchdog_pid 2>/dev/null); '
          'if [ -n "$o" ] && kill -0 "$o" 2>/dev/null && grep -q watchdog /proc/"$o"/cmdline 2>/dev/null; then '
          'kill -TERM "$o"; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$o" 2>/dev/null || break; sleep 0.1; done; '
          'kill -KILL "$o" 2>/dev/null; fi; '
          'rm -f {run}/exit_code {run}/ended_at {run}/signal {run}/job_pid {run}/pulled {run}/disposable '
          '{run}/watchdog_pid {run}/watchdog_heartbeat {run}/watchdog_done; '
          'setsid nohup bash {run}/run.sh >/dev/null 2>&1 </dev/null & '
          '{watchdog}'
          'for i in 1 2 3 4 5; do sleep 0.2; [ -f {run}/exit_code ] && break; done; '
          'echo "@@watchdog=$(cat {run}/watchdog_pid 2>/dev/null)"; '
          'echo "@@exit=$(cat {run}/exit_code 2>/dev/null)"; tail -n 8 {run}/job.log 2>/dev/null | cut -c1-300')
WATCHDOG = ('mv -f {run}/watchdog.sh.new {run}/watchdog.sh || exit 1; '
            'setsid nohup sh {run}/watchdog.sh >/dev/null 2>&1 </dev/null & '
            'for i in 1 2 3 4 5 6 7 8 9 10; do [ -f {run}/watchdog_pid ] && break; sleep 0.1; done; ')
BUSY = ('if [ -f {run}/job_pid ] && [ ! -f {run}/exit_code ] && kill -0 "$(cat {run}/job_pid)" 2>/dev/null; '
        'then echo "@@busy"; exit 0; fi; ')


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude run", __doc__)
    command.add_instance_flags(p)
    p.add_argument("--workdir", help="folder on the instance, relative to its $HOME (default: the pushed code)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the job")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT, help="seconds between heartbeats")
    p.add_argument("--restart", action="store_true", help="start even if a run of this experiment is still going")
    g = p.add_argument_group("guard (the on-instance watchdog; defaults from the config's budget and guard blocks)")
    g.add_argument("--budget-usd", type=float, help="the experiment's spend cap: at it the job is stopped, then the instance")
    g.add_argument("--max-hours", type=float, help="hours this run may last (default: budget.experiment_hours left)")
    g.add_argument("--grace", type=float, metavar="S", help="seconds after the job ends to wait for `pull` (default 600)")
    g.add_argument("--on-end", choices=ON_END, help="after the grace: destroy if pulled, else stop (default) | destroy | stop")
    g.add_argument("--disposable", action="store_true", help="same as --on-end destroy: nothing on the instance matters")
    g.add_argument("--check", type=float, metavar="S", help="seconds between the watchdog's checks (default 15)")
    g.add_argument("--kill-grace", type=float, metavar="S", help="SIGTERM to SIGKILL, time to checkpoint (default 60)")
    g.add_argument("--no-watchdog", action="store_true", help="UNSAFE: no guard; the instance bills until torn down")
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
    guard = guard_settings(args, config.load(), bound)
    script = render("run.sh.j2", experiment=bound.experiment, command=cmd, run_dir=layout.run,
                    checkpoint_dir=layout.checkpoints, output_dir=layout.outputs, workdir=workdir,
                    heartbeat=args.heartbeat, env=env)
    watchdog = watchdog_script(bound.experiment, layout, guard) if guard["watchdog"] else None
    result = _launch(bound.route(), layout, script, watchdog, args.restart)
    guard["alive"] = result.pop("watchdog_alive")
    _record(bound.experiment, bound.instance_id, cmd, workdir, result, guard, env, args.heartbeat)
    return {"experiment": bound.experiment, "instance_id": bound.instance_id, "command": cmd,
            "run_dir": layout.run, "workdir": workdir, **result, "guard": guard}


# ----- the guard --------------------------------------------------------------------------
def guard_settings(args: argparse.Namespace, cfg: dict, bound: Bound) -> dict:
    """The watchdog's limits: flags, else the config; refused when nothing is left to spend."""
    gcfg, bcfg = cfg.get("guard") or {}, cfg.get("budget") or {}
    on_end = "destroy" if args.disposable else (args.on_end or gcfg.get("on_end") or "destroy-if-pulled")
    if on_end not in ON_END:
        raise Error("bad_config", f"guard.on_end {on_end!r} is not one of {', '.join(ON_END)}", "Fix the config.", USAGE)
    spent = budget.experiment_spent(bound.experiment)
    earlier = (state.read_experiment(bound.experiment) or {}).get("guard") or {}
    cap = _pick(args.budget_usd, earlier.get("budget_usd"), bcfg.get("experiment_usd"))
    hours = args.max_hours if args.max_hours is not None else _hours_left(bound.experiment, bcfg.get("experiment_hours"))
    if cap is not None and spent >= cap:
        raise Error("over_budget", f"experiment {bound.experiment} has spent ${spent:.2f} of its ${cap:.2f} budget",
                    f"Nothing may run: vasticlaude down --experiment {bound.experiment}, or raise the budget.", FAILED)
    if hours is not None and hours <= 0:
        raise Error("over_budget", f"experiment {bound.experiment} has used up its hours",
                    "Raise budget.experiment_hours or pass --max-hours.", FAILED)
    times = {"grace_s": float(_pick(args.grace, gcfg.get("grace_s"), 600)),
             "check_s": float(_pick(args.check, gcfg.get("check_s"), 15)),
             "kill_grace_s": float(_pick(args.kill_grace, gcfg.get("kill_grace_s"), 60))}
    if times["check_s"] <= 0 or times["grace_s"] < 0 or times["kill_grace_s"] < 0:
        raise Error("bad_guard", "--check must be > 0, --grace and --kill-grace >= 0", "", USAGE)
    return {"watchdog": not args.no_watchdog, "budget_usd": cap, "max_hours": _round(hours), "on_end": on_end,
            **times, "dph": round(_dph(bound), 6), "already_spent_usd": round(spent, 6)}


def _pick(*values: object) -> object:
    return next((v for v in values if v is not None), None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _hours_left(experiment: str, limit: float | None) -> float | None:
    """budget.experiment_hours minus the hours the experiment's instances have run so far."""
    if limit is None:
        return None
    return float(limit) - budget.experiment_hours_used(experiment)


def _dph(bound: Bound) -> float:
    """The instance's $/h while running (GPU + storage): the state record, else the API row."""
    dph = costing.instance_cost(bound.record)["dph"] or float(bound.record.get("dph_total") or 0)
    return dph or float((bound.row or {}).get("dph_total") or 0)


def watchdog_script(experiment: str, layout: Layout, guard: dict) -> str:
    blank = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731 — the template reads '' as "no limit"
    return render("watchdog.sh.j2", experiment=experiment, run_dir=layout.run, dph=f"{guard['dph']:.6f}",
                  already_spent_usd=f"{guard['already_spent_usd']:.6f}", budget_usd=blank(guard["budget_usd"]),
                  max_hours=blank(guard["max_hours"]), grace_s=f"{guard['grace_s']:g}",
                  kill_grace_s=f"{guard['kill_grace_s']:g}", check_s=f"{guard['check_s']:g}", on_end=guard["on_end"])


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.match(key):
            raise Error("bad_env", f"--env {pair!r} is not NAME=VALUE", "", USAGE)
        env[key] = value
    return env


def _launch(route: Route, layout: Layout, script: str, watchdog: str | None, restart: bool) -> dict:
    run_dir = shlex.quote(layout.run)
    busy = "" if restart else BUSY.format(run=run_dir)
    split = "#@@vasticlaude-watchdog-" + secrets.token_hex(8)
    payload = script if watchdog is None else f"{script.rstrip(chr(10))}\n{split}\n{watchdog}"
    start = WATCHDOG.format(run=run_dir) if watchdog is not None else ""
    proc = ssh_run(route, LAUNCH.format(run=run_dir, busy=busy, split=split, watchdog=start),
                   input_bytes=payload.encode(), timeout=60)
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    if out[:1] == ["@@busy"]:
        raise Error("already_running", f"a run of {layout.experiment} is still going",
                    "Watch it with 'vasticlaude status', or add --restart to start another.", FAILED)
    marker = next((line for line in out if line.startswith("@@exit=")), "@@exit=")
    code = marker[len("@@exit="):].strip()
    tail = [line for line in out if not line.startswith("@@")]
    alive = any(line.startswith("@@watchdog=") and line[len("@@watchdog="):].strip() for line in out)
    if watchdog is not None and not alive:
        progress("vasticlaude: the watchdog did not start: nothing guards this instance; check run/watchdog.log")
    if code:
        return {"state": "exited", "exit_code": int(code), "log_tail": tail, "watchdog_alive": alive}
    # Running: the first lines show it started; status shows progress from here on.
    return {"state": "running", "exit_code": None, "log_tail": tail[-2:], "watchdog_alive": alive}


def _record(experiment: str, instance_id: int, cmd: str, workdir: str, result: dict, guard: dict,
            env: dict[str, str], heartbeat: int) -> None:
    with state.experiment(experiment) as exp:
        runs = exp.setdefault("runs", [])
        # env is kept (in the private vasticlaude home, never printed) so `recover` can restart the same job
        runs.append({"at": time.time(), "instance_id": instance_id, "command": cmd, "workdir": workdir,
                     "env": env, "heartbeat": heartbeat, "immediate_exit": result["exit_code"]})
        exp["command"] = cmd
        exp["guard"] = guard
    state.append_event(experiment, "run", instance_id=instance_id, command=cmd, state=result["state"],
                       exit_code=result["exit_code"], guard=guard)
    if result["state"] == "exited":
        progress(f"vasticlaude: the command exited at once with code {result['exit_code']}")


def human(data: dict) -> str:
    if data["state"] == "exited":
        tail = "\n".join("  " + line for line in data["log_tail"][-5:])
        return f"{data['experiment']}: `{data['command']}` exited at once with code {data['exit_code']}\n{tail}"
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


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human, exit_code=_exit_code, json_view=_json_view)


def _json_view(data: dict) -> dict:
    """--json: the guard without its internal figures or empty settings."""
    guard = {k: v for k, v in (data.get("guard") or {}).items() if v is not None and k != "already_spent_usd"}
    return {**data, "guard": guard}


def _exit_code(data: dict) -> int:
    return FAILED if data["state"] == "exited" and data["exit_code"] else 0

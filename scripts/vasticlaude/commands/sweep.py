"""vasticlaude sweep: many runs (a grid, a list of commands, or both) on at most K instances, one budget.

Usage:
  vasticlaude sweep --experiment NAME --budget-usd X [--parallel K] [--param lr=1e-3,3e-4 ...]
                    [--commands FILE] [--metric NAME] [the search flags of `up`] -- python train.py --lr {lr}
  vasticlaude sweep --experiment NAME --resume      (after a crash or kill: finishes what is left)

Runs: every combination of the --param values (a grid), with every command of --commands FILE
(one a line; blank lines, `#` comments and Markdown list marks skipped) or the command after --.
A run's values fill its `{name}` placeholders and reach it as VASTICLAUDE_PARAM_<NAME> (also
VASTICLAUDE_SWEEP, VASTICLAUDE_SWEEP_RUN); each run writes its results to its own
VASTICLAUDE_OUTPUT_DIR and comes home to <project>/.vasticlaude/runs/NAME/runs/<run>/
(outputs/, run/job.log, run/exit_code).

At most --parallel instances are rented (`up`'s search, failover and exclusions), each pushed
once; an instance that finishes a run takes the next (no new boot). A failing run does not stop
the others; faults (preempted, host down, container exited…) are recovered as by `watch`; a
command that fails is not retried. At the end every instance is destroyed (confirmed).

The budget: --budget-usd is the sweep's total. It is split into per-instance caps whose sum never
exceeds it, and each run's watchdog gets its instance's cap, so the total holds with this machine
gone; the controller also stops starting runs once the total is spent. Runs that never started are
reported `not_run`. State: ~/.vasticlaude/experiments/NAME/experiment.json ("sweep"): kill this
command at any point and `--resume` finishes with no run done twice and no duplicate rental.
--timeout S stops the controller after S s (exit 1, error code "timeout", state "paused"): the runs
go on under their watchdogs, and `--resume` (again with --timeout, as Claude waits) picks them up;
a run's watchdog destroys its instance --grace s after the run ends if nobody resumes, and a
resume after that runs it again, unless the results store or the session-end reap has its files.
With a results store ("store" in .vasticlaude/config.json) each run is shipped to
<prefix>/<sweep>/<run>/ when it ends, and its instance kept for the next run.

While it runs (or after): `vasticlaude status --experiment NAME` (one table: run, params, state,
progress, metric, $) and `vasticlaude report --experiment NAME` (the comparison table, one chart
of the metric across runs, the best run named).

JSON data: {"experiment", "state", "budget_usd", "spent_usd", "parallel", "rentals", "instances",
  "live_instances", "metric", "best": {"id", "params", "metric"} | null, "counts": {state: n},
  "runs": [{"id", "params", "state", "exit_code", "metric", "cost_usd", "instance_id", "note"}]}
Run states: pending · starting · running · done · failed (the command exited ≠ 0) · stopped (the
budget) · lost (a fault that could not be recovered) · not_run.

Exit codes: 0 every run done · 1 some run failed, stopped or not run, --timeout passed, or refused (e.g. the sweep
exists: use --resume) · 2 usage · 3 API failure · 4 an instance could not be confirmed destroyed.
"""
from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

from vasticlaude import console
from vasticlaude.core import sweepspec
from vasticlaude.errors import USAGE, Error
from vasticlaude.ops import launch, sweeping, sweepreport
from vasticlaude.ops.recovery import Policy
from vasticlaude.output import compact
from vasticlaude.store import config, paths


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude sweep", __doc__)
    p.add_argument("--experiment", type=console.experiment, help="the sweep's name (default sweep-YYYYMMDD-xxxx)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=V1,V2", help="a grid axis, repeatable")
    p.add_argument("--commands", metavar="FILE", help="a file of commands, one a line")
    p.add_argument("--parallel", type=console.number(64, whole=True), default=1, help="instances at most (default 1)")
    p.add_argument("--budget-usd", type=console.USD, help="the sweep's total spend cap (required for a new sweep)")
    p.add_argument("--metric", help="the metric to compare runs by (default: a loss the logs print)")
    p.add_argument("--resume", action="store_true", help="finish a sweep a crash or kill -9 interrupted")
    p.add_argument("--image", help="Docker image (default from config)")
    p.add_argument("--bid", type=console.DPH, metavar="PRICE", help="GPU $/h bid when --interruptible")
    p.add_argument("--max-attempts", type=console.number(100, whole=True), default=3, help="offers to try per rental")
    p.add_argument("--deadline", type=console.SECONDS, metavar="S", help="boot deadline per rental")
    p.add_argument("--no-setup", action="store_true", help="push the code without running its setup")
    p.add_argument("--grace", type=console.SECONDS_OR_ZERO, metavar="S",
                   help="after a run ends, how long its watchdog waits for the next before destroying (default 600)")
    p.add_argument("--check", type=console.number(3600), metavar="S", help="seconds between watchdog checks (default 15)")
    p.add_argument("--kill-grace", type=console.number(86400, zero=True), metavar="S", help="SIGTERM to SIGKILL (default 60)")
    p.add_argument("--timeout", type=console.SECONDS, metavar="S",
                   help="stop the controller after S s, its runs going on guarded (then --resume)")
    p.add_argument("--interval", type=console.SECONDS, default=5.0, help="seconds between the controller's looks (default 5)")
    console.add_search_flags(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command, with {name} placeholders")
    return p


def make_plan(args: argparse.Namespace, cfg: dict, name: str) -> sweeping.SweepPlan:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    templates: list = []
    if args.commands:
        try:
            templates += sweepspec.read_commands(Path(args.commands).read_text(encoding="utf-8"))
        except OSError as err:
            raise Error("bad_commands", f"cannot read --commands {args.commands}: {err.strerror}", "", USAGE) from None
    if argv:
        templates.append(argv)
    runs = sweepspec.expand(templates, [sweepspec.parse_param(p) for p in args.param])
    if args.budget_usd is None:
        raise Error("no_budget", "a sweep needs --budget-usd (its total)", "Add --budget-usd X.", USAGE)
    image = args.image or cfg["image"]
    wanted = console.wanted_from(args, cfg, limit=max(5, 2 * args.max_attempts))
    grace = args.grace if args.grace is not None else float((cfg.get("guard") or {}).get("grace_s") or 600)
    return sweeping.SweepPlan(name, tuple(runs), args.parallel, args.budget_usd, image, wanted,
                              str(config.project_root()), args.bid,
                              float(args.deadline or launch.default_deadline(image)), args.max_attempts,
                              not args.no_setup, grace, args.check, args.kill_grace, args.metric)


def run(args: argparse.Namespace) -> dict:
    cfg = config.load()
    name = paths.experiment_name(args.experiment or time.strftime("sweep-%Y%m%d-") + secrets.token_hex(2))
    plan = None
    if not args.resume:
        plan = make_plan(args, cfg, name)
    elif not args.experiment:
        raise Error("no_experiment", "--resume needs --experiment NAME", "Name the sweep to finish.", USAGE)
    opts = sweeping.Options(console.account_of(args), args.interval, Policy.from_config(cfg), args.resume,
                            args.timeout)
    return sweeping.sweep(plan, name, opts)


def human(data: dict) -> str:
    return sweepreport.table(data) + f"\nreport: vasticlaude report --experiment {data['experiment']}"


def explain(data: dict, code: int) -> Error:
    name = data["experiment"]
    if data["state"] == "paused":
        going = ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items()))
        return Error("timeout", f"the controller's --timeout passed; sweep {name} goes on ({going})",
                     f"Nothing is wrong: vasticlaude sweep --experiment {name} --resume --timeout 540 goes on.", code)
    if data["live_instances"]:
        return Error("billing_risk", f"instances {data['live_instances']} could not be confirmed destroyed",
                     f"Run vasticlaude down --experiment {name}.w1 (each slot), or vasticlaude reap.", code)
    bad = {k: v for k, v in data["counts"].items() if k != "done"}
    what = ", ".join(f"{v} {k}" for k, v in bad.items())
    return Error("runs_not_done", f"sweep {name} ended with {what}",
                 f"See vasticlaude report --experiment {name}; resume with vasticlaude sweep --experiment {name} "
                 "--resume once the cause is fixed.", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, json_view=compact, explain=explain)

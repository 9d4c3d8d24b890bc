"""vasticlaude watch: see a run through to its end, keeping checkpoints home and recovering on the way.

Usage:
  vasticlaude watch [--experiment X] [--interval S] [--sync-interval S] [--no-recover]
                    [--finish down|pull|none] [--timeout S] [--max-attempts N] [--max-bid USD]
                    [--preempt-wait S] [--disk GB] [--sandbox] [--api-key KEY] [--json]

Meant to be left running (Claude starts it in the background; a person in a terminal).
Every --interval (30 s; the first checks after a start or a recovery come after 2, 4, 8
and 16 s) it takes one `status` snapshot (one API read, one SSH probe); a line on stderr says
the progress when the job's state or a fault changes, and every 5 minutes otherwise. Then:

- job running: the agreed folders (recovery.sync, default `checkpoints`) are synced home
  incrementally every --sync-interval (recovery.sync_interval_s, 300 s), so a dead host costs
  at most that much work; the copy is what a relaunch resumes from.
- a fault (see `vasticlaude recover --help`): its kind, evidence and plan are printed; a stale
  heartbeat or failing SSH must last recovery.stale_after_s / unreachable_after_s first, an
  offline / unknown host or an exited container recovery.confirm_s (180 s × the poll scale:
  on Vast they can pass, and then the run goes on in place). Then
  `recover` runs (unless --no-recover or recovery.auto is false: watch stops, exit 1, and
  leaves the decision to you). The job runs again → watching goes on.
- the job ends with exit 0: pull (verified) and, with --finish down (default), destroy and
  confirm gone; exit 0. --finish pull keeps the instance (its watchdog destroys it once
  pulled, unless on_end is stop); --finish none does neither.
- the code failed, the budget is spent, recoveries ran out, no offer worked: watch stops,
  exit 1, with what to do. The on-instance watchdog still guards the instance.
- Vast unreachable: each read is retried (about 40 s); then watch waits 30, 60, 120, 240 s
  (× VASTICLAUDE_POLL_SCALE) between checks; still failing, it stops with exit 3 and says
  the state everything was last seen in.

A sweep (`vasticlaude sweep`): watching it is being its controller, so `watch --experiment SWEEP`
resumes it (the same as `sweep --experiment SWEEP --resume`; refused while another controller runs)
and prints the sweep's table at the end; the controller looks every min(--interval, 5) s.

--timeout S is a wall for the checks: their API retries, SSH probes (ConnectTimeout cut to the
time left) and pauses never carry watch past it by more than one check (a dead API then ends
it with api_down, exit 3, "did not answer before the S s timeout"); a recovery or the final
pull and teardown that has started is carried through.

One watch per experiment (a lock beside experiment.json); its last check is kept in
experiments/<id>/watch.json {pid, at, instance_id, job, fault, fault_since, recoveries,
syncs, outcome}; a later watch keeps the age of a fault an earlier one saw, so repeated
`watch --timeout 540` calls (how Claude waits) still confirm a stale heartbeat.

JSON data: {"experiment", "outcome": "finished" | "failed" | "needs_you" | "api_down" |
  "billing_risk" | "timeout" (every outcome but "finished" with 0 exits non-zero, and
  error.message says what happened; the human output prints the message), "job": {"state", "exit_code", "elapsed_s"},
  "progress": {"percent", "step", "metrics"…} (as status), "instance_id",
  "recoveries": [{"kind", "action", "from_instance", "to_instance", "seconds", "checkpoint_age_s"}],
  "syncs" (when any), "checkpoint": {"files", "bytes", "local_path"} (once one came home), "pull": {"files", "bytes", "local_path"},
  "down": {"destroyed", "failed"}, "spent_usd", "exit_code" (with --json only when not 0: `ok` says it)}

Exit codes: 0 the job finished with 0 (and was pulled and torn down as --finish says) · 1 it
needs you (message says why) or --timeout passed · 2 usage · 3 Vast unreachable for good ·
4 something may still bill (run what the message says).
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.errors import Error
from vasticlaude.ops import nodes, sweeping, sweepreport, watching
from vasticlaude.output import compact
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude watch", __doc__)
    console.add_instance_flags(p)
    p.add_argument("--interval", type=console.SECONDS, default=30.0, help="seconds between checks (default 30)")
    p.add_argument("--sync-interval", type=console.SECONDS, help="seconds between checkpoint syncs (default recovery.sync_interval_s)")
    p.add_argument("--no-recover", action="store_true", help="report a fault and stop instead of recovering")
    p.add_argument("--finish", choices=("down", "pull", "none"), default="down",
                   help="when the job succeeds: pull then destroy (default), pull only, or nothing")
    p.add_argument("--timeout", type=console.SECONDS_OR_ZERO, default=0.0, help="give up after S seconds (default: never)")
    console.add_policy_flags(p)
    return p


def human(data: object) -> str:
    assert isinstance(data, dict)
    if "counts" in data:  # a sweep
        return sweepreport.table(data)
    lines = [f"{data['experiment']}: {data['outcome']} — {data['message']}"]
    for r in data["recoveries"]:
        lines.append(f"  recovered from {r['kind']} ({r.get('action') or 'node ' + str(r.get('node')) + ', group restarted'}): instance {r.get('from_instance')} → "
                     f"{r.get('to_instance')} in {r['seconds']:g} s")
    if isinstance(data.get("pull"), dict):
        lines.append(f"  results: {data['pull']['local_path']} ({data['pull']['files']} files)")
    if isinstance(data.get("pull"), list):
        lines += [f"  results: {p['local_path']} ({p['files']} files)" for p in data["pull"]]
    lines.append(f"  spent ${data['spent_usd']:.3f}" + (f"; {data['syncs']} checkpoint syncs" if "syncs" in data else ""))
    return "\n".join(lines)


def explain(data: dict, code: int) -> Error:
    """The outcome and the command that goes on from it."""
    exp = data["experiment"]
    if "counts" in data:
        what = ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items()) if k != "done")
        return Error("runs_not_done", f"sweep {exp} ended with {what or 'instances left'}",
                     f"See vasticlaude report --experiment {exp}.", code)
    hints = {"failed": f"Read vasticlaude logs --experiment {exp}, fix the code, vasticlaude push --experiment {exp}, "
                       f"vasticlaude run --experiment {exp} -- CMD, then vasticlaude watch --experiment {exp}.",
             "billing_risk": f"Run vasticlaude down --experiment {exp} now.",
             "api_down": f"When Vast answers again: vasticlaude watch --experiment {exp}.",
             "timeout": f"Run vasticlaude watch --experiment {exp} again to go on watching."}
    hint = hints.get(data["outcome"], f"Then vasticlaude watch --experiment {exp} again.")
    return Error(data["outcome"], data["message"], hint, code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, json_view=json_view, explain=explain)


def json_view(data: dict) -> dict:
    """--json: no message (a job that finished with 0 needs no sentence; any other outcome exits
    non-zero and error.message says it), the checkpoint only when one came home, the syncs only when
    there were any, the exit code only when not 0 (`ok: true` says 0)."""
    empty = isinstance(data.get("checkpoint"), dict) and not data["checkpoint"].get("files")
    return compact({k: v for k, v in data.items() if k != "message" and not (k in ("syncs", "exit_code") and not v)
                    and not (k == "checkpoint" and empty)})


def run(args: argparse.Namespace) -> dict:
    console.known(args)
    cfg = config.load()
    if sweeping.is_sweep(args.experiment):
        opts = sweeping.Options(console.account_of(args), min(args.interval, 5.0), console.policy_of(args, cfg), True)
        return sweeping.sweep(None, args.experiment, opts)
    plan = watching.WatchPlan(interval=args.interval, sync_interval=args.sync_interval, recover=not args.no_recover,
                              finish=args.finish, timeout=args.timeout)
    if nodes.group_of(args.experiment) is not None:
        rec = cfg["recovery"]
        group = nodes.GroupWatch(console.connect(args, cfg), args.experiment, args.interval,
                                 float(args.sync_interval or rec["sync_interval_s"]), console.policy_of(args, cfg),
                                 args.finish, args.timeout or None, bool(rec.get("auto", True)) and not args.no_recover)
        return group.run()
    return watching.watch(console.connect(args, cfg), args.experiment, plan, console.policy_of(args, cfg), cfg)

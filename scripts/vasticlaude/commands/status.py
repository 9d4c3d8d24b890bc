"""vasticlaude status: one compact snapshot of an experiment, for Claude to read at a glance.

One API read (the instance as Vast sees it) and one SSH round trip (the run files,
the log tail, nvidia-smi, df), then: job state, elapsed time, progress parsed from
the log (tqdm bar, step/epoch counters, loss and other metrics), GPU use, disk use,
instance state, cost so far and projected, budget left, and what to do next.

Job states: not_started · running · stale (no heartbeat for 3 intervals: the
instance may be frozen) · exited (with exit_code) · killed (stopped by a signal) ·
vanished (the wrapper is gone without an exit code: the container restarted or the
host died) · unreachable (instance not running, or SSH still failing after the 2, 4, 8,
16 s backoff).

Faults (`fault`, from vasticlaude/diagnose.py): preempted · host_offline ·
container_exited · gone · disk_full (ENOSPC/EFBIG in the log, or the disk at 98%) · stale ·
ssh_unreachable · job_lost · job_failed · budget, each with its evidence and the plan
`vasticlaude recover` follows (`next` then says to run it).

A sweep (`vasticlaude sweep`): `status --experiment SWEEP` prints one table instead, a line a run
(run, state, progress, metric, $, params), the spend against the sweep's budget and the best run
so far; running runs are read live from their instances. JSON: as `sweep --json`, plus "sweep": true
and each running run's "progress".

Usage: vasticlaude status [--experiment X] [--instance ID] [--lines N]
       vasticlaude status --wait [--timeout S] [--interval S]   (blocks until the job ends;
                                                                  progress lines on stderr)

The guard: whether the run's on-instance watchdog is alive, its heartbeat and its last
decisions. A running job with no live watchdog is said first in `next` (the instance
bills until torn down). Budgets: once the estimated spend reaches the experiment's budget
(`run --budget-usd`, else the config), `next` says to stop now and --wait returns at once
(exit 1, reason "budget: …"). status itself never stops or destroys anything.

JSON (--json) data: {"experiment", "instance_id", "instance": {"status", "msg", "gpu", "dph"},
  "job": {"state", "exit_code", "elapsed_s", "heartbeat_age_s", "pulled"}, "progress": {...},
  "log_tail": [lines], "gpu": {"util", "mem_used_mb", "mem_total_mb"}, "disk": {"used_gb", "size_gb", "pct"},
  "cost": {"spent_usd", "dph", "projected_usd", "budget_usd", "left_usd"},
  "guard": {"alive", "heartbeat_age_s", "done", "last": [the last watchdog.log line, when not alive]},
  "store": {"state" (ready | syncing | uploading | retrying | verified | failed | refused), "message",
  "checkpoint_at", "checkpoint_files", "files", "bytes", "fallback": true when the store failed at the
  job's end and the watchdog waits for a pull instead} (README "Results store"; absent without one),
  "fault": {"kind", "evidence": [...], "action", "confirm_s", "plan"} (README "Recovery"; absent when
  nothing is wrong), "next": str}
  "quarantined": [{"file", "copy", "at", "problems"}] (config/state files whose bad parts were left out
  this week, store/quarantine.py),
  Fields that are null or empty are left out of the JSON.
  with --wait also "timed_out" and "reason" ("ended" | "timeout" | "budget: …" | "instance stopped|exited|gone":
  the wait ends when nothing more can happen without you).

Several nodes (`up --nodes N`): one line per node (instance, job, fault) and the group's state
(running | finished | failed | fault | mixed), overlay, spend (all nodes) and next step. JSON data
then: {"experiment", "nodes": [{"node", "experiment", "instance_id", "instance", "job", "exit_code",
"fault", "line"}], "state", "overlay", "cluster_id", "spent_usd", "budget_usd", "next"}.

Exit codes: 0 snapshot taken (whatever the job's state; with --wait: the job ended with 0)
· 1 with --wait: the job failed, was killed or vanished, the timeout passed, the budget
is spent, or the instance was stopped or is gone · 3 API trouble.
"""
from __future__ import annotations

import argparse
import json

from vasticlaude import console
from vasticlaude.errors import FAILED, Error
from vasticlaude.ops import nodes, observe, sweeping, sweepreport
from vasticlaude.ops.observe import HUMAN_MAX, TAIL_WIDTH, one_line
from vasticlaude.output import compact
from vasticlaude.store import quarantine


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude status", __doc__)
    console.add_instance_flags(p)
    p.add_argument("--lines", type=console.COUNT_OR_ZERO, default=3, help="log lines to include (default 3)")
    p.add_argument("--wait", action="store_true", help="block until the job ends (or --timeout)")
    p.add_argument("--timeout", type=console.SECONDS, default=6 * 3600, help="seconds --wait may block (default 6 h)")
    p.add_argument("--interval", type=console.SECONDS, default=30.0, help="seconds between checks with --wait")
    return p


def human(data: dict) -> str:
    """At most HUMAN_MAX bytes: the log lines give way to the rest."""
    if data.get("sweep"):
        return sweepreport.table(data)
    if "nodes" in data:
        return group_human(data)
    inst, gpu, disk = data["instance"], data["gpu"], data["disk"]
    head = [one_line(data)[:300],
            f"  instance {data['instance_id']} {inst['status']} ({inst['gpu']})"
            + (f", GPU {gpu['util']}% {gpu['mem_used_mb']}/{gpu['mem_total_mb']} MB" if gpu else "")
            + (f", disk {disk['used_gb']}/{disk['size_gb']} GB" if disk else ""),
            f"  guard: {guard_line(data)}"]
    shipped = data.get("store")
    if shipped:
        head.append(f"  store: {shipped.get('state', '?')}" + (" — FALLBACK: waiting for a pull" if shipped.get("fallback") else "")
                    + (f" ({shipped['message'][:120]})" if shipped.get("message") else ""))
    fault = data.get("fault")
    if fault:
        head.append(f"  fault: {fault['kind']} — {'; '.join(fault['evidence'])[:300]}")
    tail = [f"  next: {data['next'][:400]}"]
    room = HUMAN_MAX - len("\n".join(head + tail).encode()) - 8
    logs = data["log_tail"]
    width = min(TAIL_WIDTH, room // max(1, len(logs)) - 5) if logs else 0
    lines = [f"  | {line[:width]}" for line in logs] if width >= 20 else []
    return "\n".join(head + lines + tail)


def group_human(data: dict) -> str:
    cap = f" of ${data['budget_usd']:g}" if data.get("budget_usd") is not None else ""
    lines = [f"{data['experiment']}: {data['state']}, {len(data['nodes'])} nodes on overlay {data['overlay']}, "
             f"${data['spent_usd']:.3f}{cap} spent"]
    lines += [f"  node {n['node']}: instance {n['instance_id']} {n['instance']}, "
              + (f"fault {n['fault']}; " if n["fault"] else "") + n["line"][:200] for n in data["nodes"]]
    return "\n".join(lines + [f"  next: {data['next'][:400]}"])


def guard_line(data: dict) -> str:
    guard = data["guard"]
    if data["job"]["state"] == "unreachable":
        return "unknown (instance not reachable)"
    if not guard["alive"]:
        return "NONE — no watchdog is alive" + (f" (it ended: {guard['done']})" if guard.get("done") else "")
    age = guard["heartbeat_age_s"]
    last = guard["last"][-1].split(" ", 1)[-1][:110] if guard["last"] else "-"
    return "watchdog alive" + (f", beat {age:g} s ago" if age is not None else "") + f"; last: {last}"


def compact_view(data: dict) -> object:
    """The --json form: empty fields out, no repeats of what is said elsewhere."""
    if "nodes" in data or data.get("sweep"):
        return compact(data)
    view = json.loads(json.dumps(data))
    inst, guard = view.get("instance") or {}, view.get("guard") or {}
    inst.pop("dph", None)  # cost.dph says it
    if inst.get("status") == "running" and str(inst.get("msg", "")).startswith("success"):
        inst.pop("msg", None)
    if inst.get("intended") == inst.get("status"):
        inst.pop("intended", None)
    if guard.get("alive"):
        guard.pop("last", None)
    return compact(view)


def exit_code(data: dict) -> int:
    """A plain snapshot always exits 0; --wait exits 0 only for a job that ended with 0 within budget."""
    if "timed_out" not in data:
        return 0
    job = data["job"]
    ok = data.get("reason") == "ended" and job["state"] == "exited" and job["exit_code"] == 0
    return 0 if ok else FAILED


def explain(data: dict, code: int) -> Error:
    job = data["job"]
    what = "timed out" if data.get("timed_out") else f"ended: {data.get('reason')}"
    return Error("not_succeeded", f"the wait {what}; the job is {job['state']}"
                 + (f" (exit {job['exit_code']})" if job.get("exit_code") is not None else ""), data["next"], code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, exit_code=exit_code, json_view=compact_view, explain=explain)


def run(args: argparse.Namespace) -> dict:
    if sweeping.is_sweep(args.experiment):  # a whole sweep: one table; its running runs are looked at live
        running = any(r["state"] == "running" for r in sweeping.summary(args.experiment)["runs"])
        return sweepreport.status(args.experiment, console.connect(args) if running else None)
    if args.wait:
        console.known(args)
        return observe.wait(console.connect(args), args.experiment, args.instance, args.lines, args.timeout,
                            args.interval)
    if nodes.group_of(args.experiment) is not None:
        return nodes.status(console.connect(args), args.experiment)
    data = observe.observe(console.bind(args), args.lines)
    data["quarantined"] = quarantine.recent()  # bad config/state content left out this week
    return data

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
  "fault": {"kind", "evidence": [...], "action", "confirm_s", "plan"} (README "Recovery"; absent when
  nothing is wrong), "next": str}
  Fields that are null or empty are left out of the JSON.
  with --wait also "timed_out" and "reason" ("ended" | "timeout" | "budget: …" | "instance stopped|exited|gone":
  the wait ends when nothing more can happen without you).

Exit codes: 0 snapshot taken (whatever the job's state; with --wait: the job ended with 0)
· 1 with --wait: the job failed, was killed or vanished, the timeout passed, the budget
is spent, or the instance was stopped or is gone · 3 API trouble.
"""
from __future__ import annotations

import argparse
import json
import time

from . import checkpoints, command, config, costing, state
from .diagnose import diagnose, over_budget
from .errors import FAILED, Error
from .logparse import progress as parse_progress
from .output import compact, progress
from .push import backoff
from .remote import Layout
from .ssh import run as ssh_run
from .target import Bound, bind
from .templates import render

STATUS_OF = {"running": "running", "loading": "loading", "created": "creating", "stopped": "stopped",
             "exited": "exited", "offline": "offline", "unknown": "offline", "frozen": "running"}
ENDED = {"exited", "killed", "vanished"}
TAIL_WIDTH = 160
HUMAN_MAX = 1500  # bytes of human output: a glance, not a page
NO_GUARD = ("no guard: the instance will bill until torn down — run `vasticlaude down` when done, "
            "or restart with watchdog")


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude status", __doc__)
    command.add_instance_flags(p)
    p.add_argument("--lines", type=int, default=3, help="log lines to include (default 3)")
    p.add_argument("--wait", action="store_true", help="block until the job ends (or --timeout)")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds --wait may block (default 6 h)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between checks with --wait")
    return p


def run(args: argparse.Namespace) -> dict:
    if not args.wait:
        return snapshot(args)
    deadline = time.monotonic() + args.timeout
    while True:
        snap = snapshot(args)
        progress(f"vasticlaude: {one_line(snap)}")
        ended, over, halted = snap["job"]["state"] in ENDED, over_budget(snap["cost"]), _halted(snap)
        if ended or over or halted or time.monotonic() >= deadline:
            snap["timed_out"] = not (ended or over or halted)
            snap["reason"] = (_budget_reason(snap["cost"]) if over else "ended" if ended else
                              f"instance {snap['instance']['status']}" if halted else "timeout")
            return snap
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))


def _halted(snap: dict) -> bool:
    """The instance was stopped (e.g. by its watchdog) or is gone: the job cannot end by itself."""
    return snap["job"]["state"] == "unreachable" and snap["instance"]["status"] in ("stopped", "exited", "gone")


def _budget_reason(cost: dict) -> str:
    return f"budget: spent ${cost['spent_usd']:.2f} of ${cost['budget_usd']:.2f}"


def snapshot(args: argparse.Namespace) -> dict:
    return observe(bind(args), args.lines)


def observe(bound: Bound, tail: int = 3) -> dict:
    """The snapshot of a bound experiment (one SSH probe when the instance runs)."""
    row = bound.row
    rec = _refresh_record(bound)
    probe, ssh_failure = _probe(bound, tail) if row and row.get("actual_status") == "running" else (None, None)
    job = _job(probe, row, ssh_failure)
    lines = probe["log"] if probe else []
    policy = config.load()["recovery"]
    data = {"experiment": bound.experiment, "instance_id": bound.instance_id,
            "instance": _instance(row), "job": job, "progress": parse_progress(lines),
            "log_tail": [line[:TAIL_WIDTH] for line in lines[-tail:]] if tail > 0 else [],
            "gpu": _gpu(probe), "disk": _disk(probe, row), "cost": _cost(bound.experiment, rec, job),
            "guard": _guard(probe)}
    ended_home = row is None and checkpoints.ended_home(bound.experiment)
    data["fault"] = diagnose(data, bound.record, lines, policy, ended_home)
    data["next"] = next_step(data)
    return data


def _refresh_record(bound: Bound) -> dict:
    """Keep state's status (and so the cost estimate) in step with what the API says."""
    status = "destroyed" if bound.row is None else STATUS_OF.get(str(bound.row.get("actual_status")), "loading")
    if status == bound.record.get("status"):
        return bound.record
    fields = {"status": status, "why": "seen by status"}
    if status == "destroyed":
        fields["destroyed_at"] = time.time()
    return state.upsert_instance(bound.instance_id, **fields)


def _probe(bound: Bound, lines: int) -> tuple[dict | None, str | None]:
    """The probe's sections, or None and why SSH failed (after the backoff)."""
    script = render("probe.sh.j2", run_dir=Layout(bound.experiment).run, lines=max(lines, 60), width=400)
    try:
        proc = ssh_run(bound.route(), "sh -s", input_bytes=script.encode(), timeout=30, backoff=backoff())
    except Error as err:
        return None, err.message
    return _sections(proc.stdout.decode("utf-8", "replace")), None


def _sections(text: str) -> dict:
    out: dict = {"run": {}, "guard": {}, "wlog": [], "log": [], "gpu": [], "disk": []}
    current = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            continue
        if current in ("run", "guard") and "=" in line:
            key, _, value = line.partition("=")
            out[current][key] = value
        elif current in ("wlog", "log", "gpu", "disk"):
            out[current].append(line)
    return out


def _job(probe: dict | None, row: dict | None, ssh_failure: str | None = None) -> dict:
    if probe is None:
        why = f"ssh: {ssh_failure[-160:]}" if ssh_failure else f"instance is {row.get('actual_status') if row else 'gone'}"
        return {"state": "unreachable", "exit_code": None, "elapsed_s": None, "heartbeat_age_s": None,
                "pulled": False, "why": why}
    run, now = probe["run"], _num(probe["run"].get("now")) or time.time()
    started, ended = _num(run.get("started_at")), _num(run.get("ended_at"))
    beat = _num(run.get("heartbeat"))
    job = {"state": _job_state(run, now, beat), "exit_code": _int(run.get("exit_code")),
           "elapsed_s": round((ended or now) - started, 1) if started else None,
           "heartbeat_age_s": round(now - beat, 1) if beat else None, "pulled": "pulled" in run}
    if run.get("signal"):
        job["signal"] = run["signal"]
    return job


def _job_state(run: dict, now: float, beat: float | None) -> str:
    if "started_at" not in run:
        return "not_started"
    if "exit_code" in run:
        return "killed" if run.get("signal") else "exited"
    if run.get("wrapper_alive") != "1":
        return "vanished"
    every = _num(run.get("heartbeat_every")) or 15
    if beat and now - beat > 3 * every + 5:
        return "stale"
    return "running"


def _guard(probe: dict | None) -> dict:
    """The watchdog as the probe saw it (not alive when the instance could not be reached)."""
    if probe is None:
        return {"alive": False, "last": [], "heartbeat_age_s": None, "done": None}
    guard, now = probe["guard"], _num(probe["run"].get("now")) or time.time()
    beat = _num(guard.get("watchdog_heartbeat"))
    return {"alive": guard.get("alive") == "1", "last": [line[:120] for line in probe["wlog"][-1:]],
            "heartbeat_age_s": round(now - beat, 1) if beat else None, "done": guard.get("watchdog_done")}


def _instance(row: dict | None) -> dict:
    if row is None:
        return {"status": "gone", "msg": "not on the account any more", "gpu": None, "dph": None}
    return {"status": row.get("actual_status"), "intended": row.get("intended_status"),
            "msg": str(row.get("status_msg") or "")[:120],
            "gpu": f"{row.get('num_gpus')}x {row.get('gpu_name')}", "dph": round(float(row.get("dph_total") or 0), 4)}


def _gpu(probe: dict | None) -> dict | None:
    if not probe or not probe["gpu"]:
        return None
    util, used, total = zip(*[[_num(x) or 0 for x in line.split(",")] for line in probe["gpu"] if line.count(",") == 2])
    return {"util": round(sum(util) / len(util)), "mem_used_mb": int(sum(used)), "mem_total_mb": int(sum(total)),
            "count": len(util)}


def _disk(probe: dict | None, row: dict | None) -> dict | None:
    if probe and probe["disk"]:
        parts = probe["disk"][-1].split()
        if len(parts) >= 4 and parts[1].isdigit():
            size, used = int(parts[1]) / 2**20, int(parts[2]) / 2**20
            return {"used_gb": round(used, 2), "size_gb": round(size, 2), "pct": round(100 * used / size) if size else None}
    if row and row.get("disk_space"):
        used = float(row.get("disk_usage") or 0)
        return {"used_gb": round(used, 2), "size_gb": row["disk_space"], "pct": round(100 * used / float(row["disk_space"]))}
    return None


def _cost(experiment: str, rec: dict, job: dict) -> dict:
    spent = sum(costing.instance_cost(r)["total_usd"] for r in state.load()["instances"].values()
                if r.get("experiment") == experiment)
    dph = costing.billing_now(rec)
    exp = state.read_experiment(experiment) or {}
    budget = _first((exp.get("guard") or {}).get("budget_usd"), (exp.get("budget") or {}).get("experiment_usd"),
                    config.load()["budget"].get("experiment_usd"))
    hours = exp.get("hours")
    projected = spent + dph * max(0.0, hours - (job.get("elapsed_s") or 0) / 3600) if hours else None
    return {"spent_usd": round(spent, 4), "dph": round(dph, 4),
            "projected_usd": round(projected, 4) if projected is not None else None,
            "budget_usd": budget, "left_usd": round(budget - spent, 4) if budget is not None else None}


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def next_step(data: dict) -> str:
    """Budget first, then a running job without a guard, then what the job's state asks for."""
    exp, cost = data["experiment"], data["cost"]
    if over_budget(cost):
        return (f"{_budget_reason(cost)} — stop now: vasticlaude pull --experiment {exp}, "
                f"then vasticlaude down --experiment {exp}")
    step = _job_step(data)
    fault = data.get("fault")
    if fault and fault["action"] != "none":
        step = (f"{fault['kind']} ({fault['evidence'][0]}): run vasticlaude recover --experiment {exp}, which will "
                f"{fault['plan']}")
    if data["job"]["state"] in ("running", "stale") and not data["guard"]["alive"]:
        return f"{NO_GUARD}; {step}"
    return step


def _job_step(data: dict) -> str:
    job, exp = data["job"], data["experiment"]
    disk = data.get("disk") or {}
    if job["state"] == "running" and (disk.get("pct") or 0) >= 95:
        return f"disk {disk['pct']}% full: pull what exists now (vasticlaude pull --experiment {exp}) before the job fails"
    if job["state"] in ("running", "stale"):
        return "wait; check again later" if job["state"] == "running" else \
            "no heartbeat: look at the logs (vasticlaude logs) and the instance state; recover if it is dead"
    failed = job["state"] == "vanished" or (job["state"] == "exited" and job["exit_code"] != 0)
    if failed and (disk.get("pct") or 0) >= 95:  # a full disk can also stop the wrapper writing its exit code
        return (f"job failed with the disk full ({disk['used_gb']}/{disk['size_gb']} GB): pull what exists "
                f"(vasticlaude pull --experiment {exp}), then rent again with a larger --disk and resume")
    if job["state"] == "exited":
        verb = "succeeded" if job["exit_code"] == 0 else f"failed (exit {job['exit_code']}): read the logs, then"
        return f"job {verb} pull results (vasticlaude pull --experiment {exp}), then vasticlaude down --experiment {exp}"
    if job["state"] == "killed" and job.get("signal") in ("budget", "max_hours"):
        return (f"the watchdog stopped the job ({job['signal']} used up) and is stopping the instance; "
                f"pull what you need, then vasticlaude down --experiment {exp}")
    if job["state"] in ("killed", "vanished"):
        return f"job {job['state']}: pull checkpoints, then rent again and resume (vasticlaude up / push / run)"
    if job["state"] == "not_started":
        return f"nothing runs yet: vasticlaude push, then vasticlaude run --experiment {exp} -- CMD"
    if data["instance"]["status"] == "stopped":
        return (f"instance stopped (its watchdog stops it after an unpulled run or at a limit): storage still "
                f"bills; start it (vastai start instance {data['instance_id']}) to pull, or vasticlaude down --experiment {exp}")
    return f"instance {data['instance']['status']}: check 'vasticlaude reconcile'; tear down with vasticlaude down --experiment {exp}"


def one_line(data: dict) -> str:
    job, prog = data["job"], data["progress"]
    parts = [f"{data['experiment']}: {job['state']}"]
    if job.get("exit_code") is not None:
        parts.append(f"exit {job['exit_code']}")
    if job.get("elapsed_s") is not None:
        parts.append(f"{job['elapsed_s'] / 60:.1f} min")
    if prog.get("percent") is not None:
        parts.append(f"{prog['percent']}%")
    for key in ("step", "epoch"):
        if prog.get(key):
            parts.append(f"{key} {prog[key]}")
    parts += [f"{k}={v:g}" for k, v in list(prog.get("metrics", {}).items())[:3]]
    parts.append(f"${data['cost']['spent_usd']:.3f} at ${data['cost']['dph']:.3f}/h")
    return ", ".join(parts)


def human(data: dict) -> str:
    """At most HUMAN_MAX bytes: the log lines give way to the rest."""
    inst, gpu, disk = data["instance"], data["gpu"], data["disk"]
    head = [one_line(data)[:300],
            f"  instance {data['instance_id']} {inst['status']} ({inst['gpu']})"
            + (f", GPU {gpu['util']}% {gpu['mem_used_mb']}/{gpu['mem_total_mb']} MB" if gpu else "")
            + (f", disk {disk['used_gb']}/{disk['size_gb']} GB" if disk else ""),
            f"  guard: {guard_line(data)}"]
    fault = data.get("fault")
    if fault:
        head.append(f"  fault: {fault['kind']} — {'; '.join(fault['evidence'])[:300]}")
    tail = [f"  next: {data['next'][:400]}"]
    room = HUMAN_MAX - len("\n".join(head + tail).encode()) - 8
    logs = data["log_tail"]
    width = min(TAIL_WIDTH, room // max(1, len(logs)) - 5) if logs else 0
    lines = [f"  | {line[:width]}" for line in logs] if width >= 20 else []
    return "\n".join(head + lines + tail)


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


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human, exit_code=exit_code, json_view=compact_view)

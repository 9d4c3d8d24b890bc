"""Observe an experiment: one API read and one SSH probe make a snapshot with its fault and next step.

`observe` is the snapshot every workflow reads (status, watch, recover, the session-end
reap); `wait` repeats it until the job ends. The fault comes from core.faults.
"""
from __future__ import annotations

import json
import time

from vasticlaude.core import budget, disk, money
from vasticlaude.core.faults import diagnose, over_budget
from vasticlaude.core.lifecycle import record_status
from vasticlaude.core.logparse import progress as parse_progress
from vasticlaude.core.retry import poll_scale, ssh_pauses
from vasticlaude.errors import Error
from vasticlaude.ops import checkpoints
from vasticlaude.ops.binding import Bound, bind
from vasticlaude.output import progress
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import run as ssh_run
from vasticlaude.remote.templates import render
from vasticlaude.store import config, state
from vasticlaude.vast.gateway import Vast

ENDED = {"exited", "killed", "vanished"}
TAIL_WIDTH = 160
HUMAN_MAX = 1500  # bytes of human output: a glance, not a page
NO_GUARD = ("no guard: the instance will bill until torn down — run `vasticlaude down` when done, "
            "or restart with watchdog")


def wait(vast: Vast, experiment: str | None, instance_id: int | None, tail: int, timeout: float,
         interval: float) -> dict:
    """Snapshots every `interval` s until the job ends, the budget is used up, the instance halts or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        snap = observe(bind(vast, experiment, instance_id), tail)
        progress(f"vasticlaude: {one_line(snap)}")
        ended, over, halted = snap["job"]["state"] in ENDED, over_budget(snap["cost"]), _halted(snap)
        if ended or over or halted or time.monotonic() >= deadline:
            snap["timed_out"] = not (ended or over or halted)
            snap["reason"] = (_budget_reason(snap["cost"]) if over else "ended" if ended else
                              f"instance {snap['instance']['status']}" if halted else "timeout")
            return snap
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _halted(snap: dict) -> bool:
    """The instance was stopped (e.g. by its watchdog) or is gone: the job cannot end by itself."""
    return snap["job"]["state"] == "unreachable" and snap["instance"]["status"] in ("stopped", "exited", "gone")


def _budget_reason(cost: dict) -> str:
    return f"budget: spent ${cost['spent_usd']:.2f} of ${cost['budget_usd']:.2f}"


def observe(bound: Bound, tail: int = 3) -> dict:
    """The snapshot of a bound experiment (one SSH probe when the instance runs)."""
    row = bound.row
    rec = _refresh_record(bound)
    probe, ssh_failure = _probe(bound, tail) if row and row.get("actual_status") == "running" else (None, None)
    job = _job(probe, row, ssh_failure)
    lines = probe["log"] if probe else []
    policy = config.load()["recovery"]
    policy = {**policy, "confirm_s": float(policy.get("confirm_s") or 0) * poll_scale()}  # the sandbox shrinks it
    data = {"experiment": bound.experiment, "instance_id": bound.instance_id,
            "instance": _instance(row), "job": job, "progress": parse_progress(lines),
            "log_tail": [line[:TAIL_WIDTH] for line in lines[-tail:]] if tail > 0 else [],
            "gpu": _gpu(probe), "disk": _disk(probe, row, bound.record), "cost": _cost(bound.experiment, rec, job),
            "guard": _guard(probe)}
    shipped = _store(probe)
    if shipped:
        data["store"] = shipped
        if shipped.get("state") == "verified":
            checkpoints.note_stored(bound.experiment, shipped.get("bytes"))
    shipped_end = checkpoints.ended_in_store(bound.experiment) if row is None else None
    if shipped_end is not None:  # the watchdog destroyed it once the results store held a verified copy
        _ended_in_store(data, shipped_end)
    ended_home = row is None and (shipped_end is not None or checkpoints.ended_home(bound.experiment))
    data["fault"] = diagnose(data, bound.record, lines, policy, ended_home)
    data["next"] = next_step(data)
    return data


def _refresh_record(bound: Bound) -> dict:
    """Keep state's status (and so the cost estimate) in step with what the API says."""
    status = record_status(bound.row)
    if status == bound.record.get("status"):
        return bound.record
    fields = {"status": status, "why": "seen by status"}
    if status == "destroyed":
        fields["destroyed_at"] = time.time()
    return state.upsert_instance(bound.instance_id, **fields)


def _probe(bound: Bound, lines: int) -> tuple[dict | None, str | None]:
    """The probe's sections, or None and why SSH failed (after the backoff)."""
    script = render("probe.sh.j2", run_dir=Layout(bound.experiment).run, lines=max(lines, 60), width=400,
                    rented_kib=disk.rented_kib(bound.row, bound.record))
    try:
        proc = ssh_run(bound.route(), "sh -s", input_bytes=script.encode(), timeout=30, backoff=ssh_pauses())
    except Error as err:
        return None, err.message
    return _sections(proc.stdout.decode("utf-8", "replace")), None


def _sections(text: str) -> dict:
    out: dict = {"run": {}, "guard": {}, "wlog": [], "log": [], "gpu": [], "disk": [], "store": []}
    current = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = line[2:]
            continue
        if current in ("run", "guard") and "=" in line:
            key, _, value = line.partition("=")
            out[current][key] = value
        elif current in ("wlog", "log", "gpu", "disk", "store"):
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


def _store(probe: dict | None) -> dict | None:
    """The results store as the instance's uploader last wrote it (run/store_status.json), and the
    watchdog's fallback (the store failed at the end: it waits for a pull instead)."""
    if probe is None or not probe.get("store"):
        return None
    found: dict = {}
    for line in probe["store"]:
        if line.startswith("fallback="):
            found["fallback"] = True
            continue
        try:
            found.update({k: v for k, v in json.loads(line).items()
                          if k in ("state", "message", "files", "bytes", "checkpoint_at", "checkpoint_files",
                                   "sync_error")})
        except ValueError:
            continue
    if isinstance(found.get("message"), str):
        found["message"] = found["message"][:160]
    return found or None


def _ended_in_store(data: dict, shipped: dict) -> None:
    """A gone instance whose run's end is in the results store: the job exited, with this code."""
    code = shipped.get("exit_code")
    data["job"].update(state="exited", exit_code=int(code) if str(code or "").lstrip("-").isdigit() else None,
                       why="the instance was destroyed by its watchdog once the results store held a verified copy")
    data["store"] = {"state": "verified", "files": len(shipped.get("files") or []), "bytes": shipped.get("bytes")}


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


def _disk(probe: dict | None, row: dict | None, rec: dict | None = None) -> dict | None:
    """Used and size in GB, and % full: df, or the rented size when df shows the host's (core/disk.py)."""
    found = disk.reading(probe["disk"], disk.rented_bytes(row, rec), (row or {}).get("disk_usage")) if probe else None
    if found:
        size, used = found["size"] / 2**30, found["used"] / 2**30
        return {"used_gb": round(used, 2), "size_gb": round(size, 2), "pct": round(100 * used / size) if size else None}
    if row and row.get("disk_space"):
        used = float(row.get("disk_usage") or 0)
        return {"used_gb": round(used, 2), "size_gb": row["disk_space"], "pct": round(100 * used / float(row["disk_space"]))}
    return None


def _cost(experiment: str, rec: dict, job: dict) -> dict:
    """Spent so far, $/h now, the budget and the total projected for the hours the experiment was rented for."""
    spent = budget.experiment_spent(experiment, state.load())
    dph = money.billing_now(rec)
    exp, cfg = state.read_experiment(experiment) or {}, config.load()
    cap = budget.experiment_budget(None, exp, cfg)
    hours = budget.planned_hours(exp, cfg)
    projected = spent + dph * max(0.0, hours - (job.get("elapsed_s") or 0) / 3600) if hours else None
    return {"spent_usd": round(spent, 4), "dph": round(dph, 4),
            "projected_usd": round(projected, 4) if projected is not None else None,
            "budget_usd": cap, "left_usd": round(cap - spent, 4) if cap is not None else None}


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
    if (data.get("store") or {}).get("fallback"):
        return (f"the results store failed ({(data['store'].get('message') or 'no answer')[:100]}), so the watchdog "
                f"waits for a pull instead: vasticlaude pull --experiment {exp} now; nothing is lost")
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
                f"bills; the user can start it in Vast's console to pull, or vasticlaude down --experiment {exp}")
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


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None



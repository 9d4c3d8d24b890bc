"""What went wrong with an experiment's instance, the evidence, and the plan to recover.

Read from one `status` snapshot (the API's view of the instance and the SSH probe's
view of the job) plus the state record; no call of its own. A fault is:

  kind        preempted · host_offline · container_exited · gone · disk_full · stale ·
              ssh_unreachable · job_lost · job_failed · budget
  evidence    the facts it rests on, as short sentences
  action      what `vasticlaude recover` does: wait_bid (wait for the bid to win, raising it
              within the budget, then relaunch) · relaunch (a new instance on another machine,
              code and the latest checkpoint pushed, the command restarted) · bigger_disk
              (pull what exists, relaunch with more disk) · restart (run the command again on
              the same instance: its checkpoints are there) · none (needs you)
  confirm_s   how long the fault must persist before acting (0: at once). A stale heartbeat
              or failing SSH may be a passing hiccup, and so may offline / unknown / exited on
              the real Vast (offline is computed from the host's heartbeat; SkyPilot reads
              unknown and offline as still starting): policy `confirm_s`. A preempted instance
              has its own wait (wait_bid).
  plan        one sentence for Claude and the user

None when nothing is wrong: the job runs, has not started, or ended by plan.
"""
from __future__ import annotations

import re

# What a full disk says: ENOSPC, and EFBIG where a size limit stands in for a quota (the sandbox).
DISK_FULL = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded|EDQUOT|File too large|EFBIG", re.I)
DISK_PCT_FULL = 98
MOVED = ("host_offline", "container_exited", "gone", "stale", "ssh_unreachable")  # the machine is to blame


def diagnose(snap: dict, record: dict, log: list[str], policy: dict, ended_home: bool = False) -> dict | None:
    """The fault the snapshot shows, or None. `ended_home`: the pulled copy holds this run's exit code."""
    job, inst = snap["job"], snap["instance"]
    status = inst.get("status")
    if status == "gone":
        return None if ended_home else fault(
            "gone", ["the instance is no longer on the account and the job's end was never seen"], "relaunch")
    if job.get("state") == "exited" and job.get("exit_code") == 0:
        return None  # success is success, even when it went past the budget on the way
    if job.get("signal") in ("budget", "max_hours") or over_budget(snap["cost"]):
        return fault("budget", [f"the experiment's {job.get('signal') or 'budget'} is used up"], "none",
                     plan=BUDGET_PLAN)
    if status == "stopped" and record.get("is_bid") and not _stopped_by_us(record):
        bid = f"bid ${float(record.get('bid_price') or 0):.3f}/h"
        meant = inst.get("intended") in (None, "running")
        return fault("preempted", [f"interruptible instance stopped while meant to run ({bid})" if meant else
                                    f"interruptible instance stopped ({bid}), not by vasticlaude; Vast says it is "
                                    "meant to be stopped too: outbid, most likely"], "wait_bid")
    passing = float(policy.get("confirm_s") or 0)  # on the real Vast these can pass: confirm them first
    if status in ("offline", "unknown"):
        return fault("host_offline", [f"the host is {status}: {inst.get('msg') or 'no heartbeat'}"], "relaunch",
                     passing)
    if status == "exited":
        return fault("container_exited", [f"the container exited: {inst.get('msg') or 'no message'}"], "relaunch",
                     passing)
    if status != "running":
        return None  # created, loading, or stopped on purpose (by you or the watchdog)
    return _jobfault(job, snap.get("disk") or {}, log, policy)


def _jobfault(job: dict, disk: dict, log: list[str], policy: dict) -> dict | None:
    state = job["state"]
    full = _disk_evidence(disk, log)
    if state == "unreachable":
        return fault("ssh_unreachable", [f"Vast says running but SSH fails ({job.get('why', 'no answer')})"],
                      "relaunch", float(policy.get("unreachable_after_s") or 0))
    if full and state in ("exited", "killed", "vanished") and job.get("exit_code") != 0:
        return fault("disk_full", full, "bigger_disk")
    if state == "stale":
        return fault("stale", [f"no heartbeat for {job.get('heartbeat_age_s')} s"], "relaunch",
                      float(policy.get("stale_after_s") or 0))
    if state == "vanished" or (state == "killed" and job.get("signal") not in ("budget", "max_hours")):
        why = "the job's wrapper is gone without an exit code" if state == "vanished" else \
            f"the job was stopped by a signal ({job.get('signal')})"
        return fault("job_lost", [why + " (the container restarted or was preempted)"], "restart")
    if state == "exited" and job.get("exit_code") not in (0, None):
        last = last_words(log)
        return fault("job_failed", [f"the command exited with code {job['exit_code']}"
                                    + (f" (`{last[:160]}`)" if last else "")], "none", plan=FAILED_PLAN)
    return None


def _stopped_by_us(record: dict) -> bool:
    """`down --keep-disk` stopped it: the state record says so."""
    history = record.get("history") or []
    return record.get("status") == "stopped" and bool(history) and str(history[-1].get("why", "")).startswith("down")


def _disk_evidence(disk: dict, log: list[str]) -> list[str]:
    evidence = []
    hit = next((line for line in reversed(log) if DISK_FULL.search(line)), None)
    if hit:
        evidence.append(f"the log says: {hit.strip()[:160]}")
    if (disk.get("pct") or 0) >= DISK_PCT_FULL:
        evidence.append(f"disk {disk['pct']}% full ({disk.get('used_gb')}/{disk.get('size_gb')} GB)")
    return evidence


def over_budget(cost: dict) -> bool:
    """The experiment's estimated spend has reached its budget (`status`'s cost block)."""
    return cost.get("budget_usd") is not None and cost.get("spent_usd", 0) >= cost["budget_usd"]


PLANS = {
    "wait_bid": "wait for the bid to win the GPU back (raising it within the budget), restart the job there; "
                "else relaunch elsewhere from the last checkpoint brought home",
    "relaunch": "destroy it (confirmed), rent another machine, push the code and the last checkpoint, "
                "restart the command (it resumes)",
    "bigger_disk": "pull what exists, destroy it, rent again with a larger disk, push code and checkpoint, resume",
    "restart": "run the command again on the same instance: its checkpoints are there and it resumes",
    "none": "needs you: read the logs or raise the budget; nothing is done automatically",
    "resume": "push the code and the last checkpoint to the new instance and restart the command",
}


def last_words(log: list[str]) -> str:
    """The job's own last line (the run wrapper's "vasticlaude: run … ended" lines left out)."""
    return next((line.strip() for line in reversed(log) if line.strip() and not line.startswith("vasticlaude: ")), "")


# What needs you, said with the commands that go on (spelled for the reader by output.spell).
FAILED_PLAN = ("the command failed, not the machine: read its log (vasticlaude logs), fix the code, then "
               "vasticlaude push and vasticlaude run again; nothing is retried automatically")
BUDGET_PLAN = ("the budget is used up: pull what you need (vasticlaude pull), then vasticlaude down; or raise "
               "the budget (--budget-usd) and run again")


def fault(kind: str, evidence: list[str], action: str, confirm_s: float = 0.0, plan: str | None = None) -> dict:
    """The one shape of a fault (see the module docstring); `plan` says it better than the action's when given."""
    return {"kind": kind, "evidence": evidence, "action": action, "confirm_s": confirm_s,
            "plan": plan or PLANS[action]}


def blames_machine(kind: str) -> bool:
    return kind in MOVED

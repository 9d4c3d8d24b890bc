"""What instances, experiments, this session and today have cost, from the state alone (no API call).

Vast's actual charges are added only when a gateway is passed (cost --actual).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import replace

from vasticlaude.core import budget
from vasticlaude.core import money as costing
from vasticlaude.errors import Error
from vasticlaude.store import state
from vasticlaude.vast.gateway import Vast


MAX_INSTANCES = 20     # rows listed unless --all: a listing must not grow with months of use
MAX_EXPERIMENTS = 20


def read_state() -> dict:
    """instances.json as it is; refused when damaged (cost writes nothing: reconcile keeps a copy and rebuilds it)."""
    data, problems = state.peek()
    if problems:
        raise Error("state_corrupt", f"{state.instances_path()} is corrupt or has bad parts ({problems[0][:120]})",
                    "Run 'vasticlaude reconcile' to rebuild it from the API (the old file is kept aside).")
    return data


def summary(limits: budget.Limits, experiment: str | None = None, everything: bool = False,
            vast: Vast | None = None) -> dict:
    """What `cost` reports: instances, experiments, the session, today; Vast's charges when `vast` is given."""
    now = time.time()
    data = read_state()
    recs = sorted((r for r in data["instances"].values()
                   if not experiment or r.get("experiment") == experiment),
                  key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))
    rows = [instance_row(r, now) for r in recs]
    if vast is not None:
        add_actual(rows, fetch_actual(vast, recs, now))
    cutoff = 0.0 if everything else time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))
    listed = [r for r in rows if not r["destroyed_at"] or r["destroyed_at"] >= cutoff]
    exps = experiments(rows, limits, experiment, vast is not None)
    if not everything:  # live or active today, newest first; what is left out still counts in the totals
        exps = [e for e in exps if e["live"] or e["last_at"] >= cutoff or (experiment and e["experiment"] == experiment)]
        exps = sorted(exps, key=lambda e: (-e["live"], -e["last_at"]))[:MAX_EXPERIMENTS]
    for e in exps:
        e.pop("last_at")  # for the order only
    return {"instances": listed[-MAX_INSTANCES:] if not everything else listed, "experiments": exps,
            "session": session(data, now), "today": today(data, limits, now),
            "billing_usd_per_hour": round(float(sum(r["dph_now"] for r in rows)), 6),
            "not_listed": len(rows) - min(len(listed), len(listed) if everything else MAX_INSTANCES),
            "total_usd": round(sum(r["total_usd"] for r in rows), 6)}


def instance_row(rec: dict, now: float) -> dict:
    cost = costing.instance_cost(rec, now)
    return {"id": rec.get("id"), "label": rec.get("label"), "experiment": rec.get("experiment"),
            "status": rec.get("status"), "gpu_name": rec.get("gpu_name"),
            "dph_now": round(costing.billing_now(rec), 6), "running_s": cost["running_s"],
            "exists_s": cost["exists_s"], "gpu_usd": cost["gpu_usd"], "storage_usd": cost["storage_usd"],
            "total_usd": cost["total_usd"], "created_at": _whole(rec.get("created_at")),
            "destroyed_at": _whole(rec.get("destroyed_at"))}


def _whole(stamp: object) -> float | None:
    """Epoch seconds to the second: sub-second digits are noise in what Claude reads."""
    return round(float(stamp)) if isinstance(stamp, (int, float)) else None


# ----- actual charges (--actual) ---------------------------------------------------------------
def fetch_actual(vast: Vast, recs: list[dict], now: float) -> dict[int, float]:
    """Dollars Vast has charged per instance id, over the window the records span."""
    if not recs:
        return {}
    since = min(float(r.get("created_at") or now) for r in recs) - 86400
    charged: dict[int, float] = {}
    for row in vast.charges(since):
        match = re.fullmatch(r"instance-(\d+)", str(row.get("source") or ""))
        if match:
            iid = int(match.group(1))
            charged[iid] = charged.get(iid, 0.0) + float(row.get("amount") or 0)
    return charged


def add_actual(rows: list[dict], charged: dict[int, float]) -> None:
    for row in rows:
        amount = charged.get(_int(row["id"]))
        row["actual_usd"] = round(amount, 6) if amount is not None else None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# ----- totals --------------------------------------------------------------------------------
def experiments(rows: list[dict], limits: budget.Limits, only: str | None, actual: bool) -> list[dict]:
    by_name: dict[str, list[dict]] = {only: []} if only else {}
    for row in rows:  # grouped once: months of records stay fast
        by_name.setdefault(row["experiment"] or "", []).append(row)
    return [_experiment(name, by_name[name], limits, actual) for name in sorted(by_name)]


def _experiment(name: str, rows: list[dict], limits: budget.Limits, actual: bool) -> dict:
    spent = sum(r["total_usd"] for r in rows)
    hours = sum(r["running_s"] for r in rows) / 3600
    if name and state.experiment_dir(name).is_dir():  # the budget set for it (up or run) beats the default
        cap = budget.experiment_budget(None, state.read_experiment(name), {"budget": {"experiment_usd": limits.experiment_usd}})
        limits = replace(limits, experiment_usd=cap)
    out = {"experiment": name or None, "instances": len(rows), "live": sum(not r["destroyed_at"] for r in rows),
           "last_at": max((r["destroyed_at"] or time.time() for r in rows), default=0),
           "dph_now": round(sum(r["dph_now"] for r in rows), 6), "spent_usd": round(spent, 6),
           "running_hours": round(hours, 4), "budget_usd": limits.experiment_usd,
           "left_usd": _left(limits.experiment_usd, spent), "budget_hours": limits.experiment_hours,
           "left_hours": _left(limits.experiment_hours, hours, 4)}
    if actual:
        out["actual_usd"] = round(sum(r.get("actual_usd") or 0 for r in rows), 6)
    return out


def _left(limit: float | None, used: float, digits: int = 6) -> float | None:
    return None if limit is None else round(float(limit) - used, digits)


def session_id() -> str | None:
    return os.environ.get("CLAUDE_SESSION_ID") or os.environ.get("VASTICLAUDE_SESSION") or None


def created_in(rec: dict) -> str | None:
    """The session id in a record's `created_by` ("user@host session=ID pid=N")."""
    match = re.search(r"(?:^|\s)session=(\S+)", str(rec.get("created_by") or ""))
    return match.group(1) if match else None


def session(data: dict, now: float) -> dict | None:
    """Instances created under this Claude session (their `created_by` names it)."""
    sid = session_id()
    if not sid:
        return None
    rows = [instance_row(r, now) for r in data["instances"].values() if created_in(r) == sid]
    return {"id": sid, "instances": [r["id"] for r in rows], "live": sum(not r["destroyed_at"] for r in rows),
            "dph_now": round(sum(r["dph_now"] for r in rows), 6),
            "spent_usd": round(sum(r["total_usd"] for r in rows), 6)}


def today(data: dict, limits: budget.Limits, now: float) -> dict:
    spent = budget.spent_today(data, now)
    return {"spent_usd": round(spent, 6), "daily_cap_usd": limits.daily_usd, "left_usd": _left(limits.daily_usd, spent)}





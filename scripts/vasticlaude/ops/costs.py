"""What instances, experiments, this session and today have cost, from the state alone (no API call).

Vast's actual charges are added only when a gateway is passed (cost --actual).
"""
from __future__ import annotations

import os
import re
import time

from vasticlaude.core import budget
from vasticlaude.core import money as costing
from vasticlaude.core.fmt import human_bytes
from vasticlaude.errors import FAILED, Error
from vasticlaude.ops import groups
from vasticlaude.store import config, state
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
    every = [Lean.of(r, now) for r in data["instances"].values()]  # once: the totals, today and the session share it
    members = groups.members(experiment) if experiment else None  # a multi-node experiment is all of its nodes
    names = {experiment, *(members or ())}
    lean = [x for x in every if not experiment or x.rec.get("experiment") in names]
    recs = [x.rec for x in lean]  # every record counts in the totals; only the listed get a full row
    cutoff = 0.0 if everything else budget.midnight(now)
    listed = sorted((x for x in lean if not x.destroyed_at or x.destroyed_at >= cutoff),
                    key=lambda x: (x.rec.get("created_at") or 0, str(x.rec.get("id"))))
    shown = listed if everything else listed[-MAX_INSTANCES:]
    rows = [instance_row(x.rec, now) for x in shown]
    charged = fetch_actual(vast, recs, now) if vast is not None else None
    if charged is not None:
        add_actual(rows, charged)
    exps = experiments(lean, limits, experiment, charged, members)

    def keep(e: dict) -> bool:  # live or active today; what is left out still counts in the totals
        return everything or e["live"] or e["last_at"] >= cutoff or bool(experiment and e["experiment"] == experiment)

    def order(e: dict) -> tuple:  # live first, newest first; --all by name
        return (e["experiment"] or "",) if everything else (-e["live"], -e["last_at"])
    exps = settle(sorted(filter(keep, exps), key=order), lambda name, leans: _experiment(name, leans, limits, charged),
                  keep, order, None if everything else MAX_EXPERIMENTS)
    exps = [_with_budget(e, limits) for e in exps]  # an experiment's own budget is read only for what is shown
    return {"instances": rows, "experiments": exps, "session": session(every), "today": today(every, limits, now),
            "billing_usd_per_hour": round(float(sum(x.dph_now for x in lean)), 6),
            "not_listed": len(lean) - len(rows), "total_usd": round(sum(x.total_usd for x in lean), 6)}


class Lean:
    """What the totals need of one record, without rounding or a row: months of records stay fast."""
    __slots__ = ("rec", "running_s", "total_usd", "dph_now", "destroyed_at")

    def __init__(self, rec: dict, running_s: float, total: float, dph_now: float, destroyed_at: float | None):
        self.rec, self.running_s, self.total_usd, self.dph_now, self.destroyed_at = \
            rec, running_s, total, dph_now, destroyed_at

    @classmethod
    def of(cls, rec: dict, now: float) -> "Lean":
        running, total = costing.total_usd(rec, now)
        return cls(rec, running, total, costing.billing_now(rec), _whole(rec.get("destroyed_at")))


def instance_row(rec: dict, now: float) -> dict:
    cost = costing.instance_cost(rec, now)
    return {"id": rec.get("id"), "label": rec.get("label"), "experiment": rec.get("experiment"),
            "status": rec.get("status"), "gpu_name": rec.get("gpu_name"),
            "dph_now": round(costing.billing_now(rec), 6), "running_s": cost["running_s"],
            "exists_s": cost["exists_s"], "gpu_usd": cost["gpu_usd"], "storage_usd": cost["storage_usd"],
            "bandwidth_usd": cost["bandwidth_usd"], "total_usd": cost["total_usd"], "created_at": _whole(rec.get("created_at")),
            "destroyed_at": _whole(rec.get("destroyed_at"))}


def _whole(stamp: object) -> float | None:
    """Epoch seconds to the second: sub-second digits are noise in what Claude reads."""
    return round(float(stamp)) if isinstance(stamp, (int, float)) else None


# ----- bandwidth against the budget ----------------------------------------------------------
def priced(experiment: str, record: dict) -> bool:
    """Does a transfer need a budget check: the instance bills bandwidth (its offer's $/GB) and the
    experiment has a budget?"""
    return bool(record.get("inet_down_cost") or record.get("inet_up_cost")) and _cap(experiment) is not None


def _cap(experiment: str) -> float | None:
    return budget.experiment_budget(None, state.read_experiment(experiment), config.load())


def check_transfer(experiment: str, record: dict, moved_in: int, moved_out: int, what: str) -> None:
    """Refuse (exit 1, nothing moved) a push or pull whose bandwidth would take the experiment past
    its budget: Vast bills bytes both ways, and the on-instance watchdog only sees them as they go."""
    cost = costing.transfer_usd(moved_in, moved_out, record.get("inet_down_cost") or 0, record.get("inet_up_cost") or 0)
    cap = _cap(experiment) if cost > 0 else None
    if cap is None:
        return
    spent = budget.experiment_spent(experiment, state.load())
    if spent + cost > cap:
        raise Error("over_budget", f"{what} would move {human_bytes(moved_in + moved_out)} for ~${cost:.2f} of "
                    f"bandwidth on top of ${spent:.2f} spent, over experiment {experiment}'s ${cap:.2f} budget; "
                    "nothing was sent", "Move less (--path, .vasticlaudeignore) or raise the budget "
                    "(budget.experiment_usd, or --budget-usd on up or run).", FAILED)


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
def experiments(lean: list[Lean], limits: budget.Limits, only: str | None, charged: dict[int, float] | None,
                members: list[str] | None = None) -> list[dict]:
    """One row per experiment, by name. `only` with `members` (a multi-node experiment): one row of
    all its nodes' instances. Without `only`, the nodes of a multi-node experiment (`<group>-n<i>`)
    are one row of the group by their names alone, `_parts` holding each node's share:
    `settle` confirms it from the group's experiment.json, only for the rows listed."""
    by_name: dict[str, list[Lean]] = {only: []} if only else {}
    for x in lean:  # grouped once: months of records stay fast
        by_name.setdefault(only if members is not None else x.rec.get("experiment") or "", []).append(x)
    if members is not None:
        return [_experiment(only, by_name[only], limits, charged) | {"nodes": len(members)}]
    parts: dict[str, dict[str, list[Lean]]] = {}
    for name in [] if only else list(by_name):  # a node asked for by name is that node alone
        node = groups.NODE.fullmatch(name)
        if node and node.group(1) not in by_name:  # a group has no instance of its own
            parts.setdefault(node.group(1), {})[name] = by_name.pop(name)
    rows = [_experiment(name, by_name[name], limits, charged) for name in by_name]
    rows += [_experiment(group, [x for share in nodes.values() for x in share], limits, charged) | {"_parts": nodes}
             for group, nodes in parts.items()]
    return sorted(rows, key=lambda r: r["experiment"] or "")


def settle(rows: list[dict], make, keep, order, limit: int | None) -> list[dict]:
    """The first `limit` rows in `order` (all when None). A row folded from nodes by their names alone
    stays one row when its group's experiment.json lists them (`nodes` = N); a node it does not list
    is a row of its own again (if `keep` takes it). `make(name, leans)` makes a row. Only the rows
    listed cost a read of a group's record, so months of history stay fast."""
    queue, out = list(rows), []
    while queue and (limit is None or len(out) < limit):
        row = queue.pop(0)
        parts = row.pop("_parts", None)
        if parts is None:
            out.append(row)
            continue
        members = groups.members(row["experiment"]) or []
        mine = [name for name in parts if name in members]
        strays = [make(name, leans) for name, leans in parts.items() if name not in mine]
        if mine:
            whole = row if not strays else make(row["experiment"], [x for name in mine for x in parts[name]])
            out.append(whole | {"nodes": len(members)})
        queue = sorted(queue + [r for r in strays if keep(r)], key=order)
    return out


def _experiment(name: str, group: list[Lean], limits: budget.Limits, charged: dict[int, float] | None) -> dict:
    spent = sum(x.total_usd for x in group)
    hours = sum(x.running_s for x in group) / 3600
    out = {"experiment": name or None, "instances": len(group), "live": sum(not x.destroyed_at for x in group),
           "last_at": max((x.destroyed_at or time.time() for x in group), default=0),
           "dph_now": round(sum(x.dph_now for x in group), 6), "spent_usd": round(spent, 6),
           "running_hours": round(hours, 4), "budget_usd": limits.experiment_usd,
           "left_usd": _left(limits.experiment_usd, spent), "budget_hours": limits.experiment_hours,
           "left_hours": _left(limits.experiment_hours, hours, 4)}
    if charged is not None:
        out["actual_usd"] = round(sum(charged.get(_int(x.rec.get("id")), 0.0) for x in group), 6)
    return out


def _with_budget(exp: dict, limits: budget.Limits) -> dict:
    """The budget set for the experiment (up or run) beats the default; `last_at` was for the order only."""
    exp.pop("last_at")
    name = exp["experiment"]
    if name and state.experiment_dir(name).is_dir():
        record = state.read_experiment(name)
        cap = budget.experiment_budget(None, record, {"budget": {"experiment_usd": limits.experiment_usd}})
        if cap != exp["budget_usd"]:
            exp.update(budget_usd=cap, left_usd=_left(cap, exp["spent_usd"]))
        stored = _stored(exp, record)
        if stored is not None:  # in the results store (README "Results store"): billed by its provider, not Vast
            exp["stored_bytes"] = int(stored)
    return exp


def _stored(exp: dict, record: dict | None) -> float | None:
    """Bytes in the results store: the experiment's, or for a multi-node one the sum of its nodes'."""
    if "nodes" not in exp:
        return ((record or {}).get("store") or {}).get("bytes")
    found = [((state.read_experiment(m) or {}).get("store") or {}).get("bytes")
             for m in ((record or {}).get("nodes") or {}).get("members") or ()]
    found = [b for b in found if isinstance(b, (int, float))]
    return sum(found) if found else None


def _left(limit: float | None, used: float, digits: int = 6) -> float | None:
    return None if limit is None else round(float(limit) - used, digits)


def session_id() -> str | None:
    return os.environ.get("CLAUDE_SESSION_ID") or os.environ.get("VASTICLAUDE_SESSION") or None


def created_in(rec: dict) -> str | None:
    """The session id in a record's `created_by` ("user@host session=ID pid=N")."""
    match = re.search(r"(?:^|\s)session=(\S+)", str(rec.get("created_by") or ""))
    return match.group(1) if match else None


def session(every: list[Lean]) -> dict | None:
    """Instances created under this Claude session (their `created_by` names it)."""
    sid = session_id()
    if not sid:
        return None
    mine = [x for x in every if created_in(x.rec) == sid]
    return {"id": sid, "instances": [x.rec.get("id") for x in mine], "live": sum(not x.destroyed_at for x in mine),
            "dph_now": round(sum(x.dph_now for x in mine), 6), "spent_usd": round(sum(x.total_usd for x in mine), 6)}


def today(every: list[Lean], limits: budget.Limits, now: float) -> dict:
    """What every instance billed since midnight: budget.spent_today's rule on the totals already made."""
    since = budget.midnight(now)
    spent = sum(budget.share_since(x.rec, x.total_usd, since) for x in every)
    return {"spent_usd": round(spent, 6), "daily_cap_usd": limits.daily_usd, "left_usd": _left(limits.daily_usd, spent)}

"""vasticlaude cost: what every instance, experiment and this session has cost, and bills now.

Estimates come from instances.json alone (each record's $/h and status history:
GPU while running, storage while the instance exists), so by default this makes no
API call, imports no `vastai`, writes nothing and answers at once. `--actual` adds
Vast's own charges (`show invoices-v1 --charges`) beside each estimate.

Usage: vasticlaude cost [--experiment X] [--all] [--actual] [--experiment-usd N]
                        [--experiment-hours N] [--daily-usd N] [--sandbox] [--api-key KEY] [--json]

Instances destroyed before today (local midnight) are not listed unless --all, but
every record counts in the experiment totals, so the output stays short as history grows.
Budgets come from the flags, else the project's .vasticlaude/config.json `budget` block;
an experiment's hours are the hours its instances have been running.
The session is $CLAUDE_SESSION_ID (or $VASTICLAUDE_SESSION): instances created under it.

JSON (data):
  {"instances": [{"id", "label", "experiment", "status", "gpu_name", "dph_now", "running_s",
                  "exists_s", "gpu_usd", "storage_usd", "total_usd", "created_at", "destroyed_at",
                  "actual_usd" (with --actual; null when Vast shows no charge yet)}],
   "experiments": [{"experiment", "instances", "live", "dph_now", "spent_usd", "running_hours",
                    "budget_usd", "left_usd", "budget_hours", "left_hours", "actual_usd"?}],
   "session": {"id", "instances", "live", "dph_now", "spent_usd"} | null,
   "today": {"spent_usd", "daily_cap_usd", "left_usd"},
   "billing_usd_per_hour": float,      (what the matching instances bill right now)
   "not_listed": int}                  (destroyed before today, left out without --all)
Limits not set are null, and so is what is left of them.

Exit codes: 0 ok · 1 instances.json unreadable or bad config · 2 usage ·
3 (--actual only) Vast or the sandbox could not be reached.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time

from . import budget, command, config, costing, state
from .errors import Error


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude cost", __doc__)
    p.add_argument("--experiment", help="only this experiment's instances")
    p.add_argument("--all", action="store_true", help="also list instances destroyed before today")
    p.add_argument("--actual", action="store_true", help="add Vast's actual charges (one API call)")
    p.add_argument("--experiment-usd", type=float, help="experiment budget in $ (default: config)")
    p.add_argument("--experiment-hours", type=float, help="experiment budget in running hours (default: config)")
    p.add_argument("--daily-usd", type=float, help="daily cap in $ across experiments (default: config)")
    command.add_target_flags(p)
    return p


def read_state() -> dict:
    """instances.json as it is; unlike state.load(), never moves a corrupt file (cost writes nothing)."""
    path = state.instances_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"instances": {}}
    except (ValueError, OSError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("instances"), dict):
        raise Error("state_corrupt", f"{path} is corrupt or unreadable",
                    "Run 'vasticlaude reconcile' to rebuild it from the API (the old file is kept aside).")
    return data


def run(args: argparse.Namespace) -> dict:
    now = time.time()
    data = read_state()
    cfg = config.load()
    limits = budget.Limits.from_config(cfg, experiment_usd=args.experiment_usd,
                                       experiment_hours=args.experiment_hours, daily_usd=args.daily_usd)
    recs = sorted((r for r in data["instances"].values()
                   if not args.experiment or r.get("experiment") == args.experiment),
                  key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))
    rows = [instance_row(r, now) for r in recs]
    if args.actual:
        add_actual(rows, fetch_actual(args, cfg, recs, now))
    cutoff = 0.0 if args.all else time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))
    listed = [r for r in rows if not r["destroyed_at"] or r["destroyed_at"] >= cutoff]
    return {"instances": listed, "experiments": experiments(rows, limits, args.experiment, args.actual),
            "session": session(data, now), "today": today(data, limits, now),
            "billing_usd_per_hour": round(float(sum(r["dph_now"] for r in rows)), 6),
            "not_listed": len(rows) - len(listed)}


def instance_row(rec: dict, now: float) -> dict:
    cost = costing.instance_cost(rec, now)
    return {"id": rec.get("id"), "label": rec.get("label"), "experiment": rec.get("experiment"),
            "status": rec.get("status"), "gpu_name": rec.get("gpu_name"),
            "dph_now": round(costing.billing_now(rec), 6), "running_s": cost["running_s"],
            "exists_s": cost["exists_s"], "gpu_usd": cost["gpu_usd"], "storage_usd": cost["storage_usd"],
            "total_usd": cost["total_usd"], "created_at": rec.get("created_at"),
            "destroyed_at": rec.get("destroyed_at")}


# ----- actual charges (--actual) ---------------------------------------------------------------
def fetch_actual(args: argparse.Namespace, cfg: dict, recs: list[dict], now: float) -> dict[int, float]:
    """Dollars Vast has charged per instance id, over the window the records span."""
    if not recs:
        return {}
    from . import credentials
    from .vast import Vast
    target = credentials.resolve(args.api_key, args.sandbox or None, config.project_root(), cfg.get("target"))
    since = min(float(r.get("created_at") or now) for r in recs) - 86400
    charged: dict[int, float] = {}
    for row in Vast(target).charges(since):
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
    names = sorted({r["experiment"] or "" for r in rows} | ({only} if only else set()))
    return [_experiment(name, [r for r in rows if (r["experiment"] or "") == name], limits, actual) for name in names]


def _experiment(name: str, rows: list[dict], limits: budget.Limits, actual: bool) -> dict:
    spent = sum(r["total_usd"] for r in rows)
    hours = sum(r["running_s"] for r in rows) / 3600
    out = {"experiment": name or None, "instances": len(rows), "live": sum(not r["destroyed_at"] for r in rows),
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


# ----- human output ------------------------------------------------------------------------------
def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _table(rows: list[dict]) -> list[str]:
    actual = any("actual_usd" in r for r in rows)
    head = ["ID", "LABEL", "EXPERIMENT", "STATUS", "$/H NOW", "RUNNING", "STORAGE", "TOTAL"] + (["ACTUAL"] if actual else [])
    body = [[str(r["id"]), r["label"] or "-", r["experiment"] or "-", r["status"] or "-", f"{r['dph_now']:.4f}",
             duration(r["running_s"]), usd(r["storage_usd"]), usd(r["total_usd"])]
            + ([usd(r.get("actual_usd"))] if actual else []) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body]]


def _experiment_line(e: dict) -> str:
    text = f"experiment {e['experiment'] or '(none)'}: {usd(e['spent_usd'])} spent"
    if e["budget_usd"] is not None:
        text += f" of {usd(e['budget_usd'])} (left {usd(e['left_usd'])})"
    text += f", {e['running_hours']:.2f} h running"
    if e["budget_hours"] is not None:
        text += f" of {e['budget_hours']:g} h (left {e['left_hours']:.2f} h)"
    return text + (f"; Vast charged {usd(e['actual_usd'])}" if "actual_usd" in e else "")


def human(data: object) -> str:
    assert isinstance(data, dict)
    lines = _table(data["instances"]) if data["instances"] else ["no instances to list"]
    if data["not_listed"]:
        lines.append(f"({data['not_listed']} destroyed before today not listed; --all lists them)")
    lines += [_experiment_line(e) for e in data["experiments"]]
    if data["session"]:
        s = data["session"]
        lines.append(f"session {s['id']}: {len(s['instances'])} instances ({s['live']} live), "
                     f"{usd(s['spent_usd'])}, billing ${s['dph_now']:.4f}/h")
    t = data["today"]
    cap = f" of daily cap {usd(t['daily_cap_usd'])} (left {usd(t['left_usd'])})" if t["daily_cap_usd"] is not None else ""
    lines.append(f"today: {usd(t['spent_usd'])}{cap}")
    lines.append(f"billing now: ${data['billing_usd_per_hour']:.4f}/h")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human)


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))

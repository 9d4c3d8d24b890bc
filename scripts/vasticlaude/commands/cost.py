"""vasticlaude cost: what every instance, experiment and this session has cost, and bills now.

Estimates come from instances.json alone (each record's $/h and status history:
GPU while running, storage while the instance exists; plus bandwidth, the bytes push, pull
and sync moved at the offer's inet_down_cost/inet_up_cost $/GB), so by default this makes no
API call, imports no `vastai`, writes nothing and answers at once. One formula (core/money.py)
makes every figure: each total (experiments, session, today, total_usd) is the sum of the rows'
total_usd, bandwidth included. `--actual` adds Vast's own charges (`show invoices-v1 --charges`)
beside each estimate.

Usage: vasticlaude cost [--experiment X] [--all] [--actual] [--experiment-usd N]
                        [--experiment-hours N] [--daily-usd N] [--sandbox] [--api-key KEY] [--json]

Listings are bounded unless --all: the newest 20 instances, of those live or destroyed
today (local midnight); the 20 experiments live or active today, live ones first. What is
left out still counts in every total. Instances destroyed before today are not listed, but
every record counts in the experiment totals, so the output stays short as history grows.
Budgets come from the flags, else the project's .vasticlaude/config.json `budget` block;
an experiment's hours are the hours its instances have been running.
The session is $CLAUDE_SESSION_ID (or $VASTICLAUDE_SESSION): instances created under it.

JSON (data):
  {"instances": [{"id", "experiment", "status", "gpu_name", "dph_now" (not once destroyed), "running_s",
                  "exists_s", "gpu_usd", "storage_usd", "bandwidth_usd" (each part only when not 0),
                  "total_usd", "created_at", "destroyed_at" (not with --json: money and durations there;
                  when each was made and destroyed stays in instances.json),
                  "actual_usd" (with --actual; null when Vast shows no charge yet)}],
   "experiments": [{"experiment", "instances", "live", "dph_now" (only while live), "spent_usd", "running_hours",
                    "budget_usd", "left_usd", "budget_hours", "left_hours", "actual_usd"?,
                    "stored_bytes"? (what the results store holds for it, as last seen),
                    "nodes"? (a multi-node experiment, up --nodes N: N; its row sums all its
                              nodes' instances, relaunched ones too, and the nodes get no rows of their own)}],
   "session": {"id", "instances", "live", "dph_now", "spent_usd"} | null,
   "today": {"spent_usd", "daily_cap_usd", "left_usd"},
   "billing_usd_per_hour": float,      (what the matching instances bill right now)
   "not_listed": int,                  (instances left out without --all; absent when none)
   "total_usd": float}                 (every instance matched, listed or not)
Limits not set are null, and so is what is left of them.

Exit codes: 0 ok · 1 instances.json unreadable or bad config · 2 usage ·
3 (--actual only) Vast or the sandbox could not be reached.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.output import compact
from vasticlaude.core import budget
from vasticlaude.core.fmt import duration, human_bytes, usd
from vasticlaude.ops import costs
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude cost", __doc__)
    p.add_argument("--experiment", type=console.experiment, help="only this experiment's instances")
    p.add_argument("--all", action="store_true", help="also list instances destroyed before today")
    p.add_argument("--actual", action="store_true", help="add Vast's actual charges (one API call)")
    p.add_argument("--experiment-usd", type=console.USD, help="experiment budget in $ (default: config)")
    p.add_argument("--experiment-hours", type=console.HOURS, help="experiment budget in running hours (default: config)")
    p.add_argument("--daily-usd", type=console.USD, help="daily cap in $ across experiments (default: config)")
    console.add_target_flags(p)
    return p


def _table(rows: list[dict]) -> list[str]:
    actual = any("actual_usd" in r for r in rows)
    net = any(r.get("bandwidth_usd") for r in rows)
    head = (["ID", "LABEL", "EXPERIMENT", "STATUS", "$/H NOW", "RUNNING", "STORAGE"] + (["BANDWIDTH"] if net else [])
            + ["TOTAL"] + (["ACTUAL"] if actual else []))
    body = [[str(r["id"]), r["label"] or "-", r["experiment"] or "-", r["status"] or "-", f"{r['dph_now']:.4f}",
             duration(r["running_s"]), usd(r["storage_usd"])] + ([usd(r.get("bandwidth_usd"))] if net else [])
            + [usd(r["total_usd"])] + ([usd(r.get("actual_usd"))] if actual else []) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [head, *body]]


def _experiment_line(e: dict) -> str:
    nodes = f" ({e['nodes']} nodes)" if "nodes" in e else ""
    text = f"experiment {e['experiment'] or '(none)'}{nodes}: {usd(e['spent_usd'])} spent"
    if e["budget_usd"] is not None:
        text += f" of {usd(e['budget_usd'])} (left {usd(e['left_usd'])})"
    text += f", {e['running_hours']:.2f} h running"
    if e["budget_hours"] is not None:
        text += f" of {e['budget_hours']:g} h (left {e['left_hours']:.2f} h)"
    if "stored_bytes" in e:
        text += f", {human_bytes(e['stored_bytes'])} in the results store"
    return text + (f"; Vast charged {usd(e['actual_usd'])}" if "actual_usd" in e else "")


def human(data: object) -> str:
    assert isinstance(data, dict)
    lines = _table(data["instances"]) if data["instances"] else ["no instances to list"]
    if data["not_listed"]:
        lines.append(f"({data['not_listed']} destroyed before today not listed; --all lists them)")
    lines.append(f"all instances together: {usd(data['total_usd'])}")
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
    return console.main(argv, build_parser, run, human, json_view=json_view)


def json_view(data: dict) -> dict:
    """--json: each row without what another field says (the label is vasticlaude-<experiment>; a
    destroyed instance bills nothing now), without cost parts that are 0 and without the timestamps
    (money and durations here; instances.json keeps when); not_listed only when some were left out."""
    def row(r: dict) -> dict:
        gone = r.get("status") == "destroyed"
        return {k: v for k, v in r.items() if k not in ("label", "created_at", "destroyed_at") and not (k == "dph_now" and gone)
                and not (k in ("gpu_usd", "storage_usd", "bandwidth_usd") and not v)}
    exps = [{k: v for k, v in e.items() if not (k == "dph_now" and not e.get("live"))} for e in data["experiments"]]
    view = {**data, "instances": [row(r) for r in data["instances"]], "experiments": exps}
    if not view.get("not_listed"):
        view.pop("not_listed", None)
    return compact(view)


def run(args: argparse.Namespace) -> dict:
    cfg = config.load()
    limits = budget.Limits.from_config(cfg, experiment_usd=args.experiment_usd,
                                       experiment_hours=args.experiment_hours, daily_usd=args.daily_usd)
    vast = console.connect(args, cfg) if args.actual else None
    return costs.summary(limits, args.experiment, args.all, vast)

"""vasticlaude reconcile: make instances.json agree with the Vast account.

Usage: vasticlaude reconcile [--sandbox] [--api-key KEY] [--json]

Why: a crash, a kill -9 or a lost session can leave an instance billing that the state
does not know about (killed between create and record), or a record of one that is long
gone. Reconcile lists the account once and then, under the state lock:

- adopts every instance labelled `vasticlaude-<experiment>` that the state lacks, with
  its prices from the account (dph_base, storage_total_cost, dph_total) and its history
  from its start date; one matching a pending intent clears that intent;
- marks records whose instance is no longer on the account destroyed ("gone from the
  account") and writes their final estimated cost to the experiment's ledger;
- refreshes the status of the others (records changed after the listing are left alone,
  so a concurrent `up` or `down` is never overwritten);
- clears intents older than 10 minutes that no instance matches (abandoned creates).

A corrupt instances.json is kept aside (instances.json.corrupt-<time>) and rebuilt from
the account; the report names where it went. `billing_usd_per_hour` is what the whole
account bills now: dph_total of running instances plus storage of the others (nothing
for offline hosts).

JSON data: {"adopted": [{"id", "label", "experiment", "status", "from_intent"}],
  "marked_gone": [id], "updated": [{"id", "from", "to"}], "abandoned_intents": [label],
  "recovered_from": path | null, "billing_usd_per_hour": float}

Env: VASTICLAUDE_POLL_SCALE multiplies the waits between retried reads (default 1).

Exit codes: 0 done · 2 usage · 3 Vast/sandbox API failure (nothing was changed).
"""
from __future__ import annotations

import argparse
import time

from . import command, config, costing, state
from .offers import connect
from .vast import Vast

PREFIX = "vasticlaude-"
INTENT_STALE_S = 600
GPU_ACTIVE = {"running", "frozen"}


def experiment_of(label: str | None) -> str | None:
    return label[len(PREFIX):] if label and label.startswith(PREFIX) else None


def status_of(row: dict) -> str:
    """The state's status for an account row: null or created is still "creating"."""
    actual = row.get("actual_status")
    return "creating" if actual in (None, "created") else str(actual)


def fields_from_row(row: dict) -> dict:
    """What a record keeps from an account row; prices are the ones Vast bills."""
    is_bid = bool(row.get("is_bid"))
    return {"label": row.get("label"), "experiment": experiment_of(row.get("label")),
            "offer_id": row.get("bundle_id"), "machine_id": row.get("machine_id"),
            "gpu_name": row.get("gpu_name"), "num_gpus": row.get("num_gpus"),
            "gpu_dph": float(row.get("dph_base") or 0), "storage_dph": float(row.get("storage_total_cost") or 0),
            "dph_total": float(row.get("dph_total") or 0), "is_bid": is_bid,
            "bid_price": float(row.get("dph_base") or 0) if is_bid else None,
            "disk": row.get("disk_space"), "image": row.get("image_uuid"), "status_msg": row.get("status_msg")}


def new_record(row: dict, why: str) -> dict:
    """A record for an instance the state did not know, its history from its start date."""
    started = float(row.get("start_date") or time.time())
    return {"id": int(row["id"]), "created_at": started, "created_by": why, "adopted_at": time.time(),
            "updated_at": time.time(), "status": status_of(row),
            "history": [{"at": started, "status": status_of(row), "why": why}], **fields_from_row(row)}


def close_record(rec: dict, at: float, why: str) -> None:
    rec["history"].append({"at": at, "status": "destroyed", "why": why})
    rec.update(status="destroyed", destroyed_at=at, updated_at=time.time(), destroy_reason=why)


def write_final_cost(rec: dict) -> float:
    """The record's final estimated cost, appended to its experiment's ledger; returns dollars."""
    cost = costing.instance_cost(rec)
    state.append_ledger(rec.get("experiment") or "_unassigned", event="instance_final", instance_id=rec["id"],
                        label=rec.get("label"), gpu_name=rec.get("gpu_name"),
                        why=rec.get("destroy_reason", ""), **cost)
    return cost["total_usd"]


def billing_per_hour(rows: list[dict]) -> float:
    total = 0.0
    for row in rows:
        if row.get("actual_status") == "offline":
            continue
        total += float(row.get("dph_total") or 0) if row.get("actual_status") in GPU_ACTIVE \
            else float(row.get("storage_total_cost") or 0)
    return round(total, 6)


# ----- the passes, each on the locked state -----------------------------------------------------
def _adopt(data: dict, rows: dict[int, dict]) -> list[dict]:
    out = []
    for iid, row in rows.items():
        if experiment_of(row.get("label")) is None or str(iid) in data["instances"]:
            continue
        data["instances"][str(iid)] = new_record(row, "adopted by reconcile")
        from_intent = data["intents"].pop(row["label"], None) is not None
        out.append({"id": iid, "label": row["label"], "experiment": experiment_of(row["label"]),
                    "status": status_of(row), "from_intent": from_intent})
    return out


def _mark_gone(data: dict, rows: dict[int, dict], listed_at: float) -> list[dict]:
    gone = []
    for rec in state.live_instances(data):
        if int(rec["id"]) not in rows and float(rec.get("updated_at") or 0) < listed_at:
            close_record(rec, listed_at, "gone from the account")
            gone.append(dict(rec))
    return gone


def _refresh(data: dict, rows: dict[int, dict], listed_at: float) -> list[dict]:
    out = []
    for rec in state.live_instances(data):
        row = rows.get(int(rec["id"]))
        if row is None or float(rec.get("updated_at") or 0) >= listed_at or status_of(row) == rec.get("status"):
            continue
        out.append({"id": rec["id"], "from": rec.get("status"), "to": status_of(row)})
        rec["history"].append({"at": listed_at, "status": status_of(row), "why": "reconcile"})
        rec.update(status=status_of(row), status_msg=row.get("status_msg"), updated_at=time.time())
    return out


def _abandon(data: dict, rows: dict[int, dict], listed_at: float) -> list[str]:
    labels = {row.get("label") for row in rows.values()}
    out = []
    for label, intent in list(data["intents"].items()):
        if label in labels:  # its instance is known (recorded or just adopted): the intent is done
            data["intents"].pop(label)
        elif listed_at - float(intent.get("at") or 0) > INTENT_STALE_S:
            data["intents"].pop(label)
            out.append(label)
    return out


def reconcile(vast: Vast) -> dict:
    """List the account once, then fix the state in one locked transaction; see the module doc."""
    listed_at = time.time()
    rows = {int(r["id"]): r for r in vast.instances()}
    with state.transaction() as data:
        recovered = data.pop("recovered_from", None)
        adopted = _adopt(data, rows)
        gone = _mark_gone(data, rows, listed_at)
        updated = _refresh(data, rows, listed_at)
        abandoned = _abandon(data, rows, listed_at)
    for rec in gone:
        write_final_cost(rec)
    return {"adopted": adopted, "marked_gone": [r["id"] for r in gone], "updated": updated,
            "abandoned_intents": abandoned, "recovered_from": recovered,
            "billing_usd_per_hour": billing_per_hour(list(rows.values()))}


# ----- the command --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude reconcile", __doc__)
    command.add_target_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    return reconcile(connect(args, config.load()))


def human(data: object) -> str:
    assert isinstance(data, dict)
    adopted = ", ".join(f"{a['id']} ({a['label']})" for a in data["adopted"]) or "none"
    lines = [f"adopted: {adopted}",
             f"marked gone: {', '.join(map(str, data['marked_gone'])) or 'none'}",
             f"status updated: {', '.join(_change(u) for u in data['updated']) or 'none'}",
             f"abandoned intents cleared: {', '.join(data['abandoned_intents']) or 'none'}",
             f"the account bills ${data['billing_usd_per_hour']:.4f}/h now"]
    if data["recovered_from"]:
        lines.append(f"instances.json was corrupt: kept aside at {data['recovered_from']} and rebuilt from the account")
    return "\n".join(lines)


def _change(update: dict) -> str:
    return f"{update['id']} {update['from']}→{update['to']}"


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human)

"""Make instances.json agree with the account: adopt, mark gone, refresh, clear stale intents.

Also owns how a record is made from an account row (new_record, fields_from_row) and
closed (close_record, write_final_cost): every workflow that records an instance uses these.
"""
from __future__ import annotations

import time

from vasticlaude.core import money as costing
from vasticlaude.core.lifecycle import GPU_BILLED, record_status
from vasticlaude.store import state
from vasticlaude.vast.gateway import Vast

PREFIX = "vasticlaude-"
INTENT_STALE_S = 600


def experiment_of(label: str | None) -> str | None:
    return label[len(PREFIX):] if label and label.startswith(PREFIX) else None


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
            "updated_at": time.time(), "status": record_status(row),
            "history": [{"at": started, "status": record_status(row), "why": why}], **fields_from_row(row)}


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
        total += float(row.get("dph_total") or 0) if record_status(row) in GPU_BILLED \
            else float(row.get("storage_total_cost") or 0)
    return round(total, 6)


# ----- the passes, each on the locked state -----------------------------------------------------
def adopt(data: dict, rows: dict[int, dict]) -> list[dict]:
    out = []
    for iid, row in rows.items():
        if experiment_of(row.get("label")) is None or str(iid) in data["instances"]:
            continue
        data["instances"][str(iid)] = new_record(row, "adopted by reconcile")
        from_intent = data["intents"].pop(row["label"], None) is not None
        out.append({"id": iid, "label": row["label"], "experiment": experiment_of(row["label"]),
                    "status": record_status(row), "from_intent": from_intent})
    return out


def mark_gone(data: dict, rows: dict[int, dict], listed_at: float) -> list[dict]:
    gone = []
    for rec in state.live_instances(data):
        if int(rec["id"]) not in rows and float(rec.get("updated_at") or 0) < listed_at:
            close_record(rec, listed_at, "gone from the account")
            gone.append(dict(rec))
    return gone


def refresh(data: dict, rows: dict[int, dict], listed_at: float) -> list[dict]:
    out = []
    for rec in state.live_instances(data):
        row = rows.get(int(rec["id"]))
        if row is None or float(rec.get("updated_at") or 0) >= listed_at or record_status(row) == rec.get("status"):
            continue
        out.append({"id": rec["id"], "from": rec.get("status"), "to": record_status(row)})
        rec["history"].append({"at": listed_at, "status": record_status(row), "why": "reconcile"})
        rec.update(status=record_status(row), status_msg=row.get("status_msg"), updated_at=time.time())
    return out


def abandon(data: dict, rows: dict[int, dict], listed_at: float) -> list[str]:
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
        adopted = adopt(data, rows)
        gone = mark_gone(data, rows, listed_at)
        updated = refresh(data, rows, listed_at)
        abandoned = abandon(data, rows, listed_at)
    for rec in gone:
        write_final_cost(rec)
    return {"adopted": adopted, "marked_gone": [r["id"] for r in gone], "updated": updated,
            "abandoned_intents": abandoned, "recovered_from": recovered,
            "billing_usd_per_hour": billing_per_hour(list(rows.values()))}


# ----- the command --------------------------------------------------------------------------



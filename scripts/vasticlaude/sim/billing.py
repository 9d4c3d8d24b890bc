"""Per-second billing, as Vast bills (vast-api.md §11).

GPU time is charged while the container is active (running or frozen); storage is
charged while the instance exists, whatever its state, and nothing while its host is
offline. Rates come from the rented offer: `dph_base` (or the bid for interruptible
instances) and `storage_cost` in $/GB/month for the instance's disk.
"""
from __future__ import annotations

GPU_ACTIVE = {"running", "frozen"}
HOURS_PER_MONTH = 30 * 24


def gpu_rate(rec: dict) -> float:
    """$/h for the GPU part of an instance."""
    if rec.get("is_bid"):
        return float(rec["bid_price"])
    return float(rec["offer"]["dph_base"])


def disk_rate(rec: dict) -> float:
    """$/h for the instance's disk."""
    return float(rec["offer"]["storage_cost"]) * float(rec["disk"]) / HOURS_PER_MONTH


def accrue(rec: dict, now: float) -> float:
    """Charge `rec` from its last accrual to `now`; returns the dollars charged."""
    bill = rec["billing"]
    seconds = now - bill["last"]
    if seconds <= 0:
        return 0.0
    bill["last"] = now
    if rec.get("host_offline"):
        return 0.0
    charged = _add(bill, "disk", seconds, disk_rate(rec))
    if rec.get("actual_status") in GPU_ACTIVE:
        charged += _add(bill, "gpu", seconds, gpu_rate(rec))
    return charged


def _add(bill: dict, kind: str, seconds: float, rate_per_hour: float) -> float:
    amount = seconds * rate_per_hour / 3600.0
    item = bill.setdefault(kind, {"seconds": 0.0, "amount": 0.0})
    item["seconds"] += seconds
    item["amount"] += amount
    return amount


def new_billing(now: float) -> dict:
    return {"last": now, "gpu": {"seconds": 0.0, "amount": 0.0}, "disk": {"seconds": 0.0, "amount": 0.0}}


def total(rec: dict) -> float:
    bill = rec["billing"]
    return bill["gpu"]["amount"] + bill["disk"]["amount"]


def charge_row(rec: dict) -> dict:
    """One contract in the shape of `GET /api/v0/charges/` (format=table)."""
    bill = rec["billing"]
    start = int(rec["start_date"])
    end = int(rec.get("destroyed_at") or bill["last"])
    items = [_item(start, end, "gpu", bill["gpu"], gpu_rate(rec)),
             _item(start, end, "disk", bill["disk"], disk_rate(rec))]
    row = {"start": start, "end": end, "type": "instance", "source": f"instance-{rec['id']}",
           "description": f"Instance {rec['id']} Charges", "amount": round(total(rec), 3),
           "items": items, "metadata": {}}
    if rec.get("label"):
        row["metadata"]["label"] = rec["label"]
    return row


def _item(start: int, end: int, kind: str, item: dict, rate: float) -> dict:
    hours = item["seconds"] / 3600.0
    return {"start": start, "end": end, "type": kind, "source": None,
            "description": f"{hours:.3f} hours at ${rate:.3f}/hour", "amount": round(item["amount"], 6),
            "metadata": {}}

"""Per-second billing, as Vast bills (vast-api.md §11).

GPU time is charged while the container is active (running or frozen); storage is
charged while the instance exists, whatever its state, and nothing while its host is
offline. Rates come from the rented offer: `dph_base` (or the bid for interruptible
instances) and `storage_cost` in $/GB/month for the instance's disk.

Bandwidth (only with the `bandwidth-billing` realism behaviour): bytes that went through
the instance's SSH ports, in at the offer's `inet_down_cost` and out at `inet_up_cost`
($/GB, GB = 2**30 bytes as vastai's display converts $/GB to $/TB by x1024). Traffic the
instance makes itself (pip, downloads) never passes the sandbox and is not counted.
"""
from __future__ import annotations

GPU_ACTIVE = {"running", "frozen"}
HOURS_PER_MONTH = 30 * 24
GB = float(1 << 30)
# billing item -> (direction counted by the SSH routes, offer price field)
BANDWIDTH = {"inet_down": ("in", "inet_down_cost"), "inet_up": ("out", "inet_up_cost")}


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
    status = rec.get("actual_status")
    # `unknown` from a lost heartbeat: the box runs on and is billed as running (the sandbox's call).
    if status in GPU_ACTIVE or (status == "unknown" and rec.get("gpu_billing")):
        charged += _add(bill, "gpu", seconds, gpu_rate(rec))
    return charged


def accrue_bandwidth(rec: dict) -> float:
    """Charge the bytes moved since the last call; returns the dollars charged."""
    net, bill, charged = rec.get("net") or {}, rec["billing"], 0.0
    for kind, (direction, _) in BANDWIDTH.items():
        item = bill.setdefault(kind, {"bytes": 0, "amount": 0.0, "from": 0})
        new = int(net.get(direction, 0)) - item.get("from", 0) - item["bytes"]
        if new > 0:
            amount = new / GB * bandwidth_rate(rec, kind)
            item["bytes"] += new
            item["amount"] += amount
            charged += amount
    return charged


def bandwidth_rate(rec: dict, kind: str) -> float:
    """$/GB of one direction."""
    return float(rec["offer"].get(BANDWIDTH[kind][1]) or 0.0)


def bandwidth_items(rec: dict) -> list[tuple[str, dict]]:
    """The bandwidth items that were billed (none unless bandwidth billing was on)."""
    return [(kind, rec["billing"][kind]) for kind in BANDWIDTH
            if rec["billing"].get(kind, {}).get("bytes")]


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
    return bill["gpu"]["amount"] + bill["disk"]["amount"] + sum(i["amount"] for _, i in bandwidth_items(rec))


def charge_row(rec: dict) -> dict:
    """One contract in the shape of `GET /api/v0/charges/` (format=table)."""
    bill = rec["billing"]
    start = int(rec["start_date"])
    end = int(rec.get("destroyed_at") or bill["last"])
    items = [_item(start, end, "gpu", bill["gpu"], gpu_rate(rec)),
             _item(start, end, "disk", bill["disk"], disk_rate(rec))]
    for kind, item in bandwidth_items(rec):
        rate = bandwidth_rate(rec, kind)
        items.append({"start": start, "end": end, "type": kind, "source": None,
                      "description": f"{item['bytes'] / GB:.4f} GB at ${rate:.4f}/GB",
                      "amount": round(item["amount"], 6), "metadata": {"bytes": item["bytes"]}})
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

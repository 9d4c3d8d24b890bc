"""What an instance has cost, from its recorded history (the ledger's estimate).

Vast bills GPU time while an instance runs, storage while it exists (vast-api.md §11),
and bandwidth by the byte: in at the offer's `inet_down_cost`, out at `inet_up_cost`,
$/GB with GB = 2**30 (README "Realism", bandwidth-billing). Each record in instances.json
keeps its $/h (`gpu_dph`, `storage_dph`), its $/GB (`inet_down_cost`, `inet_up_cost`), a
history of status changes and the bytes push/pull/sync moved (`traffic`: [at, in, out]
entries); integrating them gives the estimate. Actual charges, where Vast provides them,
are read by `cost`.
"""
from __future__ import annotations

import time

from vasticlaude.core.lifecycle import GONE, GPU_BILLED


def spans(rec: dict, now: float) -> tuple[float, float]:
    """Seconds running (GPU billed) and existing (storage billed) up to `now`, from the history."""
    running = exists = 0.0
    history = rec.get("history") or []
    last = len(history) - 1
    for i, here in enumerate(history):
        end = min(history[i + 1]["at"] if i < last else (rec.get("destroyed_at") or now), now)  # clipped: "until midnight"
        status = here["status"]
        if end <= here["at"] or status in GONE:
            continue
        exists += end - here["at"]
        if status in GPU_BILLED:
            running += end - here["at"]
    return running, exists


def dollars(rec: dict, running: float, exists: float, now: float | None) -> tuple[float, float, float]:
    """GPU, storage and bandwidth dollars for these spans: the one formula, so every total (cost's
    sums, today, the budgets) is the sum of the rows."""
    gpu = running * float(rec.get("gpu_dph") or 0) / 3600
    storage = exists * float(rec.get("storage_dph") or 0) / 3600
    net = bandwidth_usd(rec, now) if rec.get("traffic") else 0.0  # most records moved nothing: skip the walk
    return gpu, storage, net


def total_usd(rec: dict, now: float) -> tuple[float, float]:
    """Seconds running and dollars spent (bandwidth included) up to `now`, unrounded: what totals
    over months of records add up."""
    running, exists = spans(rec, now)
    return running, sum(dollars(rec, running, exists, now))


def instance_cost(rec: dict, now: float | None = None) -> dict:
    """Seconds running and existing, and dollars of GPU, storage, bandwidth and total up to `now`."""
    now = now or time.time()
    running, exists = spans(rec, now)
    gpu, storage, net = dollars(rec, running, exists, now)
    return {"running_s": round(running, 1), "exists_s": round(exists, 1), "gpu_usd": round(gpu, 6),
            "storage_usd": round(storage, 6), "bandwidth_usd": round(net, 6), "total_usd": round(gpu + storage + net, 6),
            "dph": round(float(rec.get("gpu_dph") or 0) + float(rec.get("storage_dph") or 0), 6)}


def billing_now(rec: dict) -> float:
    """$/h this instance bills right now (0 once destroyed)."""
    if rec.get("destroyed_at"):
        return 0.0
    storage = float(rec.get("storage_dph") or 0)
    return storage + (float(rec.get("gpu_dph") or 0) if rec.get("status") in GPU_BILLED else 0.0)


GB = float(1 << 30)
TRAFFIC_MERGE_S = 300  # entries closer than this are one: a week of syncs stays a short list


def transfer_usd(in_bytes: float, out_bytes: float, down_cost: float, up_cost: float) -> float:
    """Dollars for bytes into the instance (at inet_down_cost $/GB) and out of it (inet_up_cost)."""
    return in_bytes / GB * float(down_cost or 0) + out_bytes / GB * float(up_cost or 0)


def traffic_bytes(rec: dict, now: float | None = None) -> tuple[int, int]:
    """Bytes (in, out) the record's transfers moved up to `now`."""
    moved_in = moved_out = 0
    for entry in rec.get("traffic") or ():  # one pass: every total over months of records walks it
        if now is None or float(entry[0]) <= now:
            moved_in += int(entry[1])
            moved_out += int(entry[2])
    return moved_in, moved_out


def bandwidth_usd(rec: dict, now: float | None = None) -> float:
    moved_in, moved_out = traffic_bytes(rec, now)
    return transfer_usd(moved_in, moved_out, rec.get("inet_down_cost") or 0, rec.get("inet_up_cost") or 0)


def add_traffic(rec: dict, at: float, moved_in: int, moved_out: int) -> None:
    """Count a transfer in the record (merged into the last entry when it is recent)."""
    if moved_in <= 0 and moved_out <= 0:
        return
    entries = rec.setdefault("traffic", [])
    if entries and at - float(entries[-1][0]) < TRAFFIC_MERGE_S:
        last = entries[-1]
        entries[-1] = [round(at, 3), int(last[1]) + moved_in, int(last[2]) + moved_out]
    else:
        entries.append([round(at, 3), moved_in, moved_out])

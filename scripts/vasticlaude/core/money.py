"""What an instance has cost, from its recorded history (the ledger's estimate).

Vast bills GPU time while an instance runs and storage while it exists
(vast-api.md §11). Each record in instances.json keeps its $/h (`gpu_dph`,
`storage_dph`) and a history of status changes; integrating that history gives
the estimate. Actual charges, where Vast provides them, are read by `cost`.
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


def total_usd(rec: dict, now: float) -> tuple[float, float]:
    """Seconds running and dollars spent up to `now`, unrounded: what totals over months of records add up."""
    running, exists = spans(rec, now)
    return running, (running * float(rec.get("gpu_dph") or 0) + exists * float(rec.get("storage_dph") or 0)) / 3600


def instance_cost(rec: dict, now: float | None = None) -> dict:
    """Seconds running and existing, and dollars of GPU, storage and total up to `now`."""
    now = now or time.time()
    running, exists = spans(rec, now)
    gpu = running * float(rec.get("gpu_dph") or 0) / 3600
    storage = exists * float(rec.get("storage_dph") or 0) / 3600
    return {"running_s": round(running, 1), "exists_s": round(exists, 1), "gpu_usd": round(gpu, 6),
            "storage_usd": round(storage, 6), "total_usd": round(gpu + storage, 6),
            "dph": round(float(rec.get("gpu_dph") or 0) + float(rec.get("storage_dph") or 0), 6)}


def billing_now(rec: dict) -> float:
    """$/h this instance bills right now (0 once destroyed)."""
    if rec.get("destroyed_at"):
        return 0.0
    storage = float(rec.get("storage_dph") or 0)
    return storage + (float(rec.get("gpu_dph") or 0) if rec.get("status") in GPU_BILLED else 0.0)

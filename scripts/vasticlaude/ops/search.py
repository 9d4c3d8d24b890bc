"""Search the market for what a rental asks for: the query, relaxing it when nothing matches, machines to skip.

The ranking rules live in core.market; this adds the API calls and the memory of
machines that failed this user (kept 7 days in instances.json).
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace

from vasticlaude.core.market import Wanted, query_of, rank, resolve_gpus, terms
from vasticlaude.errors import FAILED, Error
from vasticlaude.store import state
from vasticlaude.vast.gateway import Vast

FAILED_MACHINE_TTL = 7 * 24 * 3600  # a host that failed once is worth avoiding for a while, not forever
FAILED_MACHINE_CAP = 200


# ----- GPU names ----------------------------------------------------------------------------


# ----- search and rank ----------------------------------------------------------------------


def search(vast: Vast, w: Wanted, dropped: str = "", extra: int = 0) -> list[dict]:
    storage = 5.0 if dropped == "disk" else w.disk_gb
    return vast.search_offers(query_of(w, dropped), "dph", w.limit + extra, w.interruptible, storage)


def find(vast: Vast, w: Wanted) -> dict:
    """The ranked candidates, or an Error that says what to change."""
    if w.gpus:
        w = replace(w, gpus=resolve_gpus(w.gpus, vast.gpu_names()))
    excluded = failed_machines()
    offers = search(vast, w, extra=len(excluded))
    cands = rank(offers, w, excluded)
    if not cands:
        raise no_match(vast, w, bool(offers))
    return {"query": query_of(w), "hours": w.hours, "interruptible": w.interruptible,
            "candidates": [asdict(c) for c in cands]}


def no_match(vast: Vast, w: Wanted, only_failed: bool) -> Error:
    if only_failed:
        return Error("no_offer", "the only matching offers are on machines that failed you in the last 7 days",
                     "Relax a constraint (e.g. another --gpu or --region) to reach other machines.", FAILED)
    for term in terms(w):
        if search(vast, replace(w, limit=1), dropped=term.name):
            return Error("no_offer", f"no offer matches `{query_of(w)}`; without {term.name} "
                         f"(`{term.text}`) there would be", f"Relax {term.flag} and retry.", FAILED)
    return Error("no_offer", f"no offer matches `{query_of(w)}`, and dropping any one constraint is not enough",
                 "Relax several constraints (GPU, region, price, reliability) and retry.", FAILED)


# ----- machines that failed this user -------------------------------------------------------
def failed_machines(now: float | None = None) -> set[int]:
    now = now or time.time()
    return {int(f["machine_id"]) for f in state.load().get("failed_machines", [])
            if now - float(f.get("at", 0)) < FAILED_MACHINE_TTL}


def remember_failed(machine_id: int, offer_id: int, reason: str) -> None:
    """Record a machine that failed, so the next search skips it (kept 7 days, at most 200)."""
    now = time.time()
    with state.transaction() as data:
        kept = [f for f in data.get("failed_machines", []) if now - float(f.get("at", 0)) < FAILED_MACHINE_TTL]
        kept.append({"machine_id": machine_id, "offer_id": offer_id, "reason": reason[:200], "at": now})
        data["failed_machines"] = kept[-FAILED_MACHINE_CAP:]


# ----- the command --------------------------------------------------------------------------



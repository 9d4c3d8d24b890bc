"""The fault catalogue behind `POST /sim/faults` and `vasticlaude sim fault`.

Each kind reproduces one failure the product must survive (vast-api.md §10,
landscape.md): offers that vanish or cannot schedule, instances that never start,
preemption, dead hosts and containers, dropped SSH, API errors and slowness, an
empty balance. Offer- and machine-level faults apply to instances rented later;
instance-level ones act at once. The realism kinds (what the real Vast does, each
from a named source) are in realism.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import objectstore, realism
from .errors import bad_request

if TYPE_CHECKING:
    from .app import Sandbox

OFFER_FAULTS = {"offer-vanish", "offer-busy", "stuck-loading", "fail-start"}
KINDS = sorted(OFFER_FAULTS | {"http", "slow", "preempt", "host-down", "container-exit", "ssh-drop", "balance"}
               | realism.KINDS | set(objectstore.KINDS))


async def apply_fault(sandbox: "Sandbox", spec: dict) -> dict:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise bad_request(f"unknown fault kind {kind!r}; one of: {', '.join(KINDS)}")
    if kind in realism.KINDS:
        return await realism.apply(sandbox, kind, spec)
    if kind in objectstore.KINDS:
        return _store_fault(sandbox, spec)
    if kind in ("http", "slow"):
        rule = dict(spec, status=0) if kind == "slow" else spec
        return {"rule": sandbox.faults.add(rule).__dict__}
    if kind == "balance":
        return _balance(sandbox, spec)
    if kind in OFFER_FAULTS and "instance" not in spec:
        return _offer_fault(sandbox, kind, spec)
    return await _instance_fault(sandbox, kind, spec)


def _offer_fault(sandbox: "Sandbox", kind: str, spec: dict) -> dict:
    offers = target_offers(sandbox, spec)
    for offer in offers:
        faults = offer.setdefault("faults", {})
        if kind == "offer-vanish":
            if spec.get("when", "on-rent") == "now":
                offer["vanished"] = True
            else:
                faults["vanish_on_rent"] = True
        elif kind == "offer-busy":
            faults["busy"] = True
        elif kind == "stuck-loading":
            faults["stuck_loading"] = True
        else:
            faults["fail_start"] = _fail_mode(spec)
    return {"offers": [o["id"] for o in offers]}


def target_offers(sandbox: "Sandbox", spec: dict) -> list[dict]:
    if "offer" in spec:
        offer = sandbox.world.offer(int(spec["offer"]))
        if offer is None:
            raise bad_request(f"no offer {spec['offer']} in this sandbox's market")
        return [offer]
    if "machine" in spec:
        offers = [o for o in sandbox.world.data["offers"] if o["machine_id"] == int(spec["machine"])]
        if not offers:
            raise bad_request(f"no machine {spec['machine']} in this sandbox's market")
        return offers
    raise bad_request("give offer, machine or instance")


def _fail_mode(spec: dict) -> str:
    mode = spec.get("mode", "exited")
    if mode not in realism.FAIL_MODES:
        raise bad_request(f"mode must be one of: {', '.join(realism.FAIL_MODES)}")
    return mode


async def _instance_fault(sandbox: "Sandbox", kind: str, spec: dict) -> dict:
    if "instance" not in spec:
        raise bad_request(f"{kind} needs an instance")
    rec = sandbox.world.instance(int(spec["instance"]))
    engine = sandbox.engine
    if kind == "stuck-loading":
        rec["faults"]["stuck_loading"] = True
    elif kind == "fail-start":
        rec["faults"]["fail_start"] = _fail_mode(spec)
    elif kind == "preempt":
        if not rec["is_bid"]:
            raise bad_request("only interruptible (bid) instances can be preempted")
        competing = float(spec.get("bid") or round(float(rec["bid_price"]) * 1.5, 4))
        await engine.preempt(rec, competing, spec.get("seconds"), spec.get("intended") or "running")
    elif kind == "host-down":
        await engine.host_down(rec, _seconds(spec))
    elif kind == "container-exit":
        await engine.container_exit(rec, _seconds(spec))
    elif kind == "ssh-drop":
        engine.drop_ssh(rec, int(spec.get("refuse", 0)))
    else:
        raise bad_request(f"{kind} does not apply to an instance")
    return {"instance": rec["id"], "actual_status": rec["actual_status"]}


def _seconds(spec: dict) -> float | None:
    """--seconds of a transient outage (none: it lasts)."""
    if spec.get("seconds") is None:
        return None
    try:
        seconds = float(spec["seconds"])
    except (TypeError, ValueError):
        raise bad_request("seconds must be a number") from None
    if seconds < 0:
        raise bad_request("seconds must not be negative")
    return seconds


def _store_fault(sandbox: "Sandbox", spec: dict) -> dict:
    if sandbox.store is None:
        raise bad_request("this sandbox has no object store")
    try:
        return {"store_fault": sandbox.store.add_fault(spec)}
    except (TypeError, ValueError) as err:
        raise bad_request(str(err)) from None


def _balance(sandbox: "Sandbox", spec: dict) -> dict:
    user = sandbox.world.user
    if "set" in spec:
        user["balance"] = float(spec["set"])
    elif "add" in spec:
        sandbox.world.add_credit(float(spec["add"]))
    else:
        raise bad_request("balance needs set or add")
    return {"balance": user["balance"]}

"""Take instances down: destroy, confirm gone through the API, close the record, ledger the cost.

A destroy that looks successful is not proof: each instance is watched until the API
no longer lists it (a short backoff, about 15 s), and only then marked destroyed. Inside a
deadline (`core.retry.wall`, `down --deadline`) what is not confirmed gone by then is named.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from vasticlaude.core import retry
from vasticlaude.core.retry import schedule
from vasticlaude.errors import BILLING_RISK
from vasticlaude.ops.reconcile import PREFIX, close_record, new_record, write_final_cost
from vasticlaude.output import progress
from vasticlaude.store import state
from vasticlaude.vast.gateway import Vast, VastError

CONFIRM_POLLS = 6  # about 15 s of backoff before a destroy counts as unconfirmed


@dataclass(frozen=True)
class Target:
    """One instance to take down; `row` is its account row when the account was listed."""

    instance_id: int
    row: dict | None
    listed: bool


def destroy_confirmed(vast: Vast, instance_id: int) -> str | None:
    """Destroy and watch it disappear; None when gone, else why it is not confirmed."""
    vast.destroy(instance_id)
    row = None
    for pause in schedule(0.5, 4.0, CONFIRM_POLLS):
        row = vast.instance(instance_id)
        if row is None:
            return None
        if not retry.pause(pause):
            return f"still listed ({row.get('actual_status')}) when the deadline came, after destroy"
    return f"still listed ({row.get('actual_status') if row else '?'}) after destroy"


def finish(instance_id: int, row: dict | None, why: str) -> dict | None:
    """Mark the record destroyed (once) and ledger its cost; the closed record, or None."""
    with state.transaction() as data:
        rec = data["instances"].get(str(instance_id))
        if rec is None and row is not None:
            rec = data["instances"][str(instance_id)] = new_record(row, f"recorded by {why}")
        if rec is None or rec.get("destroyed_at"):
            return None
        close_record(rec, time.time(), why)
        closed = dict(rec)
    closed["cost_usd"] = write_final_cost(closed)
    return closed


def teardown(vast: Vast, target: Target, why: str = "down") -> tuple[str, dict]:
    """("destroyed" | "already_gone" | "failed", details) for one instance; never raises VastError."""
    iid = target.instance_id
    try:
        row = target.row if target.listed else vast.instance(iid)
        if row is None:
            finish(iid, None, f"{why}: already gone")
            return "already_gone", {"id": iid}
        reason = destroy_confirmed(vast, iid)
    except VastError as err:
        return "failed", {"id": iid, "reason": err.message}
    if reason:
        return "failed", {"id": iid, "reason": reason}
    closed = finish(iid, row, why)
    return "destroyed", {"id": iid, "label": row.get("label"), "cost_usd": closed["cost_usd"] if closed else None}


def stop(vast: Vast, target: Target) -> tuple[str, dict]:
    """("stopped" | "already_gone" | "failed", details): an instance the API no longer has (gone from
    the listing, or the stop answered 404) is closed as gone: nothing bills, nothing is left to do."""
    iid = target.instance_id
    try:
        if target.listed and target.row is None:
            finish(iid, None, "stop: already gone")
            return "already_gone", {"id": iid}
        vast.stop(iid)
    except VastError as err:
        if err.status == 404 and gone(vast, iid):  # destroyed meanwhile (its watchdog, another session)
            finish(iid, None, "stop: already gone")
            return "already_gone", {"id": iid}
        return "failed", {"id": iid, "reason": err.message}
    if str(iid) in state.load()["instances"]:
        state.upsert_instance(iid, status="stopped", why="down --keep-disk")
    return "stopped", {"id": iid}


def gone(vast: Vast, instance_id: int) -> bool:
    """True when the API confirms the instance is no longer there (a failed read is not proof)."""
    try:
        return vast.instance(instance_id) is None
    except VastError:
        return False


def targets(vast: Vast, ids: list[int], experiment: str | None = None, everything: bool = False) -> list[Target]:
    """The instances to take down; the account is listed only for an experiment or everything."""
    if not (everything or experiment):
        return [Target(int(i), None, False) for i in dict.fromkeys(ids)]
    wanted = {int(i): None for i in ids}
    for rec in state.live_instances():
        if everything or rec.get("experiment") == experiment:
            wanted.setdefault(int(rec["id"]), None)
    try:
        rows = {int(r["id"]): r for r in vast.instances()}
    except VastError as err:
        if not wanted:
            raise  # nothing known to take down: an API failure before anything was done (exit 3)
        # The instances the state knows of may be billing: try each by id (the failures are named, exit 4).
        progress(f"vasticlaude down: could not list the account ({err.message}); trying the "
                 f"{len(wanted)} recorded instance(s) one by one")
        return [Target(iid, None, False) for iid in wanted]
    for iid, row in rows.items():
        label = row.get("label") or ""
        if (everything and label.startswith(PREFIX)) or (experiment and label == PREFIX + experiment):
            wanted[iid] = row
    return [Target(iid, rows.get(iid), True) for iid in wanted]


def take_down(vast: Vast, chosen: list[Target], keep_disk: bool = False) -> dict:
    """Destroy (or stop) each target; the report `down` prints, exit_code 4 when one is not confirmed gone."""
    report: dict = {"destroyed": [], "already_gone": [], "failed": [], "stopped": []}
    for target in chosen:
        if retry.passed():  # the deadline is a wall: what is left is named, never silently dropped
            report["failed"].append({"id": target.instance_id, "reason": "not tried: the deadline came first"})
            continue
        kind, details = stop(vast, target) if keep_disk else teardown(vast, target)
        report[kind].append(details if kind in ("destroyed", "failed") else details["id"])
    report["exit_code"] = BILLING_RISK if report["failed"] else 0
    if report["failed"]:
        ids = " ".join(str(f["id"]) for f in report["failed"])
        progress(f"vasticlaude down: could not confirm {ids} gone; they may still bill. "
                 f"Re-run 'vasticlaude down {ids}'.")
    return report


# ----- the command --------------------------------------------------------------------------



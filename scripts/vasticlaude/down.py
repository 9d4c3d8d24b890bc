"""vasticlaude down: destroy instances, confirm they are gone, record what they cost.

Usage:
  vasticlaude down ID... [--keep-disk] [--json]
  vasticlaude down --experiment X [--keep-disk] [--json]
  vasticlaude down --all [--keep-disk] [--json]
  (plus --sandbox / --api-key to choose the account)

--experiment X takes every live record of experiment X in instances.json and every
account instance labelled `vasticlaude-X`; --all takes every live record and every
account instance whose label starts with `vasticlaude-` (so instances a crashed session
never recorded are caught too). Each is destroyed, then confirmed gone through the API
(show instance answers nothing) with a short backoff, because a destroy that looks
successful is not proof. It is then marked destroyed in the state and its final
estimated cost (costing.instance_cost) goes to the experiment's ledger. Idempotent: an
instance already gone counts as success. --keep-disk stops instead of destroying: the
data stays, and so does the storage bill.

Env: VASTICLAUDE_POLL_SCALE multiplies every wait between polls and retried reads
(default 1; tests use a small value).

JSON data: {"destroyed": [{"id", "label", "cost_usd"}], "already_gone": [id],
  "failed": [{"id", "reason"}], "stopped": [id], "exit_code": 0 | 4}

Exit codes: 0 all gone (or stopped) · 2 usage · 3 Vast/sandbox API failure before
anything was done · 4 some instance could not be confirmed gone (they are named; re-run).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from itertools import islice

from . import command, config, state
from .errors import BILLING_RISK
from .offers import backoff, connect
from .reconcile import PREFIX, close_record, new_record, write_final_cost
from .vast import Vast, VastError

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
    for pause in islice(backoff(0.5, 4.0), CONFIRM_POLLS):
        row = vast.instance(instance_id)
        if row is None:
            return None
        time.sleep(pause)
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
    iid = target.instance_id
    try:
        vast.stop(iid)
    except VastError as err:
        return "failed", {"id": iid, "reason": err.message}
    if str(iid) in state.load()["instances"]:
        state.upsert_instance(iid, status="stopped", why="down --keep-disk")
    return "stopped", {"id": iid}


def targets(vast: Vast, args: argparse.Namespace) -> list[Target]:
    """The instances to take down; the account is listed only for --experiment and --all."""
    if not (args.all or args.experiment):
        return [Target(int(i), None, False) for i in dict.fromkeys(args.ids)]
    wanted = {int(i): None for i in args.ids}
    for rec in state.live_instances():
        if args.all or rec.get("experiment") == args.experiment:
            wanted.setdefault(int(rec["id"]), None)
    rows = {int(r["id"]): r for r in vast.instances()}
    for iid, row in rows.items():
        label = row.get("label") or ""
        if (args.all and label.startswith(PREFIX)) or (args.experiment and label == PREFIX + args.experiment):
            wanted[iid] = row
    return [Target(iid, rows.get(iid), True) for iid in wanted]


# ----- the command --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude down", __doc__)
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="instance ids")
    p.add_argument("--experiment", help="every instance of this experiment")
    p.add_argument("--all", action="store_true", help="every vasticlaude instance (state and account)")
    p.add_argument("--keep-disk", action="store_true", help="stop instead of destroy (storage keeps billing)")
    command.add_target_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    if not (args.ids or args.experiment or args.all):
        build_parser().error("name instance IDs, --experiment X or --all")
    vast = connect(args, config.load())
    report: dict = {"destroyed": [], "already_gone": [], "failed": [], "stopped": []}
    for target in targets(vast, args):
        kind, details = stop(vast, target) if args.keep_disk else teardown(vast, target)
        report[kind].append(details if kind in ("destroyed", "failed") else details["id"])
    report["exit_code"] = BILLING_RISK if report["failed"] else 0
    if report["failed"]:
        ids = " ".join(str(f["id"]) for f in report["failed"])
        print(f"vasticlaude down: could not confirm {ids} gone; they may still bill. "
              f"Re-run 'vasticlaude down {ids}'.", file=sys.stderr)
    return report


def human(data: object) -> str:
    assert isinstance(data, dict)
    lines = [f"destroyed {d['id']} ({d['label'] or 'no label'}): ${d['cost_usd'] or 0:.4f} estimated"
             for d in data["destroyed"]]
    if data["already_gone"]:
        lines.append(f"already gone: {', '.join(map(str, data['already_gone']))}")
    lines += [f"stopped {i}: its disk is kept and still bills storage until destroyed" for i in data["stopped"]]
    lines += [f"NOT confirmed gone {f['id']}: {f['reason']}" for f in data["failed"]]
    return "\n".join(lines) or "nothing to take down"


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human)

"""vasticlaude down: destroy instances, confirm they are gone, record what they cost.

Usage:
  vasticlaude down ID... [--keep-disk] [--deadline S] [--json]
  vasticlaude down --experiment X [--keep-disk] [--deadline S] [--json]
  vasticlaude down --all [--keep-disk] [--deadline S] [--json]
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

A multi-node experiment (`up --nodes N`): --experiment takes every node, then deletes the
group's overlay network ("overlay" in the JSON); --all also deletes vasticlaude's overlays
(named vc-…) that no instance uses any more ("overlays").

JSON data: {"destroyed": [{"id", "label", "cost_usd"}], "already_gone": [id],
  "failed": [{"id", "reason"}], "stopped": [id], "exit_code": 0 | 4}

When the API fails, every instance named (by id, or recorded for the experiment) that could
not be confirmed gone is listed and the exit is 4, never 3: it may still bill.

--deadline S (default: config deadlines.down_s, 600) is a wall: no API retry or confirmation
poll runs past it; whatever is not confirmed gone by then is listed in "failed" (exit 4).

Exit codes: 0 all gone (or stopped) · 2 usage · 3 Vast/sandbox API failure before
anything was done (no instance named or recorded) · 4 some instance could not be confirmed
gone (they are named; re-run).
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.core import retry
from vasticlaude.ops import nodes
from vasticlaude.errors import Error
from vasticlaude.ops import teardown
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude down", __doc__)
    p.add_argument("ids", nargs="*", type=console.ID, metavar="ID", help="instance ids")
    p.add_argument("--experiment", type=console.experiment, help="every instance of this experiment")
    p.add_argument("--all", action="store_true", help="every vasticlaude instance (state and account)")
    p.add_argument("--keep-disk", action="store_true", help="stop instead of destroy (storage keeps billing)")
    p.add_argument("--deadline", type=console.SECONDS, metavar="S",
                   help="give up retrying after S seconds, naming what is not confirmed gone (default 600)")
    console.add_target_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    if not (args.ids or args.experiment or args.all):
        build_parser().error("name instance IDs, --experiment X or --all")
    vast = console.connect(args)
    seconds = args.deadline or (config.load().get("deadlines") or {}).get("down_s")
    with retry.wall(float(seconds) if seconds else None):
        if nodes.group_of(args.experiment) is not None and not args.ids:
            return nodes.down(vast, args.experiment, args.keep_disk)
        report = teardown.take_down(vast, teardown.targets(vast, args.ids, args.experiment, args.all), args.keep_disk)
        if args.all and not args.keep_disk and not report["failed"]:
            report["overlays"] = nodes.delete_empty_overlays(vast)
        return report


def human(data: object) -> str:
    assert isinstance(data, dict)
    lines = [f"destroyed {d['id']} ({d['label'] or 'no label'}): ${d['cost_usd'] or 0:.4f} estimated"
             for d in data["destroyed"]]
    if data["already_gone"]:
        lines.append(f"already gone: {', '.join(map(str, data['already_gone']))}")
    lines += [f"stopped {i}: its disk is kept and still bills storage until destroyed" for i in data["stopped"]]
    lines += [f"NOT confirmed gone {f['id']}: {f['reason']}" for f in data["failed"]]
    if data.get("overlay"):
        lines.append(f"overlay network {data['overlay']} deleted")
    if data.get("overlays"):
        lines.append(f"overlay networks deleted: {', '.join(data['overlays'])}")
    return "\n".join(lines) or "nothing to take down"


def explain(data: dict, code: int) -> Error:
    ids = " ".join(str(f["id"]) for f in data["failed"])
    reasons = "; ".join(f"{f['id']}: {f['reason']}" for f in data["failed"])
    return Error("not_confirmed_gone", f"could not confirm instance(s) {ids} destroyed ({reasons[:300]}): they may "
                 "still bill", f"Run vasticlaude down {ids} again now.", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, explain=explain)

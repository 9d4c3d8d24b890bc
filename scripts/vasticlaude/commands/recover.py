"""vasticlaude recover: bring a faulted experiment back to running, from its last checkpoint.

Usage:
  vasticlaude recover [--experiment X] [--max-attempts N] [--max-bid USD] [--preempt-wait S]
                      [--disk GB] [--dry-run] [--sandbox] [--api-key KEY] [--json]

Looks first (one `status` snapshot, vasticlaude/diagnose.py) and acts on what it finds:

  preempted        an interruptible instance was outbid: wait up to --preempt-wait (600 s) for
                   the bid to win again, raising it ×bid_step (1.25) about once a minute up to the
                   lower of --max-bid (default the on-demand price) and what the budget affords
                   for the hours left; back up → the job is restarted there (its checkpoints are
                   on its disk); still stopped → relaunch as below.
  host_offline, container_exited, gone, stale, ssh_unreachable
                   relaunch. On the real Vast offline / unknown / exited can pass, so those
                   are looked at again every 5 s until they have lasted recovery.confirm_s
                   (180 s × VASTICLAUDE_POLL_SCALE); one that passes is left running in place.
                   Then whatever still answers is synced home first (at most 60 s); the instance is
                   destroyed and confirmed gone, its machine skipped for 7 days; the like is
                   rented again (the rental `up` recorded: GPU, image, disk, interruptible) on
                   another machine; the code is pushed (`push`, setup included), the local
                   checkpoint copy (.vasticlaude/runs/<exp>/checkpoints) is put into the new
                   checkpoint folder, and the same command runs again with the same guard, so
                   the job sees VASTICLAUDE_RESUME=1.
  disk_full        pull what exists (outputs, checkpoints, run), then relaunch with the disk
                   × disk_growth (2) or --disk.
  job_lost         the instance runs but the job is gone: run it again in place.
  job_failed, budget
                   nothing automatic (the code failed, or the money is spent): exit 1, says why.

A crash in the middle is picked up by the next `recover` or `watch` (experiment.json keeps
`recovering` until the job runs again). Every attempt is an event in the experiment's
events.jsonl (recover_start, recover_step, recovered | recover_failed) and an entry in
experiment.json "recoveries"; failed instances go to the ledger with their cost, like any other.
Bounded: at most --max-attempts (recovery.max_attempts, 3) per experiment, never past the
budget (`up` refuses a rental the budget cannot pay). Config: the "recovery" block.

JSON data: {"experiment", "fault": {"kind", "evidence", "action", "plan"} | null, "action",
  "done": bool, "from_instance", "to_instance", "steps": [...], "checkpoint": {"files", "bytes",
  "age_s"}, "seconds", "attempt", "spent_usd"}

Exit codes: 0 recovered, or nothing to recover · 1 needs you (the code failed, budget or
attempts used up, no offer worked) · 2 usage · 3 Vast/SSH trouble (state is as the message
says; run again) · 4 the old instance could not be confirmed destroyed (run `vasticlaude down`).

A multi-node experiment (`up --nodes N`): the first node with a fault is recovered as one
instance is (a relaunch stays in the cluster and on the overlay), then the whole group restarts
from rank 0's checkpoint (README "Several nodes"); "fault.evidence" names the node.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.errors import Error
from vasticlaude.ops import nodes, recovery
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude recover", __doc__)
    console.add_instance_flags(p)
    console.add_policy_flags(p)
    p.add_argument("--dry-run", action="store_true", help="say what is wrong and what would be done; change nothing")
    return p


def run(args: argparse.Namespace) -> dict:
    console.known(args)
    vast = console.connect(args)
    if nodes.group_of(args.experiment) is not None:  # several nodes: the faulted one, then the whole group
        return nodes.recover_group(vast, args.experiment, console.policy_of(args, config.load()), args.dry_run)
    assessment = recovery.assess(vast, args.experiment, args.instance)
    if not args.dry_run:
        assessment = recovery.confirm(vast, assessment, args.instance)
    fault = assessment.fault
    if fault is None or args.dry_run or fault["action"] == "none":
        return recovery.unrecovered(assessment, args.dry_run)
    return recovery.recover(assessment, vast, console.policy_of(args, config.load()))


def human(data: object) -> str:
    assert isinstance(data, dict)
    fault = data.get("fault")
    if fault is None:
        return f"{data['experiment']}: nothing to recover (job {data.get('job')})"
    head = f"{data['experiment']}: {fault['kind']} — {'; '.join(fault['evidence'])}"
    if not data["done"]:
        return f"{head}\n  plan ({data['action']}): {fault['plan']}"
    lines = [head, *[f"  - {s}" for s in data["steps"]]]
    lines.append(f"  recovered in {data['seconds']:g} s (attempt {data['attempt']}); instance {data['from_instance']} → "
                 f"{data['to_instance']}; experiment spend ${data['spent_usd']:.3f}")
    return "\n".join(lines)


def exit_code(data: object) -> int:
    return int(data.get("exit_code", 0)) if isinstance(data, dict) else 0


def explain(data: dict, code: int) -> Error:
    fault = data.get("fault") or {"kind": "fault", "evidence": ["?"], "plan": ""}
    return Error("needs_you", f"{fault['kind']}: {'; '.join(fault['evidence'])[:300]}: not recovered automatically",
                 f"{fault['plan']}. Read vasticlaude logs --experiment {data['experiment']} and vasticlaude status "
                 f"--experiment {data['experiment']}.", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, exit_code=exit_code, explain=explain)

"""vasticlaude reap: when a Claude session ends, leave nothing billing that nobody watches.

Usage: vasticlaude reap [--reason session-end|session-start|manual] [--only-orphans] [--dry-run]
                         [--session ID] [--sandbox] [--api-key KEY] [--json]

Started detached by the SessionEnd hook (which has 1.5 s; this has minutes), and by the
SessionStart hook with --only-orphans when the last reap left something undone. Under a
lock (<home>/reap.lock: a second reap waits, then finds the work done), it:

1. reconciles instances.json with the account (adopts unrecorded `vasticlaude-*`
   instances, marks vanished ones gone — only records rented on that account; a corrupt
   file is set aside and rebuilt);
2. decides for every live instance (--only-orphans: only the ones the last reap left
   undone, and unrecorded ones it adopts), asking `status` (one API read, one SSH probe)
   when the instance runs:
   - a running job with a live on-instance guard (status: job.state running and
     guard.alive): config `session_end.running` — "leave-guarded" (default: the guard
     stops it when done), "stop" or "destroy" (both pull first);
   - a job that ended (exited, killed, vanished): pull (best effort), then
     `session_end.finished` — "destroy" (default) or "stop" (the disk stays and bills);
   - stopped on purpose (`down --keep-disk`, or a "stop" policy), or stopped (e.g. by its
     watchdog) with a run that was never pulled: left, and reported (storage bills);
   - being rented right now by a live `vasticlaude up` on this machine: left;
   - everything else — idle, never set up, unreachable, not running, status unknown, a
     job running without a guard (pulled first, best effort) — destroyed and confirmed gone;
3. writes <home>/reports/<reason>-<time>.md and .json, and last-session-end.json: per
   instance its id, label, state, $/h, what it cost, what was done and why; and what could
   not be done. The JSON is written first with "finished": false and the pending ids, and
   rewritten after each instance, so a reap killed mid-way leaves exactly what the next
   one (SessionStart's) must finish. Every step is idempotent.

When the API cannot be reached, the listing is retried (about 40 s of backoff per try,
three tries 15 s and 45 s apart; all × VASTICLAUDE_POLL_SCALE); if it stays down, every
instance it could not check is reported as undone and the next SessionStart repeats it.
The account is the one `vasticlaude` resolves (flags, env, .env, key file); records rented
on another URL (e.g. the local sandbox started by `--sandbox`) are swept through that
sandbox while it runs, and otherwise reported. A reap never starts a sandbox.

JSON data (also the report file): {"reason", "end_reason", "session", "pid", "dry_run",
  "started_at", "finished_at", "finished", "policy", "instances": [{"id", "label",
  "experiment", "status", "job", "guard", "dph", "spent_usd", "action", "why", "pull"}],
  "pending": [id], "undone": [{"id", "label", "what", "why"}], "notes": [str],
  "billing_usd_per_hour", "summary", "report", "exit_code"}
action: left-guarded · left-stopped · left-busy · destroyed · stopped · already-gone ·
  failed · would-… (with --dry-run: nothing is changed and no report file is written).

Exit codes: 0 done, nothing undone · 2 usage · 4 something could not be done and may
still bill (the report names it).
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.errors import Error
from vasticlaude.ops import reaping


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude reap", __doc__)
    p.add_argument("--reason", default="manual", choices=("session-end", "session-start", "manual"),
                   help="why it runs (names the report)")
    p.add_argument("--end-reason", help=argparse.SUPPRESS)
    p.add_argument("--session", help="the Claude session that ended (recorded in the report)")
    p.add_argument("--only-orphans", action="store_true",
                   help="only what the last reap left undone, and unrecorded instances")
    p.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    console.add_target_flags(p)
    return p


def human(data: dict) -> str:
    lines = [f"{'dry run: ' if data['dry_run'] else ''}{data['summary']}"]
    lines += [f"  {i['id']} {i['label'] or ''} [{i['status']}/{i.get('job') or '-'}] ${i['dph']:.4f}/h: "
              f"{i['action']} — {i['why']}" for i in data["instances"]]
    lines += [f"  NOT DONE {u['id'] or ''} {u['what']}: {u['why']}" for u in data["undone"]]
    if not data["dry_run"]:
        lines.append(f"report: {data['report']}")
    return "\n".join(lines)


def explain(data: dict, code: int) -> Error:
    undone = "; ".join(f"{u['id'] or ''} {u['what']}: {u['why']}".strip() for u in data["undone"])
    return Error("undone", f"not everything could be checked or torn down ({undone[:300]})",
                 "Run vasticlaude down --all (or vasticlaude reap again once Vast answers).", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, explain=explain)


def run(args: argparse.Namespace) -> dict:
    return reaping.reap(reaping.ReapRequest(reason=args.reason, end_reason=args.end_reason, session=args.session,
                                              dry_run=args.dry_run, only_orphans=args.only_orphans,
                                              account=console.account_of(args)))

"""vasticlaude reconcile: make instances.json agree with the Vast account.

Usage: vasticlaude reconcile [--sandbox] [--api-key KEY] [--json]

Why: a crash, a kill -9 or a lost session can leave an instance billing that the state
does not know about (killed between create and record), or a record of one that is long
gone. Reconcile lists the account once and then, under the state lock:

- adopts every instance labelled `vasticlaude-<experiment>` that the state lacks, with
  its prices from the account (dph_base, storage_total_cost, dph_total) and its history
  from its start date; one matching a pending intent clears that intent;
- marks records whose instance is no longer on the account destroyed ("gone from the
  account") and writes their final estimated cost to the experiment's ledger;
- refreshes the status of the others (records changed after the listing are left alone,
  so a concurrent `up` or `down` is never overwritten);
- clears intents older than 10 minutes that no instance matches (abandoned creates).

A corrupt instances.json (or one with bad parts) is copied aside (instances.json.bad-<time>), what
can still be read of it is kept (destroyed records too: the ledger) and the rest rebuilt from
the account; the report names where it went. `billing_usd_per_hour` is what the whole
account bills now: dph_total of running instances plus storage of the others (nothing
for offline hosts).

JSON data: {"adopted": [{"id", "label", "experiment", "status", "from_intent"}],
  "marked_gone": [id], "updated": [{"id", "from", "to"}], "abandoned_intents": [label],
  "recovered_from": path | null, "billing_usd_per_hour": float}

Env: VASTICLAUDE_POLL_SCALE multiplies the waits between retried reads (default 1).

Exit codes: 0 done · 2 usage · 3 Vast/sandbox API failure (nothing was changed).
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.ops import reconcile


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude reconcile", __doc__)
    console.add_target_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    return reconcile.reconcile(console.connect(args))


def human(data: object) -> str:
    assert isinstance(data, dict)
    adopted = ", ".join(f"{a['id']} ({a['label']})" for a in data["adopted"]) or "none"
    lines = [f"adopted: {adopted}",
             f"marked gone: {', '.join(map(str, data['marked_gone'])) or 'none'}",
             f"status updated: {', '.join(_change(u) for u in data['updated']) or 'none'}",
             f"abandoned intents cleared: {', '.join(data['abandoned_intents']) or 'none'}",
             f"the account bills ${data['billing_usd_per_hour']:.4f}/h now"]
    if data["recovered_from"]:
        lines.append(f"instances.json had bad parts: the file as it was is kept at {data['recovered_from']}; "
                     "what it still held is kept, the rest rebuilt from the account")
    return "\n".join(lines)


def _change(update: dict) -> str:
    return f"{update['id']} {update['from']}→{update['to']}"


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human)

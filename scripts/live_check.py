"""./dev live-check: compare the real Vast's answers with what vasticlaude expects (never in CI).

Usage: ./dev live-check [--rent] [--max-usd 0.10] [--image IMAGE] [--window S] [--out FILE] [--url URL]

With a real key (env VAST_API_KEY, else the vastai CLI's key file ~/.config/vastai/vast_api_key),
read-only: `show user`, an offer search, `show instances` and `show ssh-keys`, each compared with
what vast/rows.py expects; every difference is printed ("handled": the normaliser copes;
"unexpected": a bug to report). With --rent, the cheapest full flow under --max-usd (default
$0.10, at most $1): rent the cheapest on-demand or interruptible offer whose worst case fits,
wait for running, ssh, `nvidia-smi -L`, destroy, confirm gone, read the actual charges.

It writes a redacted record (keys and personal strings removed; ids, labels and IP addresses
hashed) to --out (default ./live-check-<UTC time>.json): attach it to a bug report; the sandbox
replays its offers (`vasticlaude sim start --market FILE`) and its "shapes" are in the format of
tests/fixtures/vast/. It talks to https://console.vast.ai unless --url says otherwise (the
tests point it at the sandbox); VAST_URL is ignored, so a sandbox environment never passes for Vast.

Exit codes: 0 no unexpected difference (and the rented flow worked) · 1 unexpected differences,
or the rented flow failed · 2 usage, or no API key · 3 Vast unreachable · 4 the rented instance
is not confirmed destroyed (destroy it now: the message names it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vasticlaude.errors import Error
from vasticlaude.ops import livecheck
from vasticlaude.remote import ssh
from vasticlaude.vast.account import REAL_URL, Endpoint, find_key
from vasticlaude.vast.gateway import Vast


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="./dev live-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rent", action="store_true", help="also rent the cheapest instance and run nvidia-smi on it")
    p.add_argument("--max-usd", type=float, default=0.10, help="the most --rent may cost (default 0.10, at most 1)")
    p.add_argument("--image", default=livecheck.RentAsk.image, help="image for --rent")
    p.add_argument("--window", type=float, default=livecheck.RentAsk.window_s, metavar="S",
                   help="the longest the rented instance may live, priced in full (default 900)")
    p.add_argument("--out", help="where the redacted record goes (default ./live-check-<UTC>.json)")
    p.add_argument("--url", default=REAL_URL, help=f"the API (default {REAL_URL})")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not 0 < args.max_usd <= 1 or args.window <= 60:
        print("live-check: --max-usd must be in (0, 1] and --window over 60 s", file=sys.stderr)
        return 2
    key, source = find_key()
    if not key:
        print("live-check: no Vast API key (set VAST_API_KEY or run 'vastai set api-key KEY'); it only runs "
              "against a real account", file=sys.stderr)
        return 2
    vast = Vast(Endpoint(args.url.rstrip("/"), key, source, sandbox=False))
    hide, when = [key], time.time()
    try:
        checked = livecheck.read_only(vast)
        rented = livecheck.rent(vast, livecheck.RentAsk(args.max_usd, args.image, args.window), ssh.ssh_key(), hide) \
            if args.rent else None
    except Error as err:
        print(f"live-check: {err.message}" + (f" ({err.hint})" if err.hint else ""), file=sys.stderr)
        return err.exit_code
    doc = livecheck.record(checked, rented, hide, when)
    out = Path(args.out or f"live-check-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return report(doc, out)


def report(doc: dict, out: Path) -> int:
    for d in doc["differences"]:
        print(f"{d['severity']:10} {d['kind']}.{d['field']}: {d['what']}")
    for e in doc["errors"]:
        print(f"error      {e['kind']}: {e['error']}")
    rent = doc.get("rent")
    if rent:
        print(f"rent: offer {rent['offer'].get('gpu_name')} ${rent.get('gpu_dph')}/h, boot {rent.get('boot_s')} s, "
              f"nvidia-smi: {'; '.join(rent.get('nvidia_smi') or []) or rent.get('error')}, destroyed "
              f"{rent.get('destroyed')}, charged ${rent.get('charged_usd')}")
    unexpected = [d for d in doc["differences"] if d["severity"] == "unexpected"]
    print(f"{len(doc['differences'])} difference(s), {len(unexpected)} unexpected; record: {out}")
    failed = bool(unexpected) or bool(doc["errors"]) or bool(rent and (rent.get("error") or not rent.get("destroyed")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

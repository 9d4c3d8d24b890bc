"""vasticlaude doctor: is this machine ready to rent GPUs on Vast (or on the sandbox)?

Each check says ok, note (something `up` does itself: no step for you), warn or fail (it
blocks a rental), with a one-line next step:
  config       the project's .vasticlaude/config.json is valid JSON (or absent)
  api_key      where the Vast API key comes from: its source and last 4 characters only
  target       the local sandbox or real Vast, and the URL requests go to
  api          the key works (the API answers) and the account's balance
  ssh_key      a local public key: ~/.ssh/id_ed25519.pub, ~/.ssh/id_rsa.pub or
               <vasticlaude home>/ssh/id_ed25519.pub
  ssh_key_registered  that key is registered on the account (new instances accept it);
               a missing key is one note (ssh_key; this check is then left out) and a
               missing registration a note: `up` makes and registers the key itself
  ssh, rsync   the binaries are on PATH, with their versions
  home         the vasticlaude home is writable
  state        instances.json is readable (a corrupt one is rebuilt by 'vasticlaude reconcile')

Usage: vasticlaude doctor [--register-ssh-key] [--sandbox] [--api-key KEY] [--json]

  --register-ssh-key  register the local public key on the account; when there is none,
                      first create <vasticlaude home>/ssh/id_ed25519 with ssh-keygen

JSON (data): {"target": {"kind": "sandbox"|"vast", "url", "key_source" (not for the sandbox's own
  key), "key_ends"},
  "account": the api check's line (balance), "passed": [names of the checks that are ok],
  "checks": [{"name", "status": "note"|"warn"|"fail", "detail", "next"}] (the others, in full)}
The API key itself is never printed or written anywhere.

Exit codes: 0 nothing blocks a rental · 1 a check failed (error.message names it, error.hint
says what to do) · 3 the API could not be reached.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.errors import Error
from vasticlaude.ops.checks import doctor
from vasticlaude.vast.account import REAL_URL

MARK = {"ok": "ok  ", "note": "note", "warn": "warn", "fail": "FAIL"}


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude doctor", __doc__)
    console.add_target_flags(p)
    p.add_argument("--register-ssh-key", action="store_true",
                   help="register the local SSH public key on the account (creating one if needed)")
    return p


def human(data: object) -> str:
    assert isinstance(data, dict)
    target = data["target"]
    head = f"vasticlaude doctor: {target['kind']} at {target['url']}" if target["url"] else "vasticlaude doctor: no target"
    lines = [head]
    for c in data["checks"]:
        lines.append(f"  {MARK[c['status']]}  {c['name']:<19} {c['detail']}")
        if c["next"] and c["status"] != "ok":
            lines.append(f"        {'':<19} → {c['next']}")
    failed = sum(c["status"] == "fail" for c in data["checks"])
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)


def json_view(data: dict) -> dict:
    """--json: what the next step needs: the target, the account line, the names that passed, the rest in full.
    The target's URL only when it is not the usual one (the embedded sandbox's local port, Vast's console)."""
    checks = {c["name"]: c for c in data["checks"]}
    api = checks.get("api") or {}
    kind = data["target"].get("kind")
    own = data["target"].get("key_source") == "sandbox" or data["target"].get("url") == REAL_URL
    target = {k: v for k, v in data["target"].items() if v is not None
              and not (k == "key_source" and v == kind)  # the sandbox's own key
              and not (k == "url" and own)}
    return {"target": target, "account": api.get("detail"),
            "passed": [c["name"] for c in data["checks"] if c["status"] == "ok"],
            "checks": [{k: v for k, v in c.items() if v} for c in data["checks"] if c["status"] != "ok"]}


def explain(data: dict, code: int) -> Error:
    """What blocks a rental, and the first thing to do about it."""
    failed = [c for c in data["checks"] if c["status"] == "fail"]
    names = ", ".join(c["name"] for c in failed) or "the API"
    first = failed[0] if failed else {"detail": "Vast could not be reached", "next": "Check the network, then run vasticlaude doctor again."}
    return Error("not_ready", f"not ready to rent: {names} ({first['detail']})", first.get("next") or "", code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, explain=explain, json_view=json_view)


def run(args: argparse.Namespace) -> dict:
    return doctor(console.account_of(args), args.register_ssh_key)

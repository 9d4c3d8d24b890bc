"""What `./dev live-check` compares and writes: live bodies against what vast/rows.py expects,
and a redacted copy of them a user can attach to a bug report and the sandbox can replay.

Pure: bodies in, differences and redacted bodies out (the reads are the gateway's, the flow
ops/livecheck.py's). A difference is "handled" when the normaliser already copes with it
(a number sent as a string, whitespace, a wrapped list) and "unexpected" when it does not (a
field the product reads is missing, a number that does not parse, a status word nobody knows,
a list under an unknown wrapper): the second kind is a bug to report.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

from vasticlaude.core.lifecycle import RECORD_STATUS
from vasticlaude.vast import rows

# The fields the product reads, per kind (a missing one is unexpected).
READS = {
    "user": ("id", "balance"),
    "offers": ("id", "machine_id", "gpu_name", "num_gpus", "gpu_ram", "dph_base", "storage_cost", "min_bid",
               "reliability", "geolocation", "inet_up_cost", "inet_down_cost", "disk_space"),
    "instances": ("id", "actual_status", "intended_status", "status_msg", "public_ipaddr", "ports", "ssh_host",
                  "ssh_port", "dph_total", "disk_space", "label", "machine_id"),
    "instance": ("id", "actual_status", "intended_status", "status_msg", "public_ipaddr", "ports", "ssh_host",
                 "ssh_port", "dph_total", "disk_space", "label"),
    "ssh_keys": ("id",),
}
WRAPPERS = {"offers": ("offers",), "instances": ("instances",), "ssh_keys": ("ssh_keys", "keys"), "instance": ("instances",)}
PARSE = {"user": lambda b: [rows.user(b)], "offers": rows.offers, "instances": rows.instances,
         "instance": lambda b: [r for r in [rows.instance(b)] if r is not None], "ssh_keys": rows.ssh_keys}
SECRET = re.compile(r"key|token|secret|password|passwd|jupyter|auth|cookie|email|phone|address|name$|^args$|"
                    r"onstart|extra_env|env$|image_args|login", re.I)
KEEP_NAMES = {"gpu_name", "disk_name", "cpu_name", "mobo_name", "os_version", "gpu_arch", "cpu_arch", "ssh_keys", "keys"}
ID_FIELDS = re.compile(r"^(id|.*_id|new_contract|ask_contract_id|bundle_id|machine_id|host_id|user_id)$")
IP = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{0,4}){2,7}\b")


# ----- comparing -------------------------------------------------------------------------------
def items(kind: str, body: Any) -> tuple[list[Any], list[dict]]:
    """The raw rows of a body (whatever its wrapper), and how the body was shaped."""
    notes: list[dict] = []
    if kind == "user":
        return [body], notes
    if kind == "instance" and isinstance(body, dict) and "instances" in body and "id" not in body:
        return [body["instances"]], notes
    if isinstance(body, list):
        if kind != "offers":
            notes.append(diff(kind, "(list)", "handled", "a bare list, not a wrapper object"))
        return body, notes
    if isinstance(body, dict):
        for name in WRAPPERS.get(kind, ()):
            if isinstance(body.get(name), list):
                if kind == "ssh_keys":
                    notes.append(diff(kind, "(list)", "handled", f"wrapped as {{{name!r}: [...]}}"))
                return body[name], notes
        lists = [k for k, v in body.items() if isinstance(v, list)]
        notes.append(diff(kind, "(list)", "unexpected" if len(lists) != 1 else "handled",
                          f"rows under {lists or 'no list'}, not {list(WRAPPERS.get(kind, ()))}"))
        return (body[lists[0]] if len(lists) == 1 else []), notes
    notes.append(diff(kind, "(body)", "unexpected", f"a {type(body).__name__}, not rows"))
    return [], notes


def compare(kind: str, body: Any) -> list[dict]:
    """Every way `body` differs from what vast/rows.py expects of a `kind` answer."""
    raw_rows, found = items(kind, body)
    try:
        parsed = PARSE[kind](body)
    except (ValueError, TypeError, AttributeError) as err:
        return found + [diff(kind, "(body)", "unexpected", f"the normaliser fails: {err}")]
    for raw, row in zip(raw_rows, parsed):
        found += _row(kind, raw if isinstance(raw, dict) else {}, row)
    return _unique(found)


def _row(kind: str, raw: dict, row: dict) -> list[dict]:
    found = [diff(kind, f, "unexpected", "missing") for f in READS.get(kind, ()) if f not in raw]
    for field, value in raw.items():
        if isinstance(value, str) and value != value.strip():
            found.append(diff(kind, field, "handled", "whitespace around the string"))
        if field in rows.INT_FIELDS | rows.FLOAT_FIELDS and value is not None:
            if isinstance(value, str):
                ok = isinstance(row.get(field), (int, float))
                found.append(diff(kind, field, "handled" if ok else "unexpected",
                                  "a number sent as a string" if ok else f"not a number: {_short(value)}"))
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                found.append(diff(kind, field, "unexpected", f"a {type(value).__name__}, not a number"))
        if value is None and field in READS.get(kind, ()):
            found.append(diff(kind, field, "handled", "null"))
    if kind in ("instances", "instance"):
        status = row.get("actual_status")
        if status not in RECORD_STATUS:
            found.append(diff(kind, "actual_status", "unexpected", f"status word {status!r} is not in the vocabulary"))
        if "ports" in raw and not isinstance(raw["ports"], dict):
            found.append(diff(kind, "ports", "handled", f"a {type(raw['ports']).__name__}, not an object"))
        if isinstance(raw.get("ports"), dict) and "22/tcp" in raw["ports"] and raw["ports"]["22/tcp"] is None:
            found.append(diff(kind, "ports.22/tcp", "handled", "null: no direct SSH route"))
    return found


def diff(kind: str, field: str, severity: str, what: str) -> dict:
    return {"kind": kind, "field": field, "severity": severity, "what": what}


def _unique(found: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in found:
        key = tuple(item.values())
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _short(value: Any) -> str:
    return repr(value)[:40]


# ----- redacting -------------------------------------------------------------------------------
class Redactor:
    """Keys, secrets and personal strings removed; ids and IP addresses hashed (same value → same
    hash within one record, a per-record salt so records cannot be linked); shapes and types kept,
    so the sandbox can load the offers (`sim start --market RECORD`)."""

    def __init__(self, salt: str, secrets: tuple[str, ...] = ()):
        self.salt, self.secrets = salt, tuple(s for s in secrets if s)

    def digest(self, value: Any) -> int:
        return int(hashlib.sha256(f"{self.salt}:{value}".encode()).hexdigest()[:12], 16)

    def ident(self, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        number = self.digest(value) % 90_000_000 + 10_000_000
        return number if isinstance(value, int) or str(value).strip().isdigit() else f"id-{number}"

    def ip(self, match: re.Match) -> str:
        try:
            ipaddress.ip_address(match.group(0))
        except ValueError:
            return match.group(0)
        n = self.digest(match.group(0))
        return f"198.18.{n % 256}.{(n >> 8) % 254 + 1}"  # the benchmarking range: never a real host

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "[redacted]")
        return IP.sub(self.ip, value)

    def label(self, value: str) -> str:
        return f"label-{self.digest(value) % 10**8}"

    def value(self, key: str, value: Any) -> Any:
        if SECRET.search(key) and key not in KEEP_NAMES and value not in (None, "", [], {}):
            return "[redacted]" if isinstance(value, str) else None
        if isinstance(value, dict):  # a dict keyed by labels (label_counts) has the user's words as keys
            return {(self.label(str(k)) if "label" in key else k): self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(key, v) for v in value]
        if ID_FIELDS.match(key):
            return self.ident(value)
        if key == "label" and isinstance(value, str) and value:
            return self.label(value)
        return self.text(value) if isinstance(value, str) else value

    def body(self, kind: str, body: Any) -> Any:
        if kind == "user" and isinstance(body, dict):  # every string of the account is the user's
            return {k: ("[redacted]" if isinstance(v, str) and v else self.value(k, v)) for k, v in body.items()}
        return self.value("", body)

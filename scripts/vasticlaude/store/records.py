"""Typed reading of vasticlaude's files: config.json, instances.json and experiment.json.

One place per file kind (CONFIG, RECORD/INSTANCES, EXPERIMENT below). `check_*` take whatever
JSON a file held and return (what is usable, problems): a value of the wrong type is left out
(the caller's defaults take its place) and named in one problem line, so no guard — the
session-end reap, the hooks, watch — ever meets a TypeError in a hand-edited or half-written
file. Keys this module does not know are kept as they are: a newer version, or another
feature, may have added them (to declare a new key, add it to the schema with its type).
`salvage_instances` rebuilds what it can from a truncated or garbled instances.json, so the
destroyed records (the ledger) survive too.

Stdlib only and free of I/O: the hooks (hooks/hooklib.py) validate with it before Python's
heavier imports, and store/state.py and store/config.py quarantine what it rejects.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

Check = Callable[[Any, str, list], Any]
DROP = object()  # "leave this value out": the caller's default takes its place


# ----- the types -------------------------------------------------------------------------------------
def _bad(problems: list, where: str, want: str, value: Any) -> object:
    shown = type(value).__name__ if isinstance(value, (dict, list)) else json.dumps(value if not isinstance(
        value, str) else value[:40], default=str)[:40]
    problems.append(f"{where}: expected {want}, got {shown}")
    return DROP


def number(low: float | None = 0.0, high: float = 1e12, integer: bool = False) -> Check:
    """A finite number in [low, high] (a bool is not a number); `integer`: a whole one."""
    want = ("a whole number" if integer else "a number") + (f" >= {low:g}" if low is not None else "")

    def check(value: Any, where: str, problems: list) -> Any:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or value >= low) and abs(value) <= high
        ok = ok and (not integer or float(value).is_integer())
        return (int(value) if integer else value) if ok else _bad(problems, where, want, value)
    return check


def string(limit: int = 100_000) -> Check:
    def check(value: Any, where: str, problems: list) -> Any:
        return value if isinstance(value, str) and len(value) <= limit else _bad(problems, where, "a string", value)
    return check


def boolean(value: Any, where: str, problems: list) -> Any:
    return value if isinstance(value, bool) else _bad(problems, where, "true or false", value)


def one_of(*allowed: Any) -> Check:
    def check(value: Any, where: str, problems: list) -> Any:
        ok = isinstance(value, (str, int, float, bool, type(None))) and value in allowed
        return value if ok else _bad(problems, where, "one of " + ", ".join(map(str, allowed)), value)
    return check


def optional(inner: Check) -> Check:
    """null, or what `inner` accepts."""
    def check(value: Any, where: str, problems: list) -> Any:
        return None if value is None else inner(value, where, problems)
    return check


def strings(value: Any, where: str, problems: list) -> Any:
    """A list of strings; one string means a list of that one ("region": "US" is ["US"], not ["U", "S"])."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return _bad(problems, where, "a list of strings", value)
    kept = [item for item in value if isinstance(item, str)]
    if len(kept) != len(value):
        problems.append(f"{where}: {len(value) - len(kept)} item(s) that are not strings left out")
    return kept


def items(inner: Check) -> Check:
    """A list whose items `inner` accepts; the others are left out."""
    def check(value: Any, where: str, problems: list) -> Any:
        if not isinstance(value, list):
            return _bad(problems, where, "a list", value)
        out = [inner(item, f"{where}[{n}]", problems) for n, item in enumerate(value)]
        return [item for item in out if item is not DROP]
    return check


def obj(schema: dict[str, Check]) -> Check:
    """An object: known keys checked (a bad one left out), unknown keys kept as they are."""
    def check(value: Any, where: str, problems: list) -> Any:
        if not isinstance(value, dict):
            return _bad(problems, where, "an object", value)
        return clean(value, schema, where, problems)
    return check


def needs(key: str, inner: Check) -> Check:
    """What `inner` accepts, when it has `key` (an entry without it means nothing)."""
    def check(value: Any, where: str, problems: list) -> Any:
        out = inner(value, where, problems)
        if out is DROP or key in out:
            return out
        problems.append(f"{where}: no {key}: left out")
        return DROP
    return check


def clean(data: dict, schema: dict[str, Check], where: str, problems: list) -> dict:
    out = {}
    for key, value in data.items():
        checker = schema.get(key)
        kept = checker(value, f"{where}.{key}" if where else key, problems) if checker else value
        if kept is not DROP:
            out[key] = kept
    return out


# ----- config.json (store/config.py documents each key) ---------------------------------------------
NUM, WHOLE, TEXT = number(), number(integer=True), string()
CONFIG: dict[str, Check] = {
    "target": optional(one_of("vast", "sandbox")), "gpu": strings, "num_gpus": number(1, 64, integer=True),
    "min_vram_gb": optional(NUM), "min_reliability": number(0, 1), "cuda": optional(NUM), "region": strings,
    "verified": boolean, "max_dph": optional(NUM), "image": string(500), "disk_gb": number(1, 100_000),
    "interruptible": boolean, "hours": number(0), "ignore": strings, "setup": optional(TEXT),
    "pip_args": optional(TEXT), "pull": strings, "torchrun": string(500),
    "budget": obj({"experiment_usd": optional(NUM), "experiment_hours": optional(NUM), "daily_usd": optional(NUM)}),
    "guard": obj({"grace_s": NUM, "on_end": one_of("destroy-if-pulled", "destroy", "stop"), "check_s": NUM,
                  "kill_grace_s": NUM}),
    "recovery": obj({"auto": boolean, "max_attempts": WHOLE, "sync_interval_s": NUM, "sync": strings,
                     "preempt_wait_s": NUM, "bid_step": number(1), "max_bid_dph": optional(NUM),
                     "disk_growth": number(1), "stale_after_s": NUM, "unreachable_after_s": NUM,
                     "confirm_s": NUM}),
    "deadlines": obj({"up_s": optional(number(1)), "up_cap_s": number(1), "push_s": optional(number(1)),
                      "down_s": optional(number(1))}),
    "session_end": obj({"running": one_of("leave-guarded", "stop", "destroy"), "finished": one_of("destroy", "stop")}),
    "store": obj({"url": optional(string(1000)), "endpoint_url": optional(string(1000)), "region": optional(string(100)),
                  "sync_interval_s": optional(number(1)), "timeout_s": number(1)}),
    "transfer": obj({"push_gb": optional(NUM), "results_gb": NUM}),
}


def check_config(data: Any) -> tuple[dict, list[str]]:
    """The usable part of a config file's JSON (not merged with defaults), and its problems."""
    if not isinstance(data, dict):
        return {}, [_problem("the file", "an object", data)]
    problems: list[str] = []
    return clean(data, CONFIG, "", problems), problems


# ----- instances.json (store/state.py documents the file) --------------------------------------------
STAMP, OPT_NUM, OPT_TEXT = optional(number()), optional(number(None)), optional(string(2000))
HISTORY = items(needs("at", needs("status", obj({"at": number(), "status": string(200), "why": OPT_TEXT}))))


def _traffic_entry(value: Any, where: str, problems: list) -> Any:
    """[at, bytes in, bytes out]: what one transfer (or a few close together) moved."""
    if (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           and math.isfinite(v) and v >= 0 for v in value)):
        return value
    return _bad(problems, where, "[at, bytes in, bytes out]", value)


RECORD: dict[str, Check] = {
    "id": number(1, integer=True), "label": OPT_TEXT, "experiment": OPT_TEXT, "status": OPT_TEXT,
    "target": OPT_TEXT, "created_by": OPT_TEXT, "ssh_route": OPT_TEXT,
    "created_at": STAMP, "updated_at": STAMP, "destroyed_at": STAMP, "adopted_at": STAMP,
    "dph_total": optional(NUM), "gpu_dph": optional(NUM), "storage_dph": optional(NUM), "bid_price": optional(NUM),
    "num_gpus": optional(WHOLE), "disk": optional(NUM), "offer_id": optional(WHOLE),
    "machine_id": optional(WHOLE), "is_bid": optional(boolean), "history": HISTORY,
    "inet_down_cost": optional(NUM), "inet_up_cost": optional(NUM), "traffic": items(_traffic_entry),
}
FAILED = obj({"machine_id": number(0, integer=True), "at": number()})
INTENT = obj({"label": OPT_TEXT, "experiment": OPT_TEXT, "at": STAMP, "by": OPT_TEXT})


def check_record(key: str, rec: Any, problems: list) -> dict | None:
    """One instance record, or None when nothing of it can be trusted (not an object, no usable id)."""
    where = f"instances.{key[:20]}"
    if not re.fullmatch(r"[1-9][0-9]{0,17}", key):
        problems.append(f"{where}: not an instance id: left out")
        return None
    if not isinstance(rec, dict):
        problems.append(f"{where}: expected an object, got {type(rec).__name__}: left out")
        return None
    out = clean(rec, RECORD, where, problems)
    if out.get("id", int(key)) != int(key):
        problems.append(f"{where}.id: {out['id']} differs from its key: the key is kept")
    out["id"] = int(key)
    out.setdefault("history", [])
    return out


def check_instances(data: Any) -> tuple[dict, list[str]]:
    """The usable part of instances.json (always with "instances" and "intents" objects), and its problems."""
    if not isinstance(data, dict):
        return {"version": 1, "instances": {}, "intents": {}}, [_problem("the file", "an object", data)]
    problems: list[str] = []
    out = clean(data, {"version": number(0, integer=True), "failed_machines": items(needs("machine_id", FAILED)),
                       "instances": obj({}), "intents": obj({})}, "", problems)
    recs = {}
    for key, rec in (out.get("instances") or {}).items():
        checked = check_record(str(key), rec, problems)
        if checked is not None:
            recs[str(key)] = checked
    intents = {}
    for label, intent in (out.get("intents") or {}).items():
        kept = INTENT(intent, f"intents.{str(label)[:40]}", problems)
        if kept is not DROP:
            intents[label] = kept
    out.update(instances=recs, intents=intents)
    out.setdefault("version", 1)
    return out, problems


RECORD_START = re.compile(r'"([1-9][0-9]{0,17})"\s*:\s*\{')


def salvage_instances(text: str) -> dict:
    """The instance records that can still be read from a truncated or garbled instances.json.

    Each record is an object under its id ("123": {...}); every such object that still parses
    whole is kept, so a file cut off mid-write loses only the records after the cut."""
    decoder, recs = json.JSONDecoder(), {}
    for found in RECORD_START.finditer(text):
        try:
            rec, _ = decoder.raw_decode(text, found.end() - 1)
        except (ValueError, RecursionError):
            continue
        if isinstance(rec, dict) and rec.get("id") in (None, int(found.group(1))) and "history" in rec \
                and not too_deep(rec):
            recs[found.group(1)] = rec
    return {"version": 1, "instances": recs, "intents": {}}


# ----- experiment.json ------------------------------------------------------------------------------
RUN = obj({"at": number(), "instance_id": optional(number(integer=True)), "immediate_exit": optional(number(None)),
           "command": optional(TEXT)})
EXPERIMENT: dict[str, Check] = {
    "version": number(0, integer=True), "id": OPT_TEXT, "created_at": STAMP, "updated_at": STAMP,
    "runs": items(RUN), "pull": obj({"at": STAMP, "local_path": OPT_TEXT}), "push": obj({}),
    "guard": obj({}), "rental": obj({}), "run": obj({}), "recovering": obj({"at": STAMP, "kind": OPT_TEXT}),
    "recoveries": items(obj({"at": number(), "seconds": optional(NUM)})), "checkpoints": obj({}),
    "budget_usd": optional(NUM), "finished_at": STAMP, "command": optional(TEXT),
}


def check_experiment(data: Any) -> tuple[dict, list[str]]:
    """The usable part of an experiment.json, and its problems."""
    if not isinstance(data, dict):
        return {}, [_problem("the file", "an object", data)]
    problems: list[str] = []
    return clean(data, EXPERIMENT, "", problems), problems


# ----- bytes to JSON ---------------------------------------------------------------------------------
MAX_DEPTH = 64  # no vasticlaude file nests half as deep; deeper could not be written back (RecursionError)


def parse(raw: bytes) -> tuple[Any, str | None]:
    """(the JSON in `raw`, None) or (None, why it is not JSON): wrong encodings and depth included."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 ({err.reason} at byte {err.start})"
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as err:
        return None, f"not valid JSON ({str(err)[:80]})"
    return (None, f"nested deeper than {MAX_DEPTH}") if too_deep(data) else (data, None)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Does `value` nest deeper than `limit` (checked without recursion)?"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _problem(where: str, want: str, value: Any) -> str:
    problems: list[str] = []
    _bad(problems, where, want, value)
    return problems[0]

"""The one state store: `instances.json` and `experiments/<id>/` under the vasticlaude home.

Human-readable JSON (and JSON lines for append-only logs), versioned, changed only
under a file lock and written by atomic replace, so eight sessions writing at once
lose nothing and a kill -9 at any instant leaves a valid file. A corrupt
`instances.json` is copied aside (never deleted), what can be read of it is kept (destroyed
records too: they are the ledger) and `reconcile` refills the rest from the API; wrong types in
any record are left out the same way (store/records.py, store/quarantine.py).

instances.json:
  {"version": 1, "instances": {"<id>": {id, label, experiment, offer_id, machine_id,
    gpu_name, num_gpus, dph_total, storage_dph, is_bid, bid_price, disk, image, status,
    created_at, updated_at, destroyed_at, created_by, history: [...]}},
   "intents": {"<label>": {label, experiment, offer_id, at, pid}}}
An intent is written before every create, so a crash between create and record still
leaves the label to look for.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from vasticlaude.output import redact, secret_print
from vasticlaude.store import paths, quarantine, records
from vasticlaude.store.jsonfile import write_json_atomic

if TYPE_CHECKING:
    from filelock import FileLock

VERSION = 1
LOCK_TIMEOUT = 60.0


def instances_path() -> Path:
    return paths.home() / "instances.json"


def experiment_dir(experiment: str) -> Path:
    return paths.home() / "experiments" / experiment


def _empty() -> dict:
    return {"version": VERSION, "instances": {}, "intents": {}}


def _lock(path: Path) -> FileLock:
    from filelock import FileLock  # here, not at the top: a command that only reads state (cost) skips its ~20 ms
    paths.ensure_private_dir(path.parent)
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT)


def load() -> dict:
    """A snapshot of instances.json (no lock: writers replace the file atomically).

    Never raises on content: bad parts are left out (store/records.py), the file as it was is
    copied aside once (store/quarantine.py), and the snapshot says so in `"damaged"`
    ({"copy", "problems"}); the next transaction writes the cleaned file.
    """
    data, _ = _read(instances_path())
    return _learn(data)


def _learn(data: dict) -> dict:
    """Every command that reads the records learns their instance keys' fingerprints (output.redact)."""
    for rec in (data.get("instances") or {}).values():
        if isinstance(rec, dict):
            secret_print(rec.get("key_sha256"))
    return data


def peek() -> tuple[dict, list[str]]:
    """instances.json's usable data and its problems, writing nothing (no copy kept: `cost` only reads)."""
    data, _ = _read(instances_path(), keep=False)
    return _learn(data), data.pop("damaged", {}).get("problems", [])


def _read(path: Path, keep: bool = True) -> tuple[dict, str | None]:
    """The file's usable data, and where a copy of it was kept when it was damaged (None when fine)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _empty(), None
    except OSError as err:
        return {**_empty(), "damaged": {"copy": None, "problems": [f"unreadable: {err}"]}}, str(path)
    if _vouched(path, raw):  # written by the store itself since its last check: months of records stay fast
        return json.loads(raw), None
    found, why = records.parse(raw)
    problems = []
    if why:
        found = records.salvage_instances(raw.decode("utf-8", "replace"))
        problems.append(f"the file is {why}: {len(found['instances'])} record(s) salvaged")
    data, more = records.check_instances(found)
    problems += more
    if not problems:
        return data, None
    entry = quarantine.keep(path, raw, problems) if keep else {}
    data["damaged"] = {"copy": entry.get("copy"), "problems": problems[:5]}
    return data, entry.get("copy") or str(path)


def damaged_recently() -> bool:
    """Was instances.json damaged this week (so a record missing from it may be one it lost)?"""
    return any(e["file"] == str(instances_path()) for e in quarantine.recent())


@contextmanager
def transaction() -> Iterator[dict]:
    """Read-modify-write of instances.json under the lock; written only if the block succeeds."""
    path = instances_path()
    with _lock(path):
        data, damaged = _read(path)
        _learn(data)
        data.pop("damaged", None)
        if damaged:
            data["recovered_from"] = damaged
        yield data
        data.pop("recovered_from", None)  # said by whoever took it; never written
        data["version"] = VERSION
        write_json_atomic(path, data, redacted=True)
        _vouch(path)


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _vouch(path: Path) -> None:
    """Note the digest of what the store just wrote from checked data, so a reader can skip checking it
    again; any other change to the file (a hand edit, a truncation, another version) misses the digest
    and is checked in full. A kill between the two writes only costs the next reader a full check."""
    try:
        write_json_atomic(path.with_name(path.name + ".checked"), {"blake2b": _digest(path.read_bytes())})
    except OSError:
        pass


def _vouched(path: Path, raw: bytes) -> bool:
    try:
        return json.loads(path.with_name(path.name + ".checked").read_text())["blake2b"] == _digest(raw)
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def only_one(path: Path, busy: Exception) -> Iterator[None]:
    """Hold the lock at `path` for the block, or raise `busy` at once when someone else holds it."""
    from filelock import Timeout
    lock = _lock(path.with_suffix(""))  # _lock adds ".lock"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise busy from None
    try:
        yield
    finally:
        lock.release()


def who() -> str:
    """Who created a record: user@host and the Claude session when there is one."""
    session = os.environ.get("CLAUDE_SESSION_ID") or os.environ.get("VASTICLAUDE_SESSION") or "-"
    return f"{os.environ.get('USER', 'user')}@{socket.gethostname()} session={session} pid={os.getpid()}"


def record_intent(label: str, experiment: str, offer_id: int) -> None:
    with transaction() as data:
        data["intents"][label] = {"label": label, "experiment": experiment, "offer_id": offer_id,
                                  "at": time.time(), "by": who()}


def clear_intent(label: str) -> None:
    with transaction() as data:
        data["intents"].pop(label, None)


def upsert_instance(instance_id: int, **fields: object) -> dict:
    """Create or update one instance record; every status change is kept in its history."""
    now = time.time()
    with transaction() as data:
        rec = data["instances"].setdefault(str(instance_id), {"id": instance_id, "created_at": now,
                                                              "created_by": who(), "history": []})
        status = fields.get("status")
        if status and status != rec.get("status"):
            rec["history"].append({"at": now, "status": status, "why": fields.pop("why", "")})
        fields.pop("why", None)
        rec.update(fields, updated_at=now)
        return dict(rec)


def live_instances(data: dict | None = None) -> list[dict]:
    data = data if data is not None else load()
    return [r for r in data["instances"].values() if not r.get("destroyed_at")]


# ----- experiments -------------------------------------------------------------------------
def append_event(experiment: str, event: str, **fields: object) -> None:
    """Append one line to the experiment's event log (`events.jsonl`)."""
    _append(experiment_dir(experiment) / "events.jsonl", {"at": time.time(), "event": event, **fields})


def append_ledger(experiment: str, **fields: object) -> None:
    """Append one cost entry to the experiment's ledger (`ledger.jsonl`)."""
    _append(experiment_dir(experiment) / "ledger.jsonl", {"at": time.time(), **fields})


def _append(path: Path, entry: dict) -> None:
    line = redact(json.dumps(entry, sort_keys=True, separators=(",", ":"))) + "\n"
    with _lock(path):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def read_lines(path: Path) -> list[dict]:
    """The entries of a JSONL file; a torn last line (kill -9 mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


@contextmanager
def experiment(experiment_id: str) -> Iterator[dict]:
    """Read-modify-write of `experiments/<id>/experiment.json` under its lock (bad parts left out)."""
    path = experiment_dir(experiment_id) / "experiment.json"
    with _lock(path):
        data = _read_experiment(path)
        if not data:
            data = {"version": VERSION, "id": experiment_id, "created_at": time.time()}
        yield data
        data["updated_at"] = time.time()
        write_json_atomic(path, data, redacted=True)


def read_experiment(experiment_id: str) -> dict | None:
    """The experiment's file, its bad parts left out (and kept aside once); None when there is none."""
    return _read_experiment(experiment_dir(experiment_id) / "experiment.json") or None


def _read_experiment(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError:  # none yet (or unreadable: the next write replaces it)
        return {}
    found, why = records.parse(raw)
    data, problems = records.check_experiment(found) if not why else ({}, [f"the file is {why}"])
    if problems:
        quarantine.keep(path, raw, problems)
    return data

"""Bad files and bad parts of files, kept aside once and said once.

When store/records.py rejects part of a file (or all of it), the file as it was is copied to
`<file>.bad-<YYYYmmdd-HHMMSS>` beside it (a second one in the same second gets `-2`, `-3`…:
never overwritten), the copy is listed in `<home>/quarantine.json` with what was wrong, and
one line goes to stderr. The same content seen again (same file, same SHA-256) is neither
copied nor said again. `status --json` (`quarantined`), `doctor` and the SessionStart hook
read the list back (recent()).

<home>/quarantine.json: {"version": 1, "entries": [{"file", "copy", "sha256", "at", "problems": [str]}]}
(the newest MAX_ENTRIES).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from vasticlaude.output import redact
from vasticlaude.store import paths

MAX_ENTRIES = 100
MAX_PROBLEMS = 20
RECENT_S = 7 * 86400


def registry_path() -> Path:
    return paths.home() / "quarantine.json"


def keep(path: Path, raw: bytes, problems: list[str]) -> dict:
    """Copy `raw` (what `path` held) aside and list it, unless this very content was kept before.
    Returns its entry; never raises (a guard calls this: failing to keep a copy must not stop it)."""
    digest = hashlib.sha256(raw).hexdigest()
    entry = {"file": str(path), "copy": None, "sha256": digest, "at": time.time(), "problems": problems[:MAX_PROBLEMS]}
    try:
        from filelock import FileLock  # not at import time: the hooks import this module's neighbours
        with FileLock(str(paths.ensure_private_dir(paths.home()) / "quarantine.json.lock"), timeout=30):
            entries = read_entries()
            for old in entries:
                if old.get("file") == str(path) and old.get("sha256") == digest:
                    return old
            entry["copy"] = str(_copy(path, raw))
            _write(entries + [entry])
    except Exception as err:  # noqa: BLE001 — still say it, even when nothing could be written
        entry["copy_failed"] = f"{type(err).__name__}: {err}"[:200]
    where = f"kept as {entry['copy']}" if entry["copy"] else f"could not keep a copy ({entry.get('copy_failed')})"
    print(redact(f"vasticlaude: {path}: {len(problems)} bad part(s) left out and defaults used ({problems[0][:160]}"
          f"{'; …' if len(problems) > 1 else ''}); the file as it was is {where}."), file=sys.stderr, flush=True)
    return entry


def _copy(path: Path, raw: bytes) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        copy = path.with_name(f"{path.name}.bad-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        return copy
    raise OSError(f"too many copies of {path} this second")


def read_entries() -> list[dict]:
    try:
        data = json.loads(registry_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _write(entries: list[dict]) -> None:
    from vasticlaude.store.jsonfile import write_json_atomic
    write_json_atomic(registry_path(), {"version": 1, "entries": entries[-MAX_ENTRIES:]})


def recent(now: float | None = None, within: float = RECENT_S) -> list[dict]:
    """Entries of the last `within` seconds, newest first, as {"file", "copy", "at", "problems"}."""
    now = now or time.time()
    out = []
    for entry in reversed(read_entries()):
        at = entry.get("at")
        if isinstance(at, (int, float)) and now - at <= within:
            out.append({k: entry.get(k) for k in ("file", "copy", "at", "problems")})
    return out

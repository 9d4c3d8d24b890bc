"""Durable JSON files: atomic replace and fsync, so a kill -9 at any instant leaves the old
or the new file, never half of one. Callers that share a file across processes lock around
this (state.py); the sandbox is the only writer of its world file and needs no lock.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from vasticlaude.output import redact
from typing import Any


def write_json_atomic(path: Path, data: Any, redacted: bool = False) -> None:
    """Write `data` as JSON to `path` via a temp file, fsync and `os.replace`; with `redacted` (what
    vasticlaude keeps about the user's runs) every secret masked (output.redact). The sandbox keeps
    its keys in its own files, unredacted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            text = json.dumps(data, indent=1, sort_keys=True)
            handle.write((redact(text) if redacted else text) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON in `path`, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk too.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

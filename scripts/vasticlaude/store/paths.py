"""Where vasticlaude keeps its state: one folder, redirectable by one env var.

`VASTICLAUDE_HOME` moves everything (tests point it at a temp dir), so no test and no
second user can touch someone else's instances or keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vasticlaude.errors import USAGE, Error

EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    """The vasticlaude home: `$VASTICLAUDE_HOME`, else `~/.vasticlaude`."""
    override = os.environ.get("VASTICLAUDE_HOME")
    return Path(override).expanduser() if override else Path.home() / ".vasticlaude"


def sim_dir() -> Path:
    """State of the background sandbox started by `vasticlaude sim start`."""
    return home() / "sim"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (0700) if needed: state here can name keys and instances."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def experiment_name(name: str) -> str:
    """`name` when it can be a label and a folder name (no '/', no '..'); a usage Error otherwise."""
    if not EXPERIMENT_RE.match(name or ""):
        raise Error("bad_experiment", f"experiment id {name!r} is not usable in a label",
                    "Use letters, digits, '.', '_' or '-' (at most 64).", USAGE)
    return name

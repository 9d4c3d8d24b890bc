"""Where vasticlaude keeps its state: one folder, redirectable by one env var.

`VASTICLAUDE_HOME` moves everything (tests point it at a temp dir), so no test and no
second user can touch someone else's instances or keys.
"""
from __future__ import annotations

import os
from pathlib import Path


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

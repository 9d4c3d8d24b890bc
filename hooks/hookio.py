"""The cheapest part of the hooks: the bounded stdin read and where the state is.

Only os, sys, select and time: importing json and pathlib costs about 12 ms, more than the
interpreter's own start, and most hook calls (no state file, a Bash command that rents
nothing) can be answered without either. hooklib builds on this for everything else.
"""
from __future__ import annotations

import os
import sys
import time

MAX_EVENT_BYTES = 1 << 20


def disabled() -> bool:
    """`VASTICLAUDE_HOOKS=off` turns every vasticlaude hook off."""
    return os.environ.get("VASTICLAUDE_HOOKS", "").lower() in ("off", "0", "false")


def home() -> str:
    """vasticlaude.paths.home() without pathlib: `$VASTICLAUDE_HOME`, else ~/.vasticlaude."""
    override = os.environ.get("VASTICLAUDE_HOME")
    return os.path.expanduser(override) if override else os.path.join(os.path.expanduser("~"), ".vasticlaude")


def has_state() -> bool:
    return os.path.exists(os.path.join(home(), "instances.json"))


def read_raw(wait: float = 1.0, limit: int = MAX_EVENT_BYTES) -> bytes:
    """The event's bytes on stdin, read within `wait` seconds and `limit` bytes.

    Claude Code writes the event and closes stdin, but a bare read() hangs when the other
    side keeps it open (awrshift/agent-memory-kit v6.5.4): the read stops at EOF, at the
    deadline, or when what was read is a whole JSON object and nothing follows for 50 ms.
    """
    try:
        fd = sys.stdin.fileno()
        if os.isatty(fd):
            return b""
        import select
    except (AttributeError, OSError, ValueError, ImportError):
        return b""
    chunks: list[bytes] = []
    size, deadline = 0, time.monotonic() + wait
    while size < limit:
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError):  # Windows: select() takes sockets only
            return sys.stdin.buffer.read(limit) if not chunks else b"".join(chunks)
        if not ready:
            break
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.rstrip().endswith(b"}") and not select.select([fd], [], [], 0.05)[0] and _whole(chunks):
            break
    return b"".join(chunks)


def _whole(chunks: list[bytes]) -> bool:
    import json
    try:
        json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        return False
    return True

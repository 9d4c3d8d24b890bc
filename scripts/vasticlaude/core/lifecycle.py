"""What an instance's status means: one normaliser from Vast's `actual_status` to the state's status.

The state keeps one word per instance (and its history), and the cost estimate bills
GPU time for the statuses in GPU_BILLED and storage for every status but GONE.
Vast's vocabulary (vastai's SKILL.md): null/created (still creating), loading,
running, frozen (paused, GPU still charged), stopped, exited, rebooting, unknown,
offline; seen too: scheduling (a start waiting for its GPU) and, for a destroyed instance's
row, destroyed or terminated (gone, like no row at all). An unrecognised word is taken as
loading: still on its way, not billed as GPU. Rows reach here normalised (vast/rows.py).
"""
from __future__ import annotations

RECORD_STATUS = {None: "creating", "created": "creating", "loading": "loading", "scheduling": "loading",
                 "rebooting": "loading", "running": "running", "frozen": "running", "stopped": "stopped",
                 "exited": "exited", "offline": "offline", "unknown": "offline", "destroyed": "destroyed",
                 "terminated": "destroyed"}
GPU_BILLED = {"running"}
GONE = {"destroyed"}


def record_status(row: dict | None) -> str:
    """The state's status for an account row; None (no row) is destroyed."""
    if row is None:
        return "destroyed"
    actual = row.get("actual_status")
    return RECORD_STATUS.get(actual if actual is None else str(actual).strip().lower(), "loading")


def is_gone(row: dict | None) -> bool:
    """No row, or a row whose status says the instance is destroyed."""
    return record_status(row) in GONE

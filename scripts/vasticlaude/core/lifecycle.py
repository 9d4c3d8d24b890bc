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

import re

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


# ----- how long a boot may take -------------------------------------------------------------------
# The image decides: its pull is most of a boot. Seen on Vast: 43 min in `loading`; dstack's 10-min
# provisioning timeout killed real boots (dstack #2809); vast-cli's self-test waits 900 s; SkyPilot 30 min.
BOOT_BY_IMAGE = (  # (pattern in the image name, seconds): the first match wins
    (r"vllm|sglang|text-generation-inference|comfyui|stable-diffusion|webui|devel", 2700.0),  # 10-20 GB
    (r"pytorch|cuda|tensorflow|nvidia|jax|huggingface|deepspeed|nemo|triton", 1800.0),        # 5-10 GB
    (r"vastai/base|ubuntu|debian|alpine|busybox|^python:", 600.0),                             # under 1 GB
)
BOOT_DEFAULT_S = 900.0  # an image of unknown size: vast-cli's self-test wait
BOOT_CAP_S = 3600.0  # never unbounded: the most any boot may be given (config `deadlines.up_cap_s`)


def boot_deadline(image: str, asked: float | None = None, configured: float | None = None,
                  cap: float | None = None) -> tuple[float, str]:
    """Seconds `up` waits for the instance to answer, and where that came from: --deadline, else the
    config's `deadlines.up_s`, else the image's size class; never above the cap."""
    limit = float(cap or BOOT_CAP_S)
    if asked:
        seconds, source = float(asked), "--deadline"
    elif configured:
        seconds, source = float(configured), "config deadlines.up_s"
    else:
        seconds, source = next(((s, f"image class {p.split('|')[0]}") for p, s in BOOT_BY_IMAGE
                                if re.search(p, image, re.I)), (BOOT_DEFAULT_S, "image of unknown size"))
    if seconds > limit:
        return limit, f"{source}, capped at {limit:g} s"
    return seconds, source

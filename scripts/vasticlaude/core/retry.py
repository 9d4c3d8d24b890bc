"""The one backoff: every wait between retries and polls is drawn from here.

`schedule(first, cap)` doubles from `first` up to `cap`; every pause is multiplied by
VASTICLAUDE_POLL_SCALE (default 1), which tests and the demo use to shrink waits.
The named schedules are the ones the product promises:
  SSH    2, 4, 8, 16 s on a dropped or refused connection (then a clear error)
  API    0.5, 1, 2, 4, 8 s on 429, 5xx or no answer from Vast (then the user is told)
  PATIENT_API  API then three more 8 s pauses (about 40 s): a rental or a teardown
               half done costs more than waiting
"""
from __future__ import annotations

import os
from itertools import islice
from typing import Iterator


def poll_scale() -> float:
    """VASTICLAUDE_POLL_SCALE (default 1): tests shrink every wait between calls with it."""
    try:
        return max(0.0, float(os.environ.get("VASTICLAUDE_POLL_SCALE") or 1.0))
    except ValueError:
        return 1.0


def schedule(first: float, cap: float, count: int | None = None) -> Iterator[float]:
    """first, 2×first, 4×first … capped at cap, each × poll_scale(); endless unless `count`."""
    def endless() -> Iterator[float]:
        pause = first
        while True:
            yield pause * poll_scale()
            pause = min(pause * 2, cap)
    return endless() if count is None else islice(endless(), count)


def ssh_pauses() -> tuple[float, ...]:
    return tuple(schedule(2.0, 16.0, 4))


def api_pauses(patient: bool = False) -> tuple[float, ...]:
    return tuple(schedule(0.5, 8.0, 8 if patient else 5))

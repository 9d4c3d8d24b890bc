"""The one backoff: every wait between retries and polls is drawn from here.

`schedule(first, cap)` doubles from `first` up to `cap`; every pause is multiplied by
VASTICLAUDE_POLL_SCALE (default 1), which tests and the demo use to shrink waits.
The named schedules are the ones the product promises:
  SSH    2, 4, 8, 16 s on a dropped or refused connection (then a clear error)
  API    0.5, 1, 2, 4, 8 s on 429, 5xx or no answer from Vast (then the user is told)
  PATIENT_API  API then three more 8 s pauses (about 40 s): a rental or a teardown
               half done costs more than waiting

Deadlines are walls. A command with a deadline (`up`'s boot wait, `push --deadline`,
`watch --timeout`, `down --deadline`) opens a `wall(seconds)`; inside it every pause between
tries (`pause`), every ssh ConnectTimeout (`connect_timeout`) and every call's own time limit
(`clip`) is cut to the time left, and a retry loop whose next pause would cross the wall stops
there with its last error. So no probe or retry carries a command past its deadline by more
than one poll. Walls nest (the nearest one wins); `grace(seconds)` gives a safety step (the
teardown of what was rented) at least that long even when the wall has passed.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from itertools import islice
from typing import Callable, Iterator

_WALL: ContextVar[float | None] = ContextVar("vasticlaude_wall", default=None)  # monotonic; None: no wall
SSH_CONNECT_S = 10  # ssh's ConnectTimeout when no wall is nearer
SSH_CONNECT_FIRST_S = 5  # a route with a fallback gets half: a dead route costs less than one timeout


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


# ----- deadlines ------------------------------------------------------------------------------
@contextmanager
def wall(seconds: float | None) -> Iterator[None]:
    """Inside: the deadline is `seconds` from now, or the outer wall when that comes first (None: no new wall)."""
    outer = _WALL.get()
    mine = None if seconds is None else time.monotonic() + max(0.0, seconds)
    token = _WALL.set(mine if outer is None else outer if mine is None else min(outer, mine))
    try:
        yield
    finally:
        _WALL.reset(token)


@contextmanager
def grace(seconds: float) -> Iterator[None]:
    """Inside: at least `seconds` from now, even past the wall (what was rented must be torn down)."""
    outer = _WALL.get()
    token = _WALL.set(None if outer is None else max(outer, time.monotonic() + seconds))
    try:
        yield
    finally:
        _WALL.reset(token)


@contextmanager
def released() -> Iterator[None]:
    """Inside: no wall (a recovery or the final pull that a watch started is carried through)."""
    token = _WALL.set(None)
    try:
        yield
    finally:
        _WALL.reset(token)


def left() -> float:
    """Seconds to the wall (never negative); infinity without one."""
    at = _WALL.get()
    return math.inf if at is None else max(0.0, at - time.monotonic())


def passed() -> bool:
    return left() <= 0


def pause(seconds: float, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Sleep `seconds` before a next try, cut to the wall; False (no sleep, no next try) once the
    wall has passed. So the last try comes at the wall, never later."""
    room = left()
    if room <= 0:
        return False
    sleep(min(seconds, room))
    return True


def clip(timeout: float, floor: float = 1.0) -> float:
    """A call's own time limit cut to the wall (at least `floor`, so a last try can still answer)."""
    return max(floor, min(timeout, left()))


def connect_timeout(cap: int = SSH_CONNECT_S) -> int:
    """ssh's ConnectTimeout: `cap` (10 s), or the whole seconds left to the wall (at least 1)."""
    room = left()
    return cap if room >= cap else max(1, math.ceil(room))

"""The gateway for an account: the endpoint chosen (the sandbox started when it is the target), patient retries.

Every workflow that talks to Vast gets its `Vast` from here, built once per command.
"""
from __future__ import annotations

import os

from vasticlaude.core.retry import api_pauses
from vasticlaude.output import progress
from vasticlaude.store import config, paths
from vasticlaude.vast.account import (
    Account,
    Endpoint,
    real_endpoint,
    sandbox_by_default,
    wants_sandbox,
)
from vasticlaude.vast.gateway import Vast

SANDBOX_TIME_SCALE = "0.1"  # a rehearsal boots in seconds, not minutes
SANDBOX_IDLE_EXIT = "900"   # a sandbox started for a rehearsal stops itself 15 min after its last instance and request


def endpoint(account: Account, config_target: str | None = None) -> Endpoint:
    """Where this account's requests go; starts the local sandbox when it is the target."""
    if not wants_sandbox(account, config_target):
        return real_endpoint(account)
    target, started = sandbox_endpoint()
    # Said when this command starts the sandbox, not on every call: Claude reads every line, and
    # `doctor` and `status` name the target anyway.
    if started and sandbox_by_default(account, config_target):
        progress(f"vasticlaude: no Vast API key found, so this runs on the local sandbox at {target.url} "
                 "(a rehearsal: nothing real is rented). Set VAST_API_KEY to use Vast.")
    return target


def sandbox_endpoint() -> tuple[Endpoint, bool]:
    """The local sandbox of this vasticlaude home, started in the background if needed (then True)."""
    from vasticlaude.sim.client import running_info, start_background
    folder = paths.sim_dir()
    scale = os.environ.get("VASTICLAUDE_SIM_TIME_SCALE", SANDBOX_TIME_SCALE)
    idle = os.environ.get("VASTICLAUDE_SIM_IDLE_EXIT", SANDBOX_IDLE_EXIT)
    info = running_info(folder)
    started = info is None
    if started:
        info = start_background(folder, ["--time-scale", scale, "--idle-exit", idle])
    return Endpoint(url=info["url"], api_key=info["api_key"], key_source="sandbox", sandbox=True), started


def connect(account: Account, cfg: dict | None = None) -> Vast:
    """The gateway with the lifecycle's patient read retries (about 40 s before giving up)."""
    cfg = cfg if cfg is not None else config.load()
    return Vast(endpoint(account, cfg.get("target")), backoff=api_pauses(patient=True))

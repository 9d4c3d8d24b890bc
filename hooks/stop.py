"""Stop hook: once per session, remind Claude of instances that bill with no guarded job.

Fires every time Claude finishes answering, so it must be cheap and must not nag: state
only (instances.json and each experiment's run/pull markers, no API, no SSH), and at most
one reminder per session — a marker file <home>/sessions/<session>.stop-reminded is written
before answering, and `stop_hook_active` (Claude is already continuing because of a Stop
hook) is answered with silence. The reminder is `{"decision": "block", "reason": …}`,
which makes Claude read it and continue once (claude-code-plugin.md §6.4): the $/h, the
instances, and the command to tear them down. Never a loop; exits 0 whatever happens.
As for SessionEnd, hooks/hooks.json skips Python altogether when there is no state file.
"""
from __future__ import annotations

import os
import sys
import time

import hookio

MARKER_DAYS = 7


def handle(event: dict) -> str | None:
    if event.get("stop_hook_active"):
        return None
    data, _corrupt = hooklib.load_state()  # corrupt: SessionStart and the reap deal with it
    report = hooklib.last_report()
    idle = [r for r in hooklib.live(data) if unwatched(r, report)] if data else []
    if not idle or not first_time(hooklib.session_id(event)):
        return None
    return hooklib.json.dumps({"decision": "block", "reason": reminder(idle)})


def unwatched(rec: dict, report: dict | None) -> bool:
    """Billing with no guarded job on it: idle, stopped, or a job nothing would stop."""
    return not hooklib.guarded(rec, report)


def first_time(session: str) -> bool:
    """True once per session: claims the marker atomically (O_EXCL), pruning old ones."""
    folder = hooklib.paths.ensure_private_dir(hooklib.paths.home() / "sessions")
    try:
        os.close(os.open(folder / f"{session}.stop-reminded", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    prune(folder)
    return True


def prune(folder) -> None:
    cutoff = time.time() - MARKER_DAYS * 86400
    for entry in os.scandir(folder):
        try:
            if entry.name.endswith(".stop-reminded") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            continue


def reminder(idle: list[dict]) -> str:
    total = hooklib.total_dph(idle)
    listed = ", ".join(f"{r.get('id')} ({r.get('experiment') or r.get('label') or '?'}, {r.get('status')}, "
                       f"{hooklib.money(hooklib.costing.billing_now(r))}/h)" for r in idle[:5])
    more = f" and {len(idle) - 5} more" if len(idle) > 5 else ""
    vc = hooklib.vc_command()
    return (f"vasticlaude: {len(idle)} instance(s) bill {hooklib.money(total)}/h with no guarded job running: "
            f"{listed}{more}. "
            f"If they are not needed now, tear them down: `{vc} down --all` (or `{vc} down ID`; pull results "
            f"first with `{vc} pull --experiment X`). If they are kept on purpose, tell the user so. "
            "This reminder is shown once per session.")


if __name__ == "__main__":
    # Fast path first (no state file: nothing to remind of): the interpreter's start and little more;
    # hooklib (json, pathlib: about 12 ms) is imported only when there is work.
    RAW = hookio.read_raw(wait=1.0)
    if hookio.disabled() or not hookio.has_state():
        sys.exit(0)
    import hooklib
    sys.exit(hooklib.main(handle, "Stop", raw=RAW))

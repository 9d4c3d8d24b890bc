"""SessionEnd hook: hand the teardown of whatever still bills to a detached `vasticlaude reap`.

Claude Code gives every SessionEnd hook together 1.5 s and then kills them; the output is
discarded and the exit cannot be blocked (claude-code-plugin.md §6.4, §6.5). So this hook
only reads instances.json: with no live instance and no pending rental it returns; otherwise
(or when the state file is corrupt or has bad parts, since then nobody knows what runs) it starts `vasticlaude
reap --reason session-end` in its own session with its output in <vasticlaude
home>/logs/reap.log, and returns. The reap decides per instance (leave a guarded job running, pull and destroy,
destroy) and writes the report that the next SessionStart shows. If Claude Code is killed
before this hook runs, the next SessionStart still finds the instances and says so.

With no state file at all (nothing was ever rented: the common case) Python does not even
start: the command in hooks/hooks.json tests for the file first, with the same rule as
vasticlaude.paths.home() (`$VASTICLAUDE_HOME`, else ~/.vasticlaude; a value starting with `~`
is left to Python to expand) — a `python3` that is a pyenv shim costs 60 ms or more.

Stdlib only; exits 0 whatever happens. Prints one line naming the worker's pid (debug log).
"""
from __future__ import annotations

import sys

import hookio


def handle(event: dict) -> str | None:
    hooklib.mark_session(event, open_=False)
    data, damaged = hooklib.load_state()
    if not damaged and not hooklib.live(data) and not (data or {}).get("intents"):
        return None
    args = ["reap", "--reason", "session-end", "--session", hooklib.session_id(event)]
    if event.get("reason"):
        args += ["--end-reason", hooklib.safe_text(event["reason"], 40)]
    argv, env = hooklib.worker(args)
    pid = hooklib.spawn(argv, env, "reap.log", cwd=hooklib.project_dir(event))
    what = hooklib.damage_line(damaged) if damaged else f"{len(hooklib.live(data))} live instance(s)"
    log = hooklib.paths.home() / "logs" / "reap.log"
    return f"vasticlaude: {what}: reaping in the background (pid {pid}, log {log})"


if __name__ == "__main__":
    # Fast path first (no state file: nothing was ever rented): the interpreter's start and little more;
    # hooklib (json, pathlib: about 12 ms) is imported only when there is work.
    RAW = hookio.read_raw(wait=0.5)
    if hookio.disabled() or not hookio.has_state():
        sys.exit(0)
    import hooklib
    sys.exit(hooklib.main(handle, "SessionEnd", raw=RAW))

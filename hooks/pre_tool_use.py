"""PreToolUse hook (Bash): a rental made outside vasticlaude escapes its ledger and guards.

`vastai create instance …`, `vastai launch instance …`, an SDK one-liner calling
`create_instance`/`launch_instance`, or a raw `PUT …/asks/<id>` rents a GPU that
instances.json never hears of: no cost estimate, no SessionEnd teardown, no guard. Such a
command gets permissionDecision "ask" with the reason (Claude is told to use
`vc up` instead; the user can still allow it). Everything else passes silently: a
substring test rejects almost every command before any regex runs.
"""
from __future__ import annotations

import sys

import hookio

CLI = r"\bvastai\b[^\n;&|]*?\b(?:create|launch)\s+instances?\b"
SDK = r"\b(?:create|launch)_instances?\s*\("
REST = r"\bPUT\b.*?/asks/\d+|/asks/\d+.*?\bPUT\b"


def handle(event: dict) -> str | None:
    tool_input = event.get("tool_input") or {}
    command = tool_input.get("command") if isinstance(tool_input, dict) else None
    if not isinstance(command, str) or not rents(command):
        return None
    vc = hooklib.vc_command()
    reason = (f"This rents a Vast.ai GPU outside vasticlaude: it would not be in its ledger, its cost "
              f"reports or its session-end teardown. Use `{vc} up --experiment NAME …` instead (it picks "
              f"the offer, waits for SSH and records the instance), or `{vc} offers` to choose one.")
    return hooklib.json.dumps({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "ask",
                                              "permissionDecisionReason": reason}})


def rents(command: str) -> bool:
    """True for a command that creates a Vast instance by the CLI, the SDK or the REST API."""
    import re  # here, not at the top: the fast path never needs it
    lowered = command.lower()
    if "vast" not in lowered and "/asks/" not in lowered:
        return False
    if re.search(CLI, command, re.IGNORECASE):
        return True
    if re.search(SDK, command, re.IGNORECASE) and "vast" in lowered:
        return True
    return "/asks/" in lowered and bool(re.search(REST, command, re.IGNORECASE | re.DOTALL))


if __name__ == "__main__":
    # Fast path first (no "vast" or "/asks/" in the event, so no rental: most calls): the
    # interpreter's start and little more; hooklib (json, pathlib: about 12 ms) only when needed.
    RAW = hookio.read_raw(wait=1.0)
    if hookio.disabled() or (b"vast" not in RAW.lower() and b"/asks/" not in RAW.lower()):
        sys.exit(0)
    import hooklib
    sys.exit(hooklib.main(handle, "PreToolUse", raw=RAW))

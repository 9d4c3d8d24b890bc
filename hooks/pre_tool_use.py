"""PreToolUse hook (Bash): keep the launcher's grant to the launcher, and rentals inside vasticlaude.

The skills grant `Bash("<plugin>/scripts/vc" *)`. A call that starts with the launcher but
chains or substitutes anything (`&&`, `||`, `;`, `|`, `&`, redirects, `$(…)`, backticks,
a newline: outside single quotes, where the shell would act on them) would ride on that grant
with a second command nobody allowed (job logs are untrusted text that reaches Claude). It is
denied, with a reason that tells Claude to run each command alone.

A rental made outside vasticlaude escapes its ledger and guards:

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
    if not isinstance(command, str):
        return None
    if launches(command) and chained(command):
        return decision("deny", f"Only the vasticlaude launcher alone is permitted: this call chains or substitutes "
                                f"another command ({chained(command)!r}). Run each command as its own Bash call, "
                                f"starting with {hooklib.vc_command()} and with nothing after its arguments.")
    if not rents(command):
        return None
    vc = hooklib.vc_command()
    reason = (f"This rents a Vast.ai GPU outside vasticlaude: it would not be in its ledger, its cost "
              f"reports or its session-end teardown. Use `{vc} up --experiment NAME …` instead (it picks "
              f"the offer, waits for SSH and records the instance), or `{vc} offers` to choose one.")
    return decision("ask", reason)


def decision(verdict: str, reason: str) -> str:
    return hooklib.json.dumps({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": verdict,
                                                      "permissionDecisionReason": reason}})


def launches(command: str) -> bool:
    """Does the command start with the plugin's launcher (…/scripts/vc, quoted or not)?"""
    head = command.lstrip().split(None, 1)[0] if command.strip() else ""
    return head.strip("'\"").endswith("/scripts/vc")


def chained(command: str) -> str | None:
    """The first operator the shell would act on (outside quotes; `$(` and backticks also in double quotes)."""
    quote, i, text = None, 0, command.strip()
    while i < len(text):
        c = text[i]
        if quote == "'":
            quote = None if c == "'" else quote
        elif c == "\\":
            i += 1  # an escaped character is literal
        elif c == "`" or text.startswith("$(", i):
            return "`" if c == "`" else "$("
        elif quote == '"':
            quote = None if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c in ";&|<>\n":
            return "newline" if c == "\n" else text[i:i + 2] if text[i + 1:i + 2] == c else c
        i += 1
    return None


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
    # Fast path first (no "vast", "/asks/" or the launcher in the event: most calls): the
    # interpreter's start and little more; hooklib (json, pathlib: about 12 ms) only when needed.
    RAW = hookio.read_raw(wait=1.0)
    lowered = RAW.lower()
    if hookio.disabled() or (b"vast" not in lowered and b"/asks/" not in lowered and b"scripts/vc" not in lowered):
        sys.exit(0)
    import hooklib
    sys.exit(hooklib.main(handle, "PreToolUse", raw=RAW))

"""How commands speak: one JSON envelope (`--json`) or short human text on stdout;
progress and logs on stderr. The envelope is `{"v": 1, "ok": bool, "data": …, "error": …}`.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from typing import Callable

from vasticlaude.errors import Error
from vasticlaude.store import paths

ENVELOPE_VERSION = 1


VERBS = ("sim", "demo", "offers", "up", "down", "reconcile", "doctor", "cost", "report", "push", "pull", "run",
         "status", "logs", "reap", "watch", "recover")
# "vasticlaude VERB" as a suggestion, not as a progress line's prefix ("vasticlaude up: renting…").
SUGGESTION = re.compile(r"\bvasticlaude (?=(?:%s)\b(?!:))" % "|".join(VERBS))


def spell(text: str) -> str:
    """A suggested command as the reader can run it: under the plugin's launcher, the launcher's path
    (the only thing Claude is allowed to run); as an installed CLI, `vasticlaude` as written."""
    launcher = os.environ.get("VASTICLAUDE_LAUNCHER")
    if not launcher or "vasticlaude " not in text:
        return text
    return SUGGESTION.sub(f'"{launcher}" '.replace("\\", "\\\\"), text)


def spelled(value: object) -> object:
    """Every string in a JSON value, spelled for the reader."""
    if isinstance(value, str):
        return spell(value)
    if isinstance(value, dict):
        return {k: spelled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [spelled(v) for v in value]
    return value


def emit(data: object, as_json: bool, human: Callable[[object], str], error: Error | None = None) -> None:
    """The result on stdout; with `error` (a non-zero exit) the envelope says ok: false and why."""
    if as_json:
        print(json.dumps({"v": ENVELOPE_VERSION, "ok": error is None, "data": spelled(data),
                          "error": spelled(error.as_dict()) if error else None},
                         separators=(",", ":"), sort_keys=True))
    else:
        text = human(data)
        if text:
            print(spell(text))


def fail(err: Error, as_json: bool, prog: str = "vasticlaude") -> int:
    if as_json:
        print(json.dumps({"v": ENVELOPE_VERSION, "ok": False, "data": None, "error": spelled(err.as_dict())},
                         separators=(",", ":"), sort_keys=True))
    print(error_line(prog, err), file=sys.stderr)
    return err.exit_code


def error_line(prog: str, err: Error) -> str:
    """`prog: message. hint` as written: a message ending in its own period ("gave up.", "waited...")
    gets no second one, and nothing inside (a path `../x`) is touched."""
    message = err.message if err.message.endswith(".") else f"{err.message}."
    hint = err.hint[:-1] if err.hint.endswith("..") and not err.hint.endswith("...") else err.hint
    return spell(f"{prog}: {message} {hint}".rstrip())


def progress(message: str) -> None:
    print(spell(message), file=sys.stderr, flush=True)


def compact(value: object) -> object:
    """Leave out null and empty fields (0 and false stay): what Claude reads costs context."""
    if isinstance(value, dict):
        kept = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def log_crash(prog: str) -> str:
    path = paths.ensure_private_dir(paths.home() / "logs") / "errors.log"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {prog} {' '.join(_redacted(sys.argv[1:]))}\n")
        handle.write(traceback.format_exc())
    return str(path)


def _redacted(argv: list[str]) -> list[str]:
    out, hide = [], False
    for arg in argv:
        out.append("[redacted]" if hide else arg.split("=")[0] + "=[redacted]" if arg.startswith("--api-key=") else arg)
        hide = arg == "--api-key"
    return out

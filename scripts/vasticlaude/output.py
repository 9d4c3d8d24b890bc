"""How commands speak: one JSON envelope (`--json`) or short human text on stdout;
progress and logs on stderr. The envelope is `{"v": 1, "ok": bool, "data": …, "error": …}`.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Callable

from vasticlaude.errors import Error
from vasticlaude.store import paths

ENVELOPE_VERSION = 1


def emit(data: object, as_json: bool, human: Callable[[object], str]) -> None:
    if as_json:
        print(json.dumps({"v": ENVELOPE_VERSION, "ok": True, "data": data, "error": None},
                         separators=(",", ":"), sort_keys=True))
    else:
        text = human(data)
        if text:
            print(text)


def fail(err: Error, as_json: bool, prog: str = "vasticlaude") -> int:
    if as_json:
        print(json.dumps({"v": ENVELOPE_VERSION, "ok": False, "data": None, "error": err.as_dict()},
                         separators=(",", ":"), sort_keys=True))
    hint = f" {err.hint}" if err.hint else ""
    print(f"{prog}: {err.message}.{hint}".replace("..", "."), file=sys.stderr)
    return err.exit_code


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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

"""How commands speak: one JSON envelope (`--json`) or short human text on stdout;
progress and logs on stderr. The envelope is `{"v": 1, "ok": bool, "data": …, "error": …}`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
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
    release(say=error is not None)
    if as_json:
        print(redact(json.dumps({"v": ENVELOPE_VERSION, "ok": error is None, "data": spelled(data),
                                 "error": spelled(error.as_dict()) if error else None},
                                separators=(",", ":"), sort_keys=True)))
    else:
        text = human(data)
        if text:
            print(redact(spell(text)))


def fail(err: Error, as_json: bool, prog: str = "vasticlaude") -> int:
    """The error said once: in the envelope with --json (Claude reads stdout and stderr both), else
    as one line on stderr."""
    release(say=True)
    if as_json:
        print(redact(json.dumps({"v": ENVELOPE_VERSION, "ok": False, "data": None, "error": spelled(err.as_dict())},
                                separators=(",", ":"), sort_keys=True)))
    else:
        print(error_line(prog, err), file=sys.stderr)
    return err.exit_code


def error_line(prog: str, err: Error) -> str:
    """`prog: message. hint` as written: a message ending in its own period ("gave up.", "waited...")
    gets no second one, and nothing inside (a path `../x`) is touched."""
    message = err.message if err.message.endswith(".") else f"{err.message}."
    hint = err.hint[:-1] if err.hint.endswith("..") and not err.hint.endswith("...") else err.hint
    return redact(spell(f"{prog}: {message} {hint}".rstrip()))


class _Held:
    """Lines a --json result restates (what `up` rents, what `push` sends, what `pull` brought): said
    only when something follows them (a slow boot's status, a retry, an error), else left to the result.
    Claude reads stderr and stdout together once the command ends; a person (no --json) sees them at once."""
    on = False
    lines: list[str] = []
    lock = threading.Lock()


def hold(as_json: bool) -> None:
    """Set once per command by console.main."""
    with _Held.lock:
        _Held.on, _Held.lines = as_json, []


def restated(message: str) -> None:
    """A progress line the result will say again: at once to a person, held under --json."""
    if not _Held.on:
        return progress(message)
    with _Held.lock:
        _Held.lines.append(message)


def release(say: bool) -> None:
    """The held lines: said (before what follows them, an error) or dropped (the result says them)."""
    with _Held.lock:
        lines, _Held.lines = _Held.lines, []
    for line in lines if say else ():
        print(redact(spell(line)), file=sys.stderr, flush=True)


def progress(message: str) -> None:
    release(say=True)
    print(redact(spell(message)), file=sys.stderr, flush=True)


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
        handle.write(redact(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {prog} {' '.join(_redacted(sys.argv[1:]))}\n"))
        handle.write(redact(traceback.format_exc()))
    return str(path)


def _redacted(argv: list[str]) -> list[str]:
    out, hide = [], False
    for arg in argv:
        out.append("[redacted]" if hide else arg.split("=")[0] + "=[redacted]" if arg.startswith("--api-key=") else arg)
        hide = arg == "--api-key"
    return out


# ----- secrets never printed or written -------------------------------------------------------
# Every line vasticlaude prints and every file it writes goes through `redact`: the values of the
# secrets this process knows (the account's key, an instance key seen at create, the values of
# environment variables with a word of the name KEY, SECRET, TOKEN, PASSWORD: where store
# credentials come from), and any `NAME=value` whose NAME says so (a job that prints its
# environment shows CONTAINER_API_KEY=…, a key this process may never have seen). A value is masked
# with as many characters as it had, so a pulled file keeps its size (pull verifies by size).
SECRET_WORDS = {"key", "apikey", "secret", "token", "password", "passwd", "credential", "credentials"}
ASSIGNED = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)=([^\s'\"\\]{6,})")
NUMBER = re.compile(r"[\d.,:eE+-]+")  # a metric (token_acc=0.93), never a key
SHORTEST = 8  # shorter values (a flag "1", a port) are not secrets worth hiding and would mask too much
_SECRETS: set[str] = set()
# Instance keys are never kept, only their fingerprints (store/state records `key_sha256`): a later
# process masks a bare key (`echo $CONTAINER_API_KEY`) by hashing the long tokens it prints.
_PRINTS: set[str] = set()
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def fingerprint(value: str) -> str:
    """What is kept of an instance key: enough to recognise it, nothing to use."""
    return hashlib.sha256(value.strip().encode("utf-8")).hexdigest()[:32]


def secret_print(value: object) -> None:
    """Remember a key by its fingerprint: tokens that hash to it are masked from now on."""
    if isinstance(value, str) and len(value) == 32:
        _PRINTS.add(value)


def secret(value: object) -> None:
    """Remember a secret value of this process: from now on it is masked wherever it appears."""
    text = str(value or "").strip()
    if len(text) >= SHORTEST:
        _SECRETS.add(text)


def secret_name(name: str) -> bool:
    """Does this variable's name say it holds a secret? A word of it does (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
    CONTAINER_API_KEY, apiKey), not a part of a word (tokenizer, num_tokens, monkey)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower().split("_")
    return bool(SECRET_WORDS.intersection(words)) or name.lower() in SECRET_WORDS


def _environment_secrets() -> None:
    for name, value in os.environ.items():
        if secret_name(name):
            secret(value)


def mask(value: str) -> str:
    """`value` hidden, as long as it was: "[redacted]***…" (or stars when shorter than that)."""
    return ("[redacted]" + "*" * len(value))[:len(value)] if len(value) >= 10 else "*" * len(value)


def redact(text: str) -> str:
    if not text:
        return text
    for value in sorted(_SECRETS, key=len, reverse=True):
        if value in text:
            text = text.replace(value, mask(value))
    if _PRINTS:
        text = TOKEN.sub(lambda m: mask(m[0]) if fingerprint(m[0]) in _PRINTS else m[0], text)
    return ASSIGNED.sub(_masked_assignment, text)


def _masked_assignment(m: re.Match) -> str:
    name, value = m[1], m[2]
    if not secret_name(name) or NUMBER.fullmatch(value) or value.startswith("[redacted]") or set(value) == {"*"}:
        return m[0]
    return f"{name}={mask(value)}"


def redact_file(path: Path) -> bool:
    """Mask the secrets in a text file in place (same size, same mtime); True when it changed."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if b"\0" in data[:8192]:
        return False  # binary: not a log
    text = data.decode("utf-8", "surrogateescape")
    clean = redact(text)
    if clean == text:
        return False
    st = path.stat()
    tmp = path.with_name(f".{path.name}.redact")
    tmp.write_bytes(clean.encode("utf-8", "surrogateescape"))
    os.chmod(tmp, st.st_mode & 0o777)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    return True


_environment_secrets()

"""The boundary every command shares: argument parsing, errors, exit codes.

A command module defines `build_parser()` and `run(args) -> object` (the data it
reports) plus `human(data) -> str`. `main()` turns a `vasticlaude.errors.Error` into a
one-line message (and a JSON envelope with `--json`) with its exit code; anything
unexpected is logged with its traceback under the vasticlaude home and reported in
one line, never as a traceback on the user's screen.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from typing import Callable

from . import paths
from .errors import FAILED, Error
from .output import emit, fail


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON envelope on stdout")
    return p


def add_target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sandbox", action="store_true", help="use the local sandbox (started if needed)")
    p.add_argument("--api-key", help="Vast API key (default: VAST_API_KEY, .env, vastai's key file)")


def target_argv(args: argparse.Namespace) -> list[str]:
    """The target flags again, for a command that runs another in-process (recover → push, watch → pull)."""
    argv = ["--sandbox"] if getattr(args, "sandbox", False) else []
    return argv + (["--api-key", args.api_key] if getattr(args, "api_key", None) else [])


def add_instance_flags(p: argparse.ArgumentParser) -> None:
    """Which experiment's instance a command acts on (resolved by target.bind)."""
    add_target_flags(p)
    p.add_argument("--experiment", help="experiment id (default: the only live one)")
    p.add_argument("--instance", type=int, help="instance id instead of an experiment")


def main(argv: list[str], build_parser: Callable[[], argparse.ArgumentParser],
         run: Callable[[argparse.Namespace], object], human: Callable[[object], str],
         exit_code: Callable[[object], int] | None = None,
         json_view: Callable[[object], object] | None = None) -> int:
    """Parse, run, print. The exit code is `exit_code(data)` when given, else data["exit_code"] or 0.

    `json_view` shapes what --json prints (e.g. leaves out empty fields); the exit code and
    the human text always see the full data.
    """
    args = build_parser().parse_args(argv)
    prog = build_parser().prog
    try:
        data = run(args)
    except Error as err:
        return fail(err, args.json, prog)
    except KeyboardInterrupt:
        return fail(Error("interrupted", "interrupted", "Check 'vasticlaude cost' for anything still billing."), args.json, prog)
    except Exception as err:  # noqa: BLE001 — the last line of defence
        log = _log_crash(prog)
        return fail(Error("bug", f"unexpected {type(err).__name__}", f"Details in {log}."), args.json, prog)
    emit(json_view(data) if args.json and json_view else data, args.json, human)
    if exit_code is not None:
        return exit_code(data)
    return int(data.get("exit_code", 0) or 0) if isinstance(data, dict) else 0


def _log_crash(prog: str) -> str:
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


__all__ = ["parser", "add_target_flags", "target_argv", "main", "FAILED"]

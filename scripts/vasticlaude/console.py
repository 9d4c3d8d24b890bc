"""The boundary every command shares: argument parsing, the account, errors, exit codes.

A command module defines `build_parser()` and `run(args) -> object` (the data it
reports) plus `human(data) -> str`. `main()` turns a `vasticlaude.errors.Error` into a
one-line message (and a JSON envelope with `--json`) with its exit code; anything
unexpected is logged with its traceback under the vasticlaude home and reported in
one line, never as a traceback on the user's screen.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable

from vasticlaude.core.numbers import bounded
from vasticlaude.errors import USAGE, Error
from vasticlaude.output import emit, fail, hold, log_crash
from vasticlaude.store import config, paths, state
from vasticlaude.vast.account import Account

if TYPE_CHECKING:  # imported where used: a local command (cost, --help) loads no ssh, market or gateway code
    from vasticlaude.core.market import Wanted
    from vasticlaude.ops.binding import Bound
    from vasticlaude.vast.gateway import Vast


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is an Error (exit 2) that main() reports like any other (an envelope with --json)."""

    def error(self, message: str):  # type: ignore[override]
        raise Error("usage", f"{message}", f"Run {self.prog} --help for the flags.", USAGE)


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON envelope on stdout")
    return p


def add_target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sandbox", action="store_true", help="use the local sandbox (started if needed)")
    p.add_argument("--api-key", help="Vast API key (default: VAST_API_KEY, .env, vastai's key file)")


def account_of(args: argparse.Namespace) -> Account:
    """The account the target flags name (workflows take this record, never the Namespace)."""
    return Account(api_key=getattr(args, "api_key", None), sandbox=bool(getattr(args, "sandbox", False)))


def connect(args: argparse.Namespace, cfg: dict | None = None) -> Vast:
    """The gateway for the target flags: built once per command and handed to the workflows."""
    from vasticlaude.ops.connect import connect as ops_connect
    return ops_connect(account_of(args), cfg)


def experiment(value: str) -> str:
    """argparse `type=` of every --experiment: paths.experiment_name's rule (no '/', no '..'), as a usage error."""
    try:
        return paths.experiment_name(value)
    except Error as err:
        raise argparse.ArgumentTypeError(f"{err.message}; {err.hint}") from None


def number(most: float, least: float = 0.0, *, zero: bool = False, whole: bool = False) -> Callable[[str], float]:
    """argparse `type=` for every numeric flag: core.numbers.bounded's rule as a usage error (exit 2)
    naming the flag (argparse adds "argument --hours:")."""
    def parse(text: str) -> float:
        try:
            return bounded(text, most, least, zero=zero, whole=whole)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = "whole number" if whole else "number"
    return parse


# The ranges of the numeric flags, shared by every command that takes them.
HOURS = number(24 * 365)
DISK_GB = number(100_000)
USD = number(1_000_000)               # budgets
DPH = number(10_000)                  # $/h: bids, --max-dph
SECONDS = number(30 * 86400)          # deadlines, intervals, timeouts, kill grace
SECONDS_OR_ZERO = number(30 * 86400, zero=True)  # a grace may be none; watch --timeout 0 is "never"
COUNT = number(10_000, whole=True)    # lines, limits, GPUs, attempts
COUNT_OR_ZERO = number(10_000, whole=True, zero=True)
ID = number(2 ** 63, whole=True)      # instance and offer ids


def bind(args: argparse.Namespace) -> Bound:
    """The instance the flags name: the local record first (an unknown experiment fails before any
    connection, so no sandbox starts just to say so), then the gateway and its live row."""
    from vasticlaude.ops import binding
    try:
        rec = binding.find_record(args.experiment, args.instance)
    except Error as err:
        if err.code == "no_instance" and state.damaged_recently():
            return binding.bind(connect(args), args.experiment, args.instance)  # the account decides
        raise
    return binding.attach(connect(args), rec)


def known(args: argparse.Namespace) -> None:
    """Refuse, before connecting, an experiment this machine has never seen (no record, no experiment.json)."""
    if args.experiment and not state.read_experiment(args.experiment):
        from vasticlaude.ops import binding
        binding.find_record(args.experiment, args.instance)


def add_instance_flags(p: argparse.ArgumentParser) -> None:
    """Which experiment's instance a command acts on (resolved by ops.binding.bind)."""
    add_target_flags(p)
    p.add_argument("--experiment", type=experiment, help="experiment id (default: the only live one)")
    p.add_argument("--instance", type=ID, help="instance id instead of an experiment")


def main(argv: list[str], build_parser: Callable[[], argparse.ArgumentParser],
         run: Callable[[argparse.Namespace], object], human: Callable[[object], str],
         exit_code: Callable[[object], int] | None = None,
         json_view: Callable[[object], object] | None = None,
         explain: Callable[[object, int], Error] | None = None) -> int:
    """Parse, run, print. The exit code is `exit_code(data)` when given, else data["exit_code"] or 0.

    `json_view` shapes what --json prints (e.g. leaves out empty fields); the exit code and
    the human text always see the full data. A non-zero exit is never `ok`: the envelope
    carries `explain(data, code)` (what failed, and the next command) as its error, and the
    data that explains it (a log tail, the checks) stays in `data`.
    """
    command = build_parser()
    prog = command.prog
    try:
        args = command.parse_args(argv)
    except Error as err:
        return fail(err, "--json" in argv, prog)
    hold(args.json)
    try:
        data = run(args)
    except Error as err:
        return fail(err, args.json, prog)
    except KeyboardInterrupt:
        return fail(Error("interrupted", "interrupted", "Check 'vasticlaude cost' for anything still billing."), args.json, prog)
    except Exception as err:  # noqa: BLE001 — the last line of defence
        log = log_crash(prog)
        return fail(Error("bug", f"unexpected {type(err).__name__}", f"Details in {log}."), args.json, prog)
    code = exit_code(data) if exit_code is not None else \
        int(data.get("exit_code", 0) or 0) if isinstance(data, dict) else 0
    error = None
    if code:
        error = explain(data, code) if explain else unexplained(data, code)
        error.exit_code = code
    try:
        emit(json_view(data) if args.json and json_view else data, args.json, human, error)
    except BrokenPipeError:  # `cost | head`: the reader has what it wanted
        quiet_stdout()
    return code


def quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null, so the interpreter's final flush says nothing."""
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def unexplained(data: object, code: int) -> Error:
    """The error of a result that carries its own message (and maybe a hint or next step)."""
    found = data if isinstance(data, dict) else {}
    return Error(str(found.get("outcome") or "failed"), str(found.get("message") or f"failed (exit {code})"),
                 str(found.get("hint") or found.get("next") or ""), code)


def add_search_flags(p: argparse.ArgumentParser) -> None:
    """The search flags, shared with `up` so both rank the same way."""
    p.add_argument("--gpu", action="append", help='GPU model, repeatable ("RTX 4090" or RTX_4090)')
    p.add_argument("--num-gpus", type=number(64, whole=True), help="GPUs per instance (default 1)")
    p.add_argument("--min-vram", type=number(10_000), metavar="GB", help="minimum memory per GPU")
    p.add_argument("--min-reliability", type=number(1, zero=True), metavar="R", help="0–1 (default 0.95)")
    p.add_argument("--cuda", type=number(100), metavar="VERSION", help="minimum CUDA the host driver supports")
    p.add_argument("--disk", type=DISK_GB, metavar="GB", help="disk to rent (default 40); priced into $/h")
    p.add_argument("--max-dph", type=DPH, metavar="USD", help="maximum GPU + storage $/h")
    p.add_argument("--region", action="append", metavar="CC", help="country code, repeatable (US, CA, DE…)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--verified", dest="verified", action="store_true", default=None, help="verified hosts only (default)")
    group.add_argument("--any-verified", dest="verified", action="store_false", help="verified or not")
    p.add_argument("--interruptible", action="store_true", default=None, help="bid prices: cheaper, can be preempted")
    p.add_argument("--hours", type=HOURS, metavar="H", help="expected duration, for the total estimate (default 1)")
    add_target_flags(p)


def wanted_from(args: argparse.Namespace, cfg: dict, limit: int = 5) -> Wanted:
    from vasticlaude.core.market import Wanted

    def pick(flag: object, key: str) -> object:
        return flag if flag is not None else cfg.get(key)
    return Wanted(gpus=tuple(args.gpu or cfg.get("gpu") or ()), num_gpus=pick(args.num_gpus, "num_gpus"),
                  min_vram_gb=pick(args.min_vram, "min_vram_gb"),
                  min_reliability=pick(args.min_reliability, "min_reliability"), cuda=pick(args.cuda, "cuda"),
                  disk_gb=float(pick(args.disk, "disk_gb") or 40), max_dph=pick(args.max_dph, "max_dph"),
                  regions=tuple(c.upper() for c in (args.region or cfg.get("region") or ())),
                  verified=bool(pick(args.verified, "verified")), interruptible=bool(pick(args.interruptible, "interruptible")),
                  hours=float(pick(args.hours, "hours") or 1.0), limit=limit,
                  push_gb=expected_push_gb(cfg), results_gb=float((cfg.get("transfer") or {}).get("results_gb") or 0))


def expected_push_gb(cfg: dict) -> float:
    """The config's transfer.push_gb, else the project's size as push would send it."""
    given = (cfg.get("transfer") or {}).get("push_gb")
    if given is not None:
        return float(given)
    from vasticlaude.ops.code import expected_push_bytes  # only offers and up pay for it
    return expected_push_bytes(config.project_root(), cfg) / (1 << 30)


def add_policy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-attempts", type=number(100, whole=True, zero=True), help="recoveries allowed per experiment (default recovery.max_attempts, 3)")
    p.add_argument("--max-bid", type=DPH, metavar="USD", help="highest GPU $/h bid for a preempted instance")
    p.add_argument("--preempt-wait", type=SECONDS, metavar="S", help="how long a preempted instance may take (default 600)")
    p.add_argument("--disk", type=DISK_GB, metavar="GB", help="disk for the new instance (default: the old × disk_growth when full)")


def policy_of(args: argparse.Namespace, cfg: dict):
    """The recovery policy: the config's recovery block with the policy flags over it."""
    from vasticlaude.ops.recovery import Policy  # only the commands that recover pay for importing it
    return Policy.from_config(cfg, max_attempts=args.max_attempts, preempt_wait_s=args.preempt_wait,
                              max_bid_dph=args.max_bid, disk_gb=args.disk)

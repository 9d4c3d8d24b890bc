"""vasticlaude: run experiments on rented Vast.ai GPUs, or on the local sandbox.

Usage: vasticlaude COMMAND [ARGS...]   (vasticlaude COMMAND --help for each)

Commands:
  sim      the local Vast.ai sandbox: serve, start, stop, status, env, fault
  demo     the whole flow on a throwaway sandbox: offers, up, push, run, status, pull, report, down, cost
  offers   GPU offers that fit, ranked by the estimated total for the run
  up       rent the best offer, wait until SSH answers, fail over to the next offer
  down     destroy instances (or stop them with --keep-disk), confirm, record the cost
  reconcile  match instances.json with the account: adopt, mark gone, clear stale intents
  doctor   is this machine ready: API key, target, balance, SSH key, ssh/rsync, state
  cost     what instances, experiments and this session cost, and bill now (no API call)
  report   a Markdown report of an experiment: command, instances, timeline, cost, log, charts
  push     rsync the project to the instance (ignore rules, space check), set it up, check the GPU
  run      start the command detached under a wrapper and the on-instance watchdog
  status   one compact snapshot: job state, progress, GPU, disk, cost, guard, fault, next step
  logs     the job's log (tail, grep, follow)
  watch    see a run through: monitor, sync checkpoints home, recover faults, pull, tear down
  sweep    many runs (a grid or a list of commands) on at most K instances under one total budget
  recover  bring a faulted run back (preempted, host down, container exited, full disk…)
  pull     bring outputs, checkpoints and run files home, resumable and verified
  reap     at session end: leave guarded jobs running, pull and tear down everything else, report

Exit codes: 0 ok · 1 failed or refused · 2 usage · 3 Vast/sandbox API failure ·
4 something may still be billing (do what the message says).
"""
from __future__ import annotations

import importlib
import sys

# Subcommands are imported only when called, so a command that needs no API call
# never pays for importing `vastai` (about a second).
COMMANDS = {
    "sim": "vasticlaude.sim.cli",
    "demo": "vasticlaude.commands.demo",
    "offers": "vasticlaude.commands.offers",
    "up": "vasticlaude.commands.up",
    "down": "vasticlaude.commands.down",
    "reconcile": "vasticlaude.commands.reconcile",
    "doctor": "vasticlaude.commands.doctor",
    "cost": "vasticlaude.commands.cost",
    "report": "vasticlaude.commands.report",
    "push": "vasticlaude.commands.push",
    "pull": "vasticlaude.commands.pull",
    "run": "vasticlaude.commands.run",
    "status": "vasticlaude.commands.status",
    "logs": "vasticlaude.commands.logs",
    "reap": "vasticlaude.commands.reap",
    "watch": "vasticlaude.commands.watch",
    "recover": "vasticlaude.commands.recover",
    "sweep": "vasticlaude.commands.sweep",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    if args[0] == "--version":
        print(_version())
        return 0
    module_name = COMMANDS.get(args[0])
    if module_name is None:
        print(f"vasticlaude: unknown command {args[0]!r}. Run 'vasticlaude --help' for the list.", file=sys.stderr)
        return 2
    return importlib.import_module(module_name).main(args[1:])


def _version() -> str:
    """The installed version; run from the plugin folder by scripts/vc (never installed), pyproject's."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("vasticlaude")
    except PackageNotFoundError:
        import re
        from pathlib import Path
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.exists() else None
        return found.group(1) if found else "unknown"


if __name__ == "__main__":
    sys.exit(main())

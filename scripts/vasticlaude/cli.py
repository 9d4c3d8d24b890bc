"""vasticlaude: run experiments on rented Vast.ai GPUs, or on the local sandbox.

Usage: vasticlaude COMMAND [ARGS...]   (vasticlaude COMMAND --help for each)

Commands:
  sim      the local Vast.ai sandbox: serve, start, stop, status, env, fault
  demo     a round trip on a throwaway sandbox: offers, rent, ssh, rsync, destroy, bill
  offers   GPU offers that fit, ranked by the estimated total for the run
  up       rent the best offer, wait until SSH answers, fail over to the next offer
  down     destroy instances (or stop them with --keep-disk), confirm, record the cost
  reconcile  match instances.json with the account: adopt, mark gone, clear stale intents
  doctor   is this machine ready: API key, target, balance, SSH key, ssh/rsync, state
  cost     what instances, experiments and this session cost, and bill now (no API call)
  report   a Markdown report of an experiment: command, instances, timeline, cost, log, charts
  push     rsync the project to the instance (ignore rules, space check), set it up, check the GPU
  pull     bring outputs, checkpoints and run files home, resumable and verified

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
    "demo": "vasticlaude.demo",
    "offers": "vasticlaude.offers",
    "up": "vasticlaude.up",
    "down": "vasticlaude.down",
    "reconcile": "vasticlaude.reconcile",
    "doctor": "vasticlaude.doctor",
    "cost": "vasticlaude.cost",
    "report": "vasticlaude.report",
    "push": "vasticlaude.push",
    "pull": "vasticlaude.pull",
    "run": "vasticlaude.run",
    "status": "vasticlaude.status",
    "logs": "vasticlaude.logs",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    if args[0] == "--version":
        from importlib.metadata import version
        print(version("vasticlaude"))
        return 0
    module_name = COMMANDS.get(args[0])
    if module_name is None:
        print(f"vasticlaude: unknown command {args[0]!r}. Run 'vasticlaude --help' for the list.", file=sys.stderr)
        return 2
    return importlib.import_module(module_name).main(args[1:])


if __name__ == "__main__":
    sys.exit(main())

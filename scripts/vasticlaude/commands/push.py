"""vasticlaude push: send the working directory to the experiment's instance, set it up, check the GPU.

Usage:
  vasticlaude push [PATH] [--experiment X | --instance ID] [--include-heavy] [--no-setup]
                   [--setup-timeout S] [--deadline S] [--sandbox] [--api-key KEY] [--json]

PATH (default: the project root) is mirrored into ~/vasticlaude/<experiment>/code/ on the
instance with rsync over SSH (`-az --delete`), so a second push sends only what changed.
Checkpoints and outputs live beside code/, never inside it: a push cannot delete them.

What is left out, with git's own rules wherever git is installed (`git ls-files`):
  - .gitignore at every level, .git/info/exclude and your global excludes; in a git repo,
    tracked files are sent even when a pattern matches them, exactly like git. Outside a
    repo the same rules are applied through a throwaway git index; without git, rsync's
    `:- .gitignore` dir-merge is used (no `!negation` there);
  - .vasticlaudeignore at every level (gitignore syntax) and the config's "ignore" patterns
    (gitignore syntax, relative to the repository root, or to PATH outside a repository);
  - unless --include-heavy: .git, .venv/, venv/, any top-level folder holding a virtualenv
    (pyvenv.cfg, e.g. env/), __pycache__/, .mypy_cache/, .pytest_cache/,
    .ipynb_checkpoints/, node_modules/, *.pyc, .DS_Store;
  - always: .vasticlaude/runs/ (what `vasticlaude pull` brought home).
Spaces and odd characters in names are fine; symlinks are sent as symlinks (never followed).
PATH must be inside the project once symlinks are resolved: `push /etc`, or a symlink to
a folder outside, is refused (exit 2) and nothing is sent.

Before sending, one SSH call sees whether the instance has rsync and reads its free disk
(`df -Pk $HOME`); a dry run measures what would be sent. A push that would
not fit with 10% headroom is refused and nothing is sent. Connection failures (rsync exit
10, 12, 30, 35, 255) are retried after 2, 4, 8 and 16 s, on the instance's other route
(direct or Vast's proxy) at once. An image without rsync gets the
same mirror through tar over ssh: changed files (size or mtime) sent, files gone from the
project deleted there, what the filters leave out kept. --deadline S (default: config
deadlines.push_s, none) is a wall for the whole push: every retry, SSH ConnectTimeout and
transfer is cut to the time left, so a dead instance makes push end (exit 3) within S plus
one SSH pause.

Then setup (skip with --no-setup) runs in code/, its output kept in run/setup.log: the
config's "setup" command; else `python3 -m pip install -r requirements.txt` when
requirements.txt exists; else `python3 -m pip install -e .` for a pyproject.toml/setup.py;
the config's "pip_args" (e.g. "--no-index --find-links wheels") are added to these pip
commands. Last, one SSH call compares `nvidia-smi` with the GPU that was rented; a
mismatch is a warning, not a failure. experiment.json gets a "push" entry and an event.

JSON data: {"experiment", "instance_id", "files", "bytes_total", "bytes_sent" (rsync's
  "Total bytes sent", or the tar stream's size), "seconds" (not with --json: experiment.json's "push"
  entry keeps it), "ignore_rules": "git"|"git-index"|"rsync",
  "setup": {"command", "exit_code", "seconds", "tail": [last 5 lines]} (absent when none ran),
  "gpu": {"name", "cuda", "matches", "count" and "memory_mb" (when it does not match)}, "warnings": [...] (absent when
  none), "exit_code" (with --json only when not 0: `ok` says it)}

A multi-node experiment (`up --nodes N`): pushed to every node at once; the JSON is the first
failing node's push (else node 0's) plus "nodes": [{"experiment", "instance_id", "files",
"bytes_sent", "exit_code"}].

Exit codes: 0 pushed (and set up) · 1 refused (does not fit), rsync or tar failed,
or setup failed (the JSON still says what was sent) · 2 usage, or PATH is
outside the project ·
3 SSH or Vast API trouble.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vasticlaude import console
from vasticlaude.core import retry
from vasticlaude.output import compact
from vasticlaude.errors import Error
from vasticlaude.core.fmt import human_bytes
from vasticlaude.errors import USAGE
from vasticlaude.ops import nodes
from vasticlaude.ops.binding import attach, find_record
from vasticlaude.ops.code import push
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude push", __doc__)
    p.add_argument("path", nargs="?", help="folder to push (default: the project root)")
    console.add_instance_flags(p)
    p.add_argument("--include-heavy", action="store_true", help="do not apply the default excludes (.git, .venv …)")
    p.add_argument("--no-setup", action="store_true", help="skip the setup command")
    p.add_argument("--setup-timeout", type=console.SECONDS, default=3600.0, metavar="S", help="seconds for setup (default 3600)")
    p.add_argument("--deadline", type=console.SECONDS, metavar="S", help="a wall for the whole push (default: none)")
    return p


def source_root(args: argparse.Namespace) -> Path:
    """PATH (symlinks resolved) when it is a folder inside the project; a usage Error otherwise.

    A PATH outside the project (`push /etc`, or a symlink `d -> /etc`) would mirror that folder
    onto the instance, and its `--delete` would wipe what code/ held."""
    project = config.project_root()
    if not args.path:
        return project
    root = Path(args.path).expanduser().resolve()
    if not root.is_dir():
        raise Error("bad_path", f"{args.path} is not a folder", "Give the folder to push.", USAGE)
    if root != project and project not in root.parents:
        raise Error("outside_project", f"{args.path} is {root}, outside the project {project}; nothing was sent",
                    "Push a folder inside the project (copy what it needs into it), or run from that folder's project.",
                    USAGE)
    return root


def human(data: object) -> str:
    assert isinstance(data, dict)
    if "nodes" in data:
        return "\n".join(f"pushed {n['files']} files ({human_bytes(n['bytes_sent'])} sent) to instance {n['instance_id']} "
                         f"for {n['experiment']}" + (f": setup FAILED (exit {n['exit_code']})" if n["exit_code"] else "")
                         for n in data["nodes"])
    lines = [f"pushed {data['files']} files ({human_bytes(data['bytes_total'])}, {human_bytes(data['bytes_sent'])} "
             f"sent) to instance {data['instance_id']} for {data['experiment']} in {data['seconds']:g} s"]
    setup = data["setup"]
    if setup:
        verdict = "ok" if setup["exit_code"] == 0 else f"FAILED (exit {setup['exit_code']})"
        lines.append(f"setup {verdict} in {setup['seconds']:g} s: {setup['command']}")
        lines += [f"  | {line}" for line in setup["tail"]]
    gpu = data["gpu"]
    if gpu["name"]:
        lines.append(f"gpu: {gpu['count']}x {gpu['name']} ({gpu['memory_mb']} MiB, CUDA {gpu['cuda']})"
                     + ("" if gpu["matches"] else " - NOT what was rented"))
    lines += [f"warning: {w}" for w in data["warnings"]]
    return "\n".join(lines)


def explain(data: dict, code: int) -> Error:
    setup = data.get("setup") or {}
    last = next((line for line in reversed(setup.get("tail") or []) if line.strip()), "no output")
    return Error("setup_failed", f"the code was sent, but setup `{setup.get('command')}` exited with "
                 f"{setup.get('exit_code')} (`{last[:160]}`; the whole output is in run/setup.log on the instance)",
                 f"Fix the setup (or the config's \"setup\"), then vasticlaude push --experiment {data['experiment']} again.",
                 code)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, explain=explain, json_view=json_view)


def json_view(data: dict) -> dict:
    """--json: the GPU's count and memory only when it is not the one rented (`matches` false); the
    exit code only when not 0 (`ok: true` says 0); not the seconds (experiment.json's push entry has them)."""
    gpu = data.get("gpu")
    if isinstance(gpu, dict) and gpu.get("matches"):
        data = {**data, "gpu": {k: v for k, v in gpu.items() if k not in ("count", "memory_mb")}}
    return compact({k: v for k, v in data.items() if k != "seconds" and not (k == "exit_code" and not v)})


def run(args: argparse.Namespace) -> dict:
    root = source_root(args)
    seconds = args.deadline or (config.load().get("deadlines") or {}).get("push_s")
    with retry.wall(float(seconds) if seconds else None):
        group = nodes.group_of(args.experiment)
        if group is not None:  # several nodes: the same code to each, all at once
            vast = console.connect(args)
            pushed = nodes.each(lambda name: push(attach(vast, find_record(name, None)), root, args.include_heavy,
                                                  not args.no_setup, args.setup_timeout), group["members"])
            failed = next((p for p in pushed if p["exit_code"]), None)
            return {**(failed or pushed[0]), "experiment": args.experiment, "nodes": [
                {k: p[k] for k in ("experiment", "instance_id", "files", "bytes_sent", "exit_code")} for p in pushed]}
        bound = console.bind(args)
        return push(bound, root, args.include_heavy, not args.no_setup, args.setup_timeout)

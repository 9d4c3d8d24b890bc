"""vasticlaude pull: bring an experiment's outputs, checkpoints and run files home, verified.

Usage:
  vasticlaude pull [--path REMOTE_REL]... [--dest DIR] [--experiment X | --instance ID] [--from-store]
                   [--sandbox] [--api-key KEY] [--json]

REMOTE_REL is relative to the experiment's folder on the instance (~/vasticlaude/<experiment>/):
the default is `outputs`, `checkpoints` and `run` (job.log, exit_code, setup.log …), or the
config's "pull" list; `--path code/results.csv` fetches something the job wrote beside the
code. They land under <project>/.vasticlaude/runs/<experiment>/ (or --dest) with the same
relative paths: outputs/…, checkpoints/…, run/…

The transfer is resumable (`rsync -az --partial --partial-dir=.rsync-partial`; on an image
without rsync, tar over ssh of the files whose size or mtime differ) and retried
after 2, 4, 8 and 16 s when the connection fails, so a dropped link costs only what was in
flight. Nothing local is ever deleted. Then one SSH call lists the remote files with their
sizes (GNU find, or a POSIX fallback) and each is compared with its local copy. A file the
job changed while it was being pulled (a growing job.log, a checkpoint being written) is
pulled once more; if it is still changing it is reported under "changing" (pull again
later), not as a failure. Any other difference fails the pull and names the files. Works
while the job runs (checkpoints come incrementally) and after it ended.

A verified pull leaves `<run>/pulled` on the instance holding the epoch time (the
on-instance watchdog reads it: results are safe at home), and records "pull" in
experiment.json plus an event. A --path (or config entry) that is not on the instance is
an error; missing default folders are skipped (e.g. no checkpoints yet).

JSON data: {"experiment", "instance_id", "local_path", "files", "bytes", "verified": true,
  "seconds", "paths": [pulled REMOTE_REL], "skipped": [missing defaults], "changing": [...],
  "bytes_received", "warnings": [when the pulled marker could not be left]}

With a results store (README "Results store"), the copy the instance shipped there is read
instead whenever the instance is gone (the watchdog destroyed it once the store held a verified
copy) or with --from-store: the manifest's files, each checked by size and sha256. JSON then
has "source": "store" and "stored_bytes".

Exit codes: 0 pulled and verified · 1 a path is missing, rsync failed, or sizes differ
(named) · 2 usage · 3 SSH or Vast API trouble.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vasticlaude import console
from vasticlaude.core.fmt import human_bytes
from vasticlaude.errors import Error
from vasticlaude.ops import binding
from vasticlaude.ops.results import pull, pull_from_store, stored


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude pull", __doc__)
    p.add_argument("--path", action="append", metavar="REMOTE_REL",
                   help="what to pull, relative to ~/vasticlaude/<experiment>/ (repeatable)")
    p.add_argument("--dest", metavar="DIR", help="where to (default <project>/.vasticlaude/runs/<experiment>/)")
    p.add_argument("--from-store", action="store_true",
                   help="read the results store's verified copy, not the instance (automatic once the instance is gone)")
    console.add_instance_flags(p)
    return p


def human(data: object) -> str:
    assert isinstance(data, dict)
    source = "the results store" if data.get("source") == "store" else f"instance {data['instance_id']}"
    lines = [f"pulled {data['files']} files ({human_bytes(data['bytes'])}, verified) of {data['experiment']} "
             f"from {source} into {data['local_path']} in {data['seconds']:g} s"]
    if data["skipped"]:
        lines.append(f"not there yet: {', '.join(data['skipped'])}")
    if data["changing"]:
        lines.append(f"still changing on the instance (pull again later): {', '.join(data['changing'][:10])}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human)


def run(args: argparse.Namespace) -> dict:
    dest = Path(args.dest) if args.dest else None
    if args.experiment and (args.from_store or (stored(args.experiment) and not _live(args))):
        return pull_from_store(args.experiment, dest, "" if args.from_store else "no live instance")
    bound = console.bind(args)
    if bound.row is None and stored(bound.experiment) and not args.path:
        return pull_from_store(bound.experiment, dest, f"instance {bound.instance_id} is gone", gone=bound.instance_id)
    return pull(bound, args.path, dest)


def _live(args: argparse.Namespace) -> bool:
    try:
        binding.find_record(args.experiment, args.instance)
    except Error:
        return False
    return True

"""vasticlaude report: one Markdown page, with charts, of what an experiment ran, did and cost.

Usage: vasticlaude report [--experiment X] [--out DIR] [--offline] [--json]

Writes `<project>/.vasticlaude/runs/<experiment>/report.md` (or `DIR/report.md` with --out),
rendered from templates/report.md.j2, beside two charts (PNG, drawn by matplotlib):
  cost.png      cumulative estimated cost of the experiment's instances over time
  metrics.png   the metrics the job log prints (loss, accuracy, …) over steps; left out when none
The page holds the command, the instances (id, GPU, $/h, location when known), a timeline
of the experiment's events, the cost (total, GPU vs storage, per instance, the budget when
experiment.json has one), the exit code and duration, where the results are (the pulled
copy and the paths on the instance), and the last 20 lines of the job log.

A run that recoveries moved from instance to instance is reported whole: the metrics of
every instance it used are joined by step (a dashed line where it resumed on the next),
and the duration runs from its first start to its last end. Each instance's job.log is
kept at home, in <project>/.vasticlaude/runs/<experiment>/logs/<instance id>/, whenever a
report sees it (pulled, or its tail over SSH); an instance whose log never came home is
named in the report with the steps that are missing.

Everything comes from local state (instances.json, experiments/<id>/, the project's
pulled run files), so a report works offline and after every instance is gone. Only
when no job.log of the current instance was pulled and it still runs are the log tail and
the run files (exit code, start, end) read over SSH, in one call, best effort within 20 s
(--offline never tries); a failure there only makes the log section say "not available".
Without --experiment, the most recently active one.

A sweep (`vasticlaude sweep`): report.md holds the comparison table (run, params, state, exit,
metric, seconds, $), names the best run (lowest of a loss/error-like metric, else highest), and
metric.png overlays the chosen metric over steps for every run (from each run's job.log at home).
Each run rewrites the report, so it is safe to run again at any time.

Several nodes (`up --nodes N`): `--experiment <group>` is one report of the whole group: every
node's instances (relaunched ones too) in the instance and cost tables and the total, the
group's and each node's events, its recoveries (each node's, and the group restart after it),
rank 0's exit code, log and metrics, each node's exit code, and where each node's results are.
`--experiment <group>-n<i>` reports that node alone. Without --experiment, a node that was the
most recently active reports its group.

JSON (data):
  {"experiment": str, "report": path of report.md, "charts": [paths of the PNGs written],
   "total_usd": float (estimated, as `vasticlaude cost`),
   "exit_code": int | null,   the job's exit status (several nodes: rank 0's); null while it runs or was never recorded
   "nodes"?: [{"experiment", "exit_code", "instances"}],  several nodes only: each node, rank order
   "failed_nodes"?: [str]}    the nodes whose job exited non-zero

Exit codes: 0 report written (whatever the job's own exit status) · 1 unknown experiment,
or no experiment at all · 2 usage.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vasticlaude import console
from vasticlaude.ops import sweeping, sweepreport
from vasticlaude.ops.reporting import report


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude report", __doc__)
    p.add_argument("--experiment", type=console.experiment, help="the experiment (default: the most recently active one)")
    p.add_argument("--out", help="folder for report.md and the charts (default: <project>/.vasticlaude/runs/<experiment>)")
    p.add_argument("--offline", action="store_true", help="never fetch the log tail over SSH")
    return p


def human(data: dict) -> str:
    code = data["exit_code"]
    lines = [f"report: {data['report']}", "charts: " + ", ".join(data["charts"])]
    if "counts" in data:  # a sweep
        best = data.get("best")
        lines.append(f"total ${data['total_usd']:.4f} · " + ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items()))
                     + (f" · best {best['id']}" if best else ""))
        return "\n".join(lines)
    text = f"total ${data['total_usd']:.4f} · job exit code {code if code is not None else 'unknown'}"
    if "nodes" in data:  # several nodes: rank 0's exit, and the nodes that failed
        text += f" (rank 0 of {len(data['nodes'])} nodes)"
        failed = [f"{n['experiment']} ({n['exit_code']})" for n in data["nodes"] if n["exit_code"] not in (None, 0)]
        text += f" · failed: {', '.join(failed)}" if failed else ""
    lines.append(text)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    # The job's exit status is data, not this command's: a report of a failed job succeeded.
    return console.main(argv, build_parser, run, human, exit_code=lambda _data: 0)


def run(args: argparse.Namespace) -> dict:
    if sweeping.is_sweep(args.experiment):
        return sweepreport.report(args.experiment, Path(args.out) if args.out else None)
    return report(args.experiment, Path(args.out) if args.out else None, args.offline)

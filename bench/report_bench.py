"""Benchmark: `vasticlaude report` wall time (matplotlib charts) and the commands that must stay fast.

Builds an experiment by hand (two instances, a recovery between them, 1,000 log lines
each) in a throwaway home and project, then times, as medians of --runs:
  - `vasticlaude report --offline` (the charts are drawn with matplotlib);
  - `vasticlaude cost --json` and `vasticlaude --help` (no API call: they must not pay for
    vastai or matplotlib).
No sandbox, no network.

Usage: .venv/bin/python bench/report_bench.py [--runs 7]
Output: JSON on stdout, also written to bench/results/report.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"


def write_experiment(home: Path, project: Path, lines: int = 1000) -> None:
    """Two instances of one run, the second resuming at the middle step."""
    now = time.time() - 3600
    records = {}
    for n, (iid, start, end) in enumerate([(101, now, now + 600), (102, now + 620, now + 1200)]):
        records[str(iid)] = {"id": iid, "experiment": "bench", "label": "vasticlaude-bench", "gpu_name": "RTX 4090",
                             "gpu_dph": 0.3, "storage_dph": 0.01, "status": "destroyed", "created_at": start,
                             "destroyed_at": end, "history": [{"at": start, "status": "running"},
                                                              {"at": end, "status": "destroyed"}]}
        log_dir = project / ".vasticlaude" / "runs" / "bench" / "logs" / str(iid)
        log_dir.mkdir(parents=True)
        first = 1 + n * lines // 2
        (log_dir / "job.log").write_text("".join(f"step {s}/{lines + lines // 2} loss={2 / s:.4f} acc={s / 2000:.3f}\n"
                                                 for s in range(first, first + lines)))
    (home / "instances.json").write_text(json.dumps({"version": 1, "instances": records, "intents": {}}))
    exp_dir = home / "experiments" / "bench"
    exp_dir.mkdir(parents=True)
    exp = {"version": 1, "id": "bench", "command": "python train.py",
           "runs": [{"at": now + 5, "instance_id": 101, "command": "python train.py"},
                    {"at": now + 625, "instance_id": 102, "command": "python train.py"}],
           "recoveries": [{"at": now + 610, "kind": "host_offline", "action": "relaunch", "from_instance": 101,
                           "to_instance": 102, "ok": True, "seconds": 12.0}]}
    (exp_dir / "experiment.json").write_text(json.dumps(exp))


def median_seconds(argv: list[str], env: dict, cwd: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="vc-report-bench-") as tmp:
        home, project = Path(tmp) / "home", Path(tmp) / "project"
        home.mkdir()
        (project / ".git").mkdir(parents=True)
        write_experiment(home, project)
        env = {**os.environ, "VASTICLAUDE_HOME": str(home), "HOME": str(tmp), "VASTAI_NO_UPDATE_CHECK": "1",
               "MPLCONFIGDIR": str(Path(tmp) / "mpl")}
        env.pop("VAST_API_KEY", None)
        cli = [str(PY), "-m", "vasticlaude"]
        subprocess.run([*cli, "report", "--offline", "--experiment", "bench"], env=env, cwd=project, check=True,
                       capture_output=True)  # matplotlib's font cache is built once per machine: not timed
        result = {
            "report_s": median_seconds([*cli, "report", "--offline", "--experiment", "bench", "--json"], env, project, runs),
            "cost_s": median_seconds([*cli, "cost", "--json"], env, project, runs),
            "help_s": median_seconds([*cli, "--help"], env, project, runs),
            "runs": runs, "log_lines": 2000,
        }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

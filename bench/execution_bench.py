"""Benchmark: experiment execution on the sandbox at time scale 0.

Reports (JSON on stdout; also bench/results/execution.json):
  - push start → the user's command running, for a 50 MB workdir without dependencies
    (goal ≤ 5 s), split into push and run;
  - bytes on the wire for the first and a repeated push (rsync's "Total bytes sent");
  - `status` wall time (goal ≤ 1.5 s including SSH) and bytes printed, human and --json (goal ≤ 1.5 KB);
  - time from the job's exit to `status` reporting it.

Usage: .venv/bin/python bench/execution_bench.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simkit import Sim, scratch  # noqa: E402

VC = str(Path(sys.executable).with_name("vasticlaude"))


class Bench:
    def __init__(self, sim: Sim, work: Path):
        self.sim, self.work = sim, work
        self.project = work / "project"
        self.env = sim.env(HOME=str(work / "home"), VASTICLAUDE_HOME=str(work / "vc"), VASTICLAUDE_POLL_SCALE="0.05")
        (work / "home").mkdir()

    def vc(self, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
        t0 = time.perf_counter()
        proc = subprocess.run([VC, *args], capture_output=True, text=True, env=self.env, cwd=cwd or self.project,
                              stdin=subprocess.DEVNULL, timeout=300)
        if proc.returncode not in (0,):
            raise RuntimeError(f"vasticlaude {' '.join(args)}: {proc.returncode} {proc.stderr[-400:]}")
        return proc, time.perf_counter() - t0

    def make_project(self) -> None:
        (self.project / ".vasticlaude").mkdir(parents=True)
        (self.project / "data").mkdir()
        for i in range(50):
            (self.project / "data" / f"shard{i:02d}.bin").write_bytes(os.urandom(1 << 20))
        (self.project / "train.py").write_text("import time\nfor s in range(1, 4):\n    print(f'step {s}/3 loss={1/s}', flush=True)\n    time.sleep(0.5)\n")

    def run(self, runs: int) -> dict:
        self.make_project()
        self.vc("up", "--experiment", "bench", "--image", "vastai/base:0.0.2", "--disk", "2")
        try:
            return self.measure(runs)
        finally:
            self.vc("down", "--all")

    def measure(self, runs: int) -> dict:
        t0 = time.perf_counter()
        first, push_s = self.vc("push", "--experiment", "bench", "--no-setup", "--json")
        _, run_s = self.vc("run", "--experiment", "bench", "--", "python3", "train.py")
        to_running = time.perf_counter() - t0
        again, _ = self.vc("push", "--experiment", "bench", "--no-setup", "--json")
        status = self.status_figures(runs)
        exit_seen = self.time_to_exit_seen()
        return {"push_to_running_s": round(to_running, 2), "push_s": round(push_s, 2), "run_s": round(run_s, 2),
                "first_push_bytes_sent": json.loads(first.stdout)["data"]["bytes_sent"],
                "repeat_push_bytes_sent": json.loads(again.stdout)["data"]["bytes_sent"],
                "workdir_bytes": json.loads(first.stdout)["data"]["bytes_total"], **status, **exit_seen}

    def status_figures(self, runs: int) -> dict:
        walls, human, as_json = [], 0, 0
        for _ in range(runs):
            proc, wall = self.vc("status", "--experiment", "bench")
            walls.append(wall)
            human = max(human, len(proc.stdout.encode()))
        proc, _ = self.vc("status", "--experiment", "bench", "--json")
        as_json = len(proc.stdout.encode())
        return {"status_wall_s_median": round(statistics.median(walls), 3), "status_wall_s_max": round(max(walls), 3),
                "status_bytes_human": human, "status_bytes_json": as_json}

    def time_to_exit_seen(self) -> dict:
        """Start a 1 s job, then poll status as fast as it answers; exit → seen."""
        self.vc("run", "--experiment", "bench", "--restart", "--", "sleep 1")
        while True:
            proc, _ = self.vc("status", "--experiment", "bench", "--json")
            data = json.loads(proc.stdout)["data"]
            if data["job"]["state"] == "exited":
                ended = self.ended_at()
                return {"exit_to_status_s": round(time.time() - ended, 2)}

    def ended_at(self) -> float:
        row = self.sim.instance(self.sim.sdk().show_instances()[0]["id"])
        self.sim.ensure_ssh_key()
        return float(self.sim.ssh(row, "cat vasticlaude/bench/run/ended_at").stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with scratch("execbench-", "--time-scale", "0") as (sim, tmp):
        report = Bench(sim, tmp).run(args.runs)
    out = json.dumps(report, indent=1)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "execution.json").write_text(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

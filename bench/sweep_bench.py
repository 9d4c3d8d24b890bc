"""Benchmark: a sweep on K instances against the same runs one after another, on the sandbox.

Reports (JSON on stdout; also bench/results/sweep.json):
  - the run phase (first run's start to last run's end, so boots are excluded) of N equal runs
    with --parallel K and with --parallel 1, and the speed-up (goal >= 0.9 x K);
  - per new instance: rental to its first run running (boot, SSH, push): what every run would pay
    again without reuse;
  - per reused instance: one run's end to the next run's start on it (archive, pull, start): the
    handover; boot time saved per reused run = the first minus the second.
Times come from the run files the wrapper wrote on the instances (pulled home), and the rental
time from instances.json.
With --store: the same runs with --parallel 1, without and with the sandbox's results store (every
run shipped to <prefix>/<sweep>/<run>/ before the controller moves it): the handover each way and
what the store adds to it (into bench/results/sweep-store.json).

Usage: .venv/bin/python bench/sweep_bench.py [--runs 8] [--parallel 4] [--seconds 6] [--time-scale 0.1] [--store]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simkit import Sim, scratch  # noqa: E402

VC = str(Path(sys.executable).with_name("vasticlaude"))
JOB = "import sys, time\nfor s in range(1, 11):\n    time.sleep({pause})\n    print(f'step {{s}}/10 loss={{1 / s}}', flush=True)\n"


class Bench:
    def __init__(self, sim: Sim, work: Path, args: argparse.Namespace):
        self.sim, self.work, self.args = sim, work, args
        self.project = work / "project"
        self.vchome = work / "vc"
        self.env = sim.env(HOME=str(work / "home"), VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05")
        (work / "home").mkdir()
        (self.project / ".vasticlaude").mkdir(parents=True)
        (self.project / "train.py").write_text(JOB.format(pause=args.seconds / 10))

    def sweep(self, name: str, parallel: int) -> dict:
        seeds = ",".join(str(i) for i in range(1, self.args.runs + 1))
        t0 = time.perf_counter()
        proc = subprocess.run([VC, "sweep", "--json", "--experiment", name, "--parallel", str(parallel),
                               "--budget-usd", "50", "--param", f"seed={seeds}", "--image", "vastai/base:0.0.2",
                               "--disk", "8", "--hours", "0.1", "--interval", "0.2", "--check", "1", "--no-setup",
                               "--", "python3", "train.py", "{seed}"], capture_output=True, text=True, env=self.env,
                              cwd=self.project, stdin=subprocess.DEVNULL, timeout=1800)
        wall = time.perf_counter() - t0
        data = json.loads(proc.stdout)["data"]
        if proc.returncode != 0:
            raise RuntimeError(f"sweep {name}: {proc.returncode} {proc.stderr[-600:]}")
        return {"wall_s": round(wall, 2), **self.phases(name, data)}

    def stamp(self, name: str, rid: str, what: str) -> float:
        return float((self.project / ".vasticlaude" / "runs" / name / "runs" / rid / "run" / what).read_text())

    def phases(self, name: str, data: dict) -> dict:
        sw = json.loads((self.vchome / "experiments" / name / "experiment.json").read_text())["sweep"]
        recs = json.loads((self.vchome / "instances.json").read_text())["instances"]
        runs = [(r["slot"], self.stamp(name, r["id"], "started_at"), self.stamp(name, r["id"], "ended_at"))
                for r in sw["runs"]]
        first_start, boots, handovers = {}, [], []
        for slot in {s for s, _, _ in runs}:
            mine = sorted((a, b) for s, a, b in runs if s == slot)
            created = min(float(r["created_at"]) for r in recs.values() if r.get("experiment") == slot)
            first_start[slot] = mine[0][0]
            boots.append(mine[0][0] - created)
            handovers += [nxt[0] - prev[1] for prev, nxt in zip(mine, mine[1:])]
        return {"run_phase_s": round(max(b for _, _, b in runs) - min(a for _, a, _ in runs), 2),
                "rentals": data["rentals"], "new_instance_to_first_run_s": round(statistics.median(boots), 2),
                "handover_s": round(statistics.median(handovers), 2) if handovers else None,
                "spent_usd": data["spent_usd"]}

    def store(self, on: bool) -> None:
        cfg = self.project / ".vasticlaude" / "config.json"
        if not on:
            cfg.unlink(missing_ok=True)
            return
        info = json.loads((self.sim.state / "sim.json").read_text())["store"]
        cfg.write_text(json.dumps({"store": {"url": f"s3://{info['bucket']}/bench", "endpoint_url": info["endpoint_url"]}}))
        (self.project / ".vasticlaude" / ".env").write_text(
            f"VASTICLAUDE_STORE_ACCESS_KEY_ID={info['access_key_id']}\n"
            f"VASTICLAUDE_STORE_SECRET_ACCESS_KEY={info['secret_access_key']}\n")

    def with_store(self) -> dict:
        self.store(False)
        plain = self.sweep("bench-plain", 1)
        self.store(True)
        stored = self.sweep("bench-store", 1)
        return {"runs": self.args.runs, "run_seconds": self.args.seconds, "time_scale": self.args.time_scale,
                "without_store": plain, "with_store": stored, "rentals_with_store": stored["rentals"],
                "handover_added_s": round((stored["handover_s"] or 0) - (plain["handover_s"] or 0), 2),
                "wall_ratio": round(stored["wall_s"] / plain["wall_s"], 2)}

    def run(self) -> dict:
        k = self.args.parallel
        parallel = self.sweep("bench-k", k)
        serial = self.sweep("bench-1", 1)
        speedup = serial["run_phase_s"] / parallel["run_phase_s"]
        saved = statistics.median([parallel["new_instance_to_first_run_s"], serial["new_instance_to_first_run_s"]]) \
            - (serial["handover_s"] or 0)
        return {"runs": self.args.runs, "parallel": k, "run_seconds": self.args.seconds,
                "time_scale": self.args.time_scale, f"parallel_{k}": parallel, "parallel_1": serial,
                "speedup": round(speedup, 2), "goal_speedup": round(0.9 * k, 2), "meets_goal": speedup >= 0.9 * k,
                "boot_saved_per_reused_run_s": round(saved, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each run")
    parser.add_argument("--time-scale", default="0.1", help="the sandbox's (Vast-like boots at 0.1)")
    parser.add_argument("--store", action="store_true", help="compare --parallel 1 without and with a results store")
    args = parser.parse_args()
    with scratch("sweepbench-", "--time-scale", args.time_scale) as (sim, tmp):
        bench = Bench(sim, tmp, args)
        report = bench.with_store() if args.store else bench.run()
    out = json.dumps(report, indent=1)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / ("sweep-store.json" if args.store else "sweep.json")).write_text(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

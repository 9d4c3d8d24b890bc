"""Benchmark: how long an instance bills after its job ends, with and without someone watching.

The costliest failure is an instance nobody watches (landscape.md §1). This measures the GPU
seconds billed between the job's exit and the moment GPU billing stops, on a sandbox at time
scale 0 (its own, with a throwaway HOME and VASTICLAUDE_HOME):
  - watchdog only: `vasticlaude run --grace G` and then nothing at all on the laptop side; the
    on-instance watchdog stops the instance after the grace (nothing was pulled);
  - "Claude watching": `status --wait --interval I`, then `pull`, then `down`, as the plugin's
    loop does (the watchdog runs too, as it does by default: the pull marker lets it destroy).
The job's exit time is written by the job itself (the sandbox's instances are local processes,
so it can write to this bench's folder); the stop time is the sandbox's own record of the
state change (`phase_since` of the stop, or `destroyed_at`) in world.json, where billing
per second is kept. Each figure is also given minus the configured grace.

The grace is kept well above the status interval, as with the defaults (600 s and 30 s).

Usage: .venv/bin/python bench/guard_bench.py [--runs 3] [--grace 20] [--interval 5]
Output: JSON on stdout, also written to bench/results/guard.json.
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

VC = str(Path(sys.executable).parent / "vasticlaude")
IMAGE = "vastai/base:0.0.2"


class Bench:
    """One sandbox, one throwaway home, and the vasticlaude commands run against it."""

    def __init__(self, sim: Sim, work: Path, grace: float, interval: float):
        self.sim, self.work, self.grace, self.interval = sim, work, grace, interval
        self.project = work / "project"
        self.project.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "XDG_", "CLAUDE_SESSION"))}
        self.env.update(HOME=str(sim.home), VAST_URL=sim.url, VAST_API_KEY=sim.api_key, VASTAI_NO_UPDATE_CHECK="1",
                        VASTICLAUDE_POLL_SCALE="0.05", VASTICLAUDE_HOME=str(work / "vchome"))

    def vc(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([VC, *args], capture_output=True, text=True, env=self.env, cwd=self.project,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def vc_json(self, *args: str) -> dict:
        proc = self.vc(*args, "--json")
        if proc.returncode:
            raise SystemExit(f"vasticlaude {' '.join(args)} failed: {proc.stderr.strip()[-300:]}")
        return json.loads(proc.stdout)["data"]

    def start(self, experiment: str, ended: Path) -> int:
        """Rent, then run a 2 s job that writes its own exit time; returns the instance id."""
        iid = self.vc_json("up", "--experiment", experiment, "--image", IMAGE, "--disk", "8")["instance_id"]
        job = f"sleep 2; echo done > $VASTICLAUDE_OUTPUT_DIR/out.txt; python3 -c 'import time; print(time.time())' > {ended}"
        proc = self.vc("run", "--experiment", experiment, "--workdir", ".", "--grace", f"{self.grace:g}",
                       "--", "sh", "-c", job)
        if proc.returncode:
            raise SystemExit(f"vasticlaude run failed: {proc.stderr.strip()[-300:]}")
        return iid

    def billing_stopped(self, iid: int, timeout: float = 300) -> float:
        """When the sandbox stopped billing the GPU: the stop, or the destroy, of the instance."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = json.loads((self.sim.state / "world.json").read_text())["instances"][str(iid)]
            if rec.get("destroyed_at"):
                return rec["destroyed_at"] if rec["actual_status"] != "stopped" else rec["phase_since"]
            if rec["actual_status"] in ("stopped", "exited"):
                return rec["phase_since"]
            time.sleep(0.1)
        raise SystemExit(f"instance {iid} still bills after {timeout} s")

    def unwatched(self, n: int) -> float:
        ended = self.work / f"ended-alone-{n}"
        iid = self.start(f"alone{n}", ended)
        stop = self.billing_stopped(iid)
        self.vc("down", str(iid))
        return stop - float(ended.read_text())

    def watched(self, n: int) -> float:
        ended, exp = self.work / f"ended-claude-{n}", f"claude{n}"
        iid = self.start(exp, ended)
        self.vc("status", "--experiment", exp, "--wait", "--interval", f"{self.interval:g}")
        self.vc("pull", "--experiment", exp)
        self.vc("down", "--experiment", exp)
        return self.billing_stopped(iid) - float(ended.read_text())


def summary(values: list[float], grace: float) -> dict:
    med = statistics.median(values)
    return {"billed_after_exit_s": [round(v, 2) for v in values], "median_s": round(med, 2),
            "median_minus_grace_s": round(med - grace, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--grace", type=float, default=20.0, help="the watchdog's grace (s)")
    ap.add_argument("--interval", type=float, default=5.0, help="status --wait --interval (s)")
    args = ap.parse_args()
    with scratch("vc-guard-bench-", "--time-scale", "0", "--seed", "13", "--balance", "10000") as (sim, tmp):
        bench = Bench(sim, tmp, args.grace, args.interval)
        alone = [bench.unwatched(n) for n in range(args.runs)]
        claude = [bench.watched(n) for n in range(args.runs)]
    result = {"runs": args.runs, "grace_s": args.grace, "check_s": 15, "status_interval_s": args.interval,
              "watchdog_only": summary(alone, args.grace), "claude_watching": summary(claude, args.grace),
              "note": "GPU seconds billed after the job's exit; watchdog_only stops the instance after the grace "
                      "(nothing pulled), claude_watching is status --wait, pull, down (the pull marker also lets "
                      "the watchdog destroy at once)"}
    out = ROOT / "bench" / "results" / "guard.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

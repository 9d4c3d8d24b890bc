"""Benchmark: the launch overhead of several nodes over one, on the sandbox.

Per run, the flow Claude runs, timed per command (wall seconds of each `vasticlaude` call):
  - one node:  `up` → `push --no-setup` → `run` (a job that sleeps a second) → `down`;
  - N nodes:   `up --nodes N` (a cluster picked, an overlay made, N rentals joined to it) →
               `push --no-setup` (to every node) → `run` (each node's overlay address read, the
               rendezvous env set, the job started on every node) → `down` (every node and the overlay).
The job is tests/test_multinode.py's rendezvous (rank 0 listens at MASTER_ADDR:MASTER_PORT, the
others connect from their overlay addresses); `run` returns once every node's job has started.

Reports medians (JSON on stdout; also bench/results/multinode.json): per phase the seconds for one
node and for N, and the ratio N/1; the launch (up + push + run) ratio, and the same per node
(ratio / N: 1.0 would mean N nodes cost exactly N single launches). The sandbox runs at
--time-scale (default 0: no simulated boot or image pull), so the figures are vasticlaude's own
work (API calls, SSH round trips), which is what multi-node adds; Vast's boot time comes on top
of both, and nodes boot one after another (`up` waits for each before renting the next).
Every sandbox the bench starts is stopped in `finally`.

Usage: .venv/bin/python bench/multinode_bench.py [--runs 3] [--nodes 3] [--time-scale 0]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simkit import scratch  # noqa: E402
from test_multinode import MARKET, RENDEZVOUS  # noqa: E402

VC = str(Path(sys.executable).with_name("vasticlaude"))
IMAGE = "vastai/base:0.0.2"
PHASES = ("up", "push", "run", "down")
SINGLE_JOB = "import time; time.sleep(1)\n"


class Bench:
    def __init__(self, sim, work: Path):
        self.project = work / "project"
        (work / "home").mkdir()
        (self.project / ".vasticlaude").mkdir(parents=True)
        (self.project / "rendezvous.py").write_text(RENDEZVOUS)
        (self.project / "single.py").write_text(SINGLE_JOB)
        (self.project / ".vasticlaude" / "config.json").write_text(json.dumps({"guard": {"grace_s": 600}}))
        self.env = sim.env(HOME=str(work / "home"), VASTICLAUDE_HOME=str(work / "vchome"),
                           VASTICLAUDE_POLL_SCALE="0.05")

    def vc(self, *args: str) -> float:
        start = time.monotonic()
        proc = subprocess.run([VC, *args], capture_output=True, text=True, env=self.env, cwd=self.project,
                              timeout=600, stdin=subprocess.DEVNULL)
        if proc.returncode:
            raise RuntimeError(f"vasticlaude {' '.join(args)} failed (rc={proc.returncode}): {proc.stderr.strip()[-400:]}")
        return round(time.monotonic() - start, 3)

    def flow(self, exp: str, nodes: int) -> dict:
        common = ("--image", IMAGE, "--disk", "8", "--hours", "1", "--any-verified")
        if nodes > 1:
            up = self.vc("up", "--experiment", exp, *common, "--nodes", str(nodes), "--master-port", str(_free_port()))
            job = ("python3", "rendezvous.py", "3", "0.2")
        else:
            up = self.vc("up", "--experiment", exp, *common)
            job = ("python3", "single.py")
        return {"up": up, "push": self.vc("push", "--experiment", exp, "--no-setup"),
                "run": self.vc("run", "--experiment", exp, "--", *job),
                "down": self.vc("down", "--experiment", exp)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(samples: list[dict], key: str) -> float:
    return round(statistics.median(s[key] for s in samples), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=0.0)
    args = ap.parse_args()
    started = time.monotonic()
    market = Path(tempfile.mkdtemp(prefix="vc-multinode-market-")) / "market.json"
    market.write_text(json.dumps(MARKET))  # tests/test_multinode.py's: a cluster of five RTX 4090 machines
    with scratch("vc-multinode-bench-", "--time-scale", f"{args.time_scale:g}", "--market", str(market),
                 "--balance", "10000") as (sim, tmp):
        try:
            bench = Bench(sim, tmp)
            single = [bench.flow(f"one{n}", 1) for n in range(args.runs)]
            multi = [bench.flow(f"many{n}", args.nodes) for n in range(args.runs)]
        finally:
            sim.reset()
            shutil.rmtree(market.parent, ignore_errors=True)
    for samples in (single, multi):
        for s in samples:
            s["launch"] = round(s["up"] + s["push"] + s["run"], 3)
    phases = {}
    for key in (*PHASES, "launch"):
        one, many = median(single, key), median(multi, key)
        phases[key] = {"one_s": one, f"{args.nodes}_nodes_s": many, "ratio": round(many / one, 2) if one else None}
    report = {"nodes": args.nodes, "runs": args.runs, "time_scale": args.time_scale, "phases": phases,
              "launch_ratio": phases["launch"]["ratio"],
              "launch_ratio_per_node": round(phases["launch"]["ratio"] / args.nodes, 2),
              "samples": {"one": single, "many": multi}, "wall_s": round(time.monotonic() - started, 1)}
    out = json.dumps(report, indent=1)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "multinode.json").write_text(out + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

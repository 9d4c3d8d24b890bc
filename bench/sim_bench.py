"""Benchmark: is the sandbox ever the bottleneck of a measurement?

Reports (JSON on stdout, a short table on stderr):
  - p50/p95 of API calls through the official SDK (search, list, show one, user);
  - instance creation to SSH-ready at time scale 0 (the sandbox's own overhead);
  - 50 concurrent instances, each running a detached process: time to bring them all
    up, API latency while they run, and the sandbox's CPU and memory.

Usage: .venv/bin/python bench/sim_bench.py [--instances 50] [--calls 200]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import psutil  # noqa: E402
from simkit import Sim, scratch  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(fn, n: int) -> dict:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(pct(samples, 0.95), 2), "n": n}


def api_latency(sim: Sim, calls: int) -> dict:
    sdk = sim.sdk()
    iid = sdk.create_instance(id=sdk.search_offers(query="num_gpus=1", limit=1)[0]["id"], image="x", disk=4)["new_contract"]
    out = {"search_offers": timed(lambda: sdk.search_offers(query="num_gpus=1 gpu_ram>=16", order="dph", limit=10), calls),
           "show_instances": timed(sdk.show_instances, calls),
           "show_instance": timed(lambda: sdk.show_instance(id=iid), calls),
           "show_user": timed(sdk.show_user, calls)}
    sdk.destroy_instance(id=iid)
    return out


def create_to_ssh_ready(sim: Sim, runs: int) -> dict:
    sdk, samples = sim.sdk(), []
    sim.ensure_ssh_key()
    for _ in range(runs):
        offer = sdk.search_offers(query="num_gpus=1", order="dph", limit=1)[0]
        t0 = time.perf_counter()
        iid = sdk.create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4, ssh=True, direct=True)["new_contract"]
        wait_ssh(sim, iid)
        samples.append((time.perf_counter() - t0) * 1000)
        sdk.destroy_instance(id=iid)
    return {"p50_ms": round(statistics.median(samples), 1), "p95_ms": round(pct(samples, 0.95), 1), "n": runs}


def wait_ssh(sim: Sim, iid: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = sim.instance(iid)
        if row and row["actual_status"] == "running" and sim.ssh(row, "true", timeout=20).returncode == 0:
            return row
        time.sleep(0.02)
    raise RuntimeError(f"instance {iid} never answered ssh")


def many_instances(sim: Sim, count: int, calls: int) -> dict:
    sdk = sim.sdk()
    offers = sdk.search_offers(query="rentable=true verified=any", order="dph", limit=count)
    t0 = time.perf_counter()
    ids = [sdk.create_instance(id=o["id"], image="vastai/base:0.0.2", disk=4, ssh=True, direct=True)["new_contract"]
           for o in offers[:count]]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda i: wait_ssh(sim, i), ids))
        started = list(pool.map(lambda r: sim.ssh(r, "setsid nohup sh -c 'while :; do sleep 1; done' "
                                                   ">/dev/null 2>&1 </dev/null & echo ok").stdout.strip(), rows))
    up_s = time.perf_counter() - t0
    proc = psutil.Process(sim.pid)
    proc.cpu_percent(None)
    time.sleep(5.0)
    idle_cpu = proc.cpu_percent(None)  # what running 50 instances costs with nobody calling
    latency = timed(sdk.show_instances, max(10, calls // 10))
    result = {"instances": len(ids), "processes_started": started.count("ok"), "all_up_s": round(up_s, 2),
              "show_instances_50_rows": latency, "sandbox_cpu_percent_idle": round(idle_cpu, 1),
              "sandbox_rss_mb": round(proc.memory_info().rss / 2**20, 1)}
    for iid in ids:
        sdk.destroy_instance(id=iid)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--ready-runs", type=int, default=10)
    args = parser.parse_args()
    with scratch("simbench-", "--time-scale", "0", "--machines", str(args.instances * 2)) as (sim, _):
        report = {"api": api_latency(sim, args.calls),
                  "create_to_ssh_ready": create_to_ssh_ready(sim, args.ready_runs),
                  "concurrent": many_instances(sim, args.instances, args.calls),
                  "cores": psutil.cpu_count()}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

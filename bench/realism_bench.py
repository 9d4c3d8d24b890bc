"""Benchmark: the whole flow under the sandbox's realism profile against the clean sandbox, and
the seconds from a dead direct SSH route to working over Vast's proxy.

1. flow (--runs per mode, the modes interleaved): a fresh sandbox per run (`--time-scale T --seed S+i`; with
   `--realism` for the realism mode: every behaviour of README "Realism" at its Vast-like rate),
   then the commands Claude runs, as subprocesses: `up` (vastai/base, 8 GB), `push --no-setup`,
   `run` (a job of STEPS × STEP_S s that checkpoints every step), `watch --interval 0.5` (which
   pulls and destroys when the job ends). Per run:
     total_s      wall time of the four commands;
     boot_s       `up`'s own `waited_s` (created → SSH answers, on the attempt that worked);
     flow_s       total_s - boot_s: the flow with the boot excluded (goal: realism ≤ 1.3 × clean);
     after_up_s   push + run + watch alone.
   A run that does not end `finished` with the results home is kept with its error and counted
   in "failures"; medians are over the runs that finished.
2. fallback (--fallback-runs per mode): one instance on a clean sandbox, its direct route proven
   (one `true` over ssh, the route `vasticlaude` builds, direct first, the proxy as fallback), then
   the direct route killed (`direct-ssh-dead --instance I --mode M`, M = refuse or blackhole) and
   the next `true` timed in-process through remote/ssh.py: first_call_s, against the ConnectTimeout
   (10 s; goal ≤ one timeout). baseline_s is the same call with both routes alive.

JSON on stdout and in bench/results/realism.json. Every sandbox and process it starts is stopped
in `finally` (scratch() stops the sandbox with its instances' processes).

Usage: .venv/bin/python bench/realism_bench.py [--runs 3] [--time-scale 0.02] [--seed 21] [--fallback-runs 3]
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
sys.path.insert(0, str(ROOT / "scripts"))

from simkit import Sim, scratch  # noqa: E402

VC = str(Path(sys.executable).with_name("vasticlaude"))
IMAGE = "vastai/base:0.0.2"
STEPS, STEP_S = 30, 0.1
GOAL_RATIO = 1.3
TRAIN = r'''
import json, os, sys, time
ckpt = os.path.join(os.environ["VASTICLAUDE_CHECKPOINT_DIR"], "state.json")
total, period = int(sys.argv[1]), float(sys.argv[2])
start = json.load(open(ckpt))["step"] if os.environ["VASTICLAUDE_RESUME"] == "1" else 0
for step in range(start + 1, total + 1):
    time.sleep(period)
    print(f"step {step}/{total}", flush=True)
    json.dump({"step": step}, open(ckpt + ".tmp", "w")); os.replace(ckpt + ".tmp", ckpt)
open(os.path.join(os.environ["VASTICLAUDE_OUTPUT_DIR"], "result.txt"), "w").write(f"done {total}\n")
'''


class User:
    """A throwaway HOME, vasticlaude home and project on one sandbox."""

    def __init__(self, sim: Sim, work: Path):
        self.project = work / "project"
        (work / "home").mkdir()
        (self.project / ".vasticlaude").mkdir(parents=True)
        (self.project / "train.py").write_text(TRAIN)
        (self.project / ".vasticlaude" / "config.json").write_text(json.dumps(
            {"recovery": {"sync_interval_s": 2, "preempt_wait_s": 60}}))
        self.env = sim.env(HOME=str(work / "home"), VASTICLAUDE_HOME=str(work / "vchome"),
                           VASTICLAUDE_POLL_SCALE="0.05")

    def vc(self, *args: str, timeout: float = 600) -> dict:
        cut = args.index("--") if "--" in args else len(args)
        proc = subprocess.run([VC, *args[:cut], "--json", *args[cut:]], capture_output=True, text=True,
                              env=self.env, cwd=self.project, timeout=timeout, stdin=subprocess.DEVNULL)
        data = json.loads(proc.stdout)["data"] if proc.stdout.strip() else None
        if proc.returncode or data is None:
            raise RuntimeError(f"{args[0]} exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return data


def one_flow(realism: bool, time_scale: float, seed: int, run: int) -> dict:
    flags = ["--time-scale", str(time_scale), "--seed", str(seed), *(["--realism"] if realism else [])]
    with scratch("vc-realism-bench-", *flags) as (sim, work):
        user = User(sim, work)
        sample: dict = {"run": run, "seed": seed}
        start = time.monotonic()
        try:
            up = user.vc("up", "--experiment", f"r{run}", "--image", IMAGE, "--disk", "8", "--hours", "1",
                         "--deadline", "600")
            sample.update(boot_s=up["waited_s"], route=up["ssh"].get("route"), attempts=len(up.get("attempts") or [0]))
            up_end = time.monotonic()
            sample["up_s"] = round(up_end - start, 2)
            user.vc("push", "--experiment", f"r{run}", "--no-setup")
            sample["push_s"] = round(time.monotonic() - up_end, 2)
            mark = time.monotonic()
            user.vc("run", "--experiment", f"r{run}", "--", "python3", "train.py", str(STEPS), str(STEP_S))
            sample["run_s"], mark = round(time.monotonic() - mark, 2), time.monotonic()
            done = user.vc("watch", "--experiment", f"r{run}", "--interval", "0.5")
            sample["watch_s"] = round(time.monotonic() - mark, 2)
            result = user.project / ".vasticlaude" / "runs" / f"r{run}" / "outputs" / "result.txt"
            if done["outcome"] != "finished" or not result.is_file():
                raise RuntimeError(f"watch ended {done['outcome']}: {done.get('message', '')[:200]}")
            total = time.monotonic() - start
            sample.update(total_s=round(total, 2), flow_s=round(total - sample["boot_s"], 2),
                          after_up_s=round(time.monotonic() - up_end, 2), recoveries=len(done.get("recoveries") or []))
        except Exception as err:  # noqa: BLE001 — a failed run is a sample too
            sample["error"] = str(err)[:400]
        return sample


def fallback(mode: str, seed: int) -> dict:
    """Seconds of the first ssh call after the direct route dies (in-process, through remote/ssh.py)."""
    with scratch("vc-fallback-bench-", "--time-scale", "0", "--seed", str(seed)) as (sim, work):
        user = User(sim, work)
        up = user.vc("up", "--experiment", "fb", "--image", IMAGE, "--disk", "8", "--hours", "1")
        iid = int(up["instance_id"])
        os.environ.update(HOME=user.env["HOME"], VASTICLAUDE_HOME=user.env["VASTICLAUDE_HOME"])
        from vasticlaude.remote import ssh
        from vasticlaude.vast import rows
        route = ssh.route_for(rows.instance(sim.sdk().show_instance(id=iid)), ssh.ssh_key().private, prefer="direct")
        t0 = time.monotonic()
        ssh.run(route, "true", timeout=60)
        baseline = time.monotonic() - t0
        sim.fault("direct-ssh-dead", instance=iid, mode=mode)
        t0 = time.monotonic()
        proc = ssh.run(route, "true", timeout=60)
        first = time.monotonic() - t0
        return {"mode": mode, "baseline_s": round(baseline, 3), "first_call_s": round(first, 3),
                "ok": proc.returncode == 0, "connect_timeout_s": 10}


def median(samples: list[dict], key: str) -> float | None:
    values = [s[key] for s in samples if key in s and "error" not in s]
    return round(statistics.median(values), 2) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=0.02, help="the sandbox's --time-scale (boots, realism)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--fallback-runs", type=int, default=3)
    ap.add_argument("--modes", default="clean,realism", help="which flows to run (both for the ratio)")
    args = ap.parse_args()
    report: dict = {"time_scale": args.time_scale, "steps": STEPS, "step_s": STEP_S, "flow": {}, "fallback": {}}
    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for i in range(args.runs):  # interleaved, so a change in the machine's load falls on both modes alike
        for mode in modes:
            runs[mode].append(one_flow(mode == "realism", args.time_scale, args.seed + i, i))
            print(f"{mode} run {i}: {json.dumps(runs[mode][-1])}", file=sys.stderr, flush=True)
    for mode, samples in runs.items():
        report["flow"][mode] = {"samples": samples, "failures": sum("error" in s for s in samples),
                                **{f"median_{k}": median(samples, k) for k in
                                   ("flow_s", "total_s", "boot_s", "after_up_s", "up_s", "push_s", "run_s", "watch_s")}}
    clean = report["flow"].get("clean", {}).get("median_flow_s")
    real = report["flow"].get("realism", {}).get("median_flow_s")
    report["flow"]["ratio"] = round(real / clean, 3) if clean and real else None
    report["flow"]["goal_ratio"] = GOAL_RATIO
    for mode in ("refuse", "blackhole"):
        samples = [fallback(mode, args.seed + i) for i in range(args.fallback_runs)]
        report["fallback"][mode] = {"samples": samples, "median_first_call_s": median(samples, "first_call_s"),
                                    "median_baseline_s": median(samples, "baseline_s"), "goal_s": 10}
    out = json.dumps(report, indent=1)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "realism.json").write_text(out + "\n")
    print(out)
    failed = sum(m["failures"] for m in report["flow"].values() if isinstance(m, dict))
    return 1 if failed or not all(s["ok"] for m in report["fallback"].values() for s in m["samples"]) else 0


if __name__ == "__main__":
    sys.exit(main())

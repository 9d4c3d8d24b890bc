"""Benchmark: the results store (README "Results store") against the laptop-only way.

On a sandbox at time scale 0 with its S3 server (moto), a throwaway HOME and VASTICLAUDE_HOME:
  - billed after exit: GPU seconds billed between the job's exit and the end of GPU billing with
    nobody watching. With a store the watchdog ships outputs (10 MB) and destroys at once; without
    one it waits the grace (600 s by default) and then stops (storage bills until someone returns):
    that side is the configured grace, not measured here (bench/guard_bench.py measures it);
  - upload overhead: the wall time of a job that computes for a fixed amount of work and writes a
    checkpoint (CKPT MB) after each step, with the store syncing every second against no store;
  - relaunch: `recover` after `host-down` (the same job, a CKPT MB checkpoint), the new instance
    fetching the checkpoint from the store against the laptop sending its synced copy (`pull
    --path checkpoints` first). `recover`'s own `seconds` (destroy, rent, push, checkpoint, restart).

Usage: .venv/bin/python bench/store_bench.py [--runs 3] [--ckpt-mb 50]
Output: JSON on stdout, also written to bench/results/store.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from guard_bench import IMAGE, Bench  # noqa: E402
from simkit import scratch  # noqa: E402

WORK = r'''
import hashlib, json, os, sys, time
ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
steps, mb = int(sys.argv[1]), int(sys.argv[2])
path = os.path.join(ckpt_dir, "state.bin")
start = 0
if os.environ["VASTICLAUDE_RESUME"] == "1":
    start = json.load(open(os.path.join(ckpt_dir, "step.json")))["step"]
print(f"resumed from step {start}" if start else "fresh start", flush=True)
t0 = time.time()
for step in range(start + 1, steps + 1):
    digest = b"x"
    for _ in range(300000):  # a fixed amount of CPU work per step (about 0.3 s)
        digest = hashlib.sha256(digest).digest()
    with open(path + ".tmp", "wb") as f:
        f.write(os.urandom(mb * 1024 * 1024))
    os.replace(path + ".tmp", path)
    json.dump({"step": step}, open(os.path.join(ckpt_dir, "step.json.tmp"), "w"))
    os.replace(os.path.join(ckpt_dir, "step.json.tmp"), os.path.join(ckpt_dir, "step.json"))
    print(f"step {step}/{steps}", flush=True)
open(os.path.join(out_dir, "result.bin"), "wb").write(os.urandom(10 * 1024 * 1024))
open(os.path.join(out_dir, "took"), "w").write(f"{time.time() - t0:.3f}")
'''


class StoreBench(Bench):
    def configure(self, store: bool, sync_s: float = 1) -> None:
        folder = self.project / ".vasticlaude"
        folder.mkdir(exist_ok=True)
        info = json.loads((self.sim.state / "sim.json").read_text())["store"]
        cfg = {"guard": {"check_s": 1},
               "recovery": {"sync_interval_s": sync_s}}
        if store:
            cfg["store"] = {"url": "s3://vasticlaude-results/bench", "endpoint_url": info["endpoint_url"],
                            "sync_interval_s": sync_s}
        (folder / "config.json").write_text(json.dumps(cfg))
        (folder / ".env").write_text(f"VASTICLAUDE_STORE_ACCESS_KEY_ID={info['access_key_id']}\n"
                                     f"VASTICLAUDE_STORE_SECRET_ACCESS_KEY={info['secret_access_key']}\n")
        (self.project / "work.py").write_text(WORK)

    def home(self, iid: int, exp: str) -> Path:
        return self.sim.state / "instances" / str(iid) / "root" / "vasticlaude" / exp

    def launch(self, exp: str, steps: int, mb: int) -> int:
        iid = self.vc_json("up", "--experiment", exp, "--image", IMAGE, "--disk", "8")["instance_id"]
        self.vc_json("push", "--experiment", exp, "--no-setup")
        proc = self.vc("run", "--json", "--experiment", exp, "--", "python3", "work.py", str(steps), str(mb))
        if proc.returncode:
            raise SystemExit(f"vasticlaude run failed: {proc.stdout.strip()[-300:]} {proc.stderr.strip()[-300:]}")
        return iid

    def wait_file(self, path: Path, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            time.sleep(0.05)
        raise SystemExit(f"{path} never appeared")

    def billed_after_exit(self, n: int) -> float:
        self.configure(store=True, sync_s=300)
        exp = f"after{n}"
        iid = self.launch(exp, 2, 1)
        ended = float(self.wait_file(self.home(iid, exp) / "run" / "ended_at"))
        ended_precise = ended  # ended_at is whole seconds: the job's own file is finer
        took = self.home(iid, exp) / "outputs" / "took"
        if took.exists():
            ended_precise = max(ended, took.stat().st_mtime)
        return self.billing_stopped(iid) - ended_precise

    def job_time(self, n: int, store: bool, steps: int, mb: int) -> float:
        self.configure(store=store, sync_s=1)
        exp = f"{'st' if store else 'no'}{n}"
        iid = self.launch(exp, steps, mb)
        took = float(self.wait_file(self.home(iid, exp) / "outputs" / "took"))
        self.billing_stopped(iid) if store else None
        self.vc("down", "--experiment", exp)
        return took

    def relaunch(self, n: int, store: bool, mb: int) -> float:
        self.configure(store=store, sync_s=1)
        exp = f"{'rs' if store else 'rl'}{n}"
        iid = self.launch(exp, 400, mb)
        step = self.home(iid, exp) / "checkpoints" / "step.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (step.exists() and json.loads(step.read_text() or "{}").get("step", 0) >= 3):
            time.sleep(0.1)
        time.sleep(1.5)  # one sync interval: the store (or the pull below) holds a checkpoint
        if not store:
            self.vc_json("pull", "--experiment", exp, "--path", "checkpoints")
        self.sim.fault("host-down", instance=iid)
        done = self.vc_json("recover", "--experiment", exp)
        self.vc("down", "--experiment", exp)
        return float(done["seconds"])


def med(values: list[float]) -> dict:
    return {"runs": [round(v, 2) for v in values], "median": round(statistics.median(values), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ckpt-mb", type=int, default=50)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    with scratch("vc-store-bench-", "--time-scale", "0", "--seed", "17", "--balance", "10000") as (sim, tmp):
        bench = StoreBench(sim, tmp, 600, 5)
        after = [bench.billed_after_exit(n) for n in range(args.runs)]
        plain = [bench.job_time(n, False, args.steps, args.ckpt_mb) for n in range(args.runs)]
        synced = [bench.job_time(n, True, args.steps, args.ckpt_mb) for n in range(args.runs)]
        laptop = [bench.relaunch(n, False, args.ckpt_mb) for n in range(args.runs)]
        stored = [bench.relaunch(n, True, args.ckpt_mb) for n in range(args.runs)]
    result = {"ckpt_mb": args.ckpt_mb, "steps": args.steps,
              "billed_after_exit_s": {**med(after), "without_store": "the grace (600 s default), then storage"},
              "job_wall_s": {"no_store": med(plain), "store_sync_1s": med(synced),
                             "overhead_ratio": round(statistics.median(synced) / statistics.median(plain), 3)},
              "recover_s": {"through_laptop": med(laptop), "from_store": med(stored),
                            "ratio": round(statistics.median(stored) / statistics.median(laptop), 3)}}
    out = ROOT / "bench" / "results" / "store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: recovery from a fault mid-run, on the sandbox at a Vast-like (scaled) time scale.

For each fault kind, the flow Claude runs (`up`, `push --no-setup`, `run`, then
`watch --interval 0.5 --json` in the background) with a job that checkpoints after every
step (STEP_S seconds of work, STEPS steps), and the sandbox's fault injected once a
checkpoint has been synced home (the local copy holds step >= FAULT_AFTER_STEP) and then a
random 0..--offset-max s more (default one sync interval, so the fault falls anywhere in the
sync cycle, not always just after a sync; --offset-max 0 injects it right after):
  - preempt         an interruptible instance is outbid by 1.2x its bid: watch raises the bid
                    (x1.25) and the job is restarted in place;
  - host-down       the host goes offline: relaunch on another machine from the synced copy;
  - container-exit  the container dies: relaunch.
The project config is {"recovery": {"sync_interval_s": 2, "preempt_wait_s": 60, "confirm_s": 20}}: the
confirm window (180 s by default, the transient outages seen on Vast) is 20 s x the poll scale 0.05 = 1 s here.

Reports, per kind, each run and the median (JSON on stdout; also bench/results/recovery.json):
  - fault_to_running_s: the bench's time.time() at injection → the `at` of the `recover_step`
    event "restarted ..." in $VASTICLAUDE_HOME/experiments/<exp>/events.jsonl;
    boot_s: for a relaunch, the new instance's first history entry → its first `running` one
    in $VASTICLAUDE_HOME/instances.json; for the in-place preempt, the first "raised the bid"
    step → the "is back" step (0 if absent); overhead_s = fault_to_running_s - boot_s
    (goal <= 30 s);
  - lost_work_s: (step on the instance's disk right after the fault - the step the job resumed
    from, per the pulled outputs/result.txt) x STEP_S; next to the sync interval, its bound;
  - recovery_cost_share: relaunch: ledger cost (total_usd) of the instances the job did not
    finish on / the experiment's total ledger cost; in place: vasticlaude's own estimate
    (costing.instance_cost) of the instance's cost between the fault and the restart / total
    ledger cost. Also watch's spent_usd, for reference.

A run whose recovery fails is kept as a sample with its "error" (and counted in "failures");
the medians are over the runs that recovered; the exit code is then 1.
Every sandbox and background process the bench starts is stopped in `finally`.

Usage: .venv/bin/python bench/recovery_bench.py [--runs 3] [--time-scale 0.1] [--kinds preempt,host-down,container-exit]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from simkit import Sim, scratch  # noqa: E402
from vasticlaude.core.money import instance_cost  # noqa: E402

VC = str(Path(sys.executable).with_name("vasticlaude"))
IMAGE = "vastai/base:0.0.2"
KINDS = ("preempt", "host-down", "container-exit")
SHORT = {"preempt": "pre", "host-down": "hd", "container-exit": "ce"}  # experiment names: pre0, hd0, ce0, ...
STEP_S = 0.2
STEPS = 80
FAULT_AFTER_STEP = 10
SYNC_INTERVAL_S = 2
CONFIRM_S = 20  # x the poll scale 0.05: a fault must last 1 s before it is acted on
GOAL_OVERHEAD_S = 30
# The job of tests/test_recovery.py: resumes from its checkpoint, checkpoints after every step.
TRAIN = r'''
import json, os, sys, time
ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
ckpt = os.path.join(ckpt_dir, "state.json")
total, period = int(sys.argv[1]), float(sys.argv[2])
start = json.load(open(ckpt))["step"] if os.environ["VASTICLAUDE_RESUME"] == "1" else 0
print(f"resumed from step {start}" if start else "fresh start", flush=True)
for step in range(start + 1, total + 1):
    time.sleep(period)
    print(f"step {step}/{total} loss={1.0 / step:.4f}", flush=True)
    json.dump({"step": step}, open(ckpt + ".tmp", "w")); os.replace(ckpt + ".tmp", ckpt)
open(os.path.join(out_dir, "result.txt"), "w").write(f"done {total} resumed-from {start}\n")
'''


def step_of(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Bench:
    """One sandbox, one throwaway home and project, and the vasticlaude commands run against it."""

    def __init__(self, sim: Sim, work: Path, offset_max: float, seed: int):
        self.sim, self.work, self.offset_max = sim, work, offset_max
        self.rng = random.Random(seed)
        self.project = work / "project"
        self.vchome = work / "vchome"
        (work / "home").mkdir()
        (self.project / ".vasticlaude").mkdir(parents=True)
        (self.project / "train.py").write_text(TRAIN)
        (self.project / ".vasticlaude" / "config.json").write_text(json.dumps(
            {"recovery": {"sync_interval_s": SYNC_INTERVAL_S, "preempt_wait_s": 60, "confirm_s": CONFIRM_S}}))
        self.env = sim.env(HOME=str(work / "home"), VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05")
        for name in [k for k in self.env if k.startswith("CLAUDE_SESSION")]:
            del self.env[name]
        self.watchers: list[subprocess.Popen] = []

    # ----- commands --------------------------------------------------------------------------
    def vc(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([VC, *args], capture_output=True, text=True, env=self.env, cwd=self.project,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def vc_json(self, *args: str) -> dict:
        cut = args.index("--") if "--" in args else len(args)  # after `--` comes the job's own command
        proc = self.vc(*args[:cut], "--json", *args[cut:])
        if proc.returncode:
            raise RuntimeError(f"vasticlaude {' '.join(args)} failed (rc={proc.returncode}): "
                               f"{proc.stderr.strip()[-400:]}")
        return json.loads(proc.stdout)["data"]

    def spawn_watch(self, exp: str) -> subprocess.Popen:
        proc = subprocess.Popen([VC, "watch", "--experiment", exp, "--interval", "0.5", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.project)
        self.watchers.append(proc)
        return proc

    def stop_watchers(self) -> None:
        for proc in self.watchers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the watch and the ssh/rsync it started
                except ProcessLookupError:
                    pass
                proc.communicate(timeout=30)

    # ----- files ----------------------------------------------------------------------------
    def on_instance(self, iid: int, exp: str) -> Path:
        return self.sim.state / "instances" / str(iid) / "root" / "vasticlaude" / exp / "checkpoints" / "state.json"

    def local(self, exp: str) -> Path:
        return self.project / ".vasticlaude" / "runs" / exp

    def records(self) -> dict:
        return json.loads((self.vchome / "instances.json").read_text())["instances"]

    def events(self, exp: str) -> list[dict]:
        return jsonl(self.vchome / "experiments" / exp / "events.jsonl")

    def ledger(self, exp: str) -> list[dict]:
        return jsonl(self.vchome / "experiments" / exp / "ledger.jsonl")

    @staticmethod
    def wait_for(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)

    # ----- one run --------------------------------------------------------------------------
    def one(self, kind: str, n: int) -> dict:
        exp = f"{SHORT[kind]}{n}"
        try:
            return self.measure(kind, exp)
        except (RuntimeError, subprocess.TimeoutExpired) as err:  # a failed recovery is a result too
            return {"experiment": exp, "error": str(err)[-1500:]}
        finally:
            self.stop_watchers()
            live = (self.vchome / "instances.json").exists() and any(
                r.get("experiment") == exp and not r.get("destroyed_at") for r in self.records().values())
            if live:
                self.vc("down", "--experiment", exp, "--json")  # a failed run leaves nothing billing

    def measure(self, kind: str, exp: str) -> dict:
        t0 = time.monotonic()
        extra = ("--interruptible",) if kind == "preempt" else ()
        up = self.vc_json("up", "--experiment", exp, "--image", IMAGE, "--disk", "8", "--hours", "1", *extra)
        iid = up["instance_id"]
        self.vc_json("push", "--experiment", exp, "--no-setup")
        started = self.vc_json("run", "--experiment", exp, "--", "python3", "train.py", str(STEPS), str(STEP_S))
        if started["state"] != "running":
            raise RuntimeError(f"{exp}: the job is {started['state']}, not running")
        watch = self.spawn_watch(exp)
        self.wait_for(lambda: step_of(self.local(exp) / "checkpoints" / "state.json") >= FAULT_AFTER_STEP
                      or watch.poll() is not None, 120, "a checkpoint synced home")
        if watch.poll() is not None:
            raise RuntimeError(f"{exp}: watch ended before the fault: {watch.stderr.read()[-400:]}")

        offset = round(self.rng.uniform(0, self.offset_max), 2)  # where in the sync cycle the fault falls
        time.sleep(offset)
        ckpt = self.on_instance(iid, exp)
        before = step_of(ckpt)
        spec: dict = {"instance": iid}
        if kind == "preempt":
            spec["bid"] = round(float(self.records()[str(iid)]["bid_price"]) * 1.2, 4)
        fault_at = time.time()
        self.sim.fault(kind, **spec)
        at_fault = max(before, step_of(ckpt))  # the job's processes are dead once the call returns

        out, err = watch.communicate(timeout=300)
        if watch.returncode != 0:
            raise RuntimeError(f"{exp}: watch rc={watch.returncode}: {out[-400:]} {err[-1500:]}")
        data = json.loads(out)["data"]
        if data["outcome"] != "finished" or len(data.get("recoveries") or []) != 1:
            raise RuntimeError(f"{exp}: outcome {data['outcome']}, recoveries {data.get('recoveries')}")
        rec = data["recoveries"][0]
        finished_on = rec["to_instance"]
        start = next((e for e in self.events(exp) if e["event"] == "recover_start"), {})

        steps = [e for e in self.events(exp) if e["event"] == "recover_step" and e["at"] >= fault_at]
        restarted = next(e["at"] for e in steps if e["step"].startswith("restarted"))
        if finished_on == iid:  # in place: the bid won the GPU back
            raised = next((e["at"] for e in steps if "raised the bid" in e["step"]), None)
            back = next((e["at"] for e in steps if e["step"].endswith("is back")), None)
            boot = back - raised if raised is not None and back is not None else 0.0
        else:
            history = self.records()[str(finished_on)]["history"]
            boot = next(h["at"] for h in history if h["status"] == "running") - history[0]["at"]

        words = (self.local(exp) / "outputs" / "result.txt").read_text().split()
        total, resumed = int(words[1]), int(words[3])
        if total != STEPS:
            raise RuntimeError(f"{exp}: result.txt says {' '.join(words)}")

        ledger = self.ledger(exp)
        ledger_total = sum(float(e["total_usd"]) for e in ledger)
        if finished_on != iid:
            lost_usd = sum(float(e["total_usd"]) for e in ledger if int(e["instance_id"]) != finished_on)
        else:
            record = self.records()[str(iid)]
            lost_usd = (instance_cost(record, now=restarted)["total_usd"]
                        - instance_cost(record, now=fault_at)["total_usd"])
        raw = restarted - fault_at
        seen = [[round(h["at"] - fault_at, 2), h["status"]] for h in self.records()[str(finished_on)]["history"]
                if fault_at <= h["at"] <= restarted] if finished_on == iid else None
        return {"experiment": exp, "fault_instance": iid, "finished_on": finished_on, "fault_kind_seen": rec["kind"],
                "action": rec.get("action"), "evidence": start.get("evidence"), "fault_offset_s": offset,
                "fault_to_running_s": round(raw, 2), "boot_s": round(boot, 2), "overhead_s": round(raw - boot, 2),
                "watch_recovery_s": rec.get("seconds"),
                "step_at_fault": at_fault, "resumed_from": resumed,
                "lost_work_s": round((at_fault - resumed) * STEP_S, 2),
                "recovery_usd": round(lost_usd, 6), "ledger_total_usd": round(ledger_total, 6),
                "recovery_cost_share": round(lost_usd / ledger_total, 4) if ledger_total > 0 else None,
                "states_recorded_in_place": seen, "spent_usd": data.get("spent_usd"),
                "ledger_instances": sorted({int(e["instance_id"]) for e in ledger}),
                "wall_s": round(time.monotonic() - t0, 1)}


def median(samples: list[dict], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=0.1, help="the sandbox's --time-scale (boot, image pull)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds")
    ap.add_argument("--offset-max", type=float, default=SYNC_INTERVAL_S,
                    help="the fault waits a random 0..S s after the first synced checkpoint with step >= "
                         f"{FAULT_AFTER_STEP} (default: one sync interval; 0 = right after that sync)")
    ap.add_argument("--seed", type=int, default=13, help="seed of the sandbox's market and of the fault offsets")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    started = time.monotonic()
    faults: dict[str, dict] = {}
    flags = ("--time-scale", f"{args.time_scale:g}", "--seed", str(args.seed), "--balance", "10000")
    with scratch("vc-recovery-bench-", *flags) as (sim, tmp):
        try:
            bench = Bench(sim, tmp, args.offset_max, args.seed)
            for kind in kinds:
                samples = [bench.one(kind, n) for n in range(args.runs)]
                faults[kind] = {key: median(samples, key) for key in
                                ("fault_to_running_s", "boot_s", "overhead_s", "lost_work_s", "recovery_cost_share")}
                faults[kind]["failures"] = sum(1 for s in samples if "error" in s)
                faults[kind]["samples"] = samples
        finally:
            sim.reset()  # nothing left on the account; stopping the sandbox then kills every process
    report = {"time_scale": args.time_scale, "runs": args.runs, "sync_interval_s": SYNC_INTERVAL_S,
              "fault_offset_max_s": args.offset_max,
              "step_s": STEP_S, "steps": STEPS, "faults": faults, "goal_overhead_s": GOAL_OVERHEAD_S,
              "wall_s": round(time.monotonic() - started, 1),
              "note": "overhead_s = fault_to_running_s - boot_s; boot_s is the new instance's created→running "
                      "(relaunch) or the first bid raise → 'is back' (preempt, in place). lost_work_s is bounded "
                      "by the sync interval plus the detection time only for a relaunch; in place the job resumes "
                      "from its own disk. recovery_cost_share: ledger cost of the instances the job did not finish "
                      "on / total ledger cost; in place, costing.instance_cost between fault and restart / total."}
    out = json.dumps(report, indent=1)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "recovery.json").write_text(out + "\n")
    print(out)
    return 1 if any(f["failures"] for f in faults.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

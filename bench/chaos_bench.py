"""Chaos campaign (issue 13): faults × kill -9 points × two concurrent sessions, then the real reap.

Each run (seeded: run i uses seed --seed + i, so any run repeats alone with `--seed S --runs 1`):
- two flows at once on one vasticlaude home and project, as two Claude sessions would drive them:
  up → push → run → watch → pull → down (experiments c<i>a and c<i>b; a tiny job of 1–3 s, or one
  that would outrun its tight budget);
- one fault on the sandbox: none · API 429 (30 %) · API 5xx (30 %) · a ghost create (the create
  fails but rents) · host down · preemption (flow a rents interruptible) · SSH drops ·
  sandbox restart (kill -9 of the sandbox, started again on the same state), the instance-level
  ones once flow a's instance runs, after a random delay;
- per flow, maybe a kill -9 of its controller (and its ssh/rsync) during one step, after which
  that session does nothing more;
- then the real SessionEnd hook (hooks.json's command, stdin event as Claude Code sends it) and
  the detached reap it starts, waited for.
Checks after each run:
- orphans: instances live on the account that the reap neither tore down nor left under a guard
  or on purpose (its report's left-guarded, left-stopped, left-busy, or stopped because results
  that never came home are on its disk);
- duplicates: two instances of one experiment label alive at the same moment (the sandbox's
  own records: start_date / destroyed_at);
- lost results: a job that finished (it leaves a marker on this machine: sandbox containers
  share the filesystem) whose outputs never came home and whose instances are all gone;
- budget breaches: what the sandbox billed the experiment > its budget × (1 + TOLERANCE) +
  ABS_TOLERANCE_USD (the estimate's clock and the storage of a stopped disk).
Any non-zero is printed with its seed and details. One sandbox (time scale 0) serves all runs,
reset between them. JSON summary on stdout and in bench/results/chaos.json.

Usage: .venv/bin/python bench/chaos_bench.py [--runs 200] [--seed 1000] [--jobs-max-s 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from simkit import Sim  # noqa: E402
from test_hooks import alive  # noqa: E402 — a pid alive and not a zombie, as the hook tests check it

VC = str(Path(sys.executable).with_name("vasticlaude"))
IMAGE = "vastai/base:0.0.2"
STEPS = ("up", "push", "run", "watch", "pull", "down")
FAULTS = ("none", "api-429", "api-5xx", "ghost", "host-down", "preempt", "ssh-drop", "sandbox-restart")
TOLERANCE, ABS_TOLERANCE_USD = 0.10, 0.0005
MAX_DPH = 0.6           # $/h cap on every rental, so a budget in seconds of GPU is known in advance
TIGHT_BUDGET_S = 6.0    # a tight budget buys this many seconds at MAX_DPH
VERBOSE = bool(os.environ.get("CHAOS_VERBOSE"))
LEFT_ON_PURPOSE = {"left-guarded", "left-stopped", "left-busy", "stopped"}  # "stopped": its results are on it
TRAIN = r'''
import os, sys, time
steps, marker = int(sys.argv[1]), sys.argv[2]
for step in range(1, steps + 1):
    print(f"step {step}/{steps} loss={1.0 / step:.3f}", flush=True)
    time.sleep(0.05)
open(os.path.join(os.environ["VASTICLAUDE_OUTPUT_DIR"], "result.txt"), "w").write("done\n")
open(marker, "w").write("finished\n")
'''
CONFIG = {"guard": {"check_s": 1, "grace_s": 30, "kill_grace_s": 1},  # grace: time for the flow's pull
          "recovery": {"sync_interval_s": 1, "preempt_wait_s": 5, "stale_after_s": 10, "unreachable_after_s": 8}}


class Campaign:
    """One sandbox for every run; a fresh home and project per run."""

    def __init__(self, work: Path, seed: int):
        self.work, self.base_seed = work, seed
        self.sim = Sim(state=work / "simstate", home=work / "simhome")
        self.sim.home.mkdir()
        self.sim.start("--time-scale", "0", "--seed", str(seed))
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    # ----- one run -------------------------------------------------------------------------------
    def run(self, index: int, jobs_max_s: float) -> dict:
        seed = self.base_seed + index
        rng = random.Random(seed)
        folder = self.work / f"run{index}"
        self.project, self.vchome, self.markers = folder / "project", folder / "vchome", folder / "markers"
        for path in (self.project / ".vasticlaude", self.markers, folder / "home"):
            path.mkdir(parents=True)
        (self.project / "train.py").write_text(TRAIN)
        (self.project / ".vasticlaude" / "config.json").write_text(json.dumps(CONFIG))
        self.home = folder / "home"
        fault = rng.choice(FAULTS)
        flows = {}
        for name in ("a", "b"):
            tight = rng.random() < 0.2
            flows[f"c{index}{name}"] = {
                "kill": rng.choice((None, None, *STEPS)), "kill_after": round(rng.uniform(0.05, 2.0), 2),
                "budget": round(MAX_DPH * TIGHT_BUDGET_S / 3600, 6) if tight else None,
                "steps": 600 if tight else int(rng.uniform(1.0, jobs_max_s) / 0.05),
                "interruptible": fault == "preempt" and name == "a"}
        started = time.monotonic()
        self.start_api_fault(fault)
        threads = [threading.Thread(target=self.flow, args=(exp, spec), daemon=True) for exp, spec in flows.items()]
        for thread in threads:
            thread.start()
        self.flows_running = lambda: any(t.is_alive() for t in threads)
        injected = self.inject(fault, f"c{index}a", rng)
        for thread in threads:
            thread.join(timeout=240)
        self.sim.admin("DELETE", "/sim/faults")  # the reap meets the world the faults left, not the faults
        began = time.monotonic()
        reap = self.session_end(f"chaos-{seed}")
        reap["took_s"] = round(time.monotonic() - began, 1)
        found = self.check(flows, reap)
        self.cleanup()
        return {"run": index, "seed": seed, "fault": fault, "injected": injected,
                "flows": {k: {"kill": v["kill"], "budget": v["budget"], "outcome": v.get("outcome")}
                          for k, v in flows.items()},
                "reap": {"took_s": reap.get("took_s"), "finished": reap.get("finished"), "undone": reap.get("undone"), "summary": reap.get("summary")},
                **found, "wall_s": round(time.monotonic() - started, 2)}

    def env(self) -> dict:
        env = self.sim.env(HOME=str(self.home), VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05")
        for name in [k for k in env if k.startswith("CLAUDE")]:
            del env[name]
        return env

    def args(self, step: str, exp: str, spec: dict) -> list[str]:
        common = ["--experiment", exp]
        if step == "up":
            extra = ["--budget-usd", str(spec["budget"])] if spec["budget"] else []
            return ["up", *common, "--image", IMAGE, "--disk", "8", "--max-dph", str(MAX_DPH), "--hours", "0.002",
                    *extra, *(["--interruptible"] if spec["interruptible"] else [])]
        if step == "push":
            return ["push", *common, "--no-setup"]
        if step == "run":
            return ["run", *common, "--", "python3", "train.py", str(spec["steps"]), str(self.markers / exp)]
        if step == "watch":
            return ["watch", *common, "--interval", "0.3", "--finish", "none", "--timeout", "60"]
        return [step, *common]

    def flow(self, exp: str, spec: dict) -> None:
        """One session's flow: it ends at a kill, or when `up` or `pull` fails (the session then ends with
    the work undone, for the reap); other failures go on to the next step."""
        outcome = []
        for step in STEPS:
            began = time.monotonic()
            proc = subprocess.Popen([VC, *self.args(step, exp, spec)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env=self.env(), cwd=self.project,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            with self.lock:
                self.procs.append(proc)
            if spec["kill"] == step:
                try:
                    proc.wait(timeout=spec["kill_after"])
                except subprocess.TimeoutExpired:
                    kill_group(proc.pid)
                proc.wait(timeout=30)
                outcome.append(f"{step}:killed")
                break
            try:
                _, err = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid)
                _, err = proc.communicate()
            outcome.append(f"{step}:{proc.returncode}" + (f"({time.monotonic() - began:.0f}s)" if VERBOSE else ""))
            if step in ("up", "pull") and proc.returncode:  # as Claude would: no `down` over results not home
                spec["error"] = err.strip()[-200:]
                break
        spec["outcome"] = " ".join(outcome)

    # ----- faults --------------------------------------------------------------------------------
    def start_api_fault(self, fault: str) -> None:
        if fault == "api-429":
            self.sim.fault("http", status=429, rate=0.3, count=None, retry_after=0.2, path=r"^/api/v[01]/")
        elif fault == "api-5xx":
            self.sim.fault("http", status=503, rate=0.3, count=None, path=r"^/api/v[01]/")
        elif fault == "ghost":
            self.sim.fault("http", status=500, count=1, method="PUT", path=r"/asks/", ghost=True)

    def inject(self, fault: str, exp: str, rng: random.Random) -> str | None:
        """The instance-level faults, once flow a's instance runs (or after a while if it never does)."""
        if fault not in ("host-down", "preempt", "ssh-drop", "sandbox-restart"):
            return None
        row = self.wait_running(f"vasticlaude-{exp}", timeout=30)
        time.sleep(rng.uniform(0.0, 2.5))
        if fault == "sandbox-restart" and self.flows_running():
            self.sim.kill9()
            self.sim.start("--time-scale", "0", "--seed", str(rng.randrange(10 ** 6)))
            return f"restarted at {self.sim.url}"
        if row is None:
            return "no instance ran while the flows did"
        spec = {"seconds": 3} if fault == "host-down" and rng.random() < 0.5 else {}
        if fault == "ssh-drop":
            spec = {"refuse": rng.choice((3, 10))}
        try:
            self.sim.fault(fault, instance=row["id"], **spec)
        except Exception as err:  # noqa: BLE001 — e.g. destroyed meanwhile
            return f"{fault} not applied: {err}"
        return f"{fault} on {row['id']} {spec}"

    def wait_running(self, label: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.flows_running():
            try:
                rows = [r for r in self.sim.sdk().show_instances() if r.get("label") == label]
            except Exception:  # noqa: BLE001 — the API may be under a 429/5xx fault
                rows = []
            if rows and rows[0].get("actual_status") == "running":
                return rows[0]
            time.sleep(0.2)
        return None

    # ----- the session end and the checks ---------------------------------------------------------
    def session_end(self, session: str) -> dict:
        hooks = json.loads((ROOT / "hooks" / "hooks.json").read_text())["hooks"]
        command = hooks["SessionEnd"][0]["hooks"][0]["command"].replace("${CLAUDE_PLUGIN_ROOT}", str(ROOT))
        env = {**self.env(), "CLAUDE_PLUGIN_ROOT": str(ROOT), "CLAUDE_PROJECT_DIR": str(self.project),
               "VASTICLAUDE_HOOK_PYTHON": sys.executable}
        event = {"session_id": session, "cwd": str(self.project), "hook_event_name": "SessionEnd", "reason": "other"}
        proc = subprocess.run(["sh", "-c", command], input=json.dumps(event), capture_output=True, text=True,
                              env=env, timeout=30)
        found = re.search(r"\(pid (\d+)", proc.stdout)
        if found:
            pid = int(found.group(1))
            deadline = time.monotonic() + 180
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                kill_group(pid)
                return {"finished": False, "undone": [{"why": "the reap did not finish in 180 s"}]}
        try:
            return json.loads((self.vchome / "last-session-end.json").read_text())
        except (OSError, ValueError):
            return {"finished": None, "summary": "no reap was started" if not found else "no report"}

    def check(self, flows: dict, reap: dict) -> dict:
        live = {r["id"]: r for r in self.sim.sdk().show_instances()}
        left = {i["id"] for i in reap.get("instances") or [] if i.get("action") in LEFT_ON_PURPOSE}
        orphans = sorted(i for i in live if i not in left)
        world = json.loads((self.sim.state / "world.json").read_text())["instances"].values()
        mine = [r for r in world if str(r.get("label") or "").removeprefix("vasticlaude-") in flows]
        dups, lost, breaches = [], [], []
        for exp, spec in flows.items():
            recs = [r for r in mine if r.get("label") == f"vasticlaude-{exp}"]
            spans = sorted((float(r["start_date"]), float(r.get("destroyed_at") or time.time())) for r in recs)
            if any(later[0] < earlier[1] - 0.01 for earlier, later in zip(spans, spans[1:])):
                dups.append(exp)
            home = list((self.project / ".vasticlaude" / "runs" / exp).rglob("result.txt"))
            if (self.markers / exp).exists() and recs and all(r.get("destroyed_at") for r in recs) and not home:
                lost.append(exp)
            spent = sum(bill_total(r) for r in recs)
            spec["spent_usd"] = round(spent, 6)
            if spec["budget"] and spent > spec["budget"] * (1 + TOLERANCE) + ABS_TOLERANCE_USD:
                breaches.append(f"{exp}: ${spent:.6f} > ${spec['budget']:.6f}")
        return {"orphans": orphans, "duplicates": dups, "lost": lost, "breaches": breaches,
                "spent": {exp: spec["spent_usd"] for exp, spec in flows.items()}}

    def cleanup(self) -> None:
        with self.lock:
            for proc in self.procs:
                if proc.poll() is None:
                    kill_group(proc.pid)
                    proc.wait(timeout=30)
            self.procs.clear()
        self.sim.reset()

    def close(self) -> None:
        self.cleanup_quietly()
        self.sim.stop()

    def cleanup_quietly(self) -> None:
        try:
            self.cleanup()
        except Exception:  # noqa: BLE001 — stopping the sandbox still follows
            pass


def bill_total(rec: dict) -> float:
    bill = rec.get("billing") or {}
    return sum(float((bill.get(k) or {}).get("amount") or 0) for k in ("gpu", "disk"))




def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--jobs-max-s", type=float, default=3.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "chaos.json"))
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` stops the sandbox and its containers
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        campaign = Campaign(Path(tmp), opts.seed)
        try:
            for index in range(opts.runs):
                result = campaign.run(index, opts.jobs_max_s)
                results.append(result)
                bad = {k: result[k] for k in ("orphans", "duplicates", "lost", "breaches") if result[k]}
                write(opts.out, opts.seed, results, started)
                flows = " | ".join(f"{k}: {v['outcome']}" for k, v in result["flows"].items())
                print(f"run {index} seed {result['seed']} {result['fault']:<15} {flows} [{result['wall_s']} s]"
                      + (f" FOUND {bad} {json.dumps(result)}" if bad else ""), file=sys.stderr, flush=True)
        finally:
            campaign.close()
    summary = write(opts.out, opts.seed, results, started)
    print(json.dumps(summary))
    return 1 if any(summary[k] for k in ("orphans", "duplicates", "lost", "breaches")) else 0


def write(out: str, seed: int, results: list[dict], started: float) -> dict:
    """The summary so far, written with every run (a campaign cut short still has its table)."""
    summary = {"runs": len(results), "seeds": f"{seed}..{seed + len(results) - 1}",
               **{k: sum(1 for r in results if r[k]) for k in ("orphans", "duplicates", "lost", "breaches")},
               "faults": {f: sum(1 for r in results if r["fault"] == f) for f in FAULTS},
               "kills": sum(1 for r in results for f in r["flows"].values() if f["kill"]),
               "wall_s": round(time.monotonic() - started, 1),
               "median_run_s": sorted(r["wall_s"] for r in results)[len(results) // 2] if results else None}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"summary": summary, "runs": results}, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(main())

"""vasticlaude demo: the whole flow, end to end, on a throwaway local Vast sandbox.

Runs the real commands the way the vast-run skill has Claude run them, each one a
`vasticlaude COMMAND --sandbox --json` process: offers → up → push a small project (a
train.py that prints progress, writes checkpoints to $VASTICLAUDE_CHECKPOINT_DIR and
results to $VASTICLAUDE_OUTPUT_DIR) → run → status → watch → report → cost, and prints
where the report is. While `watch` runs, the sandbox's host goes down mid-run (--fault
host-down, the default) or the interruptible instance is outbid (--fault preempt): watch
recovers from the last checkpoint (the new instance fetches it from the results store),
then pulls and tears down. Then the laptop leaves: a second run is started and nothing of
vasticlaude runs any more; the instance ships its results to the sandbox's S3 store and its
watchdog destroys it within seconds of the job's exit; `pull` later brings them home from
the store. The project's config names the sandbox's own results store
(`"store": {"url": "s3://vasticlaude-results/demo", "sync_interval_s": 1}`). The first command starts the sandbox
on demand, as it would for a user. Nothing reaches the internet or a real account.

Everything it starts is stopped at the end, even on failure or Ctrl-C: `down --all`, then
the sandbox and every process of its instances. The vasticlaude home (state, SSH key,
sandbox) and HOME live in a temp folder, removed at the end unless --keep; the demo project
with its report and pulled results is kept so the report can be opened.

Usage: vasticlaude demo [--keep] [--time-scale X] [--fault host-down|preempt|none]

Exit codes: 0 the flow worked · 1 a step failed (the message says which).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vasticlaude import console
from vasticlaude.errors import Error
from vasticlaude.output import fail
from vasticlaude.sim.client import kill_containers, python_m, running_info, stop_background

EXPERIMENT = "demo"
ALONE = "demo-alone"
STORE = {"store": {"url": "s3://vasticlaude-results/demo", "sync_interval_s": 1}}
TRAIN_PY = '''"""A stand-in training job: progress on stdout, checkpoints, resumable, results at the end."""
import json, os, sys, time

ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
ckpt = os.path.join(ckpt_dir, "state.json")
step = json.load(open(ckpt))["step"] if os.environ.get("VASTICLAUDE_RESUME") == "1" else 0
print(f"resuming from step {step}" if step else "starting", flush=True)
total = int(sys.argv[1]) if len(sys.argv) > 1 else 100  # 10 s: the fault lands mid-run even on a busy machine
metrics = lambda s: (2.0 / (1 + s / 4), min(0.99, 0.5 + s / 120))  # noqa: E731
loss, acc = metrics(step)  # a resume at the last checkpoint has no step left to run
while step < total:
    step += 1
    time.sleep(0.1)
    loss, acc = metrics(step)
    print(f"epoch {1 + (step - 1) // 30}/2 step {step}/{total} loss={loss:.4f} acc={acc:.3f}", flush=True)
    if step % 5 == 0:
        json.dump({"step": step}, open(ckpt + ".tmp", "w"))
        os.replace(ckpt + ".tmp", ckpt)
json.dump({"loss": round(loss, 4), "acc": round(acc, 3), "steps": total},
          open(os.path.join(out_dir, "metrics.json"), "w"))
print("done", flush=True)
'''


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vasticlaude demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temp vasticlaude home and HOME for a look")
    parser.add_argument("--time-scale", type=console.number(100, zero=True), default=0.05,
                        help="sandbox delays (1 = Vast-like; default 0.05)")
    parser.add_argument("--fault", choices=("host-down", "preempt", "none"), default="host-down",
                        help="what breaks mid-run for watch to recover from (default host-down)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vasticlaude-demo-"))
    flow = Flow(work, args.time_scale, args.fault)
    started = time.monotonic()
    try:
        flow.run()
        print(f"\nthe whole flow took {time.monotonic() - started:.0f} s; report: {flow.report_path}")
        return 0
    except Error as err:
        return fail(err, False, "vasticlaude demo")
    except KeyboardInterrupt:
        return fail(Error("interrupted", "interrupted; everything it started is being stopped"), False, "vasticlaude demo")
    finally:
        flow.clean_up()
        if not args.keep:
            for folder in (flow.vchome, flow.home):
                shutil.rmtree(folder, ignore_errors=True)


class Flow:
    """The steps, each a real `vasticlaude` command in its own process, as Claude runs them."""

    def __init__(self, work: Path, time_scale: float, fault: str = "host-down"):
        self.fault = fault
        self.vchome, self.home, self.project = work / "vasticlaude-home", work / "home", work / "project"
        for folder in (self.home, self.project / ".vasticlaude"):
            folder.mkdir(parents=True)
        (self.project / "train.py").write_text(TRAIN_PY)
        # The demo's host stays down: a short confirm window (3 s at the demo's poll scale), not 18 s.
        (self.project / ".vasticlaude" / "config.json").write_text(json.dumps({"recovery": {"confirm_s": 30}, **STORE}) + "\n")
        self.report_path: Path | None = None
        self.seconds = 0.0
        self.env = self._env(time_scale)

    def _env(self, time_scale: float) -> dict:
        """Isolated: its own homes, never a real key; `python` on the instance is this one."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "VASTICLAUDE_"))}
        package_parent = str(Path(__file__).resolve().parent.parent)
        env.update(HOME=str(self.home), VASTICLAUDE_HOME=str(self.vchome), VASTAI_NO_UPDATE_CHECK="1",
                   VASTICLAUDE_SIM_TIME_SCALE=str(time_scale), VASTICLAUDE_POLL_SCALE="0.1",
                   PYTHONPATH=os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")])),
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
        return env

    def vc(self, *args: str, ok: tuple[int, ...] = (0,)) -> dict:
        """Run `vasticlaude ARGS --json`, echo the command, return its data (or fail the step)."""
        args = (args[0], "--json", *args[1:])  # before any `--`: what follows it is the job's command
        print(f"$ vasticlaude {' '.join(a if ' ' not in a else repr(a) for a in args)}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([*python_m("vasticlaude"), *args], capture_output=True,
                              text=True, env=self.env, cwd=self.project, timeout=300, stdin=subprocess.DEVNULL)
        envelope = _envelope(proc.stdout)
        if proc.returncode not in ok or envelope is None:
            error = (envelope or {}).get("error") or {}
            detail = error.get("message") or proc.stderr.strip()[-300:] or "no output"
            raise Error("demo_step", f"`vasticlaude {args[0]}` failed (exit {proc.returncode}): {detail}")
        self.seconds = time.monotonic() - started
        return envelope["data"]

    def run(self) -> None:
        found = self.vc("offers", "--sandbox", "--min-vram", "8", "--hours", "1", "--disk", "8", "--limit", "3")
        best = found["candidates"][0]
        self.say(f"{len(found['candidates'])} candidates; cheapest total: offer {best['offer_id']}, {best['gpu_name']} "
            f"{best['vram_gb']:.0f} GB at {best['dph']:.3f} USD/h, about {best['est_total_usd']:.3f} USD for 1 h")
        bid = ("--interruptible",) if self.fault == "preempt" else ()
        up = self.vc("up", "--sandbox", "--experiment", EXPERIMENT, "--image", "vastai/base:0.0.2", "--disk", "8",
                     "--hours", "1", "--budget-usd", "1", *(bid or ("--offer", str(best["offer_id"]))))
        self.say(f"instance {up['instance_id']} ({up['gpu_name']}) answers over SSH after {up['waited_s']} s")
        pushed = self.vc("push", "--sandbox", "--experiment", EXPERIMENT)
        self.say(f"pushed {pushed['files']} file(s); GPU seen on the instance: {pushed['gpu']['name']}")
        started = self.vc("run", "--sandbox", "--experiment", EXPERIMENT, "--budget-usd", "1", "--max-hours", "1",
                          "--", "python", "train.py")
        self.say(f"job {started['state']}, detached; a watchdog guards the budget")
        self.watch(up["instance_id"])
        self.laptop_gone()
        self.report_and_cost()

    def watch(self, instance_id: int) -> None:
        time.sleep(1)
        snap = self.vc("status", "--sandbox", "--experiment", EXPERIMENT, "--lines", "1")
        prog = snap["progress"]
        self.say(f"{snap['job']['state']}: {prog.get('percent')}% step {prog.get('step')} {prog.get('metrics')}, "
                 f"{snap['cost']['spent_usd']:.4f} USD so far")
        args = ["watch", "--json", "--sandbox", "--experiment", EXPERIMENT, "--interval", "1", "--sync-interval", "1"]
        print(f"$ vasticlaude {' '.join(args)}   (in the background)", flush=True)
        proc = subprocess.Popen([*python_m("vasticlaude"), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.project,
                                stdin=subprocess.DEVNULL)
        started = time.monotonic()
        try:
            self.break_something(instance_id)
            out, err = proc.communicate(timeout=300)
            self.seconds = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for line in err.splitlines():
            if line.startswith(("vasticlaude recover:", "vasticlaude watch: checkpoint")) or " — " in line:
                print(f"    {line}", flush=True)
        data = (_envelope(out) or {}).get("data") or {}
        for r in data.get("recoveries", []):
            self.say(f"recovered from {r['kind']}: instance {r['from_instance']} → {r['to_instance']} in {r['seconds']:g} s")
        if data.get("outcome") != "finished":
            raise Error("demo_watch", f"watch ended {data.get('outcome')}: {data.get('message') or err.strip()[-300:]}")
        gone = (data.get("down") or {}).get("destroyed")
        self.say(f"job finished; pulled {data['pull']['files']} files into {data['pull']['local_path']}; "
                 f"destroyed and confirmed gone: {gone}")

    def break_something(self, instance_id: int) -> None:
        """Once a checkpoint is home, the sandbox's fault: the host dies, or the bid is beaten."""
        if self.fault == "none":
            return
        local = self.project / ".vasticlaude" / "runs" / EXPERIMENT / "checkpoints" / "state.json"
        deadline = time.monotonic() + 60
        while not local.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        spec = ["--bid", "100", "--seconds", "2"] if self.fault == "preempt" else []
        subprocess.run([*python_m("vasticlaude"), "sim", "fault", self.fault, "--instance",
                        str(instance_id), *spec], capture_output=True, env=self.env, timeout=60,
                       stdin=subprocess.DEVNULL, check=True)
        what = "its host went down" if self.fault == "host-down" else "it was outbid (preempted)"
        self.say(f"sandbox fault: instance {instance_id}: {what} mid-run, with a checkpoint at home")

    def laptop_gone(self) -> None:
        """A run that ends with nobody watching: the instance ships its results and is destroyed."""
        up = self.vc("up", "--sandbox", "--experiment", ALONE, "--image", "vastai/base:0.0.2", "--disk", "8",
                     "--hours", "1", "--budget-usd", "1")
        self.vc("push", "--sandbox", "--experiment", ALONE, "--no-setup")
        self.vc("run", "--sandbox", "--experiment", ALONE, "--", "python", "train.py", "20")
        self.say("the laptop leaves now: no vasticlaude process runs until the pull below")
        started = time.monotonic()
        world = self.vchome / "sim" / "world.json"
        home = self.vchome / "sim" / "instances" / str(up["instance_id"])
        rec: dict = {}
        ended = None
        while time.monotonic() - started < 120:
            ended = ended or _ended_at(home, ALONE)  # read while the instance's files still exist
            rec = json.loads(world.read_text())["instances"].get(str(up["instance_id"])) or {}
            if rec.get("destroyed_at"):
                break
            time.sleep(0.2)
        if not rec.get("destroyed_at"):
            raise Error("demo_alone", f"instance {up['instance_id']} was not destroyed by its watchdog")
        after = f"{rec['destroyed_at'] - ended:.1f} s after the job's exit" if ended else "after the job's exit"
        self.seconds = time.monotonic() - started
        self.say(f"the job ended; its watchdog shipped the results to the store and destroyed instance "
                 f"{up['instance_id']} {after} (no storage billing)")
        pulled = self.vc("pull", "--sandbox", "--experiment", ALONE)
        self.say(f"pulled {pulled['files']} files from the {pulled.get('source', 'instance')} into {pulled['local_path']} "
                 f"(each checked by sha256)")

    def report_and_cost(self) -> None:
        report = self.vc("report", "--experiment", EXPERIMENT)
        self.report_path = Path(report["report"])
        self.say(f"report {report['report']} with {len(report['charts'])} chart(s)")
        cost = self.vc("cost", "--experiment", EXPERIMENT)
        spent = sum(e["spent_usd"] for e in cost["experiments"])
        self.say(f"spent {spent:.5f} USD (sandbox money, every instance included); billing now: "
                 f"{cost['billing_usd_per_hour']} USD/h")
        if cost["billing_usd_per_hour"]:
            raise Error("demo_billing", "something still bills after the teardown")

    def say(self, line: str) -> None:
        print(f"  → {line}  [{self.seconds:.1f} s]", flush=True)

    def clean_up(self) -> None:
        """Best effort and silent: destroy whatever is left, then stop the sandbox and its processes."""
        state = self.vchome / "sim"
        info_file = state / "sim.json"
        if not info_file.exists():
            return
        if running_info(state):  # never let `--sandbox` start a new sandbox just to tear down
            subprocess.run([*python_m("vasticlaude"), "down", "--sandbox", "--all", "--json"],
                           capture_output=True, env=self.env, cwd=self.project, timeout=120,
                           stdin=subprocess.DEVNULL)
        marker = json.loads(info_file.read_text()).get("marker", "")
        stop_background(state)
        kill_containers(marker)


def _ended_at(home: Path, experiment: str) -> float | None:
    """The job's end as its wrapper wrote it (the sandbox deletes a destroyed instance's files)."""
    try:
        return float((home / "root" / "vasticlaude" / experiment / "run" / "ended_at").read_text())
    except (OSError, ValueError):
        return None


def _envelope(stdout: str) -> dict | None:
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None

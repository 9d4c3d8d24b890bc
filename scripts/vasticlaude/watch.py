"""vasticlaude watch: see a run through to its end, keeping checkpoints home and recovering on the way.

Usage:
  vasticlaude watch [--experiment X] [--interval S] [--sync-interval S] [--no-recover]
                    [--finish down|pull|none] [--timeout S] [--max-attempts N] [--max-bid USD]
                    [--preempt-wait S] [--disk GB] [--sandbox] [--api-key KEY] [--json]

Meant to be left running (Claude starts it in the background; a person in a terminal).
Every --interval (30 s; the first checks after a start or a recovery come after 2, 4, 8
and 16 s) it takes one `status` snapshot (one API read, one SSH probe); a line on stderr says
the progress when the job's state or a fault changes, and every 5 minutes otherwise. Then:

- job running: the agreed folders (recovery.sync, default `checkpoints`) are synced home
  incrementally every --sync-interval (recovery.sync_interval_s, 300 s), so a dead host costs
  at most that much work; the copy is what a relaunch resumes from.
- a fault (see `vasticlaude recover --help`): its kind, evidence and plan are printed; a stale
  heartbeat or failing SSH must last recovery.stale_after_s / unreachable_after_s first. Then
  `recover` runs (unless --no-recover or recovery.auto is false: watch stops, exit 1, and
  leaves the decision to you). The job runs again → watching goes on.
- the job ends with exit 0: pull (verified) and, with --finish down (default), destroy and
  confirm gone; exit 0. --finish pull keeps the instance (its watchdog destroys it once
  pulled, unless on_end is stop); --finish none does neither.
- the code failed, the budget is spent, recoveries ran out, no offer worked: watch stops,
  exit 1, with what to do. The on-instance watchdog still guards the instance.
- Vast unreachable: each read is retried (about 40 s); then watch waits 30, 60, 120, 240 s
  (× VASTICLAUDE_POLL_SCALE) between checks; still failing, it stops with exit 3 and says
  the state everything was last seen in.

One watch per experiment (a lock beside experiment.json); its last check is kept in
experiments/<id>/watch.json {pid, at, instance_id, job, fault, fault_since, recoveries,
syncs, outcome}; a later watch keeps the age of a fault an earlier one saw, so repeated
`watch --timeout 540` calls (how Claude waits) still confirm a stale heartbeat.

JSON data: {"experiment", "outcome": "finished" | "failed" | "needs_you" | "api_down" |
  "billing_risk" | "timeout", "message", "job": {"state", "exit_code", "elapsed_s"},
  "progress": {"percent", "step", "metrics"…} (as status), "instance_id",
  "recoveries": [{"kind", "action", "from_instance", "to_instance", "seconds", "checkpoint_age_s"}],
  "syncs", "checkpoint": {"files", "bytes", "local_path"}, "pull": {"files", "bytes", "local_path"},
  "down": {"destroyed", "failed"}, "spent_usd", "exit_code"}

Exit codes: 0 the job finished with 0 (and was pulled and torn down as --finish says) · 1 it
needs you (message says why) or --timeout passed · 2 usage · 3 Vast unreachable for good ·
4 something may still bill (run what the message says).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from . import budget, checkpoints, command, config, down, pull, state
from .errors import API, BILLING_RISK, FAILED, Error
from .jsonfile import write_json_atomic
from .offers import poll_scale
from .output import compact, progress
from .recover import Assessment, Policy, add_policy_flags, assess, recover
from .status import one_line

API_PAUSES = (30.0, 60.0, 120.0, 240.0)  # between failing checks, then watch gives up
SAY_EVERY = 300.0  # seconds between progress lines while nothing changes


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude watch", __doc__)
    command.add_instance_flags(p)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between checks (default 30)")
    p.add_argument("--sync-interval", type=float, help="seconds between checkpoint syncs (default recovery.sync_interval_s)")
    p.add_argument("--no-recover", action="store_true", help="report a fault and stop instead of recovering")
    p.add_argument("--finish", choices=("down", "pull", "none"), default="down",
                   help="when the job succeeds: pull then destroy (default), pull only, or nothing")
    p.add_argument("--timeout", type=float, default=0.0, help="give up after S seconds (default: never)")
    add_policy_flags(p)
    return p


class Watch:
    def __init__(self, args: argparse.Namespace):
        self.args, self.cfg = args, config.load()
        rec = self.cfg["recovery"]
        self.policy = Policy.from_args(args, self.cfg)
        self.auto = bool(rec.get("auto", True)) and not args.no_recover
        self.sync_every = float(args.sync_interval if args.sync_interval is not None else rec["sync_interval_s"])
        self.experiment: str | None = args.experiment
        self.recoveries: list[dict] = []
        self.syncs, self.last_sync, self.checks = 0, 0.0, 0
        self.seen: dict[str, float] = {}  # fault kind → when first seen (for faults that must persist)
        self.last: Assessment | None = None
        self.said: tuple[tuple, float] = ((), 0.0)  # the last progress line: (job state, fault), when
        self.resume_seen()

    def resume_seen(self) -> None:
        """A fault an earlier watch saw keeps its age: repeated short watches still confirm a stale job."""
        if not self.experiment:
            return
        try:
            saved = json.loads((state.experiment_dir(self.experiment) / "watch.json").read_text())
        except (OSError, ValueError):
            return
        if saved.get("fault") and saved.get("fault_since"):
            self.seen[saved["fault"]] = time.monotonic() - max(0.0, time.time() - float(saved["fault_since"]))

    def loop(self) -> dict:
        deadline = time.monotonic() + self.args.timeout if self.args.timeout else None
        failures = 0
        while True:
            try:
                a = assess(self.args, tail=0)
            except Error as err:
                if err.exit_code != API:
                    raise
                failures += 1
                if failures > len(API_PAUSES):
                    return self.api_down(err)
                pause = API_PAUSES[failures - 1] * poll_scale()
                progress(f"vasticlaude watch: {err.message}; checking again in {pause:g} s ({failures}/{len(API_PAUSES)})")
                time.sleep(pause)
                continue
            failures = 0
            self.last, self.experiment = a, a.experiment
            self.args.experiment = a.experiment
            done = self.check(a)
            self.save(a, done)
            if done is not None:
                return done
            if deadline and time.monotonic() >= deadline:
                return self.result("timeout", f"still {a.snap['job']['state'] if a.snap else 'unknown'} after "
                                   f"{self.args.timeout:g} s: nothing is wrong; watch again to go on", FAILED)
            time.sleep(self.pause(a))

    def pause(self, a: Assessment) -> float:
        """2, 4, 8, 16 s, then --interval (a job that fails at once is seen at once), shortened so
        a running job's sync is never late (the lost-work bound)."""
        self.checks += 1
        pause = min(self.args.interval, 2.0 ** self.checks)
        if a.snap is None or a.snap["job"]["state"] != "running":
            return pause
        due = self.last_sync + self.sync_every - time.monotonic()
        return max(0.05, min(pause, due))

    # ----- one check -------------------------------------------------------------------------
    def check(self, a: Assessment) -> dict | None:
        snap = a.snap
        if snap is not None:
            self.say(snap, a.fault)
        job = (snap or {}).get("job") or {}
        if a.fault is not None:
            return self.on_fault(a)
        self.seen.clear()
        if job.get("state") == "exited" and job.get("exit_code") == 0:
            return self.finish(a)
        if job.get("state") == "running":
            self.maybe_sync(a)
            return None
        return self.idle(a)

    def idle(self, a: Assessment) -> dict | None:
        """No fault and no running job: gone after its end, stopped on purpose, or never started."""
        instance = a.snap["instance"]["status"] if a.snap else "gone"
        job, exp = (a.snap or {}).get("job", {}).get("state"), a.experiment
        if instance == "gone":  # only without a fault: the pulled copy holds this run's exit code
            code = checkpoints.local_exit_code(exp)
            return self.result("finished" if code == 0 else "failed", f"the instance is gone; the job had ended "
                               f"with exit code {code} and its files are at home", 0 if code == 0 else FAILED)
        if instance == "stopped":
            return self.result("needs_you", f"instance {a.snap['instance_id']} was stopped on purpose (by you or its "
                               f"watchdog) and storage still bills: start it to go on, or vasticlaude down "
                               f"--experiment {exp}", FAILED)
        if job == "not_started" and instance == "running":
            return self.result("needs_you", f"nothing runs on instance {a.snap['instance_id']} yet: vasticlaude run "
                               f"--experiment {exp} -- CMD first", FAILED)
        return None  # created or loading: wait

    def say(self, snap: dict, fault: dict | None) -> None:
        """A progress line when the job's state or the fault changes, else every SAY_EVERY s: what
        Claude reads costs context."""
        key = (snap["job"]["state"], fault and fault["kind"])
        if key == self.said[0] and time.monotonic() - self.said[1] < SAY_EVERY:
            return
        self.said = (key, time.monotonic())
        progress(f"vasticlaude watch: {one_line(snap)}" + (f" — {fault['kind']}" if fault else ""))

    def maybe_sync(self, a: Assessment) -> None:
        if time.monotonic() - self.last_sync < self.sync_every:
            return
        self.last_sync = time.monotonic()
        try:
            got = checkpoints.sync_home(a.bound.route(), a.experiment, list(self.policy.sync))
        except Error as err:
            progress(f"vasticlaude watch: checkpoint sync failed ({err.message[:160]}); next try in {self.sync_every:g} s")
            return
        self.syncs += 1
        if got["bytes_received"]:
            progress(f"vasticlaude watch: checkpoint synced home ({got['files']} files, {got['bytes']} B)")

    def on_fault(self, a: Assessment) -> dict | None:
        fault = a.fault
        first = self.seen.setdefault(fault["kind"], time.monotonic())
        if time.monotonic() - first < fault["confirm_s"]:
            return None
        progress(f"vasticlaude watch: {fault['kind']}: {'; '.join(fault['evidence'])} → {fault['plan']}")
        if fault["action"] == "none":
            return self.result("failed" if fault["kind"] == "job_failed" else "needs_you",
                               f"{fault['kind']}: {fault['evidence'][0]}; {fault['plan']}", FAILED)
        if not self.auto:
            return self.result("needs_you", f"{fault['kind']}: {fault['evidence'][0]}; recovery is off: run "
                               f"'vasticlaude recover --experiment {a.experiment}' to {fault['plan']}", FAILED)
        try:
            done = recover(a, self.args, self.policy)
        except Error as err:
            if err.exit_code == API or err.code == "recovery_running":
                progress(f"vasticlaude watch: recovery not done ({err.message}); looking again at the next check")
                return None
            outcome = "billing_risk" if err.exit_code == BILLING_RISK else "needs_you"
            return self.result(outcome, f"recovery from {fault['kind']} failed: {err.message}. {err.hint}", err.exit_code)
        self.seen.clear()
        self.checks = 0  # look closely at the restarted job again
        self.last_sync = time.monotonic()  # what was sent is what is home
        self.recoveries.append({"kind": fault["kind"], "action": done["action"], "from_instance": done["from_instance"],
                                "to_instance": done["to_instance"], "seconds": done["seconds"],
                                "checkpoint_age_s": done["checkpoint"]["age_s"]})
        return None

    # ----- endings ---------------------------------------------------------------------------
    def finish(self, a: Assessment) -> dict:
        target = command.target_argv(self.args)
        data = self.result("finished", "the job finished with exit code 0", 0)
        with state.experiment(a.experiment) as exp:
            exp["finished_at"] = time.time()
            exp.pop("recovering", None)
        if self.args.finish in ("down", "pull"):
            got = pull.run(pull.build_parser().parse_args(["--experiment", a.experiment, *target]))
            data["pull"] = {k: got[k] for k in ("files", "bytes", "local_path")}
            data.pop("checkpoint", None)  # the pull brought everything: its local_path says where
        if self.args.finish == "down":
            report = down.run(down.build_parser().parse_args(["--experiment", a.experiment, *target]))
            data["down"] = {"destroyed": [d["id"] for d in report["destroyed"]] + report["already_gone"],
                            "failed": report["failed"]}
            if report["failed"]:
                data.update(outcome="billing_risk", exit_code=BILLING_RISK,
                            message=data["message"] + f"; NOT confirmed gone: {report['failed']} — run 'vasticlaude down'")
        data["spent_usd"] = round(budget.experiment_spent(a.experiment), 4)
        return data

    def api_down(self, err: Error) -> dict:
        a = self.last
        if a is None or a.snap is None:
            seen = "nothing was seen yet"
        else:
            snap = a.snap
            seen = (f"last seen: instance {snap['instance_id']} {snap['instance']['status']}, job {snap['job']['state']}, "
                    f"guard {'alive' if snap['guard']['alive'] else 'not alive'}, ${snap['cost']['spent_usd']:.3f} spent")
        return self.result("api_down", f"Vast has not answered for several minutes ({err.message}); {seen}. The "
                           "on-instance watchdog still enforces the budget. Check your network or Vast's status, then "
                           f"run 'vasticlaude watch --experiment {self.experiment}' again (or 'vasticlaude down "
                           f"--experiment {self.experiment}')", API)

    def result(self, outcome: str, message: str, code: int) -> dict:
        snap = self.last.snap if self.last and self.last.snap else {}
        job = snap.get("job") or {}
        exp = state.read_experiment(self.experiment) if self.experiment else None
        ckpt = (exp or {}).get("checkpoints") or {}
        return {"experiment": self.experiment, "outcome": outcome, "message": message,
                "job": {k: job.get(k) for k in ("state", "exit_code", "elapsed_s")},
                "progress": snap.get("progress"), "instance_id": snap.get("instance_id"),
                "recoveries": self.recoveries, "syncs": self.syncs,
                "checkpoint": {k: ckpt.get(k) for k in ("files", "bytes", "local_path")} if ckpt else None,
                "spent_usd": round(budget.experiment_spent(self.experiment), 4) if self.experiment else 0.0,
                "exit_code": code}

    def save(self, a: Assessment, done: dict | None) -> None:
        snap, kind = a.snap or {}, a.fault and a.fault["kind"]
        since = time.time() - (time.monotonic() - self.seen[kind]) if kind in self.seen else None
        write_json_atomic(state.experiment_dir(a.experiment) / "watch.json", {
            "version": 1, "pid": os.getpid(), "at": time.time(), "instance_id": snap.get("instance_id"),
            "job": (snap.get("job") or {}).get("state"), "fault": kind, "fault_since": since,
            "recoveries": len(self.recoveries), "syncs": self.syncs, "outcome": done and done["outcome"]})


def run(args: argparse.Namespace) -> dict:
    if args.interval <= 0:
        raise Error("bad_interval", "--interval must be > 0", "", 2)
    name = args.experiment or _only_experiment()
    busy = Error("already_watching", f"another watch of {name} is running",
                 f"Read experiments/{name}/watch.json, or stop that one first.", FAILED)
    with state.only_one(state.experiment_dir(name) / "watch.lock", busy):
        args.experiment = name
        return Watch(args).loop()


def _only_experiment() -> str:
    names = sorted({str(r.get("experiment")) for r in state.live_instances()})
    if len(names) != 1:
        raise Error("which_experiment", "no live experiment" if not names else f"several live experiments ({', '.join(names)})",
                    "Name one with --experiment.", FAILED)
    return names[0]


def human(data: object) -> str:
    assert isinstance(data, dict)
    lines = [f"{data['experiment']}: {data['outcome']} — {data['message']}"]
    for r in data["recoveries"]:
        lines.append(f"  recovered from {r['kind']} ({r['action']}): instance {r.get('from_instance')} → "
                     f"{r.get('to_instance')} in {r['seconds']:g} s")
    if data.get("pull"):
        lines.append(f"  results: {data['pull']['local_path']} ({data['pull']['files']} files)")
    lines.append(f"  spent ${data['spent_usd']:.3f}; {data['syncs']} checkpoint syncs")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human, json_view=compact)

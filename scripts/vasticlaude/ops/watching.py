"""See a run through to its end: check it, keep checkpoints home, recover its faults, then pull and tear down.

Quick first checks (2, 4, 8, 16 s) then the interval; a fault that must persist is
confirmed over its window; API trouble is waited out (about 11 minutes) before giving
up with the last state seen. One watch per experiment (a lock); watch.json records
the last check.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from vasticlaude.core import budget, retry
from vasticlaude.core.retry import poll_scale
from vasticlaude.errors import API, BILLING_RISK, FAILED, USAGE, Error
from vasticlaude.ops import checkpoints, results, teardown
from vasticlaude.ops.binding import bind
from vasticlaude.ops.observe import one_line
from vasticlaude.ops.recovery import Assessment, Policy, assess, recover
from vasticlaude.output import progress
from vasticlaude.store import state
from vasticlaude.store.jsonfile import write_json_atomic
from vasticlaude.vast.gateway import Vast

API_PAUSES = (30.0, 60.0, 120.0, 240.0)  # between failing checks, then watch gives up
SAY_EVERY = 300.0  # seconds between progress lines while nothing changes


@dataclass(frozen=True)
class WatchPlan:
    """How to watch: check interval, sync interval (None: the config's), recovery on or off, how to finish."""

    interval: float = 60.0
    sync_interval: float | None = None
    recover: bool = True
    finish: str = "down"
    timeout: float | None = None


class Watch:
    def __init__(self, vast: Vast, experiment: str, plan: WatchPlan, policy: Policy, cfg: dict):
        self.vast, self.opts, self.cfg, self.policy = vast, plan, cfg, policy
        rec = cfg["recovery"]
        self.auto = bool(rec.get("auto", True)) and plan.recover
        self.sync_every = float(plan.sync_interval if plan.sync_interval is not None else rec["sync_interval_s"])
        self.experiment: str = experiment
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
        """Check until an ending; --timeout is a wall for the checks (their API retries, SSH probes
        and pauses), while a recovery or the final pull it starts is carried through."""
        with retry.wall(self.opts.timeout or None):
            return self.checks_until_done()

    def checks_until_done(self) -> dict:
        failures = 0
        while True:
            try:
                a = assess(self.vast, self.experiment, tail=0)
            except Error as err:
                if err.exit_code != API:
                    raise
                failures += 1
                if failures > len(API_PAUSES):
                    return self.api_down(err)
                pause = min(API_PAUSES[failures - 1] * poll_scale(), retry.left())
                progress(f"vasticlaude watch: {err.message}; checking again in {pause:g} s ({failures}/{len(API_PAUSES)})")
                if not retry.pause(pause):
                    return self.api_down(err, deadline=True)
                continue
            failures = 0
            self.last = a
            with retry.released():
                done = self.check(a)
            self.save(a, done)
            if done is not None:
                return done
            if not retry.pause(self.pause(a)):
                return self.result("timeout", f"still {a.snap['job']['state'] if a.snap else 'unknown'} after "
                                   f"{self.opts.timeout:g} s (nothing is wrong)", FAILED)

    def pause(self, a: Assessment) -> float:
        """2, 4, 8, 16 s, then --interval (a job that fails at once is seen at once), shortened so
        a running job's sync is never late (the lost-work bound)."""
        self.checks += 1
        pause = min(self.opts.interval, 2.0 ** self.checks)
        if a.snap is None or a.snap["job"]["state"] != "running":
            return pause
        due = self.last_sync + self.sync_every - time.monotonic()
        return max(0.05, min(pause, due))

    # ----- one check -------------------------------------------------------------------------
    def check(self, a: Assessment) -> dict | None:
        snap = a.snap
        job = (snap or {}).get("job") or {}
        if snap is not None and (a.fault is not None or job.get("state") != "exited"):
            self.say(snap, a.fault)  # an ended job's last state is the result, said once there
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
        if instance == "gone":  # only without a fault: the pulled copy (or the store) holds this run's exit code
            where, got = "its files are at home", None
            if not checkpoints.local_dir(exp).joinpath("run", "exit_code").is_file() and results.stored(exp):
                got = results.pull_from_store(exp, why="the watchdog destroyed the instance once the store held them")
                where = f"its files came home from the results store ({got['files']} files, verified)"
            code = checkpoints.local_exit_code(exp)
            data = self.result("finished" if code == 0 else "failed", f"the instance is gone; the job had ended "
                               f"with exit code {code} and {where}", 0 if code == 0 else FAILED)
            if got is not None:
                data["pull"] = {k: got[k] for k in ("files", "bytes", "local_path")}
            return data
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
        if got["bytes_received"] and got["files"]:  # the job log alone moving is no checkpoint news
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
            done = recover(a, self.vast, self.policy)
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
        data = self.result("finished", "the job finished with exit code 0", 0)
        with state.experiment(a.experiment) as exp:
            exp["finished_at"] = time.time()
            exp.pop("recovering", None)
        if self.opts.finish in ("down", "pull"):
            got = self.pull(a.experiment)
            data["pull"] = {k: got[k] for k in ("files", "bytes", "local_path")}
            data.pop("checkpoint", None)  # the pull brought everything: its local_path says where
        if self.opts.finish == "down":
            report = teardown.take_down(self.vast, teardown.targets(self.vast, [], a.experiment))
            data["down"] = {"destroyed": [d["id"] for d in report["destroyed"]] + report["already_gone"],
                            "failed": report["failed"]}
            if report["failed"]:
                data.update(outcome="billing_risk", exit_code=BILLING_RISK,
                            message=data["message"] + f"; NOT confirmed gone: {report['failed']} — run 'vasticlaude down'")
        data["spent_usd"] = round(budget.experiment_spent(a.experiment, state.load()), 4)
        return data

    def pull(self, experiment: str) -> dict:
        """From the instance; from the results store when the watchdog destroyed the instance meanwhile."""
        try:
            return results.pull(bind(self.vast, experiment))
        except Error:
            if not results.stored(experiment) or not checkpoints.ended_in_store(experiment):
                raise
            return results.pull_from_store(experiment, why="the instance went once the store held the results")

    def api_down(self, err: Error, deadline: bool = False) -> dict:
        a = self.last
        if a is None or a.snap is None:
            seen = "nothing was seen yet"
        else:
            snap = a.snap
            seen = (f"last seen: instance {snap['instance_id']} {snap['instance']['status']}, job {snap['job']['state']}, "
                    f"guard {'alive' if snap['guard']['alive'] else 'not alive'}, ${snap['cost']['spent_usd']:.3f} spent")
        how = f"Vast did not answer before the {self.opts.timeout:g} s timeout" if deadline else \
            "Vast has not answered for several minutes"
        return self.result("api_down", f"{how} ({err.message}); {seen}. The "
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
                "spent_usd": round(budget.experiment_spent(self.experiment, state.load()), 4) if self.experiment else 0.0,
                "exit_code": code}

    def save(self, a: Assessment, done: dict | None) -> None:
        snap, kind = a.snap or {}, a.fault and a.fault["kind"]
        since = time.time() - (time.monotonic() - self.seen[kind]) if kind in self.seen else None
        write_json_atomic(state.experiment_dir(a.experiment) / "watch.json", redacted=True, data={
            "version": 1, "pid": os.getpid(), "at": time.time(), "instance_id": snap.get("instance_id"),
            "job": (snap.get("job") or {}).get("state"), "fault": kind, "fault_since": since,
            "recoveries": len(self.recoveries), "syncs": self.syncs, "outcome": done and done["outcome"]})


def watch(vast: Vast, experiment: str | None, plan: WatchPlan, policy: Policy, cfg: dict) -> dict:
    """See the experiment's run through (one watch per experiment at a time); the outcome."""
    if plan.interval <= 0:
        raise Error("bad_interval", "--interval must be > 0", "", USAGE)
    name = experiment or _only_experiment()
    busy = Error("already_watching", f"another watch of {name} is running",
                 f"Read experiments/{name}/watch.json, or stop that one first.", FAILED)
    with state.only_one(state.experiment_dir(name) / "watch.lock", busy):
        return Watch(vast, name, plan, policy, cfg).loop()


def _only_experiment() -> str:
    names = sorted({str(r.get("experiment")) for r in state.live_instances()})
    if len(names) != 1:
        raise Error("which_experiment", "no live experiment" if not names else f"several live experiments ({', '.join(names)})",
                    "Name one with --experiment.", FAILED)
    return names[0]



"""Bring a faulted run back: assess it (the snapshot's fault, or an instance gone or a recovery interrupted), then carry out the fault's action, bounded and recorded.

Actions: restart in place, wait for a preempted bid (raising it within the budget),
relaunch elsewhere (salvage, destroy confirmed, rent the like, push code and checkpoint,
restart), a bigger disk. One recovery at a time per experiment (a lock); each step is
logged to events.jsonl and the outcome to experiment.json's recoveries.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vasticlaude.core import budget, retry
from vasticlaude.core.faults import blames_machine
from vasticlaude.core.faults import fault as fault_of
from vasticlaude.core.market import Wanted
from vasticlaude.core.retry import poll_scale
from vasticlaude.errors import API, BILLING_RISK, FAILED, Error
from vasticlaude.ops import bucket, checkpoints, code, job, results
from vasticlaude.ops.binding import Bound, bind
from vasticlaude.ops.launch import (
    Launcher,
    Plan,
    candidates,
    default_deadline,
    refuse_if_taken,
    register,
)
from vasticlaude.ops.observe import observe
from vasticlaude.ops.reconcile import reconcile
from vasticlaude.ops.search import remember_failed
from vasticlaude.ops.teardown import Target, teardown
from vasticlaude.output import progress
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import probe_any, route_for, ssh_key
from vasticlaude.store import config, state
from vasticlaude.vast.gateway import Vast

RAISE_EVERY = 60.0  # seconds between bid raises (× VASTICLAUDE_POLL_SCALE)
POLL = 5.0
PASSING = ("host_offline", "container_exited")  # on the real Vast these can pass: confirmed before acting
SALVAGE_S = 60.0  # the most a relaunch spends bringing home what the old instance still answers with


@dataclass
class Assessment:
    """What `recover` and `watch` look at: the bound instance (None when there is none), the snapshot, the fault."""

    experiment: str
    bound: Bound | None
    snap: dict | None
    fault: dict | None


def assess(vast: Vast, experiment: str | None, instance_id: int | None = None, tail: int = 3) -> Assessment:
    """Bind and look; a vanished instance or an interrupted recovery is itself a fault."""
    try:
        bound = bind(vast, experiment, instance_id)
    except Error as err:
        exp = state.read_experiment(experiment) if experiment else None
        if err.code != "no_instance" or not exp or not exp.get("runs") or _ended(exp):
            raise
        if exp.get("recovering") and reconcile(vast)["adopted"]:
            return assess(vast, experiment, instance_id, tail)  # a recovery killed between create and record
        if checkpoints.ended_home(experiment):
            return Assessment(experiment, None, None, None)  # gone after its end: nothing to recover
        return Assessment(experiment, None, None, fault_of("gone", ["no live instance is left for the experiment"], "relaunch"))
    snap = observe(bound, tail)
    fault = snap.get("fault")
    exp = state.read_experiment(bound.experiment) or {}
    if fault is None and exp.get("recovering") and snap["job"]["state"] == "not_started":
        fault = fault_of("recovery_interrupted", ["a recovery stopped before the job ran again"], "resume")
    elif exp.get("recovering") and snap["job"]["state"] == "running" and exp["recovering"].get("at", 0) < _run_at(exp):
        with state.experiment(bound.experiment) as data:  # killed after the restart: the job runs again
            data.pop("recovering", None)
    return Assessment(bound.experiment, bound, snap, fault)


def confirm(vast: Vast, a: Assessment, instance_id: int | None = None) -> Assessment:
    """A fault that can pass (offline, unknown, exited) is looked at again every POLL s until it has
    lasted its confirm_s (then acted on) or is gone (then there is nothing to recover)."""
    fault = a.fault
    if fault is None or fault["kind"] not in PASSING or fault["confirm_s"] <= 0:
        return a
    since = time.monotonic()
    progress(f"vasticlaude recover: {fault['kind']}: confirming over {fault['confirm_s']:g} s before acting "
             "(on Vast it can pass)")
    while time.monotonic() - since < fault["confirm_s"]:
        time.sleep(min(POLL * poll_scale(), max(0.0, fault["confirm_s"] - (time.monotonic() - since))))
        a = assess(vast, a.experiment, instance_id)
        if a.fault is None or a.fault["kind"] != fault["kind"]:
            progress(f"vasticlaude recover: {fault['kind']} passed: now {a.snap['instance']['status'] if a.snap else 'gone'}")
            return a
    return a


def _run_at(exp: dict) -> float:
    return float(((exp.get("runs") or [{}])[-1]).get("at") or 0)


def _ended(exp: dict) -> bool:
    return bool(exp.get("finished_at"))


# ----- policy ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    max_attempts: int
    preempt_wait_s: float
    bid_step: float
    max_bid_dph: float | None
    disk_growth: float
    disk_gb: float | None
    sync: tuple[str, ...]

    @classmethod
    def from_config(cls, cfg: dict, max_attempts: int | None = None, preempt_wait_s: float | None = None,
                    max_bid_dph: float | None = None, disk_gb: float | None = None) -> "Policy":
        """The config's recovery block, with what the flags set over it."""
        rec = cfg["recovery"]
        pick = lambda flag, key, default: next(v for v in (flag, rec.get(key), default) if v is not None)  # noqa: E731
        return cls(int(pick(max_attempts, "max_attempts", 3)), float(pick(preempt_wait_s, "preempt_wait_s", 600)),
                   float(rec.get("bid_step") or 1.25), max_bid_dph or rec.get("max_bid_dph"),
                   float(rec.get("disk_growth") or 2.0), disk_gb, tuple(rec.get("sync") or ("checkpoints",)))


# ----- one recovery ------------------------------------------------------------------------------
class Recovery:
    """Carries out one fault's action, logging each step; the caller records the outcome."""

    def __init__(self, assessment: Assessment, vast: Vast, policy: Policy):
        self.a, self.policy, self.vast = assessment, policy, vast
        self.exp_id = assessment.experiment
        self.exp = state.read_experiment(self.exp_id) or {}
        self.steps: list[str] = []
        self.to_instance: int | None = assessment.bound.instance_id if assessment.bound else None
        self.fetched: dict | None = None  # the checkpoint the new instance took from the results store

    # -- the actions
    def perform(self, fault: dict) -> None:
        action = fault["action"]
        if action == "restart":
            self.restart()
        elif action == "wait_bid":
            self.wait_bid(fault)
        elif action == "resume":
            self.prepare_new(self.a.bound)
        elif action in ("relaunch", "bigger_disk"):
            self.relaunch(fault)
        else:
            raise Error("needs_you", f"{fault['kind']}: {fault['evidence'][0]}", fault["plan"], FAILED)

    def step(self, what: str, **fields: object) -> None:
        progress(f"vasticlaude recover: {what}")
        self.steps.append(what)
        state.append_event(self.exp_id, "recover_step", step=what, **fields)

    def restart(self) -> None:
        """Run the experiment's last command again, with its guard, on the experiment's instance."""
        last = (self.exp.get("runs") or [{}])[-1]
        if not last.get("command"):
            raise Error("no_command", f"experiment {self.exp_id} has no recorded run to restart",
                        f"Start it: vasticlaude run --experiment {self.exp_id} -- CMD", FAILED)
        spec = job.JobSpec(command=last["command"], env=dict(last.get("env") or {}), workdir=last.get("workdir"),
                           heartbeat=int(last.get("heartbeat") or job.HEARTBEAT), restart=True,
                           guard=self.guard_ask(last), store_ready=self.fetched is not None)
        result = job.start(bind(self.vast, self.exp_id), spec)
        if result["state"] == "exited" and result["exit_code"] != 0:
            raise Error("restart_failed", f"the restarted command exited at once with code {result['exit_code']}: "
                        + " | ".join(result["log_tail"][-2:])[:200], "Read 'vasticlaude logs' and fix it.", FAILED)
        self.to_instance = result["instance_id"]
        self.step(f"restarted `{last['command'][:80]}` on instance {result['instance_id']}",
                  instance_id=result["instance_id"])

    def guard_ask(self, last: dict) -> job.GuardAsk:
        """The guard the last run had, its hour limit less the time it already ran."""
        guard = self.exp.get("guard") or {}
        if guard.get("watchdog") is False:
            return job.GuardAsk(watchdog=False)
        hours = guard.get("max_hours")
        if hours is not None:
            hours = max(float(hours) - (time.time() - float(last.get("at") or time.time())) / 3600, 0.01)
        return job.GuardAsk(budget_usd=guard.get("budget_usd"), max_hours=hours, grace_s=guard.get("grace_s"),
                            check_s=guard.get("check_s"), kill_grace_s=guard.get("kill_grace_s"),
                            on_end=guard.get("on_end"), store_path=guard.get("store_path"),
                            store_then=guard.get("store_then") or "destroy")

    # -- interruptible: wait for the bid, raise it, else move
    def wait_bid(self, fault: dict) -> None:
        bound = self.a.bound
        iid, rec = bound.instance_id, bound.record
        bid, ceiling = float(rec.get("bid_price") or rec.get("gpu_dph") or 0), self.max_bid(bound)
        deadline, next_raise, asked = time.monotonic() + self.policy.preempt_wait_s, time.monotonic(), False
        self.step(f"instance {iid} preempted at bid ${bid:.4f}/h: waiting up to {self.policy.preempt_wait_s:g} s, "
                  f"bid ceiling ${ceiling:.4f}/h", instance_id=iid, bid=bid, ceiling=ceiling)
        while time.monotonic() < deadline:
            row = self.vast.instance(iid)
            state_now = (row or {}).get("actual_status")
            if state_now == "running" and self.ssh_ready(row):
                self.back(iid)
                return
            if row is None or state_now in ("offline", "exited"):
                break
            if state_now == "stopped" and row.get("intended_status") == "stopped" and not asked:
                self.vast.start(iid)  # stopped by intent: it can only come back once asked to
                asked = True
                self.step(f"asked Vast to start {iid} again (it runs once its bid wins)", instance_id=iid)
            if time.monotonic() >= next_raise and round(bid * self.policy.bid_step, 4) <= ceiling:
                bid = round(bid * self.policy.bid_step, 4)
                self.raise_bid(iid, rec, bid)
                next_raise = time.monotonic() + RAISE_EVERY * poll_scale()
            time.sleep(POLL * poll_scale())
        self.relaunch({**fault, "evidence": [*fault["evidence"], "the bid did not win the GPU back in time"]})

    def back(self, iid: int) -> None:
        """The instance runs again: restart the job, unless it had finished before the stop."""
        self.step(f"instance {iid} is back", instance_id=iid)
        seen = observe(bind(self.vast, self.exp_id), 0)["job"]
        if seen["state"] == "exited" and seen["exit_code"] == 0:
            self.step("its job had finished before the stop: nothing to restart", instance_id=iid)
            return
        self.restart()

    def max_bid(self, bound: Bound) -> float:
        """The lowest of: --max-bid, the on-demand price, and what the budget affords for the hours left."""
        on_demand = ((bound.row or {}).get("search") or {}).get("gpuCostPerHour")
        ceiling = self.policy.max_bid_dph or on_demand or 2 * float(bound.record.get("bid_price") or 0)
        cap = self.budget_usd()
        if cap is not None:
            hours = max(self.hours_left(), 0.05)
            spent = budget.experiment_spent(self.exp_id, state.load())
            ceiling = min(ceiling, (cap - spent) / hours - float(bound.record.get("storage_dph") or 0))
        return round(float(ceiling), 4)

    def raise_bid(self, iid: int, rec: dict, bid: float) -> None:
        self.vast.change_bid(iid, bid)
        storage = float(rec.get("storage_dph") or 0)
        state.upsert_instance(iid, bid_price=bid, gpu_dph=bid, dph_total=round(bid + storage, 6))
        self.step(f"raised the bid of {iid} to ${bid:.4f}/h", instance_id=iid, bid=bid)

    def ssh_ready(self, row: dict) -> bool:
        try:
            rec = state.load()["instances"].get(str(row.get("id"))) or {}
            return probe_any(route_for(row, ssh_key().private, prefer=rec.get("ssh_route")), timeout=15) is not None
        except Error:
            return False

    # -- move to another machine
    def relaunch(self, fault: dict) -> None:
        old = self.a.bound
        bigger = fault["action"] == "bigger_disk"
        if old is not None:
            self.salvage(old, full=bigger)
            self.retire(old, fault)
        bound = self.rent(fault, bigger)
        self.prepare_new(bound)

    def salvage(self, old: Bound, full: bool) -> None:
        """Bring home what still answers (an `unknown` host often does): the checkpoints (everything, for
        a full disk), within SALVAGE_S."""
        if (old.row or {}).get("actual_status") not in ("running", "unknown", "offline"):
            return  # stopped or exited: no SSH server runs there
        try:
            with retry.wall(SALVAGE_S):
                self.save_from(old, full)
        except Error as err:
            self.step(f"could not reach instance {old.instance_id} to save more ({err.message[:120]}); "
                      "resuming from the copy at home")

    def save_from(self, old: Bound, full: bool) -> None:
        if not full and self.store() is not None:  # the old instance ships its own last checkpoint
            checkpoints.ship(old.route(), self.exp_id)
            self.step(f"instance {old.instance_id} shipped its checkpoint to the results store")
        elif full:
            got = results.pull(old, dest=checkpoints.local_dir(self.exp_id))
            self.step(f"pulled {got['files']} files ({got['bytes']} B) from instance {old.instance_id}")
        else:
            got = checkpoints.sync_home(old.route(), self.exp_id, list(self.policy.sync))
            self.step(f"synced the checkpoint from instance {old.instance_id} ({got['files']} files)")

    def retire(self, old: Bound, fault: dict) -> None:
        iid = old.instance_id
        kind, details = teardown(self.vast, Target(iid, None, False), why=f"recover: {fault['kind']}")
        if kind == "failed":
            raise Error("not_destroyed", f"instance {iid} ({fault['kind']}) could not be confirmed destroyed: "
                        f"{details['reason']}", f"Run 'vasticlaude down {iid}' now; then 'vasticlaude recover' again.",
                        BILLING_RISK)
        machine = old.record.get("machine_id")
        if blames_machine(fault["kind"]) and machine is not None:
            remember_failed(int(machine), int(old.record.get("offer_id") or 0), f"{fault['kind']}: {fault['evidence'][0]}")
        self.step(f"destroyed instance {iid} (confirmed gone)", instance_id=iid)

    def rent(self, fault: dict, bigger: bool) -> Bound:
        plan, cands = self.offers(bigger)
        refuse_if_taken(self.vast, plan)
        key = ssh_key()
        register(self.vast, key)
        self.step(f"renting again: {', '.join(plan.wanted.gpus) or 'any GPU'}, {plan.wanted.disk_gb:g} GB disk"
                  + (", interruptible" if plan.wanted.interruptible else ""), disk_gb=plan.wanted.disk_gb)
        result = Launcher(self.vast, plan, key).launch(cands)
        self.to_instance = result["instance_id"]
        with state.experiment(self.exp_id) as exp:  # a second full disk grows from this size
            exp.setdefault("rental", {}).setdefault("wanted", asdict(plan.wanted))["disk_gb"] = plan.wanted.disk_gb
        self.step(f"instance {result['instance_id']} ready ({result['gpu_name']}, ${result['dph']:.3f}/h)",
                  instance_id=result["instance_id"], dph=result["dph"])
        return bind(self.vast, self.exp_id)

    def offers(self, bigger: bool) -> tuple[Plan, list]:
        """The same GPU model first (when the search named none); else whatever the original search allows."""
        same, general = self.plan(bigger, same_gpu=True), self.plan(bigger)
        try:
            return same, candidates(self.vast, None, same)
        except Error as err:
            if err.code != "no_offer" or same.wanted.gpus == general.wanted.gpus:
                raise
        return general, candidates(self.vast, None, general)

    def plan(self, bigger: bool, same_gpu: bool = False) -> Plan:
        rental, rec, cfg = self.exp.get("rental") or {}, self.record(), config.load()
        wanted = _wanted(rental.get("wanted"), rec, cfg)
        if same_gpu and not wanted.gpus and rec.get("gpu_name"):  # the like: the same GPU model, when there is one
            wanted = replace(wanted, gpus=(str(rec["gpu_name"]),), num_gpus=int(rec.get("num_gpus") or 1))
        disk = self.policy.disk_gb or (wanted.disk_gb * self.policy.disk_growth if bigger else wanted.disk_gb)
        used = budget.experiment_hours_used(self.exp_id, state.load())
        hours = max(wanted.hours - used, wanted.hours * 0.25)
        image = rental.get("image") or rec.get("image") or cfg["image"]
        limits = budget.Limits.from_config(cfg, experiment_usd=self.budget_usd())
        return Plan(self.exp_id, image, replace(wanted, disk_gb=round(disk, 3), hours=hours, limit=6),
                    rental.get("bid") if wanted.interruptible else None,
                    float(rental.get("deadline") or default_deadline(image)), True,
                    int(rental.get("max_attempts") or 3), limits, overlay=rental.get("overlay"))

    def record(self) -> dict:
        if self.a.bound is not None:
            return self.a.bound.record
        mine = [r for r in state.load()["instances"].values() if r.get("experiment") == self.exp_id]
        return max(mine, key=lambda r: r.get("created_at", 0)) if mine else {}

    def prepare_new(self, bound: Bound) -> None:
        """Code, then the checkpoint, then the command, on a fresh instance."""
        root = (self.exp.get("push") or {}).get("root")
        if root:
            pushed = code.push(bound, Path(root))
            if pushed["exit_code"]:
                raise Error("setup_failed", f"setup failed on the new instance (exit {pushed['setup']['exit_code']})",
                            "Read run/setup.log ('vasticlaude logs'), fix, then 'vasticlaude recover' again.", FAILED)
            self.step(f"pushed the code ({pushed['files']} files) to instance {bound.instance_id}")
        else:
            self.step("no pushed code on record (the experiment never used `vasticlaude push`): nothing to send")
        if not self.fetch(bound):
            sent = checkpoints.send(bound.route(), self.exp_id)
            self.step(f"checkpoint sent ({sent['files']} files, {sent['bytes']} B)" if sent["sent"] else
                      "no checkpoint at home: the job starts from the beginning", files=sent["files"])
        self.restart()

    def store(self) -> bucket.Target | None:
        """The results store the experiment ships to (None: the checkpoint travels through the laptop)."""
        if not self.exp.get("store"):
            return None
        return bucket.resolve(config.load(), sandbox=self.vast.target.sandbox)

    def fetch(self, bound: Bound) -> bool:
        """The new instance downloads the checkpoint from the store itself (the laptop relays nothing);
        False when there is no store or it holds no checkpoint."""
        target = self.store()
        if target is None:
            return False
        got = bucket.install(bound.route(), Layout(self.exp_id).run, self.exp_id, target, action="fetch",
                             path=bucket.path_of(self.exp_id))
        if not got.get("files"):
            self.step("the results store holds no checkpoint yet")
            return False
        self.fetched = {"files": got["files"], "bytes": got["bytes"]}
        self.step(f"instance {bound.instance_id} fetched the checkpoint from the results store "
                  f"({got['files']} files, {got['bytes']} B)", files=got["files"], source="store")
        return True

    # -- budget
    def budget_usd(self) -> float | None:
        return budget.experiment_budget(None, self.exp, config.load())

    def hours_left(self) -> float:
        wanted = (self.exp.get("rental") or {}).get("wanted") or {}
        return float(wanted.get("hours") or 1.0) - budget.experiment_hours_used(self.exp_id, state.load())


def _wanted(saved: dict | None, rec: dict, cfg: dict) -> Wanted:
    """The recorded search, else one made from the instance record (older experiments)."""
    if saved:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in Wanted.__dataclass_fields__}
        return Wanted(**fields)
    return Wanted(gpus=(str(rec["gpu_name"]),) if rec.get("gpu_name") else tuple(cfg.get("gpu") or ()),
                  num_gpus=int(rec.get("num_gpus") or 1), disk_gb=float(rec.get("disk") or cfg["disk_gb"]),
                  interruptible=bool(rec.get("is_bid")), verified=bool(cfg.get("verified", True)),
                  hours=float(cfg.get("hours") or 1.0))


# ----- bookkeeping ----------------------------------------------------------------------------------
def recover(assessment: Assessment, vast: Vast, policy: Policy, kind: type[Recovery] = Recovery) -> dict:
    """One recovery of `assessment.fault`, bounded and recorded; raises Error when it cannot be done.
    `kind` carries it out (a node of a group: everything but the restart, which the group does)."""
    fault, exp_id = assessment.fault, assessment.experiment
    assert fault is not None
    exp = state.read_experiment(exp_id) or {}
    done = [r for r in exp.get("recoveries") or [] if not r.get("interrupted")]  # API trouble is not a try
    attempt = len(done) + 1
    if fault["action"] != "none" and attempt > policy.max_attempts:
        raise Error("recovery_limit", f"{fault['kind']} again, and {len(done)} recoveries were already made "
                    f"(limit {policy.max_attempts})", "Look at what keeps failing (vasticlaude report); raise "
                    "recovery.max_attempts or --max-attempts to go on.", FAILED)
    worker = kind(assessment, vast, policy)
    _check_budget(exp_id, worker.budget_usd())
    busy = Error("recovery_running", f"another recovery of {exp_id} is under way",
                 "Wait for it ('vasticlaude status'), then look again.", FAILED)
    with state.only_one(state.experiment_dir(exp_id) / "recover.lock", busy):  # a watch and a hand, or two watches
        return _attempt(assessment, worker, attempt)


def _attempt(assessment: Assessment, worker: "Recovery", attempt: int) -> dict:
    fault, exp_id = assessment.fault, assessment.experiment
    assert fault is not None
    from_id = assessment.bound.instance_id if assessment.bound else None
    start = time.monotonic()
    with state.experiment(exp_id) as data:
        data["recovering"] = {"at": time.time(), "kind": fault["kind"], "from_instance": from_id}
    state.append_event(exp_id, "recover_start", kind=fault["kind"], action=fault["action"],
                       evidence=fault["evidence"], instance_id=from_id, attempt=attempt)
    try:
        worker.perform(fault)
    except Error as err:
        _finish(exp_id, fault, from_id, worker, start, ok=False, reason=err.message, interrupted=err.exit_code == API)
        if err.exit_code == API:  # say where it stopped: the next recover picks up from there
            raise Error(err.code, f"{err.message}; done so far: {'; '.join(worker.steps) or 'nothing'}",
                        "Run 'vasticlaude recover' again once Vast answers: it picks up where it stopped.", API) from None
        raise
    entry = _finish(exp_id, fault, from_id, worker, start, ok=True)
    have = checkpoints.summary(checkpoints.local_dir(exp_id))
    if worker.fetched:  # the checkpoint came from the store, not from home
        have = {**worker.fetched, "newest": None, "source": "store"}
    return {"experiment": exp_id, "fault": _public(fault), "action": fault["action"], "done": True,
            "from_instance": from_id, "to_instance": worker.to_instance, "steps": worker.steps,
            "checkpoint": {"files": have["files"], "bytes": have["bytes"], "source": have.get("source", "home"),
                           "age_s": round(time.time() - have["newest"], 1) if have["newest"] else None},
            "seconds": entry["seconds"], "attempt": attempt, "spent_usd": round(budget.experiment_spent(exp_id, state.load()), 4)}


def _check_budget(exp_id: str, cap: float | None) -> None:
    spent = budget.experiment_spent(exp_id, state.load())
    if cap is not None and spent >= cap:
        raise Error("over_budget", f"experiment {exp_id} has spent ${spent:.2f} of its ${cap:.2f} budget: "
                    "no recovery", f"Pull what exists and tear down (vasticlaude down --experiment {exp_id}), or "
                    "raise the budget.", FAILED)


def _finish(exp_id: str, fault: dict, from_id: int | None, worker: Recovery, start: float, ok: bool,
            reason: str = "", interrupted: bool = False) -> dict:
    entry = {"at": time.time(), "kind": fault["kind"], "action": fault["action"], "from_instance": from_id,
             "to_instance": worker.to_instance, "ok": ok, "seconds": round(time.monotonic() - start, 1)}
    if interrupted:
        entry["interrupted"] = True
    if reason:
        entry["reason"] = reason[:300]
    with state.experiment(exp_id) as data:
        data.setdefault("recoveries", []).append(entry)
        if ok:
            data.pop("recovering", None)
    state.append_event(exp_id, "recovered" if ok else "recover_failed", **{k: v for k, v in entry.items() if k != "at"})
    return entry


def _public(fault: dict) -> dict:
    return {k: fault[k] for k in ("kind", "evidence", "action", "plan")}






def unrecovered(assessment: Assessment, dry_run: bool = False) -> dict:
    """What `recover` reports when it does nothing: no fault, a dry run, or a fault that needs you (exit 1)."""
    fault = assessment.fault
    seen = (assessment.snap or {}).get("job") or {}
    data = {"experiment": assessment.experiment, "fault": _public(fault) if fault else None,
            "action": fault["action"] if fault else "none", "done": False,
            "from_instance": assessment.bound.instance_id if assessment.bound else None,
            "job": seen.get("state"), "spent_usd": round(budget.experiment_spent(assessment.experiment, state.load()), 4)}
    if fault and fault["action"] == "none" and not dry_run:
        data["exit_code"] = FAILED
    return data

"""Run a sweep: many runs on at most K instances under one total budget, resumable after a kill -9.

Each of the K slots is an experiment of its own (`<sweep>.w1` …), so everything that works
for one experiment works for a slot: `up` rents it (search, failover, exclusions), `push`
sends the code once, `run` starts each run under the wrapper and the watchdog, `recover`
brings a faulted run back, `status` and the session-end reap see its current run. A slot
that finishes a run takes the next one on the same instance: no new boot, no new push.

A run's outputs go to `runs/<id>/outputs` beside the slot's code on the instance
(VASTICLAUDE_OUTPUT_DIR); when it ends its log and run files are moved there too, the
folder is pulled home (without the `pulled` marker, so the run's watchdog keeps guarding
until the next run's start replaces it) and the checkpoint folder is emptied for the next.

The budget: per-slot caps whose sum never exceeds the total (core/sweepspec), each given to
the run's watchdog as the slot's budget, so the total holds with the laptop gone; the
controller refuses a start the cap cannot cover, and the leftovers of retired slots go to
the next run started. State: experiments/<sweep>/experiment.json["sweep"] (human-readable,
locked, atomic), written before every step, so a resumed controller neither starts a run
twice nor rents a slot twice (a slot's label is fixed: `up` finds what a killed one rented).
"""
from __future__ import annotations

import shlex
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from vasticlaude.core import budget, sweepspec
from vasticlaude.core import money as costing
from vasticlaude.core.logparse import series
from vasticlaude.core.market import Wanted
from vasticlaude.errors import API, BILLING_RISK, FAILED, Error
from vasticlaude.ops import checkpoints, code, job, launch
from vasticlaude.ops.binding import Bound, attach
from vasticlaude.ops.connect import connect
from vasticlaude.ops.reconcile import PREFIX, reconcile
from vasticlaude.ops.recovery import Policy, assess, recover
from vasticlaude.ops.results import pull_verified
from vasticlaude.ops.teardown import Target, teardown
from vasticlaude.output import log_crash, progress
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import ssh_key
from vasticlaude.remote.transfer import remote
from vasticlaude.store import config, state
from vasticlaude.vast.account import Account
from vasticlaude.vast.gateway import Vast

ENDED = {"exited", "killed", "vanished"}
FINAL = {"done", "failed", "stopped", "lost", "not_run"}
VERSION = 1
START_S = 2.0  # seconds from the spend the start is priced at to the watchdog's first look (an SSH call)
SHIP_WAIT_S = 900.0  # with a results store: how long an ended run's files wait for its watchdog to ship them


@dataclass(frozen=True)
class SweepPlan:
    """What a new sweep runs and rents, settled before any API call (a resume reads it back from the state)."""

    name: str
    runs: tuple
    parallel: int
    budget_usd: float
    image: str
    wanted: Wanted
    root: str
    bid: float | None = None
    deadline: float = 300.0
    max_attempts: int = 3
    setup: bool = True
    grace_s: float = 600.0
    check_s: float | None = None
    kill_grace_s: float | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Options:
    """How the controller runs (not kept with the sweep: a resume may change them)."""

    account: Account = Account()
    interval: float = 5.0
    policy: Policy | None = None
    resume: bool = False
    timeout: float | None = None  # stop looking after this many seconds; the runs go on under their watchdogs


class Paused(Exception):
    """The controller's --timeout passed: leave this slot as it is (its run goes on, guarded)."""


# ----- the state ------------------------------------------------------------------------------------
class Book:
    """The sweep's record in its experiment.json, changed only under the lock (threads and processes)."""

    def __init__(self, name: str):
        self.name, self.mutex = name, threading.Lock()

    def read(self) -> dict:
        return (state.read_experiment(self.name) or {}).get("sweep") or {}

    @contextmanager
    def change(self) -> Iterator[dict]:
        with self.mutex, state.experiment(self.name) as exp:
            yield exp["sweep"]

    def run(self, rid: str, **fields: object) -> None:
        with self.change() as sw:
            next(r for r in sw["runs"] if r["id"] == rid).update(fields)
        if fields.get("state"):
            state.append_event(self.name, "sweep_run", run=rid, **{k: v for k, v in fields.items() if k != "env"})

    def slot(self, name: str, **fields: object) -> None:
        with self.change() as sw:
            next(s for s in sw["slots"] if s["name"] == name).update(fields)


def new_state(plan: SweepPlan) -> dict:
    k = max(1, min(plan.parallel, len(plan.runs)))
    caps = sweepspec.first_caps(plan.budget_usd, k)
    rental = {"image": plan.image, "wanted": asdict(plan.wanted), "bid": plan.bid, "deadline": plan.deadline,
              "max_attempts": plan.max_attempts}
    guard = {"grace_s": plan.grace_s, "check_s": plan.check_s, "kill_grace_s": plan.kill_grace_s}
    return {"version": VERSION, "created_at": time.time(), "state": "running", "budget_usd": plan.budget_usd,
            "parallel": plan.parallel, "metric": plan.metric, "root": plan.root, "setup": plan.setup,
            "rental": rental, "guard": guard,
            "runs": [{"id": r.id, "params": r.params, "command": r.command, "env": r.env, "state": "pending"}
                     for r in plan.runs],
            "slots": [{"name": f"{plan.name}.w{i + 1}", "cap_usd": caps[i], "state": "idle"} for i in range(k)]}


def slot_plan(sw: dict, slot: dict) -> launch.Plan:
    rental = sw["rental"]
    wanted = Wanted(**{k: tuple(v) if isinstance(v, list) else v for k, v in rental["wanted"].items()})
    limits = budget.Limits.from_config(config.load(), experiment_usd=slot["cap_usd"])
    return launch.Plan(slot["name"], rental["image"], wanted, rental["bid"], float(rental["deadline"]), True,
                       int(rental["max_attempts"]), limits)


def slot_spent(name: str) -> float:
    return budget.experiment_spent(name, state.load())


# ----- the remote steps of a run ------------------------------------------------------------------
# The run about to start uses the slot's usual folders (so `pull`, `recover` and the reap see it as
# any experiment's run): they start empty, and run/sweep_run names the run.
PREPARE = ('cd {base} || exit 1; mkdir -p run checkpoints outputs; '
           'printf "%s\\n" {rid} > run/sweep_run.tmp && mv -f run/sweep_run.tmp run/sweep_run; rm -f run/started_at; '
           'find checkpoints outputs -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +; echo @@ok')
# After a recovery restarted the run on a new instance: that instance's run files are this run's.
MARK = ('cd {base} || exit 1; '
        'printf "%s\\n" {rid} > run/sweep_run.tmp && mv -f run/sweep_run.tmp run/sweep_run; echo @@ok')

WHERE = ('cd {base} 2>/dev/null || {{ echo @@none; exit 0; }}; echo "@@run=$(cat run/sweep_run 2>/dev/null)"; '
         '[ -f run/started_at ] && echo @@started; [ -f runs/{rid}/run/exit_code ] && echo @@archived; exit 0')
# Move the ended run's outputs, checkpoints and log to runs/<run>/ (the next run starts with empty
# folders and does not resume from this one's checkpoint); copy its run files (the watchdog reads them).
# With a results store: has the ended run's watchdog shipped it (or given up), or is it still at it?
SHIPPED = ('cd {base} || exit 1; e=$(cat run/ended_at 2>/dev/null || echo 0); e=${{e%.*}}; '
           'for f in shipped store_fallback; do t=$(cat run/$f 2>/dev/null) && [ "${{t%.*}}" -ge "$e" ] && echo @@$f; done; '
           'p=$(cat run/watchdog_pid 2>/dev/null); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo @@watchdog; exit 0')
ARCHIVE = ('cd {base} || exit 1; [ "$(cat run/sweep_run 2>/dev/null)" = {rid} ] || {{ echo @@other; exit 0; }}; '
           'mkdir -p runs/{rid}/run runs/{rid}/checkpoints runs/{rid}/outputs; '
           '[ -f run/job.log ] && mv -f run/job.log runs/{rid}/run/; '
           'for f in exit_code started_at ended_at signal; do [ -f run/$f ] && cp -f run/$f runs/{rid}/run/; done; '
           'for d in checkpoints outputs; do find $d -mindepth 1 -maxdepth 1 -exec mv -f {{}} runs/{rid}/$d/ \\; ; done; '
           'echo @@ok')


def remote_step(bound: Bound, template: str, rid: str, what: str) -> list[str]:
    script = template.format(base=shlex.quote(Layout(bound.experiment).base), rid=shlex.quote(rid))
    return remote(bound.route(), script, what).splitlines()


def watchdog_cap(cap: float, bound: Bound, guard: dict) -> float:
    """The cap the run's watchdog enforces: the slot's, less what it bills before the watchdog's first
    look (the start over SSH) and between two looks, so that where it stops lands within the cap."""
    dph = float(bound.record.get("dph_total") or 0)
    blind_s = float(guard.get("check_s") or 15) + START_S
    return round(max(0.0, cap - dph * blind_s / 3600), 8)


def run_room(cap: float, bound: Bound, guard: dict) -> float:
    """Dollars of the slot's cap a run can spend before its watchdog stops it: the watchdog's cap
    (watchdog_cap) less what it stops early by, a check interval plus the kill grace ahead."""
    dph = float(bound.record.get("dph_total") or 0)
    ahead_s = float(guard.get("check_s") or 15) + float(guard.get("kill_grace_s") or 0)
    return watchdog_cap(cap, bound, guard) - dph * ahead_s / 3600


# ----- one slot ----------------------------------------------------------------------------------
class Slot:
    """One instance's share of the sweep: rent, push, then runs one after another until none is left."""

    def __init__(self, book: Book, name: str, opts: Options, claim: "Claims"):
        self.book, self.name, self.opts, self.claims = book, name, opts, claim
        self.vast: Vast | None = None
        self.bound: Bound | None = None
        self.paused = False
        self.until = time.monotonic() + opts.timeout if opts.timeout else None

    @property
    def info(self) -> dict:
        return next(s for s in self.book.read()["slots"] if s["name"] == self.name)

    def say(self, message: str) -> None:
        progress(f"vasticlaude sweep: {self.name}: {message}")

    def nap(self) -> None:
        if self.until is not None and time.monotonic() >= self.until:
            raise Paused()
        time.sleep(self.opts.interval)

    def work(self) -> None:
        try:
            self.vast = connect(self.opts.account)
            self.loop()
        except Paused:
            self.paused = True
            self.say("the controller's time is up: its runs go on, guarded by their watchdogs")
        except Error as err:
            self.say(f"stops: {err.message}")
            self.book.slot(self.name, note=err.message[:300], code=err.code)
        except Exception as err:  # noqa: BLE001 — a slot's crash must not leave its instance billing
            self.say(f"crashed ({type(err).__name__}); details in {log_crash('vasticlaude sweep')}")
            self.book.slot(self.name, note=f"crashed: {type(err).__name__}")
        finally:
            if not self.paused:
                self.retire()

    def loop(self) -> None:
        while True:
            if self.until is not None and time.monotonic() >= self.until:
                raise Paused()
            rid = self.claims.take(self.name)
            if rid is None:
                return
            if self.ended_while_away(rid):
                self.finish(rid, {"state": "exited", "exit_code": checkpoints.local_exit_code(self.name), "home": True})
                continue
            if not self.ready(rid):
                return
            if not self.execute(rid):
                return

    def ended_while_away(self, rid: str) -> bool:
        """The run ended while no controller looked, and its instance is gone with its files home
        (the session-end reap pulls, then destroys): nothing to rent for it."""
        if self.claims.run(rid)["state"] not in ("starting", "running"):
            return False
        live = [r for r in state.live_instances() if r.get("experiment") == self.name]
        return not live and checkpoints.ended_home(self.name)

    # -- the instance
    def ready(self, rid: str) -> bool:
        """A running instance with the code on it; False (the run given back) when none can be had."""
        try:
            self.bound = self.instance()
            self.push_once()
            return True
        except Error as err:  # after a resume the run may have begun on the instance that is gone
            begun = self.claims.run(rid)["state"] in ("starting", "running")
            self.claims.give_back(rid, err.message, may_have_run=begun)
            self.say(f"no instance: {err.message}")
            self.book.slot(self.name, note=err.message[:300], code=err.code)
            return False

    def instance(self) -> Bound:
        assert self.vast is not None
        if self.bound is not None and self.vast.instance(self.bound.instance_id) is not None:
            return self.rebind()
        live = [r for r in state.live_instances() if r.get("experiment") == self.name]
        for rec in sorted(live, key=lambda r: r.get("created_at", 0), reverse=True):
            bound = attach(self.vast, rec)
            if bound.row is not None:
                self.say(f"reusing instance {bound.instance_id}")
                try:
                    launch.Launcher(self.vast, slot_plan(self.book.read(), self.info), ssh_key()).wait(bound.instance_id)
                    return self.rebind(bound)
                except launch.Failed as failed:
                    self.say(f"instance {bound.instance_id} will not do ({failed.reason})")
            teardown(self.vast, Target(bound.instance_id, None, True), why="sweep: gone")
        self.book.slot(self.name, state="renting")
        self.say("renting")
        got = launch.up(self.vast, slot_plan(self.book.read(), self.info), spread=self.index())
        self.book.slot(self.name, state="ready", instance_id=got["instance_id"], rentals=self.info.get("rentals", 0) + 1)
        return self.rebind()

    def index(self) -> int:
        return [s["name"] for s in self.book.read()["slots"]].index(self.name)

    def rebind(self, bound: Bound | None = None) -> Bound:
        assert self.vast is not None
        rec = bound.record if bound else next(r for r in state.live_instances() if r.get("experiment") == self.name)
        fresh = attach(self.vast, state.load()["instances"][str(rec["id"])])
        self.book.slot(self.name, state="ready", instance_id=fresh.instance_id)
        return fresh

    def push_once(self) -> None:
        assert self.bound is not None
        sw = self.book.read()
        if self.info.get("pushed_to") == self.bound.instance_id:
            return
        self.say(f"pushing the code to instance {self.bound.instance_id}")
        got = code.push(self.bound, Path(sw["root"]), setup=bool(sw.get("setup", True)))
        if got["exit_code"]:
            raise Error("setup_failed", f"setup failed on instance {self.bound.instance_id} "
                        f"(exit {got['setup']['exit_code']}): {' | '.join(got['setup']['tail'][-2:])[:200]}",
                        "Fix the setup, then resume the sweep.", FAILED)
        self.book.slot(self.name, pushed_to=self.bound.instance_id)

    # -- one run
    def execute(self, rid: str) -> bool:
        """Start (unless it already runs), see it through, bring it home; False when the slot must stop."""
        run = self.claims.run(rid)
        at = self.where(rid) if run["state"] in ("starting", "running") else "nothing"
        if at in ("started", "archived"):
            self.book.run(rid, state="running")
        elif not self.start(rid):  # never started, or its instance went before its end was seen
            return False
        ended = self.see_through(rid)
        if ended is None:
            return self.bound is not None
        return self.finish(rid, ended)

    def where(self, rid: str) -> str:
        """What the slot's instance says of this run: started, archived, or nothing."""
        assert self.bound is not None
        out = remote_step(self.bound, WHERE, rid, "reading the run's files")
        if f"@@run={rid}" not in out:
            return "nothing"
        return "archived" if "@@archived" in out else "started" if "@@started" in out else "nothing"

    def cap(self) -> float:
        """Grow this slot's cap by what no other slot holds; the sum of the caps stays within the total."""
        with self.book.change() as sw:
            caps = {s["name"]: float(s["cap_usd"]) for s in sw["slots"]}
            final = {s["name"]: float(s["final_usd"]) for s in sw["slots"] if s.get("final_usd") is not None}
            mine = next(s for s in sw["slots"] if s["name"] == self.name)
            mine["cap_usd"] = sweepspec.grow(float(sw["budget_usd"]), caps, final, self.name)
            return mine["cap_usd"]

    def start(self, rid: str) -> bool:
        assert self.bound is not None
        run, sw = self.claims.run(rid), self.book.read()
        cap = self.cap()
        short = self.cannot_finish(cap, sw)
        if short:
            self.claims.give_back(rid, short)
            self.say(f"budget: {short}")
            self.book.slot(self.name, note=f"budget: {short}"[:300], code="over_budget")
            return False
        if self.over_total():
            self.claims.give_back(rid, "the sweep's total budget is spent")
            return False
        remote_step(self.bound, PREPARE, rid, "preparing the run")
        env = {**run["env"], "VASTICLAUDE_SWEEP": self.book.name, "VASTICLAUDE_SWEEP_RUN": rid}
        command = run["command"]
        guard = sw.get("guard") or {}
        ask = job.GuardAsk(budget_usd=watchdog_cap(cap, self.bound, guard), grace_s=guard.get("grace_s"), check_s=guard.get("check_s"),
                           kill_grace_s=guard.get("kill_grace_s"), on_end="destroy",
                           store_path=f"{self.book.name}/{rid}", store_then="grace")  # store: each run its own copy
        # cap and $/h go down before the launch: a run whose start is not confirmed is watched with them
        self.book.run(rid, state="starting", slot=self.name, instance_id=self.bound.instance_id, cap_usd=cap,
                      dph=job.dph_of(self.bound), recoveries=run.get("recoveries", 0))
        try:
            got = job.start(self.bound, job.JobSpec(command=command, env=env, restart=True, guard=ask))
        except Error as err:
            if err.code == "over_budget":  # job.start's own check refused it: nothing was launched
                self.claims.give_back(rid, err.message)
                self.say(f"budget: {err.message}")
                self.book.slot(self.name, note=f"budget: {err.message}"[:300], code="over_budget")
                return False
            if not self.began(rid):
                self.claims.give_back(rid, err.message)
                raise
            # The launch's answer was lost, not the launch: e.g. its watchdog stopped the job at once and
            # destroyed the instance under the SSH call. It ran: the watch finds how it ended.
            self.say(f"{rid}: its start was not confirmed ({err.message[:120]}); it began, watching it")
            self.book.run(rid, state="running", started_at=time.time())
            return True
        self.say(f"{rid} started on instance {self.bound.instance_id}: {run['command'][:100]}")
        self.book.run(rid, state="running", started_at=time.time(), dph=got["guard"]["dph"])
        return True

    def began(self, rid: str) -> bool:
        """After a failed launch: did the run begin? Its wrapper's started_at on the instance says (the
        run's folders were emptied just before); an instance that no longer answers counts as begun,
        since a run reported not run must never have run (the watch then finds what became of it)."""
        try:
            return self.where(rid) != "nothing"
        except Error:
            return True

    def cannot_finish(self, cap: float, sw: dict) -> str | None:
        """Why the cap left cannot pay for one more run like those this instance ran (None when it can):
        a run the budget would stop midway only wastes money. What is left is what the run's watchdog
        will let it spend (run_room), not the bare cap: it stops the job that much earlier."""
        done = [r for r in sw["runs"] if r.get("slot") == self.name and r.get("seconds") and r.get("dph")]
        if not done:
            return None
        assert self.bound is not None
        seconds = sum(float(r["seconds"]) for r in done) / len(done)
        need = float(done[-1]["dph"]) * seconds / 3600
        left = run_room(cap, self.bound, sw.get("guard") or {}) - slot_spent(self.name)
        if left >= need:
            return None
        return (f"${max(left, 0.0):.4f} of this instance's ${cap:.4f} share is left before its watchdog would stop "
                f"a run; a run here takes about ${need:.4f}")

    def over_total(self) -> bool:
        """The controller's own check of the one total: every slot's spend so far against it."""
        sw = self.book.read()
        spent = sum(slot_spent(s["name"]) for s in sw["slots"])
        return spent >= float(sw["budget_usd"])

    def see_through(self, rid: str) -> dict | None:
        """Watch until the run ends (recovering faults as `watch` does); its job, or None when lost."""
        seen: dict[str, float] = {}
        while True:
            try:
                a = assess(self.vast, self.name)
            except Error as err:
                if err.exit_code != API:
                    raise
                self.say(f"{rid}: cannot look ({err.message[:120]}); again in a moment")
                self.nap()
                continue
            if a.bound is None and a.fault is None:  # gone after its end, its files brought home (the reap)
                self.bound = None
                return {"state": "exited", "exit_code": checkpoints.local_exit_code(self.name), "home": True}
            job_now = (a.snap or {}).get("job") or {}
            fault = a.fault
            if job_now.get("state") in ENDED and (fault is None or fault["action"] == "none"):
                self.bound = a.bound
                return job_now
            if fault is not None and fault["action"] not in ("none",):
                first = seen.setdefault(fault["kind"], time.monotonic())
                if time.monotonic() - first >= fault["confirm_s"] and not self.recover(rid, a):
                    return None
            elif fault is not None:  # budget with the instance stopped or gone
                self.book.run(rid, state="stopped", note=fault["evidence"][0][:200])
                self.bound = None
                return None
            self.nap()

    def spent_out(self, rid: str) -> bool:
        """Has the run's watchdog reached its cap (and so, most likely, destroyed the instance itself)?"""
        run, sw = self.claims.run(rid), self.book.read()
        guard = sw.get("guard") or {}
        slack = float(guard.get("kill_grace_s") or 0) + float(guard.get("check_s") or 15) + 5
        cap = float(run.get("cap_usd") or 0)
        return bool(cap) and slot_spent(self.name) + float(run.get("dph") or 0) * slack / 3600 >= cap

    def recover(self, rid: str, a) -> bool:
        if a.fault["action"] == "relaunch" and self.spent_out(rid):
            self.book.run(rid, state="stopped", note=f"{a.fault['kind']} at the budget: its watchdog stopped it")
            self.bound = None
            return False
        self.say(f"{rid}: {a.fault['kind']} → {a.fault['plan']}")
        try:
            done = recover(a, self.vast, self.opts.policy or Policy.from_config(config.load()))
        except Error as err:
            if err.exit_code == API or err.code == "recovery_running":
                return True  # look again
            outcome = "stopped" if err.code == "over_budget" else "lost"
            self.book.run(rid, state=outcome, note=f"{a.fault['kind']}: {err.message}"[:300])
            self.bound = None
            return False
        run = self.claims.run(rid)
        self.book.run(rid, recoveries=int(run.get("recoveries") or 0) + 1, instance_id=done["to_instance"])
        self.book.slot(self.name, pushed_to=done["to_instance"])
        self.bound = self.rebind()
        remote_step(self.bound, MARK, rid, "marking the restarted run")
        return True

    def finish(self, rid: str, ended: dict) -> bool:
        """Archive on the instance, pull home, record the outcome, the metric and the run's cost."""
        dest = config.runs_dir(self.book.name, Path(self.book.read()["root"]))
        dest.mkdir(parents=True, exist_ok=True)
        try:
            if ended.get("home"):
                adopt_home_copy(self.name, dest / "runs" / rid)
            else:
                assert self.bound is not None
                self.wait_shipped(rid)
                remote_step(self.bound, ARCHIVE, rid, "keeping the run's files")
                pull_verified(self.bound.route(), Layout(self.name), [f"runs/{rid}"], dest, 0.0)
        except (Error, OSError) as err:  # e.g. its watchdog destroyed the instance at the budget: the outcome stands
            self.say(f"{rid}: its files did not come home ({getattr(err, 'message', str(err))[:160]})")
        code_ = ended.get("exit_code")
        killed = ended.get("state") == "killed" or ended.get("signal")
        outcome = "done" if code_ == 0 else "stopped" if killed and ended.get("signal") in ("budget", "max_hours") \
            else "failed"
        facts = run_facts(dest / "runs" / rid / "run")
        run = self.claims.run(rid)
        cost = round(float(run.get("dph") or 0) * facts["seconds"] / 3600, 6) if facts["seconds"] else None
        self.book.run(rid, state=outcome, exit_code=code_, ended_at=time.time(), seconds=facts["seconds"],
                      metrics=final_metrics(dest / "runs" / rid / "run" / "job.log"), cost_usd=cost,
                      local_path=str(dest / "runs" / rid))
        state.append_ledger(self.book.name, event="sweep_run", run=rid, params=run["params"], state=outcome,
                            exit_code=code_, instance_id=run.get("instance_id"), slot=self.name, cost_usd=cost,
                            seconds=facts["seconds"])
        self.say(f"{rid} {outcome} (exit {code_})")
        return outcome != "stopped"

    def wait_shipped(self, rid: str) -> None:
        """With a results store, the ended run's watchdog ships its folders before they move: wait for it
        (its verdict, or its end), at most SHIP_WAIT_S; the copy home is made either way."""
        path = ((state.read_experiment(self.name) or {}).get("store") or {}).get("path")
        if path != f"{self.book.name}/{rid}":
            return
        assert self.bound is not None
        deadline = time.monotonic() + SHIP_WAIT_S
        while time.monotonic() < deadline:
            said = " ".join(remote_step(self.bound, SHIPPED, rid, "asking whether the store has the run"))
            if "@@shipped" in said or "@@store_fallback" in said or "@@watchdog" not in said:
                return
            self.nap()
        self.say(f"{rid}: its watchdog did not ship it within {SHIP_WAIT_S:g} s; keeping the copy home only")

    # -- the end
    def retire(self) -> None:
        """No run left for this slot: destroy its instance (confirmed), close its share of the budget."""
        vast = self.vast or connect(self.opts.account)
        failed = []
        for rec in [r for r in state.live_instances() if r.get("experiment") == self.name]:
            kind, details = teardown(vast, Target(int(rec["id"]), None, False), why="sweep: slot done")
            if kind == "failed":
                failed.append(details)
            else:
                state.append_ledger(self.book.name, event="sweep_instance", instance_id=int(rec["id"]),
                                    slot=self.name, cost_usd=details.get("cost_usd"))
        spent = round(slot_spent(self.name), 6)
        self.book.slot(self.name, state="failed_teardown" if failed else "retired", final_usd=spent,
                       **({"undestroyed": [f["id"] for f in failed]} if failed else {}))
        self.claims.retired()


class Claims:
    """Hands out pending runs to slots, one at a time, under the book's lock."""

    def __init__(self, book: Book):
        self.book = book

    def run(self, rid: str) -> dict:
        return next(r for r in self.book.read()["runs"] if r["id"] == rid)

    def take(self, slot: str) -> str | None:
        """This slot's unfinished run first (after a resume), else the first pending one."""
        with self.book.change() as sw:
            mine = [r for r in sw["runs"] if r.get("slot") == slot and r["state"] in ("starting", "running")]
            if mine:
                return mine[0]["id"]
            for r in sw["runs"]:
                if r["state"] == "pending" and not r.get("claimed"):
                    r["claimed"] = slot
                    r.pop("note", None)  # why another slot gave it back is not this slot's story
                    return r["id"]
        return None

    def give_back(self, rid: str, why: str, may_have_run: bool = False) -> None:
        """The run waits for another slot; one that may have begun is remembered as such, so that if
        nothing runs it again it is reported `lost`, never `not_run`."""
        with self.book.change() as sw:
            run = next(r for r in sw["runs"] if r["id"] == rid)
            run.update(state="pending", note=why[:200])
            if may_have_run:
                run["may_have_run"] = True
            run.pop("claimed", None)
            run.pop("slot", None)

    def retired(self) -> None:
        """A slot stopped: its claim on pending runs is released (another slot or a resume takes them)."""
        with self.book.change() as sw:
            for r in sw["runs"]:
                if r["state"] == "pending":
                    r.pop("claimed", None)


def adopt_home_copy(slot: str, target: Path) -> None:
    """A run whose instance went after its end (the session-end reap pulled the slot's folders
    home, then destroyed it; or its watchdog shipped them to the results store, then destroyed it after
    the grace): its outputs, checkpoints and run files become the run's own."""
    source = checkpoints.local_dir(slot)
    if not (source / "run" / "exit_code").is_file() and checkpoints.ended_in_store(slot) is not None:
        from vasticlaude.ops.results import pull_from_store
        pull_from_store(slot, source, why="the run ended while no controller ran")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("outputs", "checkpoints", "run"):
        if (source / name).is_dir() and not (target / name).exists():
            shutil.move(str(source / name), str(target / name))


# ----- facts from the files at home ----------------------------------------------------------------
def run_facts(run_dir: Path) -> dict:
    def num(name: str) -> float | None:
        try:
            return float((run_dir / name).read_text().strip())
        except (OSError, ValueError):
            return None
    started, ended = num("started_at"), num("ended_at")
    return {"seconds": round(ended - started, 1) if started and ended else None}


def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def final_metrics(log: Path) -> dict:
    """The last value of every metric the run's log printed."""
    return {name: points[-1][1] for name, points in series(log_lines(log)).items() if points}


# ----- the controller ------------------------------------------------------------------------------
def begin(book: Book, plan: SweepPlan | None, resume: bool) -> dict:
    sw = book.read()
    if sw and not resume:
        raise Error("sweep_exists", f"sweep {book.name} already exists ({sw.get('state')})",
                    f"Finish it with vasticlaude sweep --experiment {book.name} --resume, or pick another --experiment.",
                    FAILED)
    if not sw:
        if plan is None:
            raise Error("no_sweep", f"no sweep {book.name} to resume", "Start it without --resume.", FAILED)
        with state.experiment(book.name) as exp:
            exp["sweep"] = new_state(plan)
            exp["command"] = "sweep: " + (plan.runs[0].command if plan.runs else "")
        state.append_event(book.name, "sweep_start", runs=len(plan.runs), parallel=plan.parallel,
                           budget_usd=plan.budget_usd)
        return book.read()
    with book.change() as cur:  # a resume: runs a killed controller left half-claimed go back to the pool
        cur["state"] = "running"
        for r in cur["runs"]:
            if r["state"] == "pending":
                r.pop("claimed", None)
        for s in cur["slots"]:
            if s["state"] in ("retired", "failed_teardown") and any(x["state"] == "pending" for x in cur["runs"]):
                s.update(state="idle", final_usd=None)
    state.append_event(book.name, "sweep_resume")
    return book.read()


def sweep(plan: SweepPlan | None, name: str, opts: Options) -> dict:
    """Run (or resume) the sweep `name` to its end; what `sweep` reports."""
    book = Book(name)
    busy = Error("sweep_busy", f"another controller of sweep {name} is running",
                 f"Watch it: vasticlaude status --experiment {name}")
    with state.only_one(state.experiment_dir(name) / "sweep.lock", busy):
        sw = begin(book, plan, opts.resume)
        if opts.resume:
            reconcile(connect(opts.account))  # adopts what a killed `up` rented (found by its label)
        claims = Claims(book)
        slots = [Slot(book, s["name"], opts, claims) for s in sw["slots"] if s["state"] not in ("retired",)]
        threads = [threading.Thread(target=s.work, name=s.name, daemon=True) for s in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(s.paused for s in slots):
            with book.change() as cur:
                cur["state"] = "paused"
            return summary(name)
        return close(book)


def close(book: Book) -> dict:
    with book.change() as sw:
        for r in sw["runs"]:
            if r["state"] == "pending" and r.get("may_have_run"):  # begun once, then its instance went
                r.update(state="lost", note=r.get("note") or "it may have begun on an instance that went; not run again")
            elif r["state"] == "pending":
                r.update(state="not_run", note=r.get("note") or "no budget or instance left for it")
            elif r["state"] == "starting":  # its slot stopped mid-launch: it may have run, so never `not_run`
                r.update(state="lost", note=r.get("note") or "its start was never confirmed")
            elif r["state"] == "running":  # its slot stopped under it (and destroyed its instance)
                r.update(state="lost", note=r.get("note") or "its instance was lost")
                r.pop("claimed", None)
        sw["state"] = "finished"
        sw["finished_at"] = time.time()
    for r in book.read()["runs"]:
        if r["state"] == "not_run":
            state.append_ledger(book.name, event="sweep_run", run=r["id"], params=r["params"], state="not_run",
                                cost_usd=0.0)
    return summary(book.name)


def summary(name: str) -> dict:
    """The sweep as `sweep` and `status` report it, from the state alone."""
    sw = (state.read_experiment(name) or {}).get("sweep")
    if not sw:
        raise Error("no_sweep", f"{name} is not a sweep", "Start one with vasticlaude sweep.", FAILED)
    data = state.load()
    slots = {s["name"] for s in sw["slots"]}
    recs = [r for r in data["instances"].values() if r.get("experiment") in slots]
    metric = pick_metric(sw)
    runs = [{"id": r["id"], "params": r["params"], "state": r["state"], "exit_code": r.get("exit_code"),
             "metric": (r.get("metrics") or {}).get(metric) if metric else None, "cost_usd": r.get("cost_usd"),
             "instance_id": r.get("instance_id"), "note": r.get("note")} for r in sw["runs"]]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    live = [int(r["id"]) for r in recs if not r.get("destroyed_at")]
    spent = round(sum(costing.instance_cost(r)["total_usd"] for r in recs), 6)
    undone = [i for s in sw["slots"] for i in s.get("undestroyed") or []]
    exit_code = BILLING_RISK if undone or (sw["state"] == "finished" and live) else \
        FAILED if sw["state"] == "paused" or (any(r["state"] != "done" for r in runs) and sw["state"] == "finished") \
        else 0
    return {"experiment": name, "state": sw["state"], "budget_usd": sw["budget_usd"], "spent_usd": spent,
            "parallel": sw["parallel"], "rentals": len(recs), "instances": sorted(int(r["id"]) for r in recs),
            "live_instances": live, "metric": metric, "best": best_run(runs, metric), "counts": counts,
            "runs": runs, "exit_code": exit_code}


LOWER_IS_BETTER = ("loss", "error", "err", "ppl", "perplexity", "mse", "mae", "rmse", "wer", "cer")


def pick_metric(sw: dict) -> str | None:
    """The chosen metric, else the first a finished run printed (a loss when there is one)."""
    if sw.get("metric"):
        return sw["metric"]
    names = [n for r in sw["runs"] for n in (r.get("metrics") or {})]
    return next((n for n in names if "loss" in n.lower()), names[0] if names else None)


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def best_run(runs: list[dict], metric: str | None) -> dict | None:
    scored = [r for r in runs if r["state"] == "done" and isinstance(r.get("metric"), (int, float))]
    if not metric or not scored:
        return None
    pick = min if lower_is_better(metric) else max
    top = pick(scored, key=lambda r: r["metric"])
    return {"id": top["id"], "params": top["params"], "metric": top["metric"]}


def is_sweep(name: str | None) -> bool:
    return bool(name) and bool((state.read_experiment(str(name)) or {}).get("sweep"))


def slot_names(name: str) -> list[str]:
    return [s["name"] for s in ((state.read_experiment(name) or {}).get("sweep") or {}).get("slots", [])]


def labels(name: str) -> list[str]:
    return [PREFIX + s for s in slot_names(name)]

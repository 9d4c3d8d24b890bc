"""Rent an offer for an experiment and wait until it answers over SSH, failing over to the next.

A plan (what to rent, how long to wait, the budget) is settled before any API call.
Safety, in order: the intent is written before the create, the instance right after;
a create is never blindly retried (the label is looked up first); every failed attempt
is destroyed and confirmed gone, and its machine skipped for 7 days (an offer someone else took
is not the machine's failure).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from vasticlaude.core import budget, retry
from vasticlaude.core.lifecycle import boot_deadline, record_status
from vasticlaude.core.market import Candidate, Wanted, candidate
from vasticlaude.core.retry import poll_scale, schedule
from vasticlaude.errors import BILLING_RISK, FAILED, Error
from vasticlaude.ops.reconcile import PREFIX
from vasticlaude.ops.search import find, remember_failed
from vasticlaude.ops.teardown import Target, teardown
from vasticlaude.output import fingerprint, progress, restated
from vasticlaude.remote.ssh import Key, endpoints, probe_any, route_for, ssh_key
from vasticlaude.store import state
from vasticlaude.vast.account import is_registered
from vasticlaude.vast.gateway import Vast, VastError

BID_MARGIN = 1.15
CREATE_TRIES = 3  # creates after confirming by label that the previous one left nothing
# Given up at once. Not `unknown`, `scheduling`, `rebooting` (nor `frozen`): on Vast they pass.
FAIL_FAST = {"exited", "offline", "stopped"}
# What a boot that will never finish says in status_msg (vast-cli's tests; vast-api.md §17).
BOOT_FAILED = re.compile(r"OCI runtime create failed|Error response from daemon: manifest .*not found|"
                         r"docker_build\(\) error", re.I)
POLL_CAP = 16.0  # the longest pause between two looks at a booting instance (× VASTICLAUDE_POLL_SCALE)
QUIET_S = 10.0  # a boot quicker than this prints no status lines: progress is for waits a person notices (× the poll scale)
TEARDOWN_S = 30.0  # the most a failed attempt's teardown may add after its deadline (× the poll scale)


@dataclass(frozen=True)
class Plan:
    """What to rent and how long to wait, settled before any API call."""

    experiment: str
    image: str
    wanted: Wanted
    bid: float | None
    deadline: float
    wait: bool
    max_attempts: int
    limits: budget.Limits
    overlay: str | None = None  # several nodes: the overlay network the instance joins at create
    deadline_why: str = ""      # where the boot deadline comes from (the image class, a flag, the config)

    @property
    def label(self) -> str:
        return PREFIX + self.experiment

    def gpu_dph(self, cand: Candidate) -> float:
        """$/h for the GPU: the bid when interruptible (what Vast bills), else the price."""
        if not self.wanted.interruptible:
            return cand.gpu_dph
        return self.bid or round(cand.gpu_dph * BID_MARGIN, 4)


@dataclass(frozen=True)
class Attempt:
    offer_id: int
    machine_id: int
    outcome: str
    reason: str


class Failed(Exception):
    """This attempt failed; `machine` says whether to blame (and skip) the machine."""

    def __init__(self, reason: str, machine: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.machine = machine


# ----- plan, key, candidates ------------------------------------------------------------------
def default_deadline(image: str) -> float:
    """The boot wait for an image, by its size class (core.lifecycle.boot_deadline)."""
    return boot_deadline(image)[0]


def register(vast: Vast, key: Key) -> None:
    """Put the key on the account unless it is there (compared by type and body, not comment)."""
    if is_registered(key.public, vast.ssh_keys()):
        return
    vast.add_ssh_key(key.public)


def candidates(vast: Vast, offer_id: int | None, plan: Plan) -> list[Candidate]:
    if offer_id is None:
        return [Candidate(**c) for c in find(vast, plan.wanted)["candidates"]]
    rows = vast.search_offers(f"id={offer_id} verified=any rentable=true", "dph", 1,
                              plan.wanted.interruptible, plan.wanted.disk_gb)
    if not rows:
        raise Error("offer_gone", f"offer {offer_id} is not available (taken, or too small for the disk)",
                    "Pick another with 'vasticlaude offers'.", FAILED)
    return [candidate(rows[0], plan.wanted)]


def check_budget(plan: Plan, cand: Candidate) -> dict:
    dph = plan.gpu_dph(cand) + cand.storage_dph
    return budget.check_before_rent(plan.limits, plan.experiment, dph, plan.wanted.hours, state.load(),
                                    transfer_usd=cand.transfer_usd)


def refuse_if_taken(vast: Vast, plan: Plan) -> None:
    """One experiment, one instance: a second `up` must not rent a duplicate."""
    rows = vast.find_by_label(plan.label)
    if rows:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise Error("experiment_busy", f"experiment {plan.experiment} already has instance {ids} on the account",
                    f"Use it, run 'vasticlaude down --experiment {plan.experiment}', or pick another --experiment.")


# ----- ssh readiness --------------------------------------------------------------------------
def hopeless(row: dict) -> str | None:
    """Why this instance will never become usable, or None while it still might."""
    status, msg = row.get("actual_status"), str(row.get("status_msg") or "")
    if status in FAIL_FAST:
        return f"{status}" + (f": {msg}" if msg else "")
    if status in ("created", "loading") and BOOT_FAILED.search(msg):
        return f"the container cannot start: {msg}"
    return None


# ----- one launch -----------------------------------------------------------------------------
class Launcher:
    """Tries candidates in order until one is ready; destroys every failure."""

    def __init__(self, vast: Vast, plan: Plan, key: Key):
        self.vast, self.plan, self.key = vast, plan, key
        self.attempts: list[Attempt] = []
        self.key_print: str | None = None  # the fingerprint of the last create's instance key

    def launch(self, cands: Iterable[Candidate]) -> dict:
        """Try the candidates in order, one per machine, up to the plan's max_attempts (read lazily: the
        nodes booting at once hand out their spare machines as they go)."""
        tried: set[int] = set()
        for cand in cands:
            if len(self.attempts) >= self.plan.max_attempts:
                break
            if cand.machine_id not in tried:
                tried.add(cand.machine_id)
                result = self.attempt(cand)
                if result is not None:
                    return result
        summary = "; ".join(f"offer {a.offer_id}: {a.reason}" for a in self.attempts) or "no candidate left"
        raise Error("no_offer_worked", f"no offer worked ({summary})",
                    "Nothing is left billing. Try other GPUs or regions ('vasticlaude offers'), or later.", FAILED)

    def attempt(self, cand: Candidate) -> dict | None:
        check_budget(self.plan, cand)
        why = f" ({self.plan.deadline_why})" if self.plan.deadline_why else ""
        restated(f"vasticlaude up: renting offer {cand.offer_id} ({cand.num_gpus}x {cand.gpu_name}, machine "
                 f"{cand.machine_id}, ${self.plan.gpu_dph(cand) + cand.storage_dph:.3f}/h)"
                 + (f"; boot deadline {self.plan.deadline:g} s{why}" if self.plan.wait else ""))
        iid = None
        try:
            with retry.wall(self.plan.deadline):  # the boot deadline is a wall for every retry and probe
                iid = self.rent(cand)
                ready = self.wait(iid) if self.plan.wait else None
        except Failed as failure:
            self.failed(cand, failure)
            if iid is not None:
                with retry.wall(TEARDOWN_S * poll_scale()):
                    self.discard(iid, failure.reason)
            return None
        self.attempts.append(Attempt(cand.offer_id, cand.machine_id, "ready" if ready else "created", ""))
        state.append_event(self.plan.experiment, "ready" if ready else "created_no_wait", instance_id=iid)
        return self.report(iid, cand, ready)

    def failed(self, cand: Candidate, failure: Failed) -> None:
        progress(f"vasticlaude up: offer {cand.offer_id} failed: {failure.reason}")
        self.attempts.append(Attempt(cand.offer_id, cand.machine_id, "failed", failure.reason))
        state.append_event(self.plan.experiment, "attempt_failed", offer_id=cand.offer_id,
                           machine_id=cand.machine_id, reason=failure.reason)
        if failure.machine:
            remember_failed(cand.machine_id, cand.offer_id, failure.reason)

    def rent(self, cand: Candidate) -> int:
        state.record_intent(self.plan.label, self.plan.experiment, cand.offer_id)
        iid = self.create(cand)
        self.record(iid, cand)
        state.clear_intent(self.plan.label)
        try:
            self.vast.attach_ssh(iid, self.key.public)
        except VastError as err:  # the account key is there too; this one is belt and braces
            progress(f"vasticlaude up: could not attach the SSH key to {iid} ({err.message}); relying on the account key")
        return iid

    def create(self, cand: Candidate) -> int:
        """Rent once; after an ambiguous failure, adopt what the label finds or try again."""
        pauses, last = schedule(1.0, 4.0), ""
        for attempt in range(CREATE_TRIES):
            if attempt and not retry.pause(next(pauses)):
                break  # the deadline: the label lookup above found nothing, so nothing was rented
            try:
                made = self.vast.create(cand.offer_id, **self.spec(cand))
                self.key_print = fingerprint(made.instance_api_key) if made.instance_api_key else None
                return made.instance_id
            except VastError as err:
                if err.status is not None and err.status < 500 and err.status != 429:
                    if err.status == 401:
                        state.clear_intent(self.plan.label)
                        raise
                    self.refused(cand, err)
                last = err.message
            found = self.look_for_label(cand, last)
            if found is not None:
                return found
            progress(f"vasticlaude up: {last}; the label finds nothing, so nothing was rented")
        state.clear_intent(self.plan.label)
        raise Failed(f"the create kept failing ({last})", machine=False)

    def refused(self, cand: Candidate, err: VastError) -> None:
        """A refused create may still have made something (an insufficient bid: created stopped, storage
        billing, the label taken): look it up, destroy it, then fail the attempt."""
        made = self.look_for_label(cand, err.message)
        state.clear_intent(self.plan.label)
        if made is not None:
            self.record(made, cand)
            self.discard(made, f"Vast refused the rental ({err.message}) but created it")
        # 404 (no_such_ask: taken, often by a sibling `up`) and 410 (cannot be scheduled now: its GPU is in use)
        # say the offer is not free, not that the machine is broken: skipping it for 7 days would cost good machines.
        raise Failed(err.message, machine=err.status not in (404, 410))

    def look_for_label(self, cand: Candidate, why: str) -> int | None:
        try:
            rows = self.vast.find_by_label(self.plan.label)
        except VastError as err:
            raise Error("rental_unknown", f"could not tell whether offer {cand.offer_id} was rented ({why}; then "
                        f"{err.message})", "Run 'vasticlaude reconcile' once Vast answers: it adopts or clears "
                        "the pending rental.", BILLING_RISK) from None
        if rows:
            progress(f"vasticlaude up: the create answered '{why}' but instance {rows[0]['id']} exists: adopting it")
            return int(rows[0]["id"])
        return None

    def spec(self, cand: Candidate) -> dict:
        spec = {"image": self.plan.image, "disk": self.plan.wanted.disk_gb, "label": self.plan.label,
                "ssh": True, "direct": True, "cancel_unavail": True}
        if self.plan.wanted.interruptible:
            spec["bid_price"] = self.plan.gpu_dph(cand)
        if self.plan.overlay:  # Vast's guide: `--env "-n NAME"` at create joins the overlay
            spec["env"] = f"-n {self.plan.overlay}"
        return spec

    def record(self, iid: int, cand: Candidate) -> None:
        gpu = self.plan.gpu_dph(cand)
        state.upsert_instance(
            iid, status="creating", why=f"rented offer {cand.offer_id}", label=self.plan.label,
            experiment=self.plan.experiment, offer_id=cand.offer_id, machine_id=cand.machine_id,
            gpu_name=cand.gpu_name, num_gpus=cand.num_gpus, gpu_dph=gpu, storage_dph=cand.storage_dph,
            dph_total=round(gpu + cand.storage_dph, 6), is_bid=self.plan.wanted.interruptible,
            bid_price=gpu if self.plan.wanted.interruptible else None, disk=self.plan.wanted.disk_gb,
            image=self.plan.image, target=self.vast.target.url, inet_down_cost=cand.inet_down_cost,
            inet_up_cost=cand.inet_up_cost, key_sha256=self.key_print)  # the key's fingerprint, never the key
        self.key_print = None
        state.append_event(self.plan.experiment, "created", instance_id=iid, offer_id=cand.offer_id,
                           machine_id=cand.machine_id, gpu_name=cand.gpu_name)

    def wait(self, iid: int) -> dict:
        """Poll until running and SSH answers; Failed otherwise (the caller destroys it)."""
        start = time.monotonic()
        try:
            return self.poll(iid)
        except VastError as err:
            raise Failed(f"lost track of it after {time.monotonic() - start:.1f} s: {err.message}", machine=False) from None

    def poll(self, iid: int) -> dict:
        """Look, probe, pause (2, 4, 8, 16, 16 … s), all inside the plan's wall (`attempt`)."""
        start, last, said, told = time.monotonic(), None, "", ""
        for pause in schedule(2.0, POLL_CAP):
            row = self.vast.instance(iid)
            if row is None:
                raise Failed("it disappeared from the account")
            last, said = self.note(iid, row, last, said)
            if time.monotonic() - start >= QUIET_S * poll_scale():
                told = self.tell(iid, row, told)
            verdict = hopeless(row)
            if verdict:
                raise Failed(verdict)
            route = route_for(row, self.key.private) if last == "running" and endpoints(row) else None
            ready = probe_any(route) if route else None  # direct, then Vast's proxy: the one that answers is kept
            if ready:
                return {"host": ready.host, "port": ready.port, "route": ready.name,
                        "waited_s": round(time.monotonic() - start, 1)}
            if not retry.pause(pause):
                stuck = "running but SSH does not answer" if last == "running" else f"still {last}"
                raise Failed(f"not ready within the {self.plan.deadline:g} s deadline ({stuck}; gave up after "
                             f"{time.monotonic() - start:.1f} s)")
        raise AssertionError("unreachable: schedule() is endless")

    def note(self, iid: int, row: dict, last: str | None, said: str) -> tuple[str, str]:
        """Record a new status or status_msg in the state and the experiment's events."""
        status, msg = record_status(row), str(row.get("status_msg") or "")
        if status != last:
            state.upsert_instance(iid, status=status, status_msg=msg, why=msg[:200])
            state.append_event(self.plan.experiment, "status", instance_id=iid, status=status, status_msg=msg)
        return status, msg

    @staticmethod
    def tell(iid: int, row: dict, told: str) -> str:
        """Say the status and Vast's status_msg (the image pull's progress) whenever they change."""
        status, msg, raw = record_status(row), str(row.get("status_msg") or ""), row.get("actual_status")
        line = f"instance {iid}: {status if raw in (None, status) else f'{status} ({raw})'}" + (f": {msg[:200]}" if msg else "")
        if line != told:
            progress(f"vasticlaude up: {line}")
        return line

    def discard(self, iid: int, reason: str) -> None:
        progress(f"vasticlaude up: destroying instance {iid} ({reason})")
        kind, details = teardown(self.vast, Target(iid, None, False), why=f"up gave up: {reason}")
        if kind == "failed":
            raise Error("not_destroyed", f"instance {iid} failed ({reason}) and could not be confirmed destroyed "
                        f"({details['reason']})", f"Run 'vasticlaude down {iid}' now: it may still bill.", BILLING_RISK)

    def report(self, iid: int, cand: Candidate, ready: dict | None) -> dict:
        dph = round(self.plan.gpu_dph(cand) + cand.storage_dph, 6)
        ssh = {"host": ready["host"] if ready else None, "port": ready["port"] if ready else None,
               "user": "root", "key": str(self.key.private), "route": ready["route"] if ready else None}
        return {"experiment": self.plan.experiment, "instance_id": iid, "label": self.plan.label,
                "offer_id": cand.offer_id, "gpu_name": cand.gpu_name, "dph": dph, "ssh": ssh,
                "attempts": [asdict(a) for a in self.attempts],
                "estimate_usd": round(dph * self.plan.wanted.hours + cand.transfer_usd, 4),
                "waited_s": ready["waited_s"] if ready else 0.0}


# ----- the command --------------------------------------------------------------------------


def remember_rental(plan: Plan) -> None:
    """What was asked for, so `recover` can rent the like again elsewhere."""
    with state.experiment(plan.experiment) as exp:
        exp["rental"] = {"image": plan.image, "wanted": asdict(plan.wanted), "bid": plan.bid,
                         "deadline": plan.deadline, "max_attempts": plan.max_attempts,
                         "budget_usd": plan.limits.experiment_usd, "overlay": plan.overlay}
        exp.update({} if plan.limits.experiment_usd is None else {"budget_usd": plan.limits.experiment_usd})


def up(vast: Vast, plan: Plan, offer_id: int | None = None, spread: int = 0) -> dict:
    """Rent for the plan (exactly `offer_id`, or the best candidates in turn) and wait until ready.

    One `up` per experiment at a time (a lock beside experiment.json): two at once would each find
    the label free on the account and rent twice. The second is refused at once."""
    busy = Error("experiment_busy", f"another `up` of experiment {plan.experiment} is renting right now",
                 f"Wait for it, then use its instance (vasticlaude status --experiment {plan.experiment}).")
    with state.only_one(state.experiment_dir(plan.experiment) / "up.lock", busy):
        return _up(vast, plan, offer_id, spread)


def _up(vast: Vast, plan: Plan, offer_id: int | None, spread: int = 0) -> dict:
    refuse_if_taken(vast, plan)
    cands = candidates(vast, offer_id, plan)
    if cands and spread % len(cands):  # renting several at once (a sweep): each starts at another offer, not all at the cheapest
        cands = cands[spread % len(cands):] + cands[:spread % len(cands)]
    check_budget(plan, cands[0])
    key = ssh_key()
    register(vast, key)
    result = Launcher(vast, plan, key).launch(cands)
    remember_rental(plan)
    return result

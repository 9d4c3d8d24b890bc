"""Several nodes, one experiment: N instances of one physical cluster on one Vast overlay network.

Vast puts instances on machines of one physical cluster (`cluster_id` on offers) on a private
LAN when they join an overlay (`create overlay CLUSTER NAME`, then `--env "-n NAME"` at create;
Vast's guide "Multi-Node training using Torch + NCCL"). The distributed engine stays PyTorch's
own `torchrun` (c10d rendezvous at node 0's overlay address); vasticlaude rents, wires, watches,
recovers and tears down around it.

Each node is an experiment of its own, `<group>-n<i>` (label `vasticlaude-<group>-n<i>`), so what
works on one instance (push, the run wrapper and its watchdog, status, pull, relaunching a dead
machine) works on each node unchanged. The group's experiment.json ties them together:
  "nodes": {"count", "members", "cluster_id", "overlay", "port", "gpus", "run": {command, torchrun, env}}
The group's budget is split evenly into the nodes' budgets (each node's watchdog cap), so the
caps together never exceed it; the group's spend and ledger are the sum of its nodes'.

A fault on any node restarts the whole group: the faulted node is recovered as one instance is
(relaunched in the same cluster, on the same overlay), the others' jobs are stopped, rank 0's last
checkpoint (synced home while the group runs) is put on every node, and every node starts again
with VASTICLAUDE_RESUME=1 and a fresh rendezvous (node 0's address may have changed).
"""
from __future__ import annotations

import contextvars
import hashlib
import ipaddress
import math
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace

from vasticlaude.core import budget, money
from vasticlaude.core.market import Candidate, candidate, query_of
from vasticlaude.core.retry import poll_scale
from vasticlaude.errors import API, BILLING_RISK, FAILED, USAGE, Error
from vasticlaude.ops import checkpoints, job, results, teardown
from vasticlaude.ops.binding import bind
from vasticlaude.ops.groups import group_of, member
from vasticlaude.ops.launch import Launcher, Plan, refuse_if_taken, register, remember_rental
from vasticlaude.ops.observe import one_line
from vasticlaude.ops.recovery import Assessment, Policy, Recovery, assess, recover
from vasticlaude.ops.search import failed_machines
from vasticlaude.ops.watching import API_PAUSES
from vasticlaude.output import progress
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import run as ssh_run
from vasticlaude.remote.ssh import Key, ssh_key
from vasticlaude.store import config, state
from vasticlaude.vast.gateway import Vast, VastError

MASTER_PORT = 29500  # torchrun's default
SEARCH_LIMIT = 200  # offers read to find a cluster with enough machines
# The overlay address: the sandbox exports it; on Vast it is on the container's interface.
ADDRESS_PROBE = 'printf "%s\\n" "${VAST_OVERLAY_IP:-}"; hostname -I 2>/dev/null; hostname -i 2>/dev/null; true'
STOP_JOB = ('w=$(cat {run}/wrapper_pid 2>/dev/null); [ -n "$w" ] && kill -TERM "$w" 2>/dev/null; '
            'for i in $(seq 1 50); do [ -f {run}/exit_code ] && break; sleep 0.1; done; '
            'j=$(cat {run}/job_pid 2>/dev/null); [ -n "$j" ] && kill -KILL -- "-$j" 2>/dev/null; true')


def overlay_name(group: str) -> str:
    """Vast keeps only `a-z0-9-` in `-n NAME` (vastai's parse_env): a slug plus a hash of the exact name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", group.lower()).strip("-")[:40]
    return f"vc-{slug}-{hashlib.sha1(group.encode()).hexdigest()[:6]}"


# ----- up --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    cluster_id: int
    candidates: list[Candidate]


def pick_cluster(vast: Vast, plan: Plan, nodes: int) -> Cluster:
    """The physical cluster whose `nodes` cheapest fitting machines cost least together."""
    w = plan.wanted
    offers = vast.search_offers(query_of(w) + " cluster_id!=None", "dph", SEARCH_LIMIT, w.interruptible, w.disk_gb)
    skip, by = failed_machines(), {}
    for offer in offers:
        if offer.get("cluster_id") is not None and int(offer["machine_id"]) not in skip:
            by.setdefault(int(offer["cluster_id"]), {}).setdefault(int(offer["machine_id"]), candidate(offer, w))
    fits = [Cluster(cid, sorted(m.values(), key=lambda c: c.est_total_usd)) for cid, m in by.items() if len(m) >= nodes]
    if not fits:
        sizes = ", ".join(f"{cid}: {len(m)}" for cid, m in sorted(by.items())) or "none"
        raise Error("no_cluster", f"no physical cluster has {nodes} machines that fit (clusters with fitting "
                    f"machines: {sizes})", "Ask for fewer --nodes, other GPUs (--gpu), --any-verified, or try later.",
                    FAILED)
    return min(fits, key=lambda c: sum(x.est_total_usd for x in c.candidates[:nodes]))


def node_plan(plan: Plan, group: str, rank: int, nodes: int, cluster: int, overlay: str) -> Plan:
    share = _share(plan.limits.experiment_usd, nodes)
    return replace(plan, experiment=member(group, rank), wanted=replace(plan.wanted, cluster_id=cluster),
                   overlay=overlay, limits=replace(plan.limits, experiment_usd=share))


def up(vast: Vast, plan: Plan, nodes: int, port: int = MASTER_PORT) -> dict:
    """Rent `nodes` instances of one cluster on one overlay (one `up` of the group at a time)."""
    if nodes < 2:
        raise Error("bad_nodes", "--nodes must be 2 or more (one node is a plain `up`)", "", USAGE)
    busy = Error("experiment_busy", f"another `up` of experiment {plan.experiment} is renting right now",
                 f"Wait for it, then: vasticlaude status --experiment {plan.experiment}")
    with state.only_one(state.experiment_dir(plan.experiment) / "up.lock", busy):
        return _up(vast, plan, nodes, port)


def _up(vast: Vast, plan: Plan, nodes: int, port: int) -> dict:
    group = plan.experiment
    for rank in range(nodes):
        refuse_if_taken(vast, replace(plan, experiment=member(group, rank)))
    cluster = pick_cluster(vast, plan, nodes)
    dph = sum(plan.gpu_dph(c) + c.storage_dph for c in cluster.candidates[:nodes])
    budget.check_before_rent(plan.limits, group, dph, plan.wanted.hours, state.load())
    key = ssh_key()
    register(vast, key)
    name = overlay_name(group)
    _remember_group(plan, nodes, cluster.cluster_id, name, port)
    _make_overlay(vast, cluster.cluster_id, name)
    made = boot_all(vast, plan, group, nodes, cluster, name, key)
    return {"experiment": group, "nodes": made, "cluster_id": cluster.cluster_id, "overlay": name, "port": port,
            "dph": round(sum(n["dph"] for n in made), 6), "estimate_usd": round(sum(n["estimate_usd"] for n in made), 4),
            "waited_s": round(max(n["waited_s"] for n in made), 1)}


class Claims:
    """The machines the nodes booting at once hold: node i starts on the cluster's i-th cheapest machine
    and fails over only to a spare no other node has taken (two nodes on one machine would share its GPUs).
    Closed when a node has failed for good: the others try nothing more."""

    def __init__(self) -> None:
        self.lock, self.taken, self.closed = threading.Lock(), set(), False

    def offer(self, cands: list[Candidate], wants_more: Callable[[], bool]) -> Iterator[Candidate]:
        for cand in cands:
            with self.lock:  # asked before claiming: a machine its node will not try stays free for another
                if self.closed or not wants_more():
                    return
                if cand.machine_id in self.taken:
                    continue
                self.taken.add(cand.machine_id)
            yield cand

    def close(self) -> None:
        with self.lock:
            self.closed = True


def boot_all(vast: Vast, plan: Plan, group: str, nodes: int, cluster: Cluster, name: str, key: Key) -> list[dict]:
    """Every node rented and booted at once (a boot is mostly its image pull: minutes each on Vast, so
    one after another would multiply the wait by N). The first node that cannot be had closes the
    claims, takes the group down at once (nothing boots on for nothing), and again once the others
    have stopped (what they created meanwhile)."""
    claims, spares = Claims(), cluster.candidates[nodes:]

    def boot(rank: int) -> dict:
        one = node_plan(plan, group, rank, nodes, cluster.cluster_id, name)
        progress(f"vasticlaude up: node {rank} of {nodes} ({one.experiment})")
        launcher = Launcher(vast, one, key)
        mine = [cluster.candidates[rank], *spares]
        result = launcher.launch(claims.offer(mine, lambda: len(launcher.attempts) < one.max_attempts))
        remember_rental(one)
        return result

    with ThreadPoolExecutor(max_workers=min(16, nodes)) as pool:
        futures = started(pool, boot, list(range(nodes)))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failure = next((f.exception() for f in futures if f in done and f.exception() is not None), None)
        if failure is not None:
            claims.close()
            progress("vasticlaude up: a node could not be rented: taking down the group and the overlay")
            try:
                down(vast, group)
            except (Error, VastError) as err:  # the second down, once every boot has stopped, tries again
                progress(f"vasticlaude up: taking the group down failed for now ({err.message})")
        wait(futures)
    if failure is not None:
        down(vast, group)  # what another node created while the first down ran
        raise failure
    return [f.result() for f in futures]


def _remember_group(plan: Plan, nodes: int, cluster: int, name: str, port: int) -> None:
    """Written before anything is rented: `down` finds the overlay and every node even after a crash."""
    with state.experiment(plan.experiment) as exp:
        exp["nodes"] = {"count": nodes, "members": [member(plan.experiment, r) for r in range(nodes)],
                        "cluster_id": cluster, "overlay": name, "port": port, "created_at": time.time()}
        exp["rental"] = {"image": plan.image, "wanted": asdict(plan.wanted), "budget_usd": plan.limits.experiment_usd}
        if plan.limits.experiment_usd is not None:
            exp["budget_usd"] = plan.limits.experiment_usd
    state.append_event(plan.experiment, "nodes", count=nodes, cluster_id=cluster, overlay=name)


def _make_overlay(vast: Vast, cluster: int, name: str) -> None:
    if any(o.get("name") == name for o in vast.overlays()):
        return
    try:
        vast.create_overlay(cluster, name)
    except VastError as err:  # an ambiguous failure may have made it: look before failing
        if not any(o.get("name") == name for o in vast.overlays()):
            raise err from None
    progress(f"vasticlaude up: overlay network {name} on cluster {cluster}")


# ----- addresses and run ---------------------------------------------------------------------------
def addresses(vast: Vast, group: str, g: dict) -> list[str]:
    """Each node's overlay address, read on the node (the one in the overlay's subnet)."""
    subnet = next((o.get("internal_subnet") for o in vast.overlays() if o.get("name") == g["overlay"]), None)

    def one(name: str) -> str:
        text = ssh_run(bind(vast, name).route(), ADDRESS_PROBE, timeout=30).stdout.decode("utf-8", "replace")
        return pick_address(text.split(), subnet, name)
    return each(one, g["members"])


def each(work, items: list) -> list:
    """`work` on every node at once (SSH round trips to N hosts in parallel); the first error raised."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(items)))) as pool:
        return [f.result() for f in started(pool, work, items)]


def started(pool: ThreadPoolExecutor, work, items: list) -> list[Future]:
    """`work(item)` for each item on the pool, each in a copy of the caller's context, so its deadline
    (core.retry.wall) holds in the thread too."""
    return [pool.submit(contextvars.copy_context().run, work, item) for item in items]


def pick_address(words: list[str], subnet: str | None, name: str) -> str:
    addrs = []
    for word in words:
        try:
            addrs.append(ipaddress.ip_address(word))
        except ValueError:
            continue
    net = _network(subnet)
    inside = [a for a in addrs if net is not None and a in net]
    if inside or addrs:
        return str((inside or addrs)[0])
    raise Error("no_overlay_address", f"node {name} reports no address on the overlay",
                f"Check it joined: vasticlaude status --experiment {name}", FAILED)


def _network(subnet: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(subnet, strict=False) if subnet else None
    except ValueError:
        return None


def torchrun_line(argv: list[str], nodes: int, gpus: int, rank: int, endpoint: str, group: str,
                  launcher: str = "torchrun") -> str:
    """`python train.py ARGS` → torchrun with c10d rendezvous at node 0 (Vast's multi-node guide);
    `launcher` is the config's "torchrun" (e.g. `python -m torch.distributed.run`)."""
    args = argv[1:] if argv and re.fullmatch(r"python[0-9.]*", argv[0].rsplit("/", 1)[-1]) else argv
    if not args or not args[0].endswith(".py"):
        raise Error("not_a_script", "--torchrun needs a Python script: `python train.py ARGS` or `train.py ARGS`",
                    "Drop --torchrun for commands that launch themselves (they get MASTER_ADDR, MASTER_PORT, "
                    "NODE_RANK, WORLD_SIZE).", USAGE)
    head = [*shlex.split(launcher), "--nnodes", str(nodes), "--nproc-per-node", str(gpus), "--node-rank", str(rank),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", group]
    return shlex.join(head + args)


def node_env(user: dict, master: str, port: int, rank: int, nodes: int, address: str) -> dict:
    """torch.distributed's env:// contract for one process per node (torchrun sets its own per process)."""
    return {**user, "MASTER_ADDR": master, "MASTER_PORT": str(port), "NODE_RANK": str(rank), "RANK": str(rank),
            "WORLD_SIZE": str(nodes), "NNODES": str(nodes), "NODE_ADDR": address}


def run(vast: Vast, group: str, argv: list[str], spec: job.JobSpec, torchrun: bool, port: int | None = None) -> dict:
    """Start the command on every node with the rendezvous wired; what `run` reports for the group."""
    g = _group(group)
    port = int(port or g.get("port") or MASTER_PORT)
    with state.experiment(group) as exp:
        exp["nodes"]["run"] = {"argv": argv, "torchrun": torchrun, "launcher": config.load().get("torchrun"), "port": port, "env": spec.env,
                               "workdir": spec.workdir, "heartbeat": spec.heartbeat, "guard": asdict(spec.guard)}
        exp["command"] = shlex.join(argv)
        exp.setdefault("runs", []).append({"at": time.time(), "command": shlex.join(argv)})
    return _start_all(vast, group, restart=spec.restart)


def _start_all(vast: Vast, group: str, restart: bool) -> dict:
    g = _group(group)
    r, n = g["run"], g["count"]
    addrs = addresses(vast, group, g)
    endpoint = f"{addrs[0]}:{r['port']}"
    ask = job.GuardAsk(**{**r["guard"], "budget_usd": _share(r["guard"].get("budget_usd"), n)})

    def one(rank: int) -> dict:
        name = g["members"][rank]
        bound = bind(vast, name)
        gpus = int(bound.record.get("num_gpus") or 1)
        command = (torchrun_line(r["argv"], n, gpus, rank, endpoint, group, r.get("launcher") or "torchrun")
                   if r["torchrun"] else shlex.join(r["argv"]))
        spec = job.JobSpec(command=command, env=node_env(r["env"], addrs[0], r["port"], rank, n, addrs[rank]),
                           workdir=r["workdir"], heartbeat=r["heartbeat"], restart=restart, guard=ask)
        got = job.start(bound, spec)
        return {"node": rank, "experiment": name, "instance_id": got["instance_id"], "address": addrs[rank],
                "state": got["state"], "exit_code": got["exit_code"], "log_tail": got["log_tail"], "guard": got["guard"]}
    started = each(one, list(range(n)))
    state.append_event(group, "run", nodes=[(s["experiment"], s["instance_id"], s["address"]) for s in started],
                       endpoint=endpoint)
    failed = [s for s in started if s["state"] == "exited" and s["exit_code"]]
    return {"experiment": group, "command": shlex.join(r["argv"]), "torchrun": r["torchrun"], "endpoint": endpoint,
            "state": "exited" if failed else "running", "exit_code": failed[0]["exit_code"] if failed else None,
            "log_tail": failed[0]["log_tail"] if failed else [], "nodes": started,
            "guard": started[0]["guard"] if started else {}}


def _share(usd: float | None, nodes: int) -> float | None:
    """A node's part of the group's budget, rounded down: the parts never add up to more than the whole."""
    return None if usd is None else math.floor(float(usd) / nodes * 1e6) / 1e6


def _group(group: str) -> dict:
    g = group_of(group)
    if g is None:
        raise Error("not_a_group", f"experiment {group} has no nodes", f"Rent them with vasticlaude up --experiment "
                    f"{group} --nodes N.", FAILED)
    return g


# ----- status ------------------------------------------------------------------------------------
def status(vast: Vast, group: str) -> dict:
    """Every node's snapshot in a few fields, and the group's state, spend and next step."""
    g = _group(group)
    rows = []
    for rank, name in enumerate(g["members"]):
        try:
            a = assess(vast, name, tail=0)
        except Error as err:
            if err.exit_code == API:
                raise
            rows.append({"node": rank, "experiment": name, "instance_id": None, "instance": "gone", "job": "none",
                         "exit_code": None, "fault": None, "line": err.message})
            continue
        snap = a.snap or {}
        rows.append({"node": rank, "experiment": name, "instance_id": snap.get("instance_id"),
                     "instance": (snap.get("instance") or {}).get("status", "gone"),
                     "job": (snap.get("job") or {}).get("state"), "exit_code": (snap.get("job") or {}).get("exit_code"),
                     "fault": a.fault and a.fault["kind"], "line": one_line(snap) if snap else "no instance"})
    spent = spent_usd(g)
    cap = budget.experiment_budget(None, state.read_experiment(group), {})
    return {"experiment": group, "nodes": rows, "state": group_state(rows), "overlay": g["overlay"],
            "cluster_id": g["cluster_id"], "spent_usd": round(spent, 4), "budget_usd": cap,
            "next": _next(group, rows)}


def group_state(rows: list[dict]) -> str:
    if any(r["fault"] for r in rows):
        return "fault"
    jobs = {r["job"] for r in rows}
    if jobs == {"exited"}:
        return "finished" if all(r["exit_code"] == 0 for r in rows) else "failed"
    return "running" if "running" in jobs else (jobs.pop() if len(jobs) == 1 else "mixed")


def _next(group: str, rows: list[dict]) -> str:
    state_ = group_state(rows)
    if state_ == "fault":
        bad = next(r for r in rows if r["fault"])
        return (f"node {bad['node']}: {bad['fault']}: vasticlaude watch --experiment {group} restarts the group "
                "from rank 0's checkpoint")
    if state_ == "finished":
        return f"every node finished: vasticlaude watch --experiment {group} pulls and tears down (or vasticlaude down)"
    if state_ == "failed":
        return f"a node failed: vasticlaude logs --experiment {group}-n0 (each node has its log), then vasticlaude down --experiment {group}"
    return f"wait; vasticlaude watch --experiment {group} sees it through"


def spent_usd(g: dict) -> float:
    data = state.load()
    return sum(budget.experiment_spent(name, data) for name in g["members"])


# ----- down --------------------------------------------------------------------------------------
def down(vast: Vast, group: str, keep_disk: bool = False) -> dict:
    """Destroy (or stop) every node, then delete the overlay (kept while a stopped node keeps its disk)."""
    g = _group(group)
    report: dict = {"destroyed": [], "already_gone": [], "failed": [], "stopped": []}
    for name in g["members"]:
        one = teardown.take_down(vast, teardown.targets(vast, [], name), keep_disk=keep_disk)
        for key in report:
            report[key] += one[key]
    _ledger(group, g)
    report["overlay"] = None
    if not keep_disk and not report["failed"]:
        vast.delete_overlay(g["overlay"])
        report["overlay"] = g["overlay"]
        state.append_event(group, "overlay_deleted", overlay=g["overlay"])
    report["exit_code"] = BILLING_RISK if report["failed"] else 0
    return report


def delete_empty_overlays(vast: Vast) -> list[str]:
    """`down --all`: vasticlaude's overlays (named vc-…) that no instance uses any more."""
    gone = []
    try:
        found = vast.overlays()
    except VastError as err:  # the instances are gone; an overlay left empty bills nothing
        progress(f"vasticlaude down: could not list overlay networks ({err.message}); none deleted")
        return gone
    for overlay in found:
        if str(overlay.get("name") or "").startswith("vc-") and not overlay.get("instances"):
            vast.delete_overlay(overlay["name"])
            gone.append(overlay["name"])
    return gone


def _ledger(group: str, g: dict) -> None:
    """The group's ledger gets a line for every destroyed instance of every node (relaunched ones too),
    beside the line each node's own ledger has."""
    path = state.experiment_dir(group) / "ledger.jsonl"
    have = {e.get("instance_id") for e in state.read_lines(path)}
    for rec in state.load()["instances"].values():
        if rec.get("experiment") in g["members"] and rec.get("destroyed_at") and int(rec["id"]) not in have:
            state.append_ledger(group, node=rec["experiment"], instance_id=int(rec["id"]),
                                cost_usd=round(money.instance_cost(rec)["total_usd"], 6))


# ----- watch and the group's recovery ----------------------------------------------------------------
class NodeRecovery(Recovery):
    """One node's recovery without its restart: the whole group restarts after it."""

    def restart(self) -> None:
        self.step("the job restarts with the whole group")


@dataclass
class GroupWatch:
    vast: Vast
    group: str
    interval: float
    sync_every: float
    policy: Policy
    finish: str = "down"
    timeout: float | None = None
    auto: bool = True

    def run(self) -> dict:
        """One watch per experiment (the lock a single-instance watch takes too)."""
        busy = Error("already_watching", f"another watch of {self.group} is running",
                     f"Read experiments/{self.group}/events.jsonl, or stop that one first.", FAILED)
        with state.only_one(state.experiment_dir(self.group) / "watch.lock", busy):
            return self.loop()

    def loop(self) -> dict:
        g, deadline, last_sync = _group(self.group), None, 0.0
        deadline = time.monotonic() + self.timeout if self.timeout else None
        self.recoveries: list[dict] = []
        seen: dict[str, float] = {}
        checks = 0
        failures, said = 0, None
        while True:
            try:
                looks = [assess(self.vast, name, tail=0) for name in g["members"]]
            except Error as err:  # Vast or SSH trouble: waited out as a single watch does, then given up
                if err.exit_code != API or failures >= len(API_PAUSES):
                    raise
                failures += 1
                progress(f"vasticlaude watch: {err.message}; checking again ({failures}/{len(API_PAUSES)})")
                time.sleep(API_PAUSES[failures - 1] * poll_scale())
                continue
            failures = 0
            said = self.say(looks, said)
            faulted = [(rank, a) for rank, a in enumerate(looks) if a.fault]
            states = [((a.snap or {}).get("job") or {}) for a in looks]
            if faulted:
                done = self.on_fault(faulted, seen)
                if done is not None:
                    return done
            elif all(s.get("state") == "exited" for s in states):
                codes = [s.get("exit_code") for s in states]
                if all(c == 0 for c in codes):
                    return self.end(g)
                return self.result("failed", f"a node's job failed (exit codes {codes})", FAILED)
            elif looks[0].snap and states[0].get("state") == "running" and time.monotonic() - last_sync >= self.sync_every:
                last_sync = time.monotonic()
                self.sync(looks[0])
            if deadline and time.monotonic() >= deadline:
                return self.result("timeout", "still running (nothing is wrong)", FAILED)
            checks += 1
            time.sleep(min(self.interval, 2.0 ** checks) * poll_scale() if checks < 4 else self.interval)

    def say(self, looks: list[Assessment], said: tuple | None) -> tuple:
        """One progress line when any node's job state or fault changes (what Claude reads costs context)."""
        now = tuple(((a.snap or {}).get("job") or {}).get("state") or (a.fault or {}).get("kind") for a in looks)
        if now != said:
            progress("vasticlaude watch: " + "; ".join(one_line(a.snap) if a.snap else f"{a.experiment}: no instance"
                                                       for a in looks))
        return now

    def sync(self, a: Assessment) -> None:
        try:
            checkpoints.sync_home(a.bound.route(), a.experiment, list(self.policy.sync))
        except Error as err:
            progress(f"vasticlaude watch: rank 0's checkpoint sync failed ({err.message[:160]})")

    def on_fault(self, faulted: list[tuple[int, Assessment]], seen: dict[str, float]) -> dict | None:
        rank, a = faulted[0]
        fault = a.fault
        first = seen.setdefault(f"{rank}:{fault['kind']}", time.monotonic())
        if time.monotonic() - first < fault["confirm_s"]:
            return None
        progress(f"vasticlaude watch: node {rank} ({a.experiment}): {fault['kind']}: {fault['evidence'][0]}")
        if fault["action"] == "none":
            return self.result("failed" if fault["kind"] == "job_failed" else "needs_you",
                               f"node {rank}: {fault['kind']}: {fault['evidence'][0]}; {fault['plan']}", FAILED)
        if not self.auto:
            return self.result("needs_you", f"node {rank}: {fault['kind']}; recovery is off", FAILED)
        try:
            self.recoveries.append(restart_group(self.vast, self.group, rank, a, self.policy))
        except Error as err:
            if err.exit_code == API:
                progress(f"vasticlaude watch: group recovery not done ({err.message}); looking again")
                return None
            outcome = "billing_risk" if err.exit_code == BILLING_RISK else "needs_you"
            return self.result(outcome, f"recovery of node {rank} failed: {err.message}. {err.hint}", err.exit_code)
        seen.clear()
        return None

    def end(self, g: dict) -> dict:
        data = self.result("finished", f"every node ({g['count']}) finished with exit code 0", 0)
        with state.experiment(self.group) as exp:
            exp["finished_at"] = time.time()
        if self.finish in ("down", "pull"):
            pulls = [results.pull(bind(self.vast, name)) for name in g["members"]]
            data["pull"] = [{k: p[k] for k in ("files", "bytes", "local_path")} for p in pulls]
        if self.finish == "down":
            report = down(self.vast, self.group)
            data["down"] = {"destroyed": [d["id"] for d in report["destroyed"]] + report["already_gone"],
                            "failed": report["failed"], "overlay": report["overlay"]}
            if report["failed"]:
                data.update(outcome="billing_risk", exit_code=BILLING_RISK)
        data["spent_usd"] = round(spent_usd(g), 4)
        return data

    def result(self, outcome: str, message: str, code: int) -> dict:
        return {"experiment": self.group, "outcome": outcome, "message": message, "recoveries": self.recoveries,
                "spent_usd": round(spent_usd(_group(self.group)), 4), "exit_code": code}


def restart_group(vast: Vast, group: str, rank: int, a: Assessment, policy: Policy) -> dict:
    """Recover node `rank`, stop the others, put rank 0's checkpoint everywhere, start every node again."""
    start = time.monotonic()
    g = _group(group)
    first = assess(vast, g["members"][0], tail=0) if rank else a
    if first.bound is not None and (first.bound.row or {}).get("actual_status") == "running":
        try:  # rank 0's latest, before its job is stopped
            checkpoints.sync_home(first.bound.route(), first.experiment, list(policy.sync))
        except Error as err:
            progress(f"vasticlaude watch: rank 0 could not be synced ({err.message[:120]}); using the copy at home")
    done = recover(a, vast, policy, kind=NodeRecovery)
    for other, name in enumerate(g["members"]):
        if other != rank:
            _stop_job(vast, name)
    for name in g["members"]:
        sent = checkpoints.send(bind(vast, name).route(), name, source=g["members"][0])
        progress(f"vasticlaude watch: {name}: rank 0's checkpoint sent ({sent['files']} files)")
    _start_all(vast, group, restart=True)
    entry = {"at": time.time(), "node": rank, "kind": a.fault["kind"], "from_instance": done["from_instance"],
             "to_instance": done["to_instance"], "seconds": round(time.monotonic() - start, 1)}
    with state.experiment(group) as exp:
        exp.setdefault("recoveries", []).append(entry)
    state.append_event(group, "group_restart", **{k: v for k, v in entry.items() if k != "at"})
    return entry


def recover_group(vast: Vast, group: str, policy: Policy, dry_run: bool = False) -> dict:
    """`recover` of a group: the first faulted node's fault, and the group restart (what watch does)."""
    g = _group(group)
    looks = [assess(vast, name, tail=0) for name in g["members"]]
    found = next(((rank, a) for rank, a in enumerate(looks) if a.fault), None)
    base = {"experiment": group, "done": False, "spent_usd": round(spent_usd(g), 4)}
    if found is None:
        jobs = [str(((a.snap or {}).get("job") or {}).get("state") or "none") for a in looks]
        return {**base, "fault": None, "action": "none", "job": "on every node: " + ", ".join(jobs)}
    rank, a = found
    fault = {k: a.fault[k] for k in ("kind", "evidence", "action", "plan")}
    fault["evidence"] = [f"node {rank} ({a.experiment}): {e}" for e in fault["evidence"]]
    if dry_run or a.fault["action"] == "none":
        code = {} if dry_run or a.fault["action"] != "none" else {"exit_code": FAILED}
        return {**base, "fault": fault, "action": a.fault["action"], **code,
                "from_instance": a.bound.instance_id if a.bound else None}
    entry = restart_group(vast, group, rank, a, policy)
    steps = [f"node {rank}: {a.fault['action']} (instance {entry['from_instance']} → {entry['to_instance']})",
             "the other nodes' jobs stopped", "rank 0's checkpoint sent to every node", "every node started again"]
    return {**base, "fault": fault, "action": "restart_group", "done": True, "from_instance": entry["from_instance"],
            "to_instance": entry["to_instance"], "steps": steps, "seconds": entry["seconds"],
            "attempt": len((state.read_experiment(group) or {}).get("recoveries") or []),
            "spent_usd": round(spent_usd(g), 4)}


def _stop_job(vast: Vast, name: str) -> None:
    """TERM the node's job through its wrapper (time to checkpoint), then KILL what is left."""
    try:
        bound = bind(vast, name)
        ssh_run(bound.route(), STOP_JOB.format(run=shlex.quote(Layout(name).run)), timeout=60)
    except Error as err:
        progress(f"vasticlaude watch: could not stop the job on {name} ({err.message[:120]}); the restart replaces it")

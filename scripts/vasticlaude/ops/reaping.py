"""At session end: leave guarded jobs running, pull and tear down everything else, write a report.

Each account with live records is reconciled first (marking gone only its own records);
then each instance is decided (core of the decision: decide()) and acted on. The report
is rewritten after every instance so a kill -9 loses nothing.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import psutil
from filelock import FileLock, Timeout

from vasticlaude.core import money as costing
from vasticlaude.core.retry import poll_scale
from vasticlaude.errors import BILLING_RISK, Error
from vasticlaude.ops import reconcile, results
from vasticlaude.ops.binding import bind
from vasticlaude.ops.connect import connect
from vasticlaude.ops.observe import observe
from vasticlaude.ops.teardown import Target, stop, teardown
from vasticlaude.output import log_crash, progress
from vasticlaude.sim.client import pid_alive
from vasticlaude.store import config, paths, state
from vasticlaude.store.jsonfile import write_json_atomic
from vasticlaude.vast import account as credentials
from vasticlaude.vast.account import Account
from vasticlaude.vast.gateway import Vast, VastError

T = TypeVar("T")
POLICY = {"running": "leave-guarded", "finished": "destroy"}
CHOICES = {"running": ("leave-guarded", "stop", "destroy"), "finished": ("destroy", "stop")}
LIST_PAUSES = (15.0, 45.0)      # between listing attempts (each already retried by the gateway)
LOCK_WAIT_S = 1800.0
RUNNING_JOB = {"running", "stale"}
ENDED_JOB = {"exited", "killed", "vanished"}
BUSY_S = 1200                   # an `up` older than this is not "still renting"
LAST = "last-session-end.json"


@dataclass
class Decision:
    """What to do with one instance: "leave", "destroy" or "stop"; `pull` first or not."""

    verb: str
    why: str
    pull: bool = False
    kind: str = ""              # the report's action when left: left-guarded, left-stopped, left-busy


@dataclass
class Group:
    """Live records rented on one URL, and the account that reaches it (None: unreachable from here)."""

    url: str | None
    account: Account | None
    ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ReapRequest:
    """Why the reap runs and how far it may go."""

    reason: str = "manual"
    end_reason: str | None = None
    session: str | None = None
    dry_run: bool = False
    only_orphans: bool = False
    account: Account = Account()


# ----- policy ------------------------------------------------------------------------------
def load_policy(notes: list[str]) -> tuple[dict, dict]:
    """(policy, config): the project's `session_end` block over the defaults; a bad value is noted, not fatal."""
    cfg, problems = config.check()
    if problems:
        notes.append(f"config: {len(problems)} bad part(s) left out, defaults used ({'; '.join(problems)[:200]})")
    given = cfg.get("session_end") or {}
    policy = dict(POLICY)
    for key, allowed in CHOICES.items():
        value = given.get(key, policy[key]) if isinstance(given, dict) else policy[key]
        if value in allowed:
            policy[key] = value
        else:
            notes.append(f"session_end.{key}={value!r} is not one of {', '.join(allowed)}: using {policy[key]}")
    return policy, cfg


# ----- which account -----------------------------------------------------------------------
def running_sandbox_url() -> str | None:
    from vasticlaude.sim.client import running_info
    info = running_info(paths.sim_dir())
    return info["url"] if info else None


def default_url(account: Account, cfg: dict) -> str | None:
    """The URL `vasticlaude` would talk to, without starting a sandbox to find out."""
    if credentials.wants_sandbox(account, cfg.get("target")):
        return running_sandbox_url()
    if credentials.find_key(account.api_key)[0] is None:
        return None
    return os.environ.get("VAST_URL") or credentials.REAL_URL


def plan_groups(account: Account, cfg: dict, live: list[dict], damaged: bool = False) -> list[Group]:
    """Live records by the URL they were rented on; the default account is always checked (orphans),
    and so is the running sandbox when the state was damaged (its records may be the lost ones)."""
    default, sandbox = default_url(account, cfg), running_sandbox_url()
    groups: dict[str | None, Group] = {}
    if default:
        groups[default] = Group(default, account)
    if damaged and sandbox and sandbox not in groups:
        groups[sandbox] = Group(sandbox, Account(sandbox=True))
    for rec in live:
        url = rec.get("target") or default
        if url not in groups:
            groups[url] = Group(url, Account(sandbox=True) if url and url == sandbox else None)
        groups[url].ids.add(str(rec["id"]))
    return list(groups.values())


# ----- reconcile, scoped to one account ------------------------------------------------------
def with_retries(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again after LIST_PAUSES when Vast cannot be reached; the last error is raised."""
    for pause in (*LIST_PAUSES, None):
        try:
            return call()
        except VastError as err:
            if pause is None:
                raise
            progress(f"vasticlaude reap: {what}: {err.message}; trying again in {pause * poll_scale():g} s")
            time.sleep(pause * poll_scale())
    raise AssertionError("unreachable")


def reconcile_scoped(vast: Vast, group: Group) -> tuple[dict[int, dict], list[str], list[dict], str | None]:
    """reconcile.reconcile, but it marks gone only the records of this account: (rows, adopted ids,
    records found gone, where a corrupt state file went)."""
    listed_at = time.time()
    rows = {int(r["id"]): r for r in vast.instances()}
    with state.transaction() as data:
        recovered = data.pop("recovered_from", None)
        adopted = [str(a["id"]) for a in reconcile.adopt(data, rows)] + strays(data, rows, group)
        for iid in adopted:
            data["instances"][iid]["target"] = vast.target.url
        group.ids.update(adopted)
        view = {"instances": {k: r for k, r in data["instances"].items() if k in group.ids}}
        gone = reconcile.mark_gone(view, rows, listed_at)
        reconcile.refresh(view, rows, listed_at)
        reconcile.abandon(data, rows, listed_at)
    for rec in gone:
        reconcile.write_final_cost(rec)
    return rows, adopted, gone, recovered


def strays(data: dict, rows: dict[int, dict], group: Group) -> list[str]:
    """Live records of other groups whose instance is on this account under the same label: their
    recorded target is wrong (a damaged or hand-edited record), and this account is where they bill."""
    return [k for k, r in data["instances"].items()
            if k not in group.ids and not r.get("destroyed_at") and r.get("label")
            and (rows.get(int(k)) or {}).get("label") == r.get("label")]


# ----- deciding -----------------------------------------------------------------------------
def guard_alive(snap: dict | None) -> bool | None:
    """status's guard.alive; None when status has no guard field (no watchdog on this version)."""
    if not snap:
        return None
    guard = snap.get("guard") if "guard" in snap else (snap.get("job") or {}).get("guard")
    return bool(guard.get("alive")) if isinstance(guard, dict) else None


def stopped_on_purpose(rec: dict) -> bool:
    last = (rec.get("history") or [{}])[-1]
    return last.get("status") == "stopped" and "keep-disk" in str(last.get("why") or "")


def unpulled_run(rec: dict) -> bool:
    """A run on this instance was never pulled: a watchdog that stopped it kept those results."""
    exp = state.read_experiment(str(rec.get("experiment"))) or {}
    runs = [r for r in exp.get("runs") or [] if str(r.get("instance_id")) == str(rec["id"])]
    return bool(runs) and float((exp.get("pull") or {}).get("at") or 0) < float(runs[-1].get("at") or 0)


def busy_renting(rec: dict, intents: dict) -> int | None:
    """The pid of a live `vasticlaude up` on this machine still renting this instance, if any."""
    if rec.get("status") not in ("creating", "loading") or time.time() - float(rec.get("created_at") or 0) > BUSY_S:
        return None
    for by in (str(rec.get("created_by") or ""), str((intents.get(rec.get("label")) or {}).get("by") or "")):
        found = re.search(r"@(\S+) .*pid=(\d+)", by)
        if found and found.group(1) == socket.gethostname() and _pid_alive(int(found.group(2))):
            return int(found.group(2))
    return None


def _pid_alive(pid: int) -> bool:
    return pid != os.getpid() and pid_alive(pid)


def open_session_of(rec: dict, ending: str | None) -> str | None:
    """The other Claude session that rented `rec`, when it is still open on this machine.

    SessionStart leaves sessions/<id>.json with the Claude Code pid; SessionEnd removes it.
    A session killed without SessionEnd leaves a marker whose pid is dead: not open.
    """
    found = re.search(r"session=(\S+)", str(rec.get("created_by") or ""))
    session = found.group(1) if found else None
    if not session or session in ("-", ending):
        return None
    try:
        marker = json.loads((paths.home() / "sessions" / f"{session}.json").read_text(encoding="utf-8"))
        proc = psutil.Process(int(marker["pid"]))
        # the name guards against a reused pid; so does a process younger than the marker
        alive = "claude" in " ".join(proc.cmdline()).lower() and proc.create_time() <= float(marker["at"]) + 5
    except Exception:  # noqa: BLE001 — a marker we cannot read or check means: not known to be open
        return None
    return session if alive else None


def decide(rec: dict, row: dict, snap: dict | None, policy: dict, intents: dict,
           ending: str | None = None) -> Decision:
    """The rule of the module docstring for one live instance (reads only local state)."""
    status = row.get("actual_status")
    pid = busy_renting(rec, intents)
    if pid:
        return Decision("leave", f"`vasticlaude up` (pid {pid}) is still renting it", kind="left-busy")
    owner = open_session_of(rec, ending)
    if owner:
        return Decision("leave", f"rented by Claude session {owner}, which is still open", kind="left-busy")
    if status == "stopped" and stopped_on_purpose(rec):
        return Decision("leave", "stopped on purpose: the disk is kept and bills storage", kind="left-stopped")
    if status == "stopped" and unpulled_run(rec):
        return Decision("leave", "stopped with results never pulled: start it and pull, or destroy it",
                        kind="left-stopped")
    if status != "running":
        return Decision("destroy", f"the instance is {status or 'unknown'}: nothing can run on it")
    job = ((snap or {}).get("job") or {}).get("state") or "unknown"
    guard = guard_alive(snap)
    if job in RUNNING_JOB and guard:
        if policy["running"] == "leave-guarded":
            return Decision("leave", "job running under a live guard, which stops it when done", kind="left-guarded")
        return Decision(policy["running"], f"job running under a guard, but session_end.running is {policy['running']}",
                        pull=True)
    if job in RUNNING_JOB:
        return Decision("destroy", "job running with no live guard: nothing would stop it", pull=True)
    if job in ENDED_JOB:
        return Decision(policy["finished"], f"job {job}", pull=True)
    reasons = {"not_started": "idle: nothing was ever run on it", "unreachable": "unreachable over SSH"}
    return Decision("destroy", reasons.get(job, "job state unknown (status failed)"))


# ----- acting -------------------------------------------------------------------------------
def probe(vast: Vast, rec: dict) -> dict | None:
    """`vasticlaude status` of the instance, or None when it cannot say."""
    try:
        return observe(bind(vast, rec.get("experiment"), int(rec["id"])), 5)
    except Error as err:
        progress(f"vasticlaude reap: status of {rec['id']}: {err.message}")
        return None


def pull(vast: Vast, rec: dict) -> dict:
    """Best-effort `vasticlaude pull`: {"ok", "local_path" | "error"}; never raises."""
    previous = ((state.read_experiment(str(rec.get("experiment"))) or {}).get("pull") or {}).get("local_path")
    try:
        data = results.pull(bind(vast, rec.get("experiment"), int(rec["id"])), dest=Path(previous) if previous else None)
    except Error as err:
        return {"ok": False, "error": err.message}
    except Exception as err:  # noqa: BLE001 — best effort: the teardown must still happen
        return {"ok": False, "error": f"unexpected {type(err).__name__}"}
    return {"ok": True, "local_path": data["local_path"], "files": data["files"]}


def act(vast: Vast, iid: int, row: dict, decision: Decision, why: str) -> tuple[str, str | None]:
    """(report action, failure reason) after destroying or stopping the instance."""
    target = Target(iid, row, True)
    kind, details = stop(vast, target) if decision.verb == "stop" else teardown(vast, target, why)
    return kind.replace("_", "-"), details.get("reason")


# ----- the report ----------------------------------------------------------------------------
class Report:
    """The reap's report, rewritten after every instance so a kill -9 loses nothing."""

    def __init__(self, req: ReapRequest, policy: dict, notes: list[str]):
        now = time.time()
        self.data: dict = {"version": 1, "reason": req.reason, "end_reason": req.end_reason,
                           "session": req.session, "pid": os.getpid(), "host": socket.gethostname(),
                           "dry_run": req.dry_run, "only_orphans": req.only_orphans, "started_at": now,
                           "finished_at": None, "finished": False, "policy": policy, "instances": [],
                           "pending": [], "undone": [], "notes": notes, "billing_usd_per_hour": None,
                           "summary": "", "report": None, "exit_code": 0}
        stem = f"{req.reason}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{os.getpid()}"
        self.folder = paths.home() / "reports"
        self.json_path, self.md_path = self.folder / f"{stem}.json", self.folder / f"{stem}.md"
        self.data["report"] = str(self.md_path)

    def entry(self, rec: dict, status: str | None, **fields: object) -> None:
        self.data["instances"].append({"id": int(rec["id"]), "label": rec.get("label"),
                                       "experiment": rec.get("experiment"), "status": status,
                                       "dph": round(costing.billing_now(rec), 4), **fields})
        self.done(str(rec["id"]))

    def undone(self, iid: object, label: str | None, what: str, why: str) -> None:
        self.data["undone"].append({"id": int(iid) if iid is not None else None, "label": label, "what": what,
                                    "why": why})
        if iid is not None:
            self.done(str(iid))

    def done(self, iid: str) -> None:
        self.data["pending"] = [p for p in self.data["pending"] if str(p) != iid]
        self.save()

    def save(self) -> None:
        if self.data["dry_run"]:
            return
        paths.ensure_private_dir(self.folder)
        write_json_atomic(self.json_path, self.data, redacted=True)
        write_json_atomic(paths.home() / LAST, self.data, redacted=True)

    def finish(self) -> dict:
        records = state.load()["instances"]
        for iid in list(self.data["pending"]):  # taken down meanwhile by someone else, or never reached
            rec = records.get(str(iid)) or {"id": iid}
            if rec.get("destroyed_at"):
                self.entry(rec, "gone", spent_usd=costing.instance_cost(rec)["total_usd"], action="already-gone",
                           why="taken down meanwhile")
            else:
                self.undone(iid, rec.get("label"), "check and tear down", "not reached by this reap")
        live = state.live_instances()
        self.data["billing_usd_per_hour"] = round(sum(costing.billing_now(r) for r in live), 4)
        self.data.update(finished=True, finished_at=time.time(), summary=summary(self.data),
                         exit_code=BILLING_RISK if self.data["undone"] else 0)
        if not self.data["dry_run"]:
            self.md_path.parent.mkdir(parents=True, exist_ok=True)
            self.md_path.write_text(markdown(self.data), encoding="utf-8")
            self.save()
        return self.data


def summary(data: dict) -> str:
    """One line for SessionStart: what was done, what still bills, what was not done."""
    counts: dict[str, int] = {}
    freed = 0.0
    for item in data["instances"]:
        counts[item["action"]] = counts.get(item["action"], 0) + 1
        if item["action"] in ("destroyed", "would-destroy"):
            freed += float(item.get("dph") or 0)
    parts = [f"{n} {action.replace('-', ' ')}" for action, n in sorted(counts.items())] or ["nothing to do"]
    if freed:
        parts.append(f"${freed:.3f}/h stopped billing")
    if data["undone"]:
        parts.append(f"{len(data['undone'])} NOT done ({data['undone'][0]['why'][:80]})")
    return "; ".join(parts)


def markdown(data: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["started_at"]))
    policy = ", ".join(f"{k}={v}" for k, v in data["policy"].items())
    lines = [f"# vasticlaude reap — {data['reason']}, {when}", "",
             f"Session {data['session'] or '-'} ({data['end_reason'] or '-'}) · policy {policy} · "
             f"pid {data['pid']}", "",
             f"**{data['summary']}**. Still billing after the reap: ${data['billing_usd_per_hour'] or 0:.4f}/h.", ""]
    if data["instances"]:
        lines += ["| id | label | state | job | guard | $/h | spent | done | why |", "|" + "---|" * 9]
        lines += [row_md(i) for i in data["instances"]]
    if data["undone"]:
        lines += ["", "## Could not be done", ""]
        lines += [f"- {u['id'] or '-'} {u['label'] or ''}: {u['what']} — {u['why']}" for u in data["undone"]]
    if data["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


def row_md(i: dict) -> str:
    pull = i.get("pull")
    pulled = "" if not pull else " (pulled)" if pull["ok"] else f" (pull failed: {pull['error']})"
    guard = "" if i.get("guard") is None else i["guard"]
    return (f"| {i['id']} | {i['label'] or ''} | {i['status'] or ''} | {i.get('job') or ''} | {guard} | "
            f"{i['dph']:.4f} | {i.get('spent_usd') or 0:.4f} | {i['action']} | {i['why']}{pulled} |")


# ----- the reap ------------------------------------------------------------------------------
@contextmanager
def exclusive(dry_run: bool) -> Iterator[None]:
    """One reap at a time: a second one waits (its instances are then already handled)."""
    if dry_run:
        yield
        return
    lock = FileLock(str(paths.ensure_private_dir(paths.home()) / "reap.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        progress("vasticlaude reap: another reap is running: waiting for it")
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            raise Error("reap_busy", f"another reap held {lock.lock_file} for {LOCK_WAIT_S:g} s",
                        "Look at <vasticlaude home>/logs/reap.log.", BILLING_RISK) from None
    try:
        yield
    finally:
        lock.release()


def orphan_ids() -> set[str]:
    """What the last reap left undone or never reached (its pending list when it was killed)."""
    try:
        last = json.loads((paths.home() / LAST).read_text(encoding="utf-8"))
        ids = {str(u["id"]) for u in last.get("undone") or [] if u.get("id") is not None}
        return ids | {str(p) for p in last.get("pending") or []}
    except (OSError, ValueError, RecursionError, TypeError, AttributeError, KeyError):
        return set()


def reap_group(group: Group, report: Report, policy: dict, cfg: dict, scope: set[str] | None) -> None:
    """Reconcile one account, then decide and act for each live instance in scope."""
    recs = {k: r for k, r in state.load()["instances"].items() if k in group.ids and (scope is None or k in scope)}
    if group.account is None:
        seen = {str(i["id"]) for i in report.data["instances"]}
        if group.ids and group.ids <= seen:  # all found on a reachable account (their target was wrong)
            return
        recs = {k: r for k, r in recs.items() if k not in seen}
        local = "127.0.0.1" in str(group.url) or "localhost" in str(group.url)
        unreached(report, recs, f"rented on {group.url or 'an unknown account'}, which this configuration does not "
                                "reach" + (" (a local sandbox that is not running: start it, or run "
                                           "`vasticlaude reconcile --sandbox`)" if local else ""))
        return
    intents = dict(state.load().get("intents") or {})
    try:
        vast = connect(group.account, cfg)
        if report.data["dry_run"]:
            rows, adopted, gone, recovered = {int(r["id"]): r for r in vast.instances()}, [], [], None
        else:
            rows, adopted, gone, recovered = with_retries(lambda: reconcile_scoped(vast, group), "listing instances")
    except (VastError, Error) as err:
        unreached(report, recs, f"could not list the account: {err.message}")
        return
    if recovered:
        report.data["notes"].append(f"instances.json had bad parts (left out; the file as it was is kept at "
                                    f"{recovered}): rebuilt from the account")
    for rec in gone:
        if str(rec["id"]) in recs:
            report.entry(rec, "gone", spent_usd=costing.instance_cost(rec)["total_usd"], action="already-gone",
                         why="no longer on the account")
    wanted = set(recs) | set(adopted)
    for iid, rec in state.load()["instances"].items():
        if iid in wanted and not rec.get("destroyed_at"):
            try:
                handle(vast, rec, rows.get(int(iid)), report, policy, intents)
            except Exception as err:  # noqa: BLE001 — one instance's surprise must not leave the others billing
                log = log_crash("vasticlaude reap")
                report.undone(iid, rec.get("label"), "check and tear down",
                              f"unexpected {type(err).__name__} (see {log})")


def unreached(report: Report, recs: dict[str, dict], why: str) -> None:
    """Every instance of an account that could not be checked is undone (and so are the unrecorded ones)."""
    for iid, rec in recs.items():
        report.undone(iid, rec.get("label"), "check and tear down", why)
    if not recs:
        report.undone(None, None, "look for unrecorded instances", why)


def handle(vast: Vast, rec: dict, row: dict | None, report: Report, policy: dict, intents: dict) -> None:
    """Decide for one instance, act on it (unless --dry-run), and put it in the report."""
    if row is None:  # recorded after the listing: not ours to judge yet
        report.entry(rec, rec.get("status"), spent_usd=0, action="left-busy", why="recorded after the listing")
        return
    snap = probe(vast, rec) if row.get("actual_status") == "running" and rec.get("experiment") else None
    decision = decide(rec, row, snap, policy, intents, report.data.get("session"))
    entry = {"job": ((snap or {}).get("job") or {}).get("state"), "guard": guard_alive(snap), "pull": None,
             "action": decision.kind or f"would-{decision.verb}", "why": decision.why}
    if report.data["dry_run"]:
        entry["why"] += " (would pull first)" if decision.pull else ""
    elif decision.verb != "leave":
        entry["pull"] = pull(vast, rec) if decision.pull else None
        if decision.verb == "destroy" and not (entry["pull"] or {}).get("ok") and unpulled_run(rec):
            # results that did not come home stay on the disk: stop (storage bills, reported), never destroy
            decision = Decision("stop", f"{decision.why}; its run's results are not home, so it is stopped "
                                        "to keep them on its disk")
            entry["why"] = decision.why
        entry["action"], failure = act(vast, int(rec["id"]), row, decision,
                                       f"reap {report.data['reason']}: {decision.why}")
        if entry["action"] == "already-gone":  # taken down meanwhile (its watchdog, another session)
            entry["why"] = f"gone from the account before this reap could {decision.verb} it"
        if failure:
            entry["why"] = failure
            report.data["undone"].append({"id": int(rec["id"]), "label": rec.get("label"),
                                          "what": decision.verb, "why": failure})
    after = state.load()["instances"].get(str(rec["id"]), rec)
    report.entry(rec, row.get("actual_status"), spent_usd=costing.instance_cost(after)["total_usd"], **entry)


def reap(req: ReapRequest) -> dict:
    """Reconcile every account with live records, then leave, pull, stop or destroy each instance; the report."""
    notes: list[str] = []
    policy, cfg = load_policy(notes)
    report = Report(req, policy, notes)
    with exclusive(req.dry_run):
        scope = orphan_ids() if req.only_orphans else None
        snapshot = state.load()
        live = state.live_instances(snapshot)
        report.data["pending"] = [int(r["id"]) for r in live if scope is None or str(r["id"]) in scope]
        report.save()
        groups = sorted(plan_groups(req.account, cfg, live, bool(snapshot.get("damaged"))),
                        key=lambda g: g.account is None)  # the reachable first: they may find the others' records
        if not groups:
            report.undone(None, None, "look for unrecorded instances",
                          "no Vast API key and no running sandbox: the account cannot be checked")
        for group in groups:
            try:
                reap_group(group, report, policy, cfg, scope)
            except Exception as err:  # noqa: BLE001 — one account's surprise must not stop the others' reap
                unreached(report, {k: {} for k in group.ids}, f"unexpected {type(err).__name__} "
                                                              f"(see {log_crash('vasticlaude reap')})")
        return report.finish()





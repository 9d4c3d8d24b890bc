"""SessionStart hook: say what still bills (asking the account once), start background work.

Tells Claude (additionalContext) and the user (systemMessage) in a few lines, under 1.5 KB
whatever the number of instances: what is still running or stopped-but-billing, since
when, its $/h and what it has cost, the last reap's summary, what needs a decision, and any
recovery that did not finish (`recovering` in an experiment.json).
From local state (instances.json, experiment.json, last-session-end.json) and ONE call to the
account (`GET /api/v1/instances/`, at most 2 s), so a stopped instance is said to bill storage
only and one gone bills nothing; when the account does not answer, the lines say "as last
recorded" and when. That work is started detached, so the session never waits:
- `scripts/vc --prepare`, which builds the launcher's environment (so the first command
  does not wait for it), when the launcher exists;
- `vasticlaude reap --reason session-start --only-orphans` when the last reap left
  something undone, or was killed before it finished (SessionEnd is skipped on Ctrl-C or
  a crash, and may have met the API down).
Nothing to say: no output. Stdlib only; exits 0 whatever happens.
"""
from __future__ import annotations

import json
import os
import sys
import time

import hooklib
from hooklib import money
from vasticlaude.core.lifecycle import record_status

MAX_BYTES = 1500   # the whole stdout, JSON and hooklib's final newline included
MAX_LISTED = 6
RECOVERY_NEWS_S = 7 * 86400  # an unfinished recovery is said for a week


def handle(event: dict) -> str | None:
    data, damaged = hooklib.load_state()
    report = hooklib.last_report()
    hooklib.mark_session(event, open_=True)
    export_session(event)
    prepare(event)
    follow_up = needs_follow_up(report) and start_orphan_reap(event)
    recs = hooklib.live(data)
    rows, why = hooklib.account_rows(recs) if recs or damaged else (None, "")
    head, items, decision = instance_lines(recs, report, rows, why)
    if damaged:
        head[:0] = damage_lines(damaged, recs, rows)
    tail = decision + recovery_lines() + quarantine_lines() + report_lines(report, follow_up)
    if not (head or items or tail):
        return None
    return fit(head, items, tail)


def damage_lines(problems: list[str], recs: list[dict], rows: dict[int, dict] | None) -> list[str]:
    """A damaged instances.json: what the account shows that the state does not (when it answered)."""
    known = {int(r["id"]) for r in recs}
    unknown = sorted(i for i, r in (rows or {}).items() if i not in known and str(r.get("label") or "").startswith("vasticlaude-"))
    lines = [f"vasticlaude: {hooklib.damage_line(problems)}, so what bills may be unknown: run "
             f"`{hooklib.vc_command()} reconcile` (it keeps the old file aside and rebuilds it from the account)."]
    if unknown:
        lines.append(f"On the account but not in the state: {' '.join(map(str, unknown[:8]))}; reconcile adopts them.")
    return lines


def quarantine_lines() -> list[str]:
    """Files whose bad parts were left out in the last day (store/quarantine.py)."""
    kept = hooklib.quarantined()
    if not kept:
        return []
    names = sorted({str(e.get("file")).rsplit("/", 2)[-1] for e in kept})
    return [f"Bad content left out of {', '.join(names[:4])} in the last day (copies kept as *.bad-<time>; "
            f"`{hooklib.vc_command()} doctor` lists them)."]


def export_session(event: dict) -> None:
    """Name the session for the Bash commands that follow, so `up` records which session rented
    what and `cost` can total this session (CLAUDE_ENV_FILE: claude-code-plugin.md §6.6)."""
    env_file = os.environ.get("CLAUDE_ENV_FILE")
    if env_file and event.get("session_id"):
        with open(env_file, "a", encoding="utf-8") as handle:
            handle.write(f"export VASTICLAUDE_SESSION={hooklib.session_id(event)}\n")


def prepare(event: dict) -> None:
    """Start building the launcher's environment in the background (it is quick when ready)."""
    vc = hooklib.launcher()
    if vc is not None:
        hooklib.spawn([str(vc), "--prepare"], dict(os.environ), "prepare.log", cwd=hooklib.project_dir(event))


def needs_follow_up(report: dict | None) -> bool:
    if not report or hooklib.reap_running(report):
        return False
    return bool(report.get("undone")) or not report.get("finished")


def start_orphan_reap(event: dict) -> int:
    """The pid of a detached reap of what the last one left undone."""
    argv, env = hooklib.worker(["reap", "--reason", "session-start", "--only-orphans",
                                "--session", hooklib.session_id(event)])
    return hooklib.spawn(argv, env, "reap.log", cwd=hooklib.project_dir(event))


def instance_lines(recs: list[dict], report: dict | None, rows: dict[int, dict] | None = None,
                   why: str = "") -> tuple[list[str], list[str], list[str]]:
    """(header, one line per live instance — the most expensive first, what needs a decision).

    With the account's `rows` each record's status is the live one (a stopped instance bills
    storage only; one gone from the account bills nothing); without, it is as last recorded."""
    if not recs:
        return [], [], []
    gone = [r for r in recs if rows is not None and int(r["id"]) not in rows]
    recs = [as_seen(r, rows) for r in recs if r not in gone]
    guarded = hooklib.left_guarded(report)
    total = hooklib.total_dph(recs)
    spent = sum(hooklib.costing.instance_cost(r)["total_usd"] for r in recs)
    seen = "now" if rows is not None else f"as last recorded, {last_recorded()}" + (f": {why}" if why else "")
    head = [f"vasticlaude: {len(recs)} instance(s) still exist and bill {money(total)}/h "
            f"({money(spent)} spent so far; {seen}):"] if recs else []
    if gone:
        head.append(f"Gone from the account since last seen (nothing bills): {' '.join(str(r['id']) for r in gone[:8])}; "
                    f"`{hooklib.vc_command()} reconcile` records it.")
    ranked = sorted(recs, key=lambda r: -hooklib.costing.billing_now(r))
    items = [instance_line(r, guarded) for r in ranked]
    undecided = [str(r["id"]) for r in recs if needs_decision(r, report)]
    decision = []
    if undecided:
        more = f" +{len(undecided) - 8}" if len(undecided) > 8 else ""
        decision.append(f"Needs a decision: {' '.join(undecided[:8])}{more} (no guarded job on them). "
                        f"Keep them, or tear down with `{hooklib.vc_command()} down ID` or `down --all`; "
                        "`cost` and `status` say more.")
    return head, items, decision


def as_seen(rec: dict, rows: dict[int, dict] | None) -> dict:
    """The record with the account's current status (what it bills now), when the account answered."""
    row = (rows or {}).get(int(rec["id"]))
    if row is None:
        return rec
    return {**rec, "status": record_status(row)}


def last_recorded() -> str:
    try:
        return hooklib.stamp(os.stat(hooklib.paths.home() / "instances.json").st_mtime)
    except OSError:
        return "?"


def instance_line(rec: dict, guarded: dict[str, float]) -> str:
    status = str(rec.get("status") or "?")
    cost = hooklib.costing.instance_cost(rec)
    note = note_for(rec, guarded)
    return (f"- {rec.get('id')} {rec.get('experiment') or rec.get('label') or ''}: {status} since "
            f"{hooklib.stamp(hooklib.since(rec))}, {money(hooklib.costing.billing_now(rec))}/h, "
            f"spent {money(cost['total_usd'])}" + (f"; {note}" if note else ""))


def note_for(rec: dict, guarded: dict[str, float]) -> str:
    if rec.get("status") in ("stopped", "exited"):
        return "stopped (by its watchdog or by hand), disk kept: storage bills"
    ended = hooklib.job_ended(rec)
    if ended is not None:
        return (f"its job ended (exit {ended}) and the results are home; the instance bills until "
                f"`{hooklib.vc_command()} down --experiment {rec.get('experiment')}`")
    if str(rec.get("id")) in guarded:
        return f"job left running under its guard (last reap, {hooklib.stamp(guarded[str(rec.get('id'))])})"
    guard = hooklib.job_in_flight(rec)
    if guard is None:
        return ""
    if guard.get("watchdog") and guard.get("alive"):
        return "job running under its guard"
    return "job started WITHOUT a guard"


def needs_decision(rec: dict, report: dict | None) -> bool:
    return not hooklib.guarded(rec, report)


def recovery_lines(now: float | None = None) -> list[str]:
    """Recoveries that did not finish (`recovering` in experiment.json, a week at most): the job is not
    running again, and a half-done move may have left no instance at all."""
    now = now or time.time()
    root = hooklib.paths.home() / "experiments"
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError:
        return []
    lines = []
    for name in names:
        if not recent(root / name / "experiment.json", now):  # a stat, not a parse, for old experiments
            continue
        pending = hooklib.experiment(name).get("recovering") or {}
        if not pending or now - float(pending.get("at") or 0) > RECOVERY_NEWS_S:
            continue
        if recovery_held(name):
            lines.append(f"Experiment {name}: a recovery from {pending.get('kind')} is under way right now.")
            continue
        lines.append(f"Experiment {name}: a recovery from {pending.get('kind')} (started "
                     f"{hooklib.stamp(float(pending.get('at') or 0))}) did not finish, so its job is not running: "
                     f"`{hooklib.vc_command()} recover --experiment {name}` picks it up, or "
                     f"`{hooklib.vc_command()} down --experiment {name}`.")
    return lines[:3]


def recent(path: os.PathLike, now: float) -> bool:
    try:
        return now - os.stat(path).st_mtime <= RECOVERY_NEWS_S
    except OSError:
        return False


def recovery_held(name: str) -> bool:
    """Is `recover.lock` held by a live recovery (`filelock` takes an flock on it)?"""
    import fcntl
    try:
        fd = os.open(hooklib.paths.home() / "experiments" / name / "recover.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def report_lines(report: dict | None, follow_up: int) -> list[str]:
    if not report:
        return []
    when = hooklib.stamp(float(report.get("finished_at") or report.get("started_at") or 0))
    if hooklib.reap_running(report):
        return [f"A reap ({report.get('reason')}, started {when}, pid {report.get('pid')}) is still running; "
                f"its report: {report.get('report')}."]
    if not report.get("finished"):
        head = f"The last reap ({report.get('reason')}, {when}) did not finish"
    else:
        head = f"Last reap ({report.get('reason')}, {when}): {report.get('summary') or 'done'}"
    lines = [head + "."]
    undone = report.get("undone") or []
    if undone:
        lines.append("Could not be done: " + "; ".join(f"{u.get('id') or ''} {u.get('what')}: {u.get('why')}"
                                                       for u in undone[:3])[:300]
                     + (f" (+{len(undone) - 3} more)" if len(undone) > 3 else "") + ".")
    if follow_up:
        lines.append(f"A reap of what was left undone now runs in the background (pid {follow_up}, log "
                     f"{hooklib.paths.home() / 'logs' / 'reap.log'}).")
    elif not undone:  # a clean reap is worth a line for a day
        return [] if time.time() - float(report.get("finished_at") or 0) > 86400 else lines
    return lines


def fit(head: list[str], items: list[str], tail: list[str]) -> str:
    """The output JSON within MAX_BYTES: as many instance lines as fit, then "+N more"."""
    keep = min(len(items), MAX_LISTED)
    while True:
        more = [f"- +{len(items) - keep} more (`{hooklib.vc_command()} cost` lists them)"] if keep < len(items) else []
        out = render(head + items[:keep] + more + tail)
        if fits(out) or keep == 0:
            break
        keep -= 1
    lines = head + items[:keep] + more + tail
    while not fits(out) and len(lines) > 1:  # long paths in the tail: drop from the end
        lines.pop()
        out = render(lines)
    return out


def fits(out: str) -> bool:
    return len(out.encode()) + 1 <= MAX_BYTES  # + the newline hooklib ends it with


def render(lines: list[str]) -> str:
    text = "\n".join(line[:300] for line in lines)
    return json.dumps({"systemMessage": lines[0][:160],
                       "hookSpecificOutput": {"hookEventName": "SessionStart", "additionalContext": text}},
                      ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(hooklib.main(handle, "SessionStart"))

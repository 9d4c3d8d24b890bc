"""An experiment's report: report.md with its command, instances, timeline, cost, recoveries, log and charts.

Everything comes from local state; only a missing log tail is fetched over SSH, best effort.

A run that was recovered used several instances, one after the other (experiment.json
"runs", linked by the recoveries between them). The report joins what every one of them
logged, by step, and times the run from its first start to its last end. The job.log of
an instance comes home with `pull` (or a sync of `run/`) into runs/<experiment>/run/, where
the next instance's overwrites it; so the report keeps a copy per instance, in
runs/<experiment>/logs/<instance id>/ (job.log and its run files), of every log it sees,
and reads those copies back. An instance whose log never came home (a host that died
before any pull) is named in the report, with the steps that are missing for it.
"""
from __future__ import annotations

import calendar
import os
import re
import shlex
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from vasticlaude.core import budget, chart, fmt, logparse
from vasticlaude.core import money as costing
from vasticlaude.errors import Error
from vasticlaude.output import redact, redact_file
from vasticlaude.ops import groups
from vasticlaude.ops.costs import read_state
from vasticlaude.remote import templates
from vasticlaude.remote.layout import Layout
from vasticlaude.store import config, paths, state
from vasticlaude.vast.account import Account, wants_sandbox

LOG_LINES = 20
LOG_TAIL_BYTES = 16 * 1024 * 1024   # metrics come from the last 16 MB of a huge log
REMOTE_TIMEOUT = 20.0               # the whole best-effort SSH fetch, API lookup included
SSH_TIMEOUT = 10.0
TIMELINE_ROWS = 60
RUN_FILES = ("exit_code", "started_at", "ended_at")  # written by the run wrapper (templates/run.sh.j2)
MARK = "@@vasticlaude-run-file "
MAX_METRICS = 6                     # as many series as a reader tells apart on one chart
LOGS = "logs"                       # runs/<experiment>/logs/<instance id>/: the log kept of each instance
MATCH_S = 3600.0                    # a run file's started_at this close to a recorded run belongs to it
STARTED = re.compile(r"vasticlaude: run \S+ started (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")  # run.sh.j2's first line
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def report(experiment: str | None = None, out: Path | None = None, offline: bool = False) -> dict:
    """Write report.md and its charts for `experiment` (default: the most recently active one)."""
    now = time.time()
    every = sorted(read_state()["instances"].values(), key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))
    experiment = pick_experiment(experiment, every)
    members = groups.members(experiment)
    if members:
        return group_report(experiment, members, every, out, offline, now)
    records = [r for r in every if r.get("experiment") == experiment]
    exp = state.read_experiment(experiment) or {}
    runs = config.runs_dir(experiment)
    out = Path(out).expanduser().resolve() if out else runs
    out.mkdir(parents=True, exist_ok=True)
    events = state.read_lines(state.experiment_dir(experiment) / "events.jsonl")
    log = gather_log(experiment, exp, runs, records, events, offline=offline)
    charts = write_charts(out, experiment, records, log, now)
    facts = run_facts(exp, log["facts"], events, log)
    costs = cost_section(records, exp, now)
    text = templates.render(
        "report.md.j2", experiment=experiment, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        command_cell=_code_span(_short(command_of(exp), 100)) if command_of(exp) else "not recorded",
        command_block=fenced([command_of(exp) or "(not recorded in experiment.json)"], "sh"),
        instances=[instance_row(r) for r in records], timeline=timeline(events), cost=costs,
        recoveries=recovery_section(exp, records, now, costs["total_usd"]),
        run=facts, results=results(experiment, exp, runs, records), log=log,
        charts={"cost": charts["cost"].name, "metrics": charts["metrics"].name if "metrics" in charts else ""},
        group=None)
    report = out / "report.md"
    report.write_text(redact(text), encoding="utf-8")
    return {"experiment": experiment, "report": str(report), "charts": [str(p) for p in charts.values()],
            "total_usd": costs["total_usd"], "exit_code": facts["exit_code"]}


# ----- several nodes (up --nodes N) ------------------------------------------------------------
def group_report(group: str, members: list[str], every: list[dict], out: Path | None, offline: bool,
                 now: float) -> dict:
    """One report for a multi-node experiment: every node's instances (relaunched ones too) in the
    cost, the group's and the nodes' events, each node's exit and results; the log and metrics are
    rank 0's (node 0 prints what the whole job does)."""
    exp = state.read_experiment(group) or {}
    nodes = [node_facts(name, every) for name in members]
    records = sorted((r for n in nodes for r in n["records"]), key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))
    out = Path(out).expanduser().resolve() if out else config.runs_dir(group)
    out.mkdir(parents=True, exist_ok=True)
    rank0 = nodes[0]
    log = gather_log(members[0], rank0["exp"], rank0["runs"], rank0["records"], rank0["events"], offline=offline)
    charts = write_charts(out, group, records, log, now)
    facts = group_facts(exp, nodes, run_facts(rank0["exp"], log["facts"], rank0["events"], log))
    costs = cost_section(records, exp, now, node_of=_node_of(nodes))
    costs["stored"] = _stored_text(_shipped(nodes))
    events = state.read_lines(state.experiment_dir(group) / "events.jsonl")
    text = templates.render(
        "report.md.j2", experiment=group, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        command_cell=_code_span(_short(command_of(exp), 100)) if command_of(exp) else "not recorded",
        command_block=fenced([command_of(exp) or "(not recorded in experiment.json)"], "sh"),
        instances=[instance_row(r) | {"node": cell(r.get("experiment"))} for r in records],
        timeline=timeline(group_events(events, nodes)), cost=costs,
        recoveries=recovery_section(group_recoveries(exp, nodes), records, now, costs["total_usd"]),
        run=facts, results=[f"{n['name']}: {line}" for n in nodes
                            for line in results(n["name"], n["exp"], n["runs"], n["records"])], log=log,
        charts={"cost": charts["cost"].name, "metrics": charts["metrics"].name if "metrics" in charts else ""},
        group={"count": len(members), "nodes": facts["nodes"]})
    report = out / "report.md"
    report.write_text(redact(text), encoding="utf-8")
    return {"experiment": group, "report": str(report), "charts": [str(p) for p in charts.values()],
            "total_usd": costs["total_usd"], "exit_code": facts["exit_code"],
            "nodes": [{"experiment": n["experiment"], "exit_code": n["exit_code"], "instances": n["instances"]}
                      for n in facts["nodes"]],
            "failed_nodes": [n["experiment"] for n in facts["nodes"] if n["exit_code"] not in (None, 0)]}


def node_facts(name: str, every: list[dict]) -> dict:
    """One node's experiment.json, events, instances and folder at home (runs/<node>/, where its pull lands)."""
    return {"name": name, "exp": state.read_experiment(name) or {}, "runs": config.runs_dir(name),
            "records": [r for r in every if r.get("experiment") == name],
            "events": state.read_lines(state.experiment_dir(name) / "events.jsonl")}


def group_facts(exp: dict, nodes: list[dict], facts: dict) -> dict:
    """Rank 0's exit and times (torchrun's rank 0 ends last and reports the job), each node's exit from
    what came home (its pulled run files, experiment.json, events), and which nodes failed. After a
    group restart the run began when the group's run command was given."""
    rows = []
    for rank, node in enumerate(nodes):
        code = facts["exit_code"] if rank == 0 else node_exit(node)
        rows.append({"experiment": node["name"], "rank": rank, "exit_code": code,
                     "instances": [r.get("id") for r in node["records"]],
                     "exit": "unknown" if code is None else f"{code} ({'success' if code == 0 else 'failed'})"})
    failed = [f"{r['experiment']} (exit {r['exit_code']})" for r in rows if r["exit_code"] not in (None, 0)]
    facts = dict(facts, nodes=rows)
    facts["exit_text"] = f"{facts['exit_text']} on rank 0" + (f"; failed: {', '.join(failed)}" if failed else "")
    began = _number(((exp.get("runs") or [{}])[-1]).get("at"))
    restarts = [r for r in exp.get("recoveries") or [] if began is not None and (_number(r.get("at")) or 0) > began]
    start, end = facts["started_at"], facts["ended_at"]
    if restarts and began is not None and (start is None or began < start):
        facts["started_at"], facts["started"] = began, when(began)
        if end is not None:
            facts["duration_text"] = (f"{duration(end - began)} (the whole run, the group restarted "
                                      f"{len(restarts)} time{'s' if len(restarts) > 1 else ''})")
    return facts


def node_exit(node: dict) -> int | None:
    """A node's exit code from local state only (no SSH per node): its pulled run files, else its records."""
    found = next(({key: _read(folder / key) for key in RUN_FILES} for folder in run_dirs(node["exp"], node["runs"])
                  if (folder / "exit_code").is_file()), {})
    return run_facts(node["exp"], found, node["events"])["exit_code"]


def group_events(events: list[dict], nodes: list[dict]) -> list[dict]:
    """The group's events and every node's, in time order, each node's named."""
    tagged = [{"at": e.get("at"), "event": e.get("event"), "node": n["name"],
               **{k: v for k, v in e.items() if k not in ("at", "event")}} for n in nodes for e in n["events"]]
    return sorted([*events, *tagged], key=lambda e: _number(e.get("at")) or 0)


def group_recoveries(exp: dict, nodes: list[dict]) -> dict:
    """What recovery_section reads: each node's recoveries (node-named), each one that the group
    restart followed saying so; the group's own entries for the restarts no node recorded."""
    restarted = {r.get("from_instance") for r in exp.get("recoveries") or []}
    rows = [dict(r, kind=f"{n['name']}: {r.get('kind')}",
                 action=f"{r.get('action')}, then the group restarted" if r.get("from_instance") in restarted
                 else r.get("action")) for n in nodes for r in n["exp"].get("recoveries") or [] if isinstance(r, dict)]
    seen = {r.get("from_instance") for r in rows}
    rows += [dict(r, kind=f"node {r.get('node')}: {r.get('kind')}", action="restart_group", ok=True)
             for r in exp.get("recoveries") or [] if isinstance(r, dict) and r.get("from_instance") not in seen]
    return {"recoveries": sorted(rows, key=lambda r: _number(r.get("at")) or 0)}


def _node_of(nodes: list[dict]) -> dict:
    return {r.get("id"): n["name"] for n in nodes for r in n["records"]}


def _shipped(nodes: list[dict]) -> dict:
    """What the nodes put in the results store, together (each node ships its own)."""
    stores = [n["exp"].get("store") or {} for n in nodes]
    sizes = [s["bytes"] for s in stores if isinstance(s.get("bytes"), (int, float))]
    return {"bytes": sum(sizes), "url": next((s.get("url") for s in stores if s.get("url")), None)} if sizes else {}


# ----- which experiment ----------------------------------------------------------------------
def pick_experiment(name: str | None, records: list[dict]) -> str:
    """The named experiment if vasticlaude knows it, else the most recently active one."""
    known = known_experiments(records)
    if name:
        if name in known:
            return name
        listed = ", ".join(sorted(known, key=known.get)[-8:]) or "none yet"
        raise Error("unknown_experiment", f"no experiment named {name!r} in vasticlaude's state",
                    f"Known experiments: {listed}.")
    if not known:
        raise Error("no_experiment", "vasticlaude has no experiment yet",
                    "Rent an instance with 'vasticlaude up --experiment NAME' first.")
    latest = max(known, key=known.get)
    node = groups.NODE.fullmatch(latest)  # the newest is a node of several: the report is the group's
    return node.group(1) if node and latest in (groups.members(node.group(1)) or ()) else latest


def known_experiments(records: list[dict]) -> dict[str, float]:
    """Experiment name → when it was last active (records and files under experiments/)."""
    known: dict[str, float] = {}
    for rec in records:
        name = rec.get("experiment")
        if _safe_name(name):
            known[name] = max(known.get(name, 0.0), float(rec.get("updated_at") or rec.get("created_at") or 0))
    root = state.experiment_dir("x").parent
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.is_dir() and _safe_name(folder.name):
            stamps = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()] or [folder.stat().st_mtime]
            known[folder.name] = max(known.get(folder.name, 0.0), *stamps)
    return known


def _safe_name(name: object) -> bool:
    """A name usable as one path component (it becomes runs/<name>/)."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


# ----- sections ------------------------------------------------------------------------------
def command_of(exp: dict) -> str:
    nested = exp.get("run") if isinstance(exp.get("run"), dict) else {}
    cmd = exp.get("command") or nested.get("command")
    if isinstance(cmd, list):
        return shlex.join(str(c) for c in cmd)
    return str(cmd or "")


def instance_row(rec: dict) -> dict:
    count, name = int(rec.get("num_gpus") or 1), rec.get("gpu_name") or "unknown GPU"
    dph = float(rec.get("gpu_dph") or 0) + float(rec.get("storage_dph") or 0)
    return {"id": cell(rec.get("id")), "gpu": cell(f"{count}x {name}" if count > 1 else name),
            "dph": f"${dph:.3f}", "location": cell(rec.get("location") or rec.get("geolocation") or "unknown"),
            "status": cell(rec.get("status") or "unknown"), "created": when(rec.get("created_at")),
            "destroyed": when(rec.get("destroyed_at")) or "still rented"}


def timeline(events: list[dict]) -> list[dict]:
    """One row per event, repeats in a row folded into one (×N), long logs cut in the middle."""
    rows: list[dict] = []
    for event in events:
        row = {"time": when(event.get("at")), "event": cell(event.get("event", "?")), "detail": cell(detail(event))}
        if rows and (rows[-1]["event"], rows[-1]["_detail"]) == (row["event"], row["detail"]):
            rows[-1]["count"] += 1
            rows[-1]["detail"] = f"{row['detail']} (×{rows[-1]['count']})"
            continue
        rows.append(row | {"count": 1, "_detail": row["detail"]})
    if len(rows) > TIMELINE_ROWS:
        head, tail = 10, TIMELINE_ROWS - 11
        gap = {"time": "…", "event": f"{len(rows) - head - tail} more", "detail": ""}
        rows = rows[:head] + [gap] + rows[-tail:]
    return rows


def detail(event: dict) -> str:
    parts = [f"{k}={v}" for k, v in event.items() if k not in ("at", "event") and v not in (None, "", [], {})]
    return _short(", ".join(parts), 120)


def cost_section(records: list[dict], exp: dict, now: float, node_of: dict | None = None) -> dict:
    """Totals and per-instance figures, exactly `costing.instance_cost` (what `cost` shows);
    `node_of` (instance id → node) names each instance's node in a multi-node experiment."""
    sums = {"gpu_usd": 0.0, "storage_usd": 0.0, "bandwidth_usd": 0.0, "total_usd": 0.0}
    rows = []
    for rec in records:
        spent = costing.instance_cost(rec, now)
        for key in sums:
            sums[key] += spent[key]
        rows.append({"id": cell(rec.get("id")), "running": duration(spent["running_s"]), "gpu": usd(spent["gpu_usd"]),
                     "storage": usd(spent["storage_usd"]), "bandwidth": usd(spent["bandwidth_usd"]),
                     "total": usd(spent["total_usd"]), "node": cell((node_of or {}).get(rec.get("id")))})
    limit = budget.experiment_budget(None, exp, config.load())
    stored = _stored_text(exp.get("store") or {})
    return {"total": usd(sums["total_usd"]), "gpu": usd(sums["gpu_usd"]), "storage": usd(sums["storage_usd"]),
            "bandwidth": usd(sums["bandwidth_usd"]) if sums["bandwidth_usd"] else "",
            "instances": rows, "total_usd": round(sums["total_usd"], 6), "stored": stored,
            "budget": usd(limit) if limit is not None else "",
            "left": usd(limit - sums["total_usd"]) if limit is not None else ""}


def _stored_text(shipped: dict) -> str:
    return (f"{fmt.human_bytes(shipped['bytes'])} in {shipped.get('url') or 'the results store'} (billed by its provider)"
            if isinstance(shipped.get("bytes"), (int, float)) else "")


def recovery_section(exp: dict, records: list[dict], now: float, total: float) -> dict:
    """Each recovery, and what the instances given up cost (an upper bound on what faults cost)."""
    rows = [{"time": when(r.get("at")), "fault": cell(r.get("kind")), "action": cell(r.get("action")),
             "move": f"{r.get('from_instance')} → {r.get('to_instance')}", "seconds": f"{r.get('seconds', 0):g} s",
             "ok": "yes" if r.get("ok") else cell(f"no: {r.get('reason', '')}")} for r in exp.get("recoveries") or []]
    moved = {r.get("from_instance") for r in exp.get("recoveries") or []
             if r.get("ok") and r.get("from_instance") != r.get("to_instance")}
    lost = sum(costing.instance_cost(rec, now)["total_usd"] for rec in records if rec.get("id") in moved)
    share = f" ({100 * lost / total:.0f} % of the total)" if total > 0 else ""
    return {"rows": rows, "given_up": usd(lost) + share if moved else ""}


def run_facts(exp: dict, found: dict, events: list[dict], log: dict | None = None) -> dict:
    """Exit code, start and end: the wrapper's files (pulled or read over SSH), else
    experiment.json, else the latest event that states an exit code (null while running).

    After a recovery the run spans several instances: it started when the first of them
    started it (its run record or its started_at, the earlier) and ended when the last did."""
    nested = exp.get("run") if isinstance(exp.get("run"), dict) else {}
    facts: dict[str, Any] = {}
    for key in RUN_FILES:
        value = _number(found.get(key))
        facts[key] = value if value is not None else _number(exp.get(key, nested.get(key)))
    if facts["exit_code"] is None:
        facts["exit_code"] = _number(next((e for e in reversed(events) if "exit_code" in e), {}).get("exit_code"))
    code = facts["exit_code"] = int(facts["exit_code"]) if facts["exit_code"] is not None else None
    parts = (log or {}).get("parts") or []
    if len(parts) > 1:
        firsts = [_number(parts[0].get("run_at")), _number(parts[0]["facts"].get("started_at"))]
        facts["started_at"] = min((v for v in firsts if v is not None), default=facts["started_at"])
    start, end = facts["started_at"], facts["ended_at"]
    facts["exit_text"] = "unknown (still running, or never recorded)" if code is None else \
        f"{code} ({'success' if code == 0 else 'failed'})"
    facts["started"], facts["ended"] = when(start) or "not recorded", when(end) or "not recorded"
    facts["duration_text"] = duration(end - start) if start is not None and end is not None else \
        "unknown (no end recorded)" if start is not None else "unknown"
    if len(parts) > 1 and start is not None and end is not None:
        facts["duration_text"] += f" (the whole run, on {len(parts)} instances one after the other)"
    facts["parts"] = [{"instance": cell(p["instance_id"]), "started": when(p.get("run_at") or p["facts"].get("started_at")),
                       "ended": when(p["facts"].get("ended_at")) or ("given up in a recovery" if p is not parts[-1] else "not recorded"),
                       "steps": cell(p["steps_text"]), "log": cell(p["log_text"])} for p in parts]
    return facts


def results(experiment: str, exp: dict, runs: Path, records: list[dict]) -> list[str]:
    """Where the results are: the pulled copy here, and the paths on the instance."""
    out = []
    pulled, pull = _pull_path(exp.get("pull")), exp.get("pull") if isinstance(exp.get("pull"), dict) else {}
    counts = f" ({pull['files']} files, {pull.get('bytes', 0):,} bytes, {when(pull.get('at'))})" if "files" in pull else ""
    out.append(f"Pulled to `{pulled}`{counts}" if pulled else "Nothing pulled yet (results are still on the instance, if any).")
    local = next((d for d in run_dirs(exp, runs) if (d / "job.log").is_file()), None)
    if local:
        out.append(f"Run files (job.log, exit_code, started_at, ended_at) in `{local}`")
    kept = sorted(d.name for d in (runs / LOGS).iterdir() if d.is_dir()) if (runs / LOGS).is_dir() else []
    if kept:
        out.append(f"The job.log of each instance ({', '.join(kept)}) kept in `{runs / LOGS}`")
    layout = Layout(experiment)
    for rec in records[-3:]:
        if rec.get("destroyed_at"):
            out.append(f"Instance {rec.get('id')}: destroyed {when(rec['destroyed_at'])}; its files went with it.")
        else:
            out.append(f"Instance {rec.get('id')} (still rented): outputs `~/{layout.outputs}`, checkpoints "
                       f"`~/{layout.checkpoints}`, job.log and run files `~/{layout.run}`")
    return out


def _pull_path(pull: object) -> str | None:
    if isinstance(pull, dict):
        pull = next((pull[k] for k in ("local_path", "local", "path", "dest") if pull.get(k)), None)
    return str(pull) if pull else None


# ----- the job log ---------------------------------------------------------------------------
def gather_log(experiment: str, exp: dict, runs: Path, records: list[dict], events: list[dict], offline: bool) -> dict:
    """The run's job log, joined over every instance it used (oldest first), and the current one's tail.

    Each instance's log is the pulled job.log that belongs to it, else the copy kept in
    runs/<experiment>/logs/<id>/; the current instance's tail is read over SSH (best effort)
    only when no job.log of it came home and it still runs."""
    chain = run_chain(exp, events)
    order = list(dict.fromkeys(str(r.get("instance_id")) for r in chain if r.get("instance_id") is not None))
    logs: dict[str, dict] = {}
    for folder in run_dirs(exp, runs):
        if not (folder / "job.log").is_file():
            continue
        owner = owner_of(folder, exp) or ""
        if owner not in logs:
            facts = {key: _read(folder / key) for key in RUN_FILES}
            logs[owner] = {"lines": read_log(folder / "job.log"), "facts": facts, "source": "local",
                           "where": f"`{folder / 'job.log'}`"}
            if owner:
                keep_copy(runs, owner, facts, source=folder / "job.log")
    for iid, folder in kept_logs(runs).items():
        if iid not in logs:
            logs[iid] = {"lines": read_log(folder / "job.log"), "facts": {k: _read(folder / k) for k in RUN_FILES},
                         "source": "kept", "where": f"`{folder / 'job.log'}` (the copy kept of instance {iid}'s log)"}
    if not order and logs:
        order = [next((k for k, v in logs.items() if v["source"] == "local"), next(iter(logs)))]
    current = order[-1] if order else None
    why = ""
    if current is None or logs.get(current, {}).get("source") != "local":
        live = [r for r in records if not r.get("destroyed_at") and r.get("status") == "running"]
        if offline or not live:
            why = "no pulled job.log" + ("; --offline" if offline and live else "; no running instance")
        else:
            iid = str(live[-1].get("id"))
            fetched = remote_tail(experiment, live[-1], REMOTE_TIMEOUT)
            if fetched is None:
                why = f"no pulled job.log, and instance {iid} did not answer over SSH"
            else:
                lines, facts = fetched
                joined = join_lines(logs.get(iid, {}).get("lines") or [], lines)
                keep_copy(runs, iid, facts, lines=joined)
                logs[iid] = {"lines": joined, "facts": facts, "source": "ssh", "tail": lines,
                             "where": f"instance {iid} over SSH (`~/{Layout(experiment).run}/job.log`)"}
                if iid not in order:
                    order.append(iid)
                current = iid
    mine = logs.get(current) if current is not None else None
    if mine is None:
        info = log_info([], None, "", why)
    else:
        info = log_info(mine.get("tail") or mine["lines"], mine["source"], mine["where"], facts=mine["facts"])
    first_run = {str(r.get("instance_id")): r for r in reversed(chain)}
    parts = [{"instance_id": iid, "run_at": _number(first_run.get(iid, {}).get("at")), **logs.get(iid, {})}
             for iid in order]
    return info | metrics_of(parts)


def run_dirs(exp: dict, runs: Path) -> list[Path]:
    """Where pulled run files may be: the default pull folder, then the one `pull` recorded."""
    pulled = _pull_path(exp.get("pull"))
    return [runs / "run"] + ([Path(pulled) / "run", Path(pulled)] if pulled else [])


def run_chain(exp: dict, events: list[dict]) -> list[dict]:
    """The runs (experiment.json "runs") that make up the latest run: it, and each run before it
    that a recovery moved on from (a recovery began between the two)."""
    recorded = [r for r in exp.get("runs") or [] if isinstance(r, dict)]
    if not recorded:
        return []
    began = [float(e["at"]) for e in events if e.get("event") == "recover_start" and _number(e.get("at")) is not None]
    began += [float(r["at"]) - float(_number(r.get("seconds")) or 0) for r in exp.get("recoveries") or []
              if isinstance(r, dict) and _number(r.get("at")) is not None]
    chain = [recorded[-1]]
    for before in reversed(recorded[:-1]):
        lo, hi = float(_number(before.get("at")) or 0), float(_number(chain[0].get("at")) or 0)
        if not any(lo < t <= hi for t in began):
            break
        chain.insert(0, before)
    return chain


def owner_of(folder: Path, exp: dict) -> str | None:
    """Which instance wrote the pulled run files in `folder`: the recorded run its started_at is
    closest to, else the instance the latest pull (or sync of run/) came from, else the last run's."""
    runs = [r for r in exp.get("runs") or [] if isinstance(r, dict) and r.get("instance_id") is not None]
    started = _number(_read(folder / "started_at"))
    if started is not None and runs:
        best = min(runs, key=lambda r: abs(float(_number(r.get("at")) or 0) - started))
        if abs(float(_number(best.get("at")) or 0) - started) <= MATCH_S:
            return str(best["instance_id"])
    brought = [b for b in (exp.get("pull"), exp.get("checkpoints")) if isinstance(b, dict)
               and b.get("instance_id") is not None and (b is exp.get("pull") or "run" in (b.get("paths") or []))]
    if brought:
        return str(max(brought, key=lambda b: float(_number(b.get("at")) or 0))["instance_id"])
    return str(runs[-1]["instance_id"]) if runs else None


def kept_logs(runs: Path) -> dict[str, Path]:
    """The folders of the per-instance copies: instance id → runs/<experiment>/logs/<id>/."""
    root = runs / LOGS
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and (d / "job.log").is_file()}


def keep_copy(runs: Path, iid: str, facts: dict, source: Path | None = None, lines: list[str] | None = None) -> None:
    """Keep what instance `iid`'s log said in runs/<experiment>/logs/<iid>/, unless the copy there is
    already as long: the next instance's log replaces run/job.log at home, this copy stays."""
    if not _safe_name(iid):
        return
    folder = runs / LOGS / iid
    target = folder / "job.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        have = target.stat().st_size if target.is_file() else -1
        if source is not None and source.stat().st_size > have:
            _atomic(target, lambda tmp: shutil.copyfile(source, tmp))
        elif lines is not None:
            data = "\n".join(lines).encode("utf-8")
            if len(data) > have:
                _atomic(target, lambda tmp: tmp.write_bytes(data))
        for key in RUN_FILES:
            value = str(facts.get(key) or "").strip()
            if value and _read(folder / key) != value + "\n":
                _atomic(folder / key, lambda tmp: tmp.write_text(value + "\n", encoding="utf-8"))
    except OSError:
        pass  # best effort: a report never fails because a copy could not be kept


def _atomic(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        redact_file(tmp)  # a job that printed its environment: its keys stay out of the copy
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def join_lines(before: list[str], after: list[str]) -> list[str]:
    """`before` then `after`, without the lines they share where one ends and the other begins."""
    after = list(after)
    while after and not after[-1].strip():
        after.pop()
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return before + after[k:]
    return before + after


def metrics_of(parts: list[dict]) -> dict:
    """Every metric over the whole run: each instance's log parsed, then joined by step. An instance
    that resumed from a checkpoint redid the steps from there: what earlier instances logged from
    its first step on is dropped (their work after the last checkpoint was lost).

    Also what each instance contributed (steps), where the run moved (chart marks), and a
    note for each instance whose log is not here."""
    merged: dict[str, list[tuple[float, float]]] = {}
    offset = 0.0
    for part in parts:
        found, stepped = part_series(this_run(part.get("lines") or [], part.get("run_at")))
        xs = [x for points in found.values() for x, _ in points]
        if not stepped:
            found = {k: [(x + offset, y) for x, y in v] for k, v in found.items()}
            offset += max(xs, default=0.0)
        elif xs:
            cut = min(xs)
            merged = {name: [p for p in points if p[0] < cut] for name, points in merged.items()}
        for name, points in found.items():
            merged.setdefault(name, []).extend(points)
        shifted = [x for points in found.values() for x, _ in points]
        part["first_step"] = min(shifted) if shifted else None
        part["facts"] = part.get("facts") or {}
        if "lines" not in part:
            part["steps_text"], part["log_text"] = "", "never came home"
        elif not shifted:
            part["steps_text"], part["log_text"] = "no metrics in its log", _log_text(part)
        else:
            unit = "step" if stepped else "metric line"
            part["steps_text"] = f"{unit} {min(shifted):g}–{max(shifted):g}"
            part["log_text"] = _log_text(part)
    notes, marks = [], []
    stepped_any = any(p["steps_text"].startswith("step ") for p in parts)
    for n, part in enumerate(parts):
        later = next((p["first_step"] for p in parts[n + 1:] if p["first_step"] is not None), None)
        if "lines" not in part:
            gap = f"the steps before {later:g} are" if later is not None and later > 1 else "what it logged is"
            why = "it was given up in a recovery before any pull" if n < len(parts) - 1 else "nothing of it was pulled"
            notes.append(f"Instance {part['instance_id']} ran part of this run, but its job.log never came home "
                         f"({why}), so {gap} missing here.")
        elif n and part["first_step"] is not None:
            before = parts[n - 1]
            lost = "" if "lines" in before else f" (log of {before['instance_id']} missing)"
            marks.append((part["first_step"], f"resumed on instance {part['instance_id']}{lost}"))
    series = {name: points for name, points in merged.items() if points}
    return {"parts": parts, "series": series, "marks": marks, "notes": notes,
            "x_label": "step" if stepped_any or not series else "metric line in the log"}


def this_run(lines: list[str], run_at: float | None) -> list[str]:
    """The lines from the wrapper's start line of the run recorded at `run_at` on: an instance that
    ran an earlier command has its output in the same job.log, before that line."""
    if run_at is None:
        return lines
    start = 0
    for n, line in enumerate(lines):
        if line.startswith("vasticlaude: run "):
            found = STARTED.match(line)
            if found and calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ")) <= run_at + 60:
                start = n
    return lines[start:]


def part_series(lines: list[str]) -> tuple[dict[str, list[tuple[float, float]]], bool]:
    """One log's metrics as (step, value), and whether it counts steps at all. A line without a
    step takes the last step seen (an eval line after a train step; step 0 before the first);
    in a log without any step, each metric line is the next index."""
    found: dict[str, list[tuple[int | None, int, float]]] = {}
    index, step = 0, None
    for line in lines:
        for text in line.split("\r"):
            values = logparse.metrics_in(text)
            if not values:
                continue
            index += 1
            seen = logparse.step_of(text)
            step = seen if seen is not None else step
            for name, value in values.items():
                found.setdefault(name, []).append((step, index, value))
    stepped = step is not None
    return {name: [(float(s if s is not None else 0 if stepped else i), v) for s, i, v in points]
            for name, points in found.items()}, stepped


def _log_text(part: dict) -> str:
    return f"pulled: {part['where']}" if part.get("source") == "local" else part.get("where") or ""


def log_info(raw: list[str], source: str | None, where: str, why: str = "", facts: dict | None = None) -> dict:
    shown = [line for line in (clean_line(r) for r in raw) if line.strip()][-LOG_LINES:]
    return {"raw": raw, "lines": shown, "source": source, "where": where, "why": why,
            "block": fenced(shown) if shown else "", "facts": facts or {}}


def read_log(path: Path) -> list[str]:
    """The log's lines (its last LOG_TAIL_BYTES only: metrics need the recent part, not GBs)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        data = handle.read()
    lines = data.decode("utf-8", "replace").split("\n")
    return lines[1:] if size > LOG_TAIL_BYTES else lines


def clean_line(line: str) -> str:
    """What a terminal would show: the last carriage-return segment, no colour codes, bounded."""
    parts = [p for p in line.split("\r") if p.strip()]
    return _short(ANSI.sub("", parts[-1] if parts else "").rstrip(), 300)


def remote_tail(experiment: str, rec: dict, timeout: float = REMOTE_TIMEOUT) -> tuple[list[str], dict] | None:
    """The job log's last lines and the run files over SSH; None on any failure or after `timeout` s."""
    box: dict[str, tuple[list[str], dict]] = {}

    def fetch() -> None:
        try:
            if target_ready():
                box["got"] = _ssh_tail(experiment)
        except Exception:  # noqa: BLE001 — best effort: the report never fails because of it
            pass

    worker = threading.Thread(target=fetch, name="report-log-tail", daemon=True)
    worker.start()
    worker.join(timeout)
    return box.get("got")


def target_ready() -> bool:
    """Can the target be reached as it is? Resolving it would otherwise start a sandbox, just for a log."""
    if not wants_sandbox(Account(), config.load().get("target")):
        return True
    from vasticlaude.sim.client import running_info
    return running_info(paths.sim_dir()) is not None


def _ssh_tail(experiment: str) -> tuple[list[str], dict]:
    """One SSH call: `tail -n 20 job.log`, then one marked line per run file."""
    from vasticlaude.ops.binding import (
        bind,  # only here: this is the one part that needs the API and SSH
    )
    from vasticlaude.ops.connect import connect
    from vasticlaude.remote import ssh
    bound = bind(connect(Account()), experiment)
    script = (f"cd {shlex.quote(Layout(experiment).run)} || exit 3; tail -n {LOG_LINES} job.log; echo; "
              f"for f in {' '.join(RUN_FILES)}; do printf '{MARK}%s=%s\\n' \"$f\" \"$(cat \"$f\" 2>/dev/null)\"; done")
    proc = ssh.run(bound.route(), script, timeout=SSH_TIMEOUT, backoff=())
    if proc.returncode != 0:
        raise RuntimeError(f"reading the run files failed ({proc.returncode})")
    text = proc.stdout.decode("utf-8", "replace").rstrip("\n").split("\n")
    lines, marks = text[:-len(RUN_FILES)], text[-len(RUN_FILES):]
    return lines, dict(m[len(MARK):].split("=", 1) for m in marks if m.startswith(MARK) and "=" in m)


# ----- charts --------------------------------------------------------------------------------
def write_charts(out: Path, experiment: str, records: list[dict], log: dict, now: float) -> dict[str, Path]:
    """cost.png always; metrics.png only when the run's logs have metrics (a stale one is removed).

    `log` is what gather_log gives: the metrics joined over every instance, and the marks where the run moved."""
    series, x_label = cost_series(records, now)
    charts = {"cost": chart.write_chart(out / "cost.png", series, f"Cost: {experiment}", x_label,
                                        "cumulative cost (USD, estimated)")}
    metrics = top_series(log.get("series") or {})
    if metrics:
        charts["metrics"] = chart.write_chart(
            out / "metrics.png", metrics, f"Metrics: {experiment}", log.get("x_label") or "step",
            next(iter(metrics)) if len(metrics) == 1 else "value", marks=log.get("marks") or ())
    else:
        (out / "metrics.png").unlink(missing_ok=True)
    return charts


def cost_series(records: list[dict], now: float) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """Cumulative cost per instance (and their total) at every status change.

    Between two changes an instance bills a constant $/h, so its cumulative cost is
    linear there: evaluating `costing.instance_cost` at each change is exact.
    """
    if not records:
        return {}, "time"
    end = max(min(float(r.get("destroyed_at") or now), now) for r in records)
    stamps = {float(h["at"]) for r in records for h in r.get("history") or [] if float(h["at"]) <= end} | {end}
    times = sorted(stamps)
    hours = times[-1] - times[0] > 3 * 3600
    unit, scale = ("hours", 3600.0) if hours else ("minutes", 60.0)
    per = {f"instance {r.get('id')}": [costing.instance_cost(r, t)["total_usd"] for t in times] for r in records}
    if len(per) > 1:
        per = {"total": [sum(v) for v in zip(*per.values())]} | (per if len(per) < MAX_METRICS else {})
    xs = [(t - times[0]) / scale for t in times]
    return {name: list(zip(xs, values)) for name, values in per.items()}, f"{unit} since first rental"


def top_series(series: dict[str, list[tuple[float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """At most MAX_METRICS series, those with the most points, in their original order."""
    keep = set(sorted(series, key=lambda k: -len(series[k]))[:MAX_METRICS])
    return {name: points for name, points in series.items() if name in keep}


# ----- formatting ----------------------------------------------------------------------------
def usd(value: float) -> str:
    """Dollars as the report prints them: 4 decimals below $100 (sandbox runs cost fractions of a cent)."""
    return fmt.usd(value, small=4, cents_from=100)


def duration(seconds: float) -> str:
    return fmt.duration(seconds, exact=True)


def when(stamp: object) -> str:
    value = _number(stamp)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else ""


def cell(value: object) -> str:
    """A value safe inside a Markdown table cell."""
    return str(value if value is not None else "").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def fenced(lines: list[str], lang: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside it."""
    text = "\n".join(lines)
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _code_span(text: str) -> str:
    return cell(f"`` {text} ``" if "`" in text else f"`{text}`")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _number(value: object) -> float | None:
    try:
        return float(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


# ----- the command ---------------------------------------------------------------------------



"""vasticlaude report: one Markdown page, with charts, of what an experiment ran, did and cost.

Usage: vasticlaude report [--experiment X] [--out DIR] [--offline] [--json]

Writes `<project>/.vasticlaude/runs/<experiment>/report.md` (or `DIR/report.md` with --out),
rendered from templates/report.md.j2, beside two charts:
  cost.png      cumulative estimated cost of the experiment's instances over time
  metrics.png   the metrics the job log prints (loss, accuracy, …) over steps; left out when none
The page holds the command, the instances (id, GPU, $/h, location when known), a timeline
of the experiment's events, the cost (total, GPU vs storage, per instance, the budget when
experiment.json has one), the exit code and duration, where the results are (the pulled
copy and the paths on the instance), and the last 20 lines of the job log.

Everything comes from local state (instances.json, experiments/<id>/, the project's
pulled run files), so a report works offline and after every instance is gone. Only
when no job.log was pulled and the instance still runs are the log tail and the run files
(exit code, start, end) read over SSH, in one call, best effort within 20 s (--offline never
tries); a failure there only makes the log section say "not available". Without --experiment, the most recently active one.
Each run rewrites the report, so it is safe to run again at any time.

JSON (data):
  {"experiment": str, "report": path of report.md, "charts": [paths of the PNGs written],
   "total_usd": float (estimated, as `vasticlaude cost`),
   "exit_code": int | null}   the job's exit status; null while it runs or was never recorded

Exit codes: 0 report written (whatever the job's own exit status) · 1 unknown experiment,
or no experiment at all · 2 usage.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import chart, command, config, costing, logparse, paths, state, templates
from .cost import read_state
from .errors import Error
from .remote import Layout

LOG_LINES = 20
LOG_TAIL_BYTES = 16 * 1024 * 1024   # metrics come from the last 16 MB of a huge log
REMOTE_TIMEOUT = 20.0               # the whole best-effort SSH fetch, API lookup included
SSH_TIMEOUT = 10.0
TIMELINE_ROWS = 60
RUN_FILES = ("exit_code", "started_at", "ended_at")  # written by the run wrapper (templates/run.sh.j2)
MARK = "@@vasticlaude-run-file "
MAX_METRICS = 6                     # as many as the chart has distinct colours to tell apart
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude report", __doc__)
    p.add_argument("--experiment", help="the experiment (default: the most recently active one)")
    p.add_argument("--out", help="folder for report.md and the charts (default: <project>/.vasticlaude/runs/<experiment>)")
    p.add_argument("--offline", action="store_true", help="never fetch the log tail over SSH")
    return p


def run(args: argparse.Namespace) -> dict:
    now = time.time()
    every = sorted(read_state()["instances"].values(), key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))
    experiment = pick_experiment(args.experiment, every)
    records = [r for r in every if r.get("experiment") == experiment]
    exp = state.read_experiment(experiment) or {}
    runs = config.runs_dir(experiment)
    out = Path(args.out).expanduser().resolve() if args.out else runs
    out.mkdir(parents=True, exist_ok=True)
    events = state.read_lines(state.experiment_dir(experiment) / "events.jsonl")
    log = gather_log(experiment, exp, runs, records, offline=args.offline)
    charts = write_charts(out, experiment, records, log["raw"], now)
    facts = run_facts(exp, log["facts"], events)
    costs = cost_section(records, exp, now)
    text = templates.render(
        "report.md.j2", experiment=experiment, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        command_cell=_code_span(_short(command_of(exp), 100)) if command_of(exp) else "not recorded",
        command_block=fenced([command_of(exp) or "(not recorded in experiment.json)"], "sh"),
        instances=[instance_row(r) for r in records], timeline=timeline(events), cost=costs,
        recoveries=recovery_section(exp, records, now, costs["total_usd"]),
        run=facts, results=results(experiment, exp, runs, records), log=log,
        charts={"cost": charts["cost"].name, "metrics": charts["metrics"].name if "metrics" in charts else ""})
    report = out / "report.md"
    report.write_text(text, encoding="utf-8")
    return {"experiment": experiment, "report": str(report), "charts": [str(p) for p in charts.values()],
            "total_usd": costs["total_usd"], "exit_code": facts["exit_code"]}


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
    return max(known, key=known.get)


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


def cost_section(records: list[dict], exp: dict, now: float) -> dict:
    """Totals and per-instance figures, exactly `costing.instance_cost` (what `cost` shows)."""
    sums = {"gpu_usd": 0.0, "storage_usd": 0.0, "total_usd": 0.0}
    rows = []
    for rec in records:
        spent = costing.instance_cost(rec, now)
        for key in sums:
            sums[key] += spent[key]
        rows.append({"id": cell(rec.get("id")), "running": duration(spent["running_s"]), "gpu": usd(spent["gpu_usd"]),
                     "storage": usd(spent["storage_usd"]), "total": usd(spent["total_usd"])})
    limit = budget_of(exp)
    return {"total": usd(sums["total_usd"]), "gpu": usd(sums["gpu_usd"]), "storage": usd(sums["storage_usd"]),
            "instances": rows, "total_usd": round(sums["total_usd"], 6),
            "budget": usd(limit) if limit is not None else "",
            "left": usd(limit - sums["total_usd"]) if limit is not None else ""}


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


def budget_of(exp: dict) -> float | None:
    """The experiment's $ budget as experiment.json records it (several spellings accepted)."""
    raw = exp.get("budget_usd")
    if raw is None and isinstance(exp.get("budget"), dict):
        raw = exp["budget"].get("usd", exp["budget"].get("experiment_usd"))
    elif raw is None:
        raw = exp.get("budget")
    return _number(raw)


def run_facts(exp: dict, found: dict, events: list[dict]) -> dict:
    """Exit code, start and end: the wrapper's files (pulled or read over SSH), else
    experiment.json, else the latest event that states an exit code (null while running)."""
    nested = exp.get("run") if isinstance(exp.get("run"), dict) else {}
    facts: dict[str, Any] = {}
    for key in RUN_FILES:
        value = _number(found.get(key))
        facts[key] = value if value is not None else _number(exp.get(key, nested.get(key)))
    if facts["exit_code"] is None:
        facts["exit_code"] = _number(next((e for e in reversed(events) if "exit_code" in e), {}).get("exit_code"))
    code = facts["exit_code"] = int(facts["exit_code"]) if facts["exit_code"] is not None else None
    start, end = facts["started_at"], facts["ended_at"]
    facts["exit_text"] = "unknown (still running, or never recorded)" if code is None else \
        f"{code} ({'success' if code == 0 else 'failed'})"
    facts["started"], facts["ended"] = when(start) or "not recorded", when(end) or "not recorded"
    facts["duration_text"] = duration(end - start) if start is not None and end is not None else \
        "unknown (no end recorded)" if start is not None else "unknown"
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
def gather_log(experiment: str, exp: dict, runs: Path, records: list[dict], offline: bool) -> dict:
    """The pulled job.log and run files if there are any, else their tail over SSH while the instance runs."""
    for folder in run_dirs(exp, runs):
        if (folder / "job.log").is_file():
            return log_info(read_log(folder / "job.log"), "local", f"`{folder / 'job.log'}`",
                            facts={key: _read(folder / key) for key in RUN_FILES})
    live = [r for r in records if not r.get("destroyed_at") and r.get("status") == "running"]
    if offline or not live:
        why = "no pulled job.log" + ("; --offline" if offline and live else "; no running instance")
        return log_info([], None, "", why)
    fetched = remote_tail(experiment, live[-1], REMOTE_TIMEOUT)
    if fetched is None:
        return log_info([], None, "", f"no pulled job.log, and instance {live[-1].get('id')} did not answer over SSH")
    lines, facts = fetched
    where = f"instance {live[-1].get('id')} over SSH (`~/{Layout(experiment).run}/job.log`)"
    return log_info(lines, "ssh", where, facts=facts)


def run_dirs(exp: dict, runs: Path) -> list[Path]:
    """Where pulled run files may be: the default pull folder, then the one `pull` recorded."""
    pulled = _pull_path(exp.get("pull"))
    return [runs / "run"] + ([Path(pulled) / "run", Path(pulled)] if pulled else [])


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
    from . import credentials
    wants_sandbox = os.environ.get("VASTICLAUDE_TARGET") == "sandbox" or config.load().get("target") == "sandbox"
    if not wants_sandbox and (os.environ.get("VAST_URL") or credentials.find_key(None, None)[0]):
        return True
    from .sim.cli import running_info
    return running_info(paths.sim_dir()) is not None


def _ssh_tail(experiment: str) -> tuple[list[str], dict]:
    """One SSH call: `tail -n 20 job.log`, then one marked line per run file."""
    from . import ssh, target  # only here: this is the one part that needs the API and SSH
    bound = target.bind(argparse.Namespace(experiment=experiment, instance=None, api_key=None, sandbox=False))
    script = (f"cd {shlex.quote(Layout(experiment).run)} || exit 3; tail -n {LOG_LINES} job.log; echo; "
              f"for f in {' '.join(RUN_FILES)}; do printf '{MARK}%s=%s\\n' \"$f\" \"$(cat \"$f\" 2>/dev/null)\"; done")
    proc = ssh.run(bound.route(), script, timeout=SSH_TIMEOUT, backoff=())
    if proc.returncode != 0:
        raise RuntimeError(f"reading the run files failed ({proc.returncode})")
    text = proc.stdout.decode("utf-8", "replace").rstrip("\n").split("\n")
    lines, marks = text[:-len(RUN_FILES)], text[-len(RUN_FILES):]
    return lines, dict(m[len(MARK):].split("=", 1) for m in marks if m.startswith(MARK) and "=" in m)


# ----- charts --------------------------------------------------------------------------------
def write_charts(out: Path, experiment: str, records: list[dict], log_lines: list[str], now: float) -> dict[str, Path]:
    """cost.png always; metrics.png only when the log has metrics (a stale one is removed)."""
    series, x_label = cost_series(records, now)
    charts = {"cost": chart.write_chart(out / "cost.png", series, f"Cost: {experiment}", x_label, "USD, cumulative")}
    metrics = top_series(logparse.series(log_lines))
    if metrics:
        charts["metrics"] = chart.write_chart(out / "metrics.png", metrics, f"Metrics: {experiment}", "step", "value")
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
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:.4f}"


def duration(seconds: float) -> str:
    seconds = int(round(max(0.0, float(seconds))))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


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
def human(data: dict) -> str:
    code = data["exit_code"]
    lines = [f"report: {data['report']}", "charts: " + ", ".join(data["charts"]),
             f"total ${data['total_usd']:.4f} · job exit code {code if code is not None else 'unknown'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # The job's exit status is data, not this command's: a report of a failed job succeeded.
    return command.main(sys.argv[1:] if argv is None else argv, build_parser, run, human, exit_code=lambda _data: 0)

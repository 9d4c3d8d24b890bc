"""A sweep seen whole: the compact table `status` prints, and the report with the comparison chart.

The table comes from the sweep's state, with the progress of running runs read from their
slots (one `observe` each); the report comes from the state and each run's job.log brought
home (`<project>/.vasticlaude/runs/<sweep>/runs/<run>/run/job.log`), so it works offline and
after every instance is gone.
"""
from __future__ import annotations

from pathlib import Path

from vasticlaude.core import chart, fmt
from vasticlaude.core.logparse import series
from vasticlaude.errors import Error
from vasticlaude.ops import sweeping
from vasticlaude.ops.binding import bind
from vasticlaude.ops.observe import observe
from vasticlaude.store import config, state
from vasticlaude.vast.gateway import Vast

MAX_LINES = 40  # runs in the human table; the JSON has them all


# ----- the live table --------------------------------------------------------------------------
def status(name: str, vast: Vast | None) -> dict:
    """The sweep's summary, the running runs with their live progress and metric (one SSH probe each)."""
    data = sweeping.summary(name)
    sw = (state.read_experiment(name) or {})["sweep"]
    by_id = {r["id"]: r for r in sw["runs"]}
    for run in data["runs"]:
        if run["state"] == "running" and vast is not None:
            run.update(live(vast, by_id[run["id"]], data["metric"]))
    data["sweep"] = True
    return data


def live(vast: Vast, run: dict, metric: str | None) -> dict:
    """What the run's slot says now: progress, the metric so far, its cost so far."""
    try:
        snap = observe(bind(vast, run.get("slot")), 3)
    except Error as err:
        return {"progress": f"? ({err.message[:60]})"}
    got = snap.get("progress") or {}
    metrics = got.get("metrics") or {}
    elapsed = (snap.get("job") or {}).get("elapsed_s")
    out: dict = {"progress": got.get("step") or (f"{got['percent']}%" if "percent" in got else None)}
    name = metric or next((n for n in metrics if "loss" in n.lower()), next(iter(metrics), None))
    if name in metrics:
        out["metric"] = metrics[name]
    if elapsed and run.get("dph"):
        out["cost_usd"] = round(float(run["dph"]) * float(elapsed) / 3600, 6)
    return out


def table(data: dict) -> str:
    """One line a run: run, state, progress, metric, $, params; then the totals and the best run."""
    metric = data.get("metric") or "metric"
    head = (f"sweep {data['experiment']}: {data['state']} · spent {fmt.usd(data['spent_usd'])} of "
            f"{fmt.usd(data['budget_usd'])} · {data['rentals']} rental(s), {len(data.get('live_instances') or [])} live · "
            + ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items())))
    lines = [head, f"  {'run':<5} {'state':<8} {'progress':>9} {metric[:10]:>10} {'$':>8}  params"]
    for r in data["runs"][:MAX_LINES]:
        value = f"{r['metric']:.4g}" if isinstance(r.get("metric"), (int, float)) else "-"
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"  {r['id']:<5} {r['state']:<8} {str(r.get('progress') or '-'):>9} {value:>10} "
                     f"{fmt.usd(r.get('cost_usd')):>8}  {params}"[:160])
    if len(data["runs"]) > MAX_LINES:
        lines.append(f"  … {len(data['runs']) - MAX_LINES} more (--json has them all)")
    best = data.get("best")
    if best:
        lines.append(f"best: {best['id']} ({metric} {best['metric']:.4g}) "
                     + " ".join(f"{k}={v}" for k, v in best["params"].items()))
    return "\n".join(lines)


# ----- the report ------------------------------------------------------------------------------
def report(name: str, out: Path | None = None) -> dict:
    """report.md and metric.png of the sweep; what `report` prints."""
    data = sweeping.summary(name)
    sw = (state.read_experiment(name) or {})["sweep"]
    home = config.runs_dir(name, Path(sw["root"]) if sw.get("root") and Path(sw["root"]).is_dir() else None)
    out = Path(out) if out else home
    out.mkdir(parents=True, exist_ok=True)
    metric = data["metric"]
    curves = {}
    for run in data["runs"]:
        points = series(sweeping.log_lines(home / "runs" / run["id"] / "run" / "job.log")).get(metric or "", [])
        if points:
            curves[label(run)] = points
    charts = []
    if metric:
        charts.append(str(chart.write_chart(out / "metric.png", curves, f"{metric} across the runs of {name}",
                                            "step", metric)))
    page = out / "report.md"
    page.write_text(markdown(data, sw, "metric.png" if charts else None), encoding="utf-8")
    return {"experiment": name, "report": str(page), "charts": charts, "total_usd": data["spent_usd"],
            "exit_code": None, "best": data["best"], "counts": data["counts"]}


def label(run: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in run["params"].items())
    return f"{run['id']} {params}".strip()


def markdown(data: dict, sw: dict, png: str | None) -> str:
    metric = data["metric"] or "metric"
    best = data.get("best")
    lines = [f"# Sweep {data['experiment']}", "",
             f"{len(data['runs'])} runs on at most {data['parallel']} instances "
             f"({data['rentals']} rented); spent {fmt.usd(data['spent_usd'])} (estimated) of the "
             f"{fmt.usd(data['budget_usd'])} budget; " + ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items()))
             + ".", ""]
    if best:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        better = "lowest" if sweeping.lower_is_better(metric) else "highest"
        lines += [f"**Best run: {best['id']}** ({params}): {metric} {best['metric']:.6g}, the {better} "
                  "of the runs that finished.", ""]
    if png:
        lines += [f"![{metric} across the runs]({png})", ""]
    lines += [f"| run | params | state | exit | {metric} | seconds | $ | note |",
              "|---|---|---|---|---|---|---|---|"]
    by_id = {r["id"]: r for r in sw["runs"]}
    for r in data["runs"]:
        full = by_id[r["id"]]
        value = f"{r['metric']:.6g}" if isinstance(r.get("metric"), (int, float)) else ""
        cells = [r["id"], " ".join(f"`{k}={v}`" for k, v in r["params"].items()), r["state"],
                 "" if r.get("exit_code") is None else str(r["exit_code"]), value,
                 "" if not full.get("seconds") else f"{full['seconds']:g}", fmt.usd(r.get("cost_usd")),
                 (r.get("note") or "").replace("|", "/")[:80]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Commands: `{sw['runs'][0]['command']}` …" if sw["runs"] else "",
              f"Instances: {', '.join(str(i) for i in data['instances']) or 'none'}; "
              f"{'none left' if not data.get('live_instances') else 'LIVE: ' + str(data['live_instances'])}.",
              "Each run's files: `runs/<run>/` beside this report (outputs/, run/job.log, run/exit_code).", ""]
    return "\n".join(lines)

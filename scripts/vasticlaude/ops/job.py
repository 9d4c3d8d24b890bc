"""Start an experiment's command on its instance, detached, under the wrapper and the watchdog.

A JobSpec says what to run; a GuardAsk what the flags asked of the watchdog (the rest
comes from the config and the experiment's one budget). `recover` restarts a job by
building the same JobSpec from the run recorded in experiment.json.
"""
from __future__ import annotations

import secrets
import shlex
import time
from dataclasses import dataclass, field

from vasticlaude.core import budget
from vasticlaude.core import money as costing
from vasticlaude.errors import FAILED, USAGE, Error
from vasticlaude.ops import bucket
from vasticlaude.ops.binding import Bound
from vasticlaude.output import progress
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.ssh import Route
from vasticlaude.remote.ssh import run as ssh_run
from vasticlaude.remote.templates import render
from vasticlaude.store import config, state

HEARTBEAT = 15
ON_END = ("destroy-if-pulled", "destroy", "stop")
# One SSH round trip: refuse if a run is live, install the wrapper and the watchdog (by rename:
# a running shell reads its script as it goes, so the old file must not change under it; both
# come on stdin, split at a random marker line), retire an earlier run's watchdog (it would
# stop the instance under the new run), start both detached in their own sessions, then
# watch a second for a command that fails at once.
LAUNCH = ('mkdir -p {run} || exit 1; {busy}rm -f {run}/watchdog.sh.new; '
          "awk -v a={run}/run.sh.new -v b={run}/watchdog.sh.new '$0 == \"{split}\" {{ f = 1; next }} "
          "{{ print > (f ? b : a) }}' || exit 1; "
          'chmod +x {run}/run.sh.new && mv -f {run}/run.sh.new {run}/run.sh || exit 1; '
          'o=$(cat {run}/watchdog_pid 2>/dev/null); '
          'if [ -n "$o" ] && kill -0 "$o" 2>/dev/null && grep -q watchdog /proc/"$o"/cmdline 2>/dev/null; then '
          'kill -TERM "$o"; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$o" 2>/dev/null || break; sleep 0.1; done; '
          'kill -KILL "$o" 2>/dev/null; fi; '
          'rm -f {run}/exit_code {run}/ended_at {run}/signal {run}/job_pid {run}/pulled {run}/disposable '
          '{run}/watchdog_pid {run}/watchdog_heartbeat {run}/watchdog_done {run}/store_fallback {run}/shipped; '
          'setsid nohup bash {run}/run.sh >/dev/null 2>&1 </dev/null & '
          '{watchdog}'
          'for i in 1 2 3 4 5; do sleep 0.2; [ -f {run}/exit_code ] && break; done; '
          'echo "@@watchdog=$(cat {run}/watchdog_pid 2>/dev/null)"; '
          'echo "@@exit=$(cat {run}/exit_code 2>/dev/null)"; tail -n 8 {run}/job.log 2>/dev/null | cut -c1-300')
WATCHDOG = ('mv -f {run}/watchdog.sh.new {run}/watchdog.sh || exit 1; '
            'setsid nohup sh {run}/watchdog.sh >/dev/null 2>&1 </dev/null & '
            'for i in 1 2 3 4 5 6 7 8 9 10; do [ -f {run}/watchdog_pid ] && break; sleep 0.1; done; ')
BUSY = ('if [ -f {run}/job_pid ] && [ ! -f {run}/exit_code ] && kill -0 "$(cat {run}/job_pid)" 2>/dev/null; '
        'then echo "@@busy"; exit 0; fi; ')


@dataclass(frozen=True)
class GuardAsk:
    """What was asked of the on-instance watchdog; None takes the config's guard block (or the budget's)."""

    budget_usd: float | None = None
    max_hours: float | None = None
    grace_s: float | None = None
    check_s: float | None = None
    kill_grace_s: float | None = None
    on_end: str | None = None
    watchdog: bool = True
    # With a results store: where under its prefix the run's results go (default the experiment; a
    # sweep's run: <sweep>/<run>), and what the watchdog does once the store holds them: "destroy" at
    # once, or "grace": wait the grace for the next run first (a sweep's slot runs the next one there).
    store_path: str | None = None
    store_then: str = "destroy"


@dataclass(frozen=True)
class JobSpec:
    """One run of an experiment's command: what, where, with which environment and guard."""

    command: str
    env: dict = field(default_factory=dict)
    workdir: str | None = None
    heartbeat: int = HEARTBEAT
    restart: bool = False
    guard: GuardAsk = GuardAsk()
    store_ready: bool = False  # the uploader is installed and checked already (recover's fetch did it)


def start(bound: Bound, spec: JobSpec) -> dict:
    """Start the command detached under its wrapper and watchdog; what `run` reports."""
    layout = Layout(bound.experiment)
    workdir = spec.workdir or layout.code
    cfg = config.load()
    guard = guard_settings(spec.guard, cfg, bound)
    store = bucket.resolve(cfg, sandbox=bound.vast.target.sandbox) if guard["watchdog"] else None
    if store is not None and not spec.store_ready:  # before the job starts: wrong keys are said now
        progress(f"vasticlaude: checking the results store {store.url} from the instance")
        bucket.install(bound.route(), layout.run, bound.experiment, store, path=guard["store_path"])
    guard["store"] = store is not None
    guard["store_sync_s"] = store.sync_interval_s if store is not None else None
    script = render("run.sh.j2", experiment=bound.experiment, command=spec.command, run_dir=layout.run,
                    checkpoint_dir=layout.checkpoints, output_dir=layout.outputs, workdir=workdir,
                    heartbeat=spec.heartbeat, env=spec.env)
    watchdog = watchdog_script(bound.experiment, layout, guard) if guard["watchdog"] else None
    launch = _record_launch(bound.experiment, bound.instance_id, spec, workdir)
    try:
        result = _launch(bound.route(), layout, script, watchdog, spec.restart)
    except Error as err:
        if err.code == "already_running":  # nothing was started: the entry would claim a run
            _forget_launch(bound.experiment, launch)
        else:  # the answer was lost, maybe not the launch: a recovery restarts the job with this guard
            with state.experiment(bound.experiment) as exp:
                _keep_guard(exp, guard)
        raise
    guard["alive"] = result.pop("watchdog_alive")
    _record(bound.experiment, bound.instance_id, spec, workdir, result, guard, launch)
    if store is not None:
        with state.experiment(bound.experiment) as exp:
            exp["store"] = {**store.public(), "prefix": store.key(guard["store_path"]), "path": guard["store_path"]}
    return {"experiment": bound.experiment, "instance_id": bound.instance_id, "command": spec.command,
            "run_dir": layout.run, "workdir": workdir, **result, "guard": guard}


# ----- the guard --------------------------------------------------------------------------
def guard_settings(ask: GuardAsk, cfg: dict, bound: Bound) -> dict:
    """The watchdog's limits: what was asked, else the config; refused when nothing is left to spend."""
    gcfg, bcfg = cfg.get("guard") or {}, cfg.get("budget") or {}
    on_end = ask.on_end or gcfg.get("on_end") or "destroy-if-pulled"
    if on_end not in ON_END:
        raise Error("bad_config", f"guard.on_end {on_end!r} is not one of {', '.join(ON_END)}", "Fix the config.", USAGE)
    spent = budget.experiment_spent(bound.experiment, state.load())
    cap = budget.experiment_budget(ask.budget_usd, state.read_experiment(bound.experiment), cfg)
    hours = ask.max_hours if ask.max_hours is not None else _hours_left(bound.experiment, bcfg.get("experiment_hours"))
    times = {"grace_s": float(_pick(ask.grace_s, gcfg.get("grace_s"), 600)),
             "check_s": float(_pick(ask.check_s, gcfg.get("check_s"), 15)),
             "kill_grace_s": float(_pick(ask.kill_grace_s, gcfg.get("kill_grace_s"), 60))}
    if times["check_s"] <= 0 or times["grace_s"] < 0 or times["kill_grace_s"] < 0:
        raise Error("bad_guard", "--check must be > 0, --grace and --kill-grace >= 0", "", USAGE)
    dph = dph_of(bound)
    # The watchdog stops the job one kill grace before the budget (so the hard stop lands at it):
    # with less than that left, the job would be stopped the moment it starts.
    reserve = dph * times["kill_grace_s"] / 3600 if ask.watchdog else 0.0
    if cap is not None and spent + reserve >= cap:
        kept = f" (a run keeps ${reserve:.2f}, one {times['kill_grace_s']:g} s kill grace, in reserve)" if reserve else ""
        raise Error("over_budget", f"experiment {bound.experiment} has spent ${spent:.2f} of its ${cap:.2f} budget{kept}",
                    f"Nothing may run: vasticlaude down --experiment {bound.experiment}, or raise the budget.", FAILED)
    if hours is not None and hours <= 0:
        raise Error("over_budget", f"experiment {bound.experiment} has used up its hours",
                    "Raise budget.experiment_hours or pass --max-hours.", FAILED)
    return {"watchdog": ask.watchdog, "budget_usd": cap, "max_hours": _round(hours), "on_end": on_end,
            "store_path": ask.store_path or bound.experiment, "store_then": ask.store_then, **times, "dph": round(dph, 6), "already_spent_usd": round(spent, 6),
            "spent_at": round(time.time(), 3), "usd_per_gb": _per_gb(bound.record)}


def _per_gb(rec: dict) -> list[float] | None:
    """[in, out] $/GB the instance bills for bandwidth (its offer's inet_down_cost, inet_up_cost), or None."""
    rates = [float(rec.get("inet_down_cost") or 0), float(rec.get("inet_up_cost") or 0)]
    return rates if any(rates) else None


def _pick(*values: object) -> object:
    return next((v for v in values if v is not None), None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _hours_left(experiment: str, limit: float | None) -> float | None:
    """budget.experiment_hours minus the hours the experiment's instances have run so far."""
    if limit is None:
        return None
    return float(limit) - budget.experiment_hours_used(experiment, state.load())


def dph_of(bound: Bound) -> float:
    """The instance's $/h while running (GPU + storage): the state record, else the API row."""
    dph = costing.instance_cost(bound.record)["dph"] or float(bound.record.get("dph_total") or 0)
    return dph or float((bound.row or {}).get("dph_total") or 0)


def watchdog_script(experiment: str, layout: Layout, guard: dict) -> str:
    blank = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731 — the template reads '' as "no limit"
    return render("watchdog.sh.j2", experiment=experiment, run_dir=layout.run, dph=f"{guard['dph']:.6f}",
                  already_spent_usd=f"{guard['already_spent_usd']:.6f}", spent_at=f"{guard.get('spent_at') or 0:.0f}", budget_usd=blank(guard["budget_usd"]),
                  max_hours=blank(guard["max_hours"]), grace_s=f"{guard['grace_s']:g}",
                  kill_grace_s=f"{guard['kill_grace_s']:g}", check_s=f"{guard['check_s']:g}", on_end=guard["on_end"],
                  store="yes" if guard.get("store") else "no", store_sync_s=f"{guard.get('store_sync_s') or 300:g}",
                  store_then=guard.get("store_then") or "destroy",
                  usd_per_gb_in=f"{(guard.get('usd_per_gb') or [0, 0])[0]:g}",
                  usd_per_gb_out=f"{(guard.get('usd_per_gb') or [0, 0])[1]:g}")


def _launch(route: Route, layout: Layout, script: str, watchdog: str | None, restart: bool) -> dict:
    run_dir = shlex.quote(layout.run)
    busy = "" if restart else BUSY.format(run=run_dir)
    split = "#@@vasticlaude-watchdog-" + secrets.token_hex(8)
    payload = script if watchdog is None else f"{script.rstrip(chr(10))}\n{split}\n{watchdog}"
    start = WATCHDOG.format(run=run_dir) if watchdog is not None else ""
    proc = ssh_run(route, LAUNCH.format(run=run_dir, busy=busy, split=split, watchdog=start),
                   input_bytes=payload.encode(), timeout=60)
    out = proc.stdout.decode("utf-8", "replace").splitlines()
    if out[:1] == ["@@busy"]:
        raise Error("already_running", f"a run of {layout.experiment} is still going",
                    "Watch it with 'vasticlaude status', or add --restart to start another.", FAILED)
    marker = next((line for line in out if line.startswith("@@exit=")), "@@exit=")
    code = marker[len("@@exit="):].strip()
    tail = [line for line in out if not line.startswith("@@")]
    alive = any(line.startswith("@@watchdog=") and line[len("@@watchdog="):].strip() for line in out)
    if watchdog is not None and not alive:
        progress("vasticlaude: the watchdog did not start: nothing guards this instance; check run/watchdog.log")
    if code:
        return {"state": "exited", "exit_code": int(code), "log_tail": tail, "watchdog_alive": alive}
    # Running: the first lines show it started; status shows progress from here on.
    return {"state": "running", "exit_code": None, "log_tail": tail[-2:], "watchdog_alive": alive}


def _record_launch(experiment: str, instance_id: int, spec: JobSpec, workdir: str) -> str:
    """Write the run down before it starts (`launching`), so a `run` killed mid-launch still leaves the
    job on record: the reap then pulls or keeps a stopped disk instead of destroying its results."""
    launch = secrets.token_hex(6)
    with state.experiment(experiment) as exp:
        # env is kept (in the private vasticlaude home, never printed) so `recover` can restart the same job
        exp.setdefault("runs", []).append({"at": time.time(), "instance_id": instance_id, "command": spec.command,
                                           "workdir": workdir, "env": spec.env, "heartbeat": spec.heartbeat,
                                           "launch": launch, "launching": True})
    return launch


def _forget_launch(experiment: str, launch: str) -> None:
    with state.experiment(experiment) as exp:
        exp["runs"] = [r for r in exp.get("runs") or [] if r.get("launch") != launch]


def _keep_guard(exp: dict, guard: dict) -> None:
    exp["guard"] = guard
    if guard["budget_usd"] is not None:
        exp["budget_usd"] = guard["budget_usd"]  # one budget per experiment, set once, read by every guard


def _record(experiment: str, instance_id: int, spec: JobSpec, workdir: str, result: dict, guard: dict,
            launch: str) -> None:
    cmd = spec.command
    with state.experiment(experiment) as exp:
        runs = exp.setdefault("runs", [])
        entry = next((r for r in runs if r.get("launch") == launch), None)
        if entry is None:
            entry = {"instance_id": instance_id, "command": cmd, "workdir": workdir, "env": spec.env,
                     "heartbeat": spec.heartbeat}
            runs.append(entry)
        entry.pop("launching", None)
        entry.update(at=time.time(), immediate_exit=result["exit_code"])
        exp["command"] = cmd
        _keep_guard(exp, guard)
    state.append_event(experiment, "run", instance_id=instance_id, command=cmd, state=result["state"],
                       exit_code=result["exit_code"], guard=guard)
    if result["state"] == "exited":
        progress(f"vasticlaude: the command exited at once with code {result['exit_code']}")



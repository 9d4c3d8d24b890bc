"""sweep: many runs on at most K instances under one budget, on the sandbox through the real vastai
package, ssh and rsync; resumable after kill -9. Jobs are tiny (about a second) so a 12-run grid takes
seconds, not minutes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME

from vasticlaude.core import sweepspec

TRAIN = r'''
import json, os, sys, time
lr, bs = float(sys.argv[1]), int(sys.argv[2])
assert os.environ["VASTICLAUDE_PARAM_LR"] == sys.argv[1] and os.environ["VASTICLAUDE_PARAM_BS"] == sys.argv[2]
run = os.environ["VASTICLAUDE_SWEEP_RUN"]
with open(STARTS, "a") as starts:  # the sandbox's instances run on this machine: count every start
    starts.write(run + "\n")
steps = STEPS
for step in range(1, steps + 1):
    time.sleep(PAUSE)
    print(f"step {step}/{steps} loss={lr * 1000 / (step * bs):.5f}", flush=True)
if lr > 0.05:
    sys.exit(3)  # a failing run: the others go on
with open(os.path.join(os.environ["VASTICLAUDE_OUTPUT_DIR"], "result.json"), "w") as out:
    json.dump({"run": run, "lr": lr, "bs": bs}, out)
'''

SWEEP = ["--image", IMAGE, "--disk", "8", "--hours", "0.05", "--interval", "0.3", "--check", "0.5",
         "--kill-grace", "1", "--grace", "120", "--no-setup"]


def project(cli, tmp_path: Path, steps: int = 5, pause: float = 0.05) -> Path:
    starts = tmp_path / "starts.log"
    head = f"STARTS, STEPS, PAUSE = {str(starts)!r}, {steps}, {pause}\n"
    (cli.cwd / "train.py").write_text(head + TRAIN)
    (cli.cwd / ".vasticlaude").mkdir(exist_ok=True)
    return starts


def sweep_json(cli, *args: str, rc: int | None = None) -> dict:
    proc = cli.run("sweep", "--json", *args, timeout=300)
    envelope = json.loads(proc.stdout)
    if rc is not None:
        assert proc.returncode == rc, proc.stderr[-3000:]
    return envelope["data"]


# ----- the pure rules ---------------------------------------------------------------------------
@pytest.mark.unit
def test_grid_placeholders_env_and_commands_file():
    runs = sweepspec.expand([["python", "train.py", "--lr", "{lr}", "--bs", "{bs}"]],
                            [sweepspec.parse_param("lr=1e-3,3e-4"), sweepspec.parse_param("bs=32,64")])
    assert [r.id for r in runs] == ["r01", "r02", "r03", "r04"]
    assert runs[1].command == "python train.py --lr 1e-3 --bs 64"
    assert runs[1].env == {"VASTICLAUDE_PARAM_LR": "1e-3", "VASTICLAUDE_PARAM_BS": "64"}
    shell = sweepspec.expand(["echo {x} && echo ${HOME}"], [("x", ["a b"])])
    assert shell[0].command == "echo 'a b' && echo ${HOME}"
    listed = sweepspec.read_commands("# runs\n- `python a.py --seed {s}`\n\n2. python b.py\n```\n")
    assert listed == ["python a.py --seed {s}", "python b.py"]
    both = sweepspec.expand(listed, [("s", ["1", "2"])])
    assert [r.command for r in both] == ["python a.py --seed 1", "python a.py --seed 2", "python b.py", "python b.py"]
    for bad in (lambda: sweepspec.parse_param("lr"), lambda: sweepspec.parse_param("lr=1,,2"),
                lambda: sweepspec.expand(["run {typo}"], [("lr", ["1"])]), lambda: sweepspec.expand([], [])):
        with pytest.raises(Exception) as err:
            bad()
        assert getattr(err.value, "exit_code", None) == 2


@pytest.mark.unit
def test_caps_never_sum_past_the_total():
    caps = dict(zip("abc", sweepspec.first_caps(1.0, 3)))
    assert sum(caps.values()) <= 1.0
    final = {"a": 0.1}  # a retired early, having spent 0.1 of its 0.333
    caps["b"] = sweepspec.grow(1.0, caps, final, "b")
    assert caps["b"] > 0.56 and caps["b"] + caps["c"] + final["a"] <= 1.0
    assert sweepspec.grow(1.0, caps, final, "c") == caps["c"]  # nothing left to hand out


@pytest.mark.unit
def test_a_run_left_mid_launch_is_never_reported_not_run():
    """close(): only a run that never left `pending` is `not_run`; one whose launch went out
    (`starting`) may have run, so its outcome is `lost`, as for a run whose instance went."""
    from vasticlaude.ops import sweeping
    from vasticlaude.store import state
    runs = [{"id": rid, "params": {}, "command": "true", "env": {}, "state": st}
            for rid, st in (("r1", "pending"), ("r2", "starting"), ("r3", "running"), ("r4", "done"), ("r5", "pending"))]
    runs[-1]["may_have_run"] = True  # given back after a resume found its instance gone: it may have run
    with state.experiment("mid") as exp:
        exp["sweep"] = {"version": 1, "state": "running", "budget_usd": 1.0, "parallel": 1, "runs": runs,
                        "slots": [{"name": "mid.w1", "cap_usd": 1.0, "state": "retired"}]}
    got = {r["id"]: r["state"] for r in sweeping.close(sweeping.Book("mid"))["runs"]}
    assert got == {"r1": "not_run", "r2": "lost", "r3": "lost", "r4": "done", "r5": "lost"}


# ----- on the sandbox ---------------------------------------------------------------------------
def test_a_12_run_grid_on_4_instances(cli, sim, tmp_path):
    starts = project(cli, tmp_path)
    data = sweep_json(cli, "--experiment", "grid", "--parallel", "4", "--budget-usd", "2",
                      "--param", "lr=0.001,0.01,0.1", "--param", "bs=16,32,64,128", *SWEEP,
                      "--", "python3", "train.py", "{lr}", "{bs}", rc=1)  # the lr=0.1 runs fail on purpose
    states = {r["id"]: r["state"] for r in data["runs"]}
    assert len(states) == 12
    failed = [r for r in data["runs"] if r["state"] == "failed"]
    assert {r["params"]["lr"] for r in failed} == {"0.1"} and len(failed) == 4 and all(r["exit_code"] == 3 for r in failed)
    assert data["counts"] == {"done": 8, "failed": 4}
    assert data["rentals"] <= 4 and not data.get("live_instances") and cli.account() == []
    assert data["spent_usd"] <= 2
    assert sorted(starts.read_text().split()) == sorted(states)  # each run started exactly once
    assert data["best"]["id"] and data["best"]["params"] == {"lr": "0.001", "bs": "128"}
    home = cli.cwd / ".vasticlaude" / "runs" / "grid" / "runs"
    done = [r for r in data["runs"] if r["state"] == "done"]
    for r in done:
        assert json.loads((home / r["id"] / "outputs" / "result.json").read_text())["run"] == r["id"]
        assert "step 5/5" in (home / r["id"] / "run" / "job.log").read_text()
    table = cli.json("status", "--experiment", "grid")  # no instance left: from the state alone
    assert table["sweep"] and table["counts"] == data["counts"] and len(table["runs"]) == 12
    human = cli.run("status", "--experiment", "grid").stdout
    assert "r12" in human and "best: r" in human and len(human.encode()) < 2000
    got = cli.json("report", "--experiment", "grid")
    page = Path(got["report"]).read_text()
    assert f"**Best run: {data['best']['id']}**" in page and "| r12 |" in page and "![loss" in page
    assert Path(got["charts"][0]).read_bytes()[:4] == b"\x89PNG"
    ledger = [json.loads(line) for line in (cli.vchome / "experiments" / "grid" / "ledger.jsonl").read_text().splitlines()]
    assert {e["run"] for e in ledger if e["event"] == "sweep_run"} == set(states)
    assert {e["instance_id"] for e in ledger if e["event"] == "sweep_instance"} == set(data["instances"])


def sweep_state(cli, name: str) -> dict:
    try:
        return json.loads((cli.vchome / "experiments" / name / "experiment.json").read_text()).get("sweep") or {}
    except (OSError, ValueError):
        return {}


def kill_when(cli, proc, name: str, ready, timeout: float = 120) -> dict:
    """kill -9 the controller (and its ssh/rsync) as soon as its state shows `ready`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        sw = sweep_state(cli, name)
        if sw and ready(sw):
            cli.kill9(proc)
            return sw
        time.sleep(0.02)
    raise AssertionError(f"the sweep never reached the kill point (rc={proc.poll()})")


def test_kill_9_at_several_points_then_resume(cli, sim, tmp_path):
    starts = project(cli, tmp_path, steps=12, pause=0.1)
    args = ["--experiment", "kills", "--parallel", "2", "--budget-usd", "2", "--param", "lr=0.001,0.002,0.003",
            "--param", "bs=8,16", *SWEEP, "--", "python3", "train.py", "{lr}", "{bs}"]
    points = [lambda sw: any(s["state"] == "renting" for s in sw["slots"]),
              lambda sw: any(r["state"] == "running" for r in sw["runs"]),
              lambda sw: sum(r["state"] == "done" for r in sw["runs"]) >= 2]
    proc = cli.spawn("sweep", *args)
    for n, point in enumerate(points):
        kill_when(cli, proc, "kills", point)
        if n == 1:  # the controller is dead; its runs go on, and status sees them live
            live = cli.json("status", "--experiment", "kills")
            assert any(r["state"] == "running" and r.get("progress") for r in live["runs"]), live
        if n + 1 < len(points):
            proc = cli.spawn("sweep", "--experiment", "kills", "--resume", "--interval", "0.3")
    paused = cli.run("sweep", "--json", "--experiment", "kills", "--resume", "--interval", "0.3", "--timeout", "0.5")
    envelope = json.loads(paused.stdout)  # the controller's time is up; its runs go on, guarded
    if paused.returncode == 1:  # (unless it finished within the half second)
        assert envelope["error"]["code"] == "timeout" and envelope["data"]["state"] == "paused"
        assert "--resume --timeout 540" in envelope["error"]["hint"]
    data = sweep_json(cli, "--experiment", "kills", "--resume", "--interval", "0.3", rc=0)
    assert data["counts"] == {"done": 6}
    started = starts.read_text().split()
    assert sorted(started) == sorted(r["id"] for r in data["runs"])  # no run done twice
    assert data["rentals"] == 2 and cli.account() == []  # no duplicate rental, nothing left
    again = sweep_json(cli, "--experiment", "kills", "--resume", rc=0)  # resuming a finished sweep does nothing
    assert again["counts"] == {"done": 6} and again["rentals"] == 2


def test_a_budget_that_runs_out_midway_stops_cleanly(cli, sim, tmp_path):
    starts = project(cli, tmp_path, steps=40, pause=0.1)
    dph = cli.json("offers", "--disk", "8", "--hours", "0.001")["candidates"][0]["dph"]
    total = round(2 * dph * 10 / 3600, 8)  # about 10 s of each of the 2 instances: a run or two each, not six
    data = sweep_json(cli, "--experiment", "broke", "--parallel", "2", "--budget-usd", str(total),
                      "--param", "lr=0.001,0.002,0.003", "--param", "bs=8,16", *SWEEP[:4], "--hours", "0.001",
                      "--interval", "0.3", "--check", "0.5", "--kill-grace", "1", "--grace", "120", "--no-setup",
                      "--", "python3", "train.py", "{lr}", "{bs}", rc=1)
    states = {r["id"]: r["state"] for r in data["runs"]}
    assert set(states.values()) <= {"done", "stopped", "not_run"} and "not_run" in states.values()
    never = [rid for rid, s in states.items() if s == "not_run"]
    assert not set(never) & set(starts.read_text().split())  # runs reported not run never started
    assert cli.account() == [] and not data.get("live_instances")  # nothing bills
    world = json.loads((sim.state / "world.json").read_text())["instances"]
    billed = sum(world[str(i)]["billing"]["gpu"]["amount"] + world[str(i)]["billing"]["disk"]["amount"]
                 for i in data["instances"])
    assert billed <= total, (billed, total)  # what the sandbox billed: the total held


SELF_DESTROY = r'''
import pathlib, urllib.request
marker = pathlib.Path(STARTS).with_name("destroyed-once")
if not marker.exists():  # the first start ends its own instance at once, as a watchdog at the budget does
    marker.touch()
    env = dict(os.environ)
    vast_env = pathlib.Path.home() / ".vast_env"
    for line in vast_env.read_text().splitlines() if vast_env.exists() else []:
        name, _, value = line.removeprefix("export ").partition("=")
        env.setdefault(name, value.strip("\"'"))
    url = f"{env['VAST_URL'].rstrip('/')}/api/v0/instances/{env['CONTAINER_ID']}/"
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE", headers={
        "Authorization": "Bearer " + env["CONTAINER_API_KEY"]}), timeout=30).read()
    time.sleep(30)
'''


def test_a_run_whose_launch_lost_its_instance_is_watched_not_reported_not_run(cli, sim, tmp_path):
    """The job began and its instance went under the launch's SSH call (the launch's answer is lost):
    the run began, so it is watched (here: recovered and run again), never given back as not run."""
    starts = project(cli, tmp_path, steps=3)
    script = (cli.cwd / "train.py").read_text()
    (cli.cwd / "train.py").write_text(script.replace("steps = STEPS\n", "steps = STEPS\n" + SELF_DESTROY))
    proc = cli.run("sweep", "--json", "--experiment", "lostlaunch", "--parallel", "1", "--budget-usd", "2",
                   "--param", "lr=0.001", "--param", "bs=8", *SWEEP, "--", "python3", "train.py", "{lr}", "{bs}",
                   timeout=300)
    data = json.loads(proc.stdout)["data"]
    assert starts.read_text().split() == ["r01", "r01"]  # began, its instance destroyed; began again
    assert data["counts"] == {"done": 1}, (data["runs"], proc.stderr[-3000:])
    assert data["rentals"] == 2 and cli.account() == []
    assert "its start was not confirmed" in proc.stderr  # the launch's answer was lost: the case pinned here


def test_session_end_reap_leaves_a_guarded_run_and_tears_down_an_idle_slot(cli, sim, tmp_path):
    starts = project(cli, tmp_path)
    commands = cli.cwd / "runs.md"
    # r01 runs long (15 s) on one slot and r02 (1.5 s) on the other; the controller dies while both run
    commands.write_text("- `STEPS=300 python3 train.py {lr} {bs}`\n- `STEPS=30 python3 train.py {lr} {bs}`\n")
    (cli.cwd / "train.py").write_text((cli.cwd / "train.py").read_text().replace(
        "steps = STEPS", "steps = int(os.environ.get('STEPS', STEPS))"))
    proc = cli.spawn("sweep", "--experiment", "reaped", "--parallel", "2", "--budget-usd", "2",
                     "--commands", str(commands), "--param", "lr=0.001", "--param", "bs=8", *SWEEP)
    sw = kill_when(cli, proc, "reaped", lambda sw: all(r["state"] == "running" for r in sw["runs"]))
    slot = {r["id"]: r["slot"] for r in sw["runs"]}
    deadline = time.monotonic() + 60
    while cli.json("status", "--experiment", slot["r02"])["job"]["state"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    reaped = cli.json("reap")
    by_slot = {i.get("experiment"): i.get("action") for i in reaped["instances"]}
    assert by_slot[slot["r01"]] == "left-guarded" and by_slot[slot["r02"]] != "left-guarded", json.dumps(reaped["instances"])
    live = {r["label"] for r in cli.account()}
    assert live == {f"vasticlaude-{slot['r01']}"}
    data = sweep_json(cli, "--experiment", "reaped", "--resume", "--interval", "0.3", rc=0)
    assert data["counts"] == {"done": 2} and sorted(starts.read_text().split()) == ["r01", "r02"]
    home = cli.cwd / ".vasticlaude" / "runs" / "reaped" / "runs"
    assert json.loads((home / "r02" / "outputs" / "result.json").read_text())["run"] == "r02"  # the reap's pull
    assert cli.account() == []


def test_a_dead_host_mid_sweep_is_recovered_and_the_others_go_on(cli, sim, tmp_path):
    starts = project(cli, tmp_path, steps=40, pause=0.1)
    proc = cli.spawn("sweep", "--experiment", "faulty", "--parallel", "2", "--budget-usd", "2",
                     "--param", "lr=0.001,0.002,0.003", "--param", "bs=8", *SWEEP,
                     "--", "python3", "train.py", "{lr}", "{bs}")
    deadline = time.monotonic() + 120
    while True:  # a run has been going a second: its host dies for good
        assert time.monotonic() < deadline and proc.poll() is None
        running = [r for r in sweep_state(cli, "faulty").get("runs", []) if r["state"] == "running"]
        if running and time.time() - running[0]["started_at"] > 1:
            break
        time.sleep(0.1)
    victim = running[0]
    sim.fault("host-down", instance=victim["instance_id"])
    code, out, err = cli.finish(proc, timeout=240)
    assert code == 0, err[-3000:]
    final = cli.json("status", "--experiment", "faulty")
    assert final["counts"] == {"done": 3} and final["rentals"] == 3  # the dead one, its replacement, the other
    assert starts.read_text().split().count(victim["id"]) == 2  # restarted once by the recovery, not more
    assert cli.account() == []


def test_a_sweep_with_a_results_store_ships_every_run_and_keeps_its_instance(cli, sim, tmp_path):
    """Each run's watchdog ships it to <prefix>/<sweep>/<run>/ and then waits for the next run on
    the same instance (no destroy after the ship); the controller lets the ship finish before it
    moves the run's files aside."""
    from test_store import configure, stored
    project(cli, tmp_path)
    configure(cli, sim, "sweeps")
    data = sweep_json(cli, "--experiment", "stored", "--parallel", "1", "--budget-usd", "2",
                      "--param", "lr=0.001,0.002", "--param", "bs=8", *SWEEP, "--", "python3", "train.py", "{lr}", "{bs}",
                      rc=0)
    assert data["counts"] == {"done": 2} and data["rentals"] == 1, data["runs"]  # one instance ran both
    home = cli.cwd / ".vasticlaude" / "runs" / "stored" / "runs"
    for rid in ("r01", "r02"):
        manifest = json.loads(stored(sim, f"sweeps/stored/{rid}/manifest.json"))
        assert str(manifest["exit_code"]) == "0" and any(f["path"] == "outputs/result.json" for f in manifest["files"])
        assert json.loads(stored(sim, f"sweeps/stored/{rid}/outputs/result.json"))["run"] == rid
        assert json.loads((home / rid / "outputs" / "result.json").read_text())["run"] == rid
    assert cli.account() == []


def test_a_run_that_ends_with_no_controller_comes_home_from_the_store(cli, sim, tmp_path):
    """The controller dies while the run runs; the run ends, its watchdog ships it, waits the grace
    for a next run that never comes and destroys the instance. The resume takes the run from the
    store: done, never run again."""
    from test_store import configure
    starts = project(cli, tmp_path, steps=30, pause=0.1)
    configure(cli, sim, "sweeps")
    quick = [*SWEEP[:SWEEP.index("--grace")], "--grace", "1", *SWEEP[SWEEP.index("--grace") + 2:]]
    proc = cli.spawn("sweep", "--experiment", "away", "--parallel", "1", "--budget-usd", "2",
                     "--param", "lr=0.001", "--param", "bs=8", *quick, "--", "python3", "train.py", "{lr}", "{bs}")
    kill_when(cli, proc, "away", lambda sw: sw["runs"][0]["state"] == "running")
    deadline = time.monotonic() + 120
    while cli.account():  # its watchdog: the job ends, the store gets it, 1 s of grace, destroyed
        assert time.monotonic() < deadline, cli.account()
        time.sleep(0.5)
    data = sweep_json(cli, "--experiment", "away", "--resume", "--interval", "0.3", rc=0)
    assert data["counts"] == {"done": 1} and data["rentals"] == 1, data["runs"]
    assert starts.read_text().split() == ["r01"]  # not run a second time
    home = cli.cwd / ".vasticlaude" / "runs" / "away" / "runs" / "r01"
    assert json.loads((home / "outputs" / "result.json").read_text())["run"] == "r01"
    assert "step 30/30" in (home / "run" / "job.log").read_text()
    assert cli.account() == []

"""The on-instance watchdog: an instance nobody watches stops or destroys itself, on the sandbox.

After `vasticlaude run` the laptop side does nothing at all (no status, no hooks): only the
watchdog started beside the job acts, with the instance's own restricted key. Real ssh, real
sandbox billing; time scale 0.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from test_lifecycle import IMAGE, Cli, charged, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME

from vasticlaude.core import budget
from vasticlaude.store import state

FAST = ("--grace", "2", "--check", "1", "--kill-grace", "3")
GONE = {"destroyed"}


# ----- helpers -------------------------------------------------------------------------------
def rent(cli, experiment: str, *extra: str) -> dict:
    up = cli.json("up", "--experiment", experiment, "--image", IMAGE, "--disk", "8", *extra)
    up["ssh"]["key"] = str(cli.vchome / "ssh" / "id_ed25519")  # the key `up` made (an empty HOME has none)
    return up


def start(cli, experiment: str, *flags_and_cmd: str, rc: int = 0) -> dict:
    """`vasticlaude run --json --experiment X FLAGS -- CMD` (the command after its own `--`)."""
    proc = cli.run("run", "--json", "--experiment", experiment, "--workdir", ".", *flags_and_cmd)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["data"]


def home_of(sim, iid: int) -> Path:
    return sim.state / "instances" / str(iid) / "root"


def run_file(sim, iid: int, experiment: str, name: str) -> str:
    path = home_of(sim, iid) / "vasticlaude" / experiment / "run" / name
    return path.read_text() if path.exists() else ""


def world_rec(sim, iid: int) -> dict:
    return json.loads((sim.state / "world.json").read_text())["instances"][str(iid)]


def wait_for(what, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what.__doc__ or what}")


def wait_state(sim, iid: int, experiment: str, wanted: set[str], timeout: float) -> None:
    """Until the sandbox shows the instance in `wanted`; on failure, say what the watchdog did."""
    try:
        wait_for(lambda: status_of(sim, iid) in wanted, timeout)
    except AssertionError:
        raise AssertionError(f"instance {iid} is {status_of(sim, iid)}, not {wanted}, after {timeout} s\n"
                             f"watchdog.log:\n{run_file(sim, iid, experiment, 'watchdog.log')}\n"
                             f"job.log:\n{run_file(sim, iid, experiment, 'job.log')[-1500:]}") from None


def status_of(sim, iid: int) -> str:
    rec = world_rec(sim, iid)
    return "destroyed" if rec.get("destroyed_at") else rec["actual_status"]


def ended_at(sim, iid: int, experiment: str) -> float:
    """When the job ended, by the wrapper's own file (wall clock of this same machine)."""
    return float(wait_for(lambda: run_file(sim, iid, experiment, "ended_at").strip(), 30))


def assert_no_keys(sim, iid: int, experiment: str) -> None:
    """The account key is nowhere on the instance; the instance key is not in the watchdog's log."""
    instance_key = world_rec(sim, iid)["instance_api_key"]
    home = home_of(sim, iid)
    for path in [p for p in home.parent.rglob("*") if p.is_file()]:
        assert sim.api_key.encode() not in path.read_bytes(), f"account key in {path}"
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("CONTAINER_ID") == str(iid):
            assert sim.api_key not in " ".join(env.values()) + " ".join(proc.cmdline())
    log = run_file(sim, iid, experiment, "watchdog.log")
    assert log and instance_key not in log


def ssh(up: dict, command: str, stdin: str = "") -> subprocess.CompletedProcess:
    key = up["ssh"]
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", key["key"],
                           "-p", str(key["port"]), f"root@{key['host']}", command],
                          input=stdin, capture_output=True, text=True, timeout=30)


# ----- nobody watching -------------------------------------------------------------------------
def test_unwatched_job_is_stopped_after_the_grace(cli, sim):
    up = rent(cli, "alone")
    iid = up["instance_id"]
    data = start(cli, "alone", *FAST, "--", "sh", "-c", "sleep 1; echo finished")
    assert data["guard"]["alive"] and data["guard"]["on_end"] == "destroy-if-pulled"
    assert "grace_s" not in data["guard"]  # timings are the guard's business: experiment.json keeps them
    exp = state.read_experiment("alone")
    assert exp["guard"]["grace_s"] == 2 and exp["guard"]["check_s"] == 1 and exp["guard"]["watchdog"] is True
    wait_state(sim, iid, "alone", {"stopped"}, 20)
    stopped = time.time()
    end = ended_at(sim, iid, "alone")
    assert 2 <= stopped - end <= 2 + 10
    log = run_file(sim, iid, "alone", "watchdog.log")
    assert "clock=/proc/uptime" in log and "nothing pulled within the 2 s grace: stop the instance" in log
    assert "finished" in run_file(sim, iid, "alone", "job.log")  # stopped, so the data is still there
    assert_no_keys(sim, iid, "alone")
    waited = cli.run("status", "--experiment", "alone", "--wait", "--interval", "0.5", "--json", timeout=30)
    snap = json.loads(waited.stdout)["data"]
    assert waited.returncode == 1 and snap["reason"] == "instance stopped" and "storage still bills" in snap["next"]


def test_pulled_results_mean_destroy(cli, sim):
    up = rent(cli, "pulled")
    iid = up["instance_id"]
    start(cli, "pulled", "--grace", "60", "--check", "1", "--",
          "sh", "-c", "echo 42 > $VASTICLAUDE_OUTPUT_DIR/answer.txt")
    ended_at(sim, iid, "pulled")
    pulled = cli.json("pull", "--experiment", "pulled")  # leaves run/pulled, newer than ended_at
    assert pulled["verified"]
    wait_state(sim, iid, "pulled", GONE, 10)  # long before the 60 s grace


def test_disposable_is_destroyed_right_after_the_grace(cli, sim):
    up = rent(cli, "throwaway")
    iid = up["instance_id"]
    data = start(cli, "throwaway", *FAST, "--disposable", "--", "true")
    assert data["guard"]["on_end"] == "destroy"
    end = ended_at(sim, iid, "throwaway")
    wait_state(sim, iid, "throwaway", GONE, 20)
    gone = world_rec(sim, iid)["destroyed_at"]
    assert 2 <= gone - end <= 2 + 10


# ----- a killed watchdog, a clock jump -----------------------------------------------------------
def test_killed_watchdog_shows_as_no_guard(cli, sim):
    up = rent(cli, "naked")
    iid = up["instance_id"]
    start(cli, "naked", "--check", "1", "--", "sleep", "60")
    snap = cli.json("status", "--experiment", "naked")
    assert snap["guard"]["alive"] and snap["guard"]["heartbeat_age_s"] < 5
    assert not snap["next"].startswith("no guard")
    assert ssh(up, "kill -9 $(cat vasticlaude/naked/run/watchdog_pid)").returncode == 0
    snap = cli.json("status", "--experiment", "naked")
    assert snap["job"]["state"] == "running" and not snap["guard"]["alive"]
    assert snap["next"].startswith("no guard: the instance will bill until torn down")
    human = cli.run("status", "--experiment", "naked")
    assert "no guard" in human.stdout and len(human.stdout.encode()) <= 1500
    assert_no_keys(sim, iid, "naked")
    assert status_of(sim, iid) == "running"  # status itself never stops anything


FAKE_DATE = """#!/bin/sh
# A wall clock that jumps a day forward at every call: a date-based watchdog would act at once.
n=$(cat "$HOME/fakebin/n" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$HOME/fakebin/n"
echo $(( $(/bin/date +%s) + 86400 * n ))
"""


def test_a_clock_jump_does_not_fool_it(cli, sim):
    up = rent(cli, "clock")
    iid = up["instance_id"]
    start(cli, "clock", "--grace", "3", "--check", "1", "--max-hours", "1", "--", "sleep", "4")
    ssh(up, "mkdir -p fakebin && cat > fakebin/date && chmod +x fakebin/date", FAKE_DATE).check_returncode()
    restart = ("R=vasticlaude/clock/run; kill $(cat $R/watchdog_pid); sleep 0.3; "
               "PATH=$HOME/fakebin:$PATH setsid nohup sh $R/watchdog.sh >/dev/null 2>&1 </dev/null & sleep 0.5; "
               "PATH=$HOME/fakebin:$PATH date")
    jumped = ssh(up, restart).stdout.strip()
    assert float(jumped) > time.time() + 80000  # the fake clock is really on the watchdog's PATH
    end = ended_at(sim, iid, "clock")
    assert run_file(sim, iid, "clock", "exit_code").strip() == "0"  # max_hours did not fire
    assert not run_file(sim, iid, "clock", "signal")
    wait_state(sim, iid, "clock", {"stopped"}, 20)
    assert time.time() - end >= 3  # the grace was waited in real seconds
    log = run_file(sim, iid, "clock", "watchdog.log")
    assert "ended by SIGTERM" in log and log.count("start: pid") == 2
    assert "max_hours:" not in log and "SIGTERM to the job" not in log


# ----- the budget, on an expensive pinned market ----------------------------------------------------
PRICEY = [{"id": 6661001, "machine_id": 9101, "gpu_name": "H100 SXM", "num_gpus": 1, "gpu_ram": 81559,
           "dph_base": 36.0, "storage_cost": 0.1, "min_bid": 10.0, "disk_space": 100, "reliability": 0.999,
           "verified": True}]
CHECKPOINTING = r'''
import os, signal, sys, time
def stop(signum, frame):
    print("got SIGTERM: checkpointing", flush=True)
    time.sleep(1)
    open(os.path.join(os.environ["VASTICLAUDE_CHECKPOINT_DIR"], "ckpt"), "w").write("saved")
    print("checkpoint saved", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(0.1)
'''


@pytest.fixture
def pricey(fresh_sim, tmp_path):
    market = tmp_path / "market.json"
    market.write_text(json.dumps(PRICEY))
    sim = fresh_sim.start("--time-scale", "0", "--market", str(market), "--balance", "50")
    home = tmp_path / "user"
    home.mkdir()
    user = Cli(sim, home, tmp_path / "vchome")
    try:
        yield user
    finally:
        for row in sim.sdk().show_instances():
            sim.sdk().destroy_instance(id=row["id"])
    user.assert_no_secrets()


def test_budget_stops_the_job_and_the_instance(pricey, monkeypatch):
    cli, sim = pricey, pricey.sim
    monkeypatch.setenv("VASTICLAUDE_HOME", str(cli.vchome))
    up = rent(cli, "pricey")
    iid = up["instance_id"]
    ssh(up, "cat > ckpt.py", CHECKPOINTING).check_returncode()
    # ~10 s more at 1 cent a second: the SIGTERM comes one kill grace (5 s) before the budget
    cap = round(budget.experiment_spent("pricey", state.load()) + 0.1, 4)
    data = start(cli, "pricey", "--budget-usd", str(cap), "--check", "1", "--kill-grace", "5", "--grace", "60",
                 "--", "python3", "ckpt.py")
    assert data["guard"]["budget_usd"] == cap
    assert state.read_experiment("pricey")["guard"]["dph"] == pytest.approx(36.0, abs=0.01)
    wait_state(sim, iid, "pricey", {"stopped"}, 30)
    time.sleep(1.2)  # the sandbox bills once a second: let the last second land
    actual = charged(sim, iid)
    allowed = 36.0 * (1 + 5) / 3600  # one check interval plus the kill grace
    early = 36.0 * 5 / 3600  # the stop starts a kill grace before the budget (the job checkpoints in ~1 s)
    assert cap - early - 0.02 <= actual <= cap + allowed, (actual, cap)
    job_log = run_file(sim, iid, "pricey", "job.log")
    assert "got SIGTERM: checkpointing" in job_log and "checkpoint saved" in job_log
    assert run_file(sim, iid, "pricey", "signal").strip() == "budget"
    log = run_file(sim, iid, "pricey", "watchdog.log")
    assert "budget: spent" in log and "stop the instance" in log and "SIGKILL after 5 s" in log
    assert_no_keys(sim, iid, "pricey")
    again = cli.run("run", "--experiment", "pricey", "--", "true")  # the run's budget is remembered
    assert again.returncode == 1 and "budget" in again.stderr


# ----- budgets checked before renting -----------------------------------------------------------
@pytest.mark.unit
def test_check_before_rent_counts_hours_already_run_and_the_daily_cap(monkeypatch, tmp_path):
    now = time.time()
    with state.transaction() as data:
        data["instances"]["1"] = {"id": 1, "experiment": "e", "gpu_dph": 1.0, "storage_dph": 0.0,
                                  "created_at": now - 3 * 3600,
                                  "history": [{"at": now - 3 * 3600, "status": "running"}]}
    limits = budget.Limits(experiment_hours=4)
    budget.check_before_rent(limits, "e", 1.0, 0.5, state.load())
    with pytest.raises(Exception, match="on top of 3.00 h run"):
        budget.check_before_rent(limits, "e", 1.0, 2, state.load())
    with pytest.raises(Exception, match="daily cap"):
        budget.check_before_rent(budget.Limits(daily_usd=0.5), "other", 1.0, 1, state.load())


def test_status_says_stop_at_the_budget_but_stops_nothing(pricey, monkeypatch):
    cli, sim = pricey, pricey.sim
    monkeypatch.setenv("VASTICLAUDE_HOME", str(cli.vchome))
    iid = rent(cli, "watched")["instance_id"]
    cap = round(budget.experiment_spent("watched", state.load()) + 0.1, 4)  # 10 s away: the first status comes before it
    data = start(cli, "watched", "--budget-usd", str(cap), "--no-watchdog", "--", "sleep", "120")
    assert data["guard"]["watchdog"] is False and not data["guard"]["alive"]
    first = cli.json("status", "--experiment", "watched")
    assert first["next"].startswith("no guard:") and not first["guard"]["alive"]
    t0 = time.monotonic()
    waited = cli.run("status", "--experiment", "watched", "--wait", "--interval", "0.5", "--json", timeout=60)
    snap = json.loads(waited.stdout)["data"]
    assert waited.returncode == 1 and snap["reason"].startswith("budget: spent") and time.monotonic() - t0 < 20
    assert "stop now" in snap["next"] and snap["job"]["state"] == "running"
    assert status_of(sim, iid) == "running"  # status only says so; tearing down is `down`'s job

"""Recovery on the sandbox: preemption, a dead host, a full disk, dropped SSH and a down API.

Each test runs the flow as Claude does (`vasticlaude up/push/run/watch/recover` subprocesses
in a project folder, real ssh and rsync), injects the sandbox's fault mid-run, and checks that
the experiment finishes resumed from its last checkpoint, that the work lost stays within the
bound the README promises, that the failed instance is gone and its cost is in the ledger, and
that nothing is left on the account.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME

STEP_S = 0.2  # one step of the test job's work; it checkpoints after every step
TRAIN = r'''
import json, os, sys, time
ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
ckpt = os.path.join(ckpt_dir, "state.json")
total, period, chunk = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0
start = json.load(open(ckpt))["step"] if os.environ["VASTICLAUDE_RESUME"] == "1" else 0
print(f"resumed from step {start}" if start else "fresh start", flush=True)
for step in range(start + 1, total + 1):
    time.sleep(period)
    if chunk:
        with open(os.path.join(out_dir, f"chunk_{step:03d}.bin"), "wb") as f:
            f.write(os.urandom(chunk))
    print(f"step {step}/{total} loss={1.0 / step:.4f}", flush=True)
    json.dump({"step": step}, open(ckpt + ".tmp", "w")); os.replace(ckpt + ".tmp", ckpt)
open(os.path.join(out_dir, "result.txt"), "w").write(f"done {total} resumed-from {start}\n")
'''


@pytest.fixture
def project(cli, tmp_path: Path) -> Path:  # noqa: F811
    root = tmp_path / "project"
    (root / ".vasticlaude").mkdir(parents=True)
    (root / "train.py").write_text(TRAIN)
    (root / ".vasticlaude" / "config.json").write_text(json.dumps(
        {"recovery": {"sync_interval_s": 1, "preempt_wait_s": 60, "confirm_s": 20}, "guard": {"grace_s": 600}}))
    cli.cwd = root  # confirm_s: a dead host is confirmed over 1 s here (× POLL_SCALE); test_deadlines tests the window
    return root


def launch(cli, experiment: str, *cmd: str, disk: str = "8", extra: tuple[str, ...] = ()) -> dict:  # noqa: F811
    up = cli.json("up", "--experiment", experiment, "--image", IMAGE, "--disk", disk, "--hours", "1", *extra)
    cli.json("push", "--experiment", experiment, "--no-setup")
    started = cli.run("run", "--json", "--experiment", experiment, "--", "python3", "train.py", *cmd)
    assert started.returncode == 0 and json.loads(started.stdout)["data"]["state"] == "running", started.stderr
    return up


def on_instance(sim, iid: int, experiment: str, rel: str) -> Path:
    return sim.state / "instances" / str(iid) / "root" / "vasticlaude" / experiment / rel


def step_of(path: Path) -> int:
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError):
        return 0


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def events(cli, experiment: str) -> list[dict]:  # noqa: F811
    path = cli.vchome / "experiments" / experiment / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def ledger_ids(cli, experiment: str) -> set[int]:  # noqa: F811
    path = cli.vchome / "experiments" / experiment / "ledger.jsonl"
    return {int(json.loads(line)["instance_id"]) for line in path.read_text().splitlines()}


def result_of(project: Path, experiment: str) -> tuple[int, int]:
    """(total, resumed-from step) from the pulled result.txt."""
    words = (project / ".vasticlaude" / "runs" / experiment / "outputs" / "result.txt").read_text().split()
    return int(words[1]), int(words[3])


def watch(cli, experiment: str, *extra: str):  # noqa: F811
    return cli.spawn("watch", "--experiment", experiment, "--interval", "0.5", "--json", *extra)


def finished(cli, proc, rc: int = 0) -> dict:  # noqa: F811
    code, out, err = cli.finish(proc, timeout=240)
    assert code == rc, f"watch rc={code}\n{out}\n{err[-3000:]}"
    envelope = json.loads(out)  # an outcome other than a clean finish is said once: error.message
    return {**envelope["data"], **({"message": envelope["error"]["message"]} if envelope["error"] else {})}


# ----- preemption -------------------------------------------------------------------------------
@pytest.mark.parametrize("intended", ["running", "stopped"])  # Vast's fields after an outbid are undocumented
def test_preempted_interruptible_instance_is_won_back_and_resumes_in_place(cli, sim, project, intended):  # noqa: F811
    up = launch(cli, "pre", "50", str(STEP_S), extra=("--interruptible",))
    iid = up["instance_id"]
    ckpt = on_instance(sim, iid, "pre", "checkpoints/state.json")
    wait_for(lambda: step_of(ckpt) >= 8, what="step 8")
    bid = cli.state()["instances"][str(iid)]["bid_price"]
    at_fault = step_of(ckpt)
    sim.fault("preempt", instance=iid, bid=round(bid * 1.2, 4), intended=intended)  # outbid: stopped, processes killed

    snap = cli.json("status", "--experiment", "pre")
    assert snap["instance"]["status"] == "stopped" and snap["fault"]["kind"] == "preempted"
    assert snap["fault"]["action"] == "wait_bid" and "recover" in snap["next"]

    data = finished(cli, watch(cli, "pre"))
    assert data["outcome"] == "finished" and data["down"]["destroyed"] == [iid]
    [rec] = data["recoveries"]
    assert rec["kind"] == "preempted" and rec["from_instance"] == rec["to_instance"] == iid
    total, resumed = result_of(project, "pre")
    assert total == 50 and at_fault - 1 <= resumed <= at_fault + 1  # in place: its own last checkpoint
    steps = [e for e in events(cli, "pre") if e["event"] == "recover_step"]
    raised = [e for e in steps if "raised the bid" in e["step"]]
    assert raised and raised[0]["bid"] > bid
    assert any("asked Vast to start" in e["step"] for e in steps) == (intended == "stopped")
    assert cli.account() == [] and ledger_ids(cli, "pre") == {iid}


def test_preempted_instance_that_stays_outbid_is_relaunched_elsewhere(cli, sim, project):  # noqa: F811
    up = launch(cli, "outbid", "40", str(STEP_S), extra=("--interruptible",))
    iid = up["instance_id"]
    wait_for(lambda: step_of(project / ".vasticlaude/runs/outbid/checkpoints/state.json") >= 1
             or step_of(on_instance(sim, iid, "outbid", "checkpoints/state.json")) >= 5, what="progress")
    proc = watch(cli, "outbid", "--max-bid", str(cli.state()["instances"][str(iid)]["bid_price"]), "--preempt-wait", "2")
    wait_for(lambda: step_of(project / ".vasticlaude/runs/outbid/checkpoints/state.json") >= 5, what="a synced checkpoint")
    sim.fault("preempt", instance=iid, bid=100)  # nobody can win this back within the ceiling
    data = finished(cli, proc)
    [rec] = data["recoveries"]
    assert rec["kind"] == "preempted" and rec["to_instance"] != iid
    assert sim.instance(iid) is None  # the preempted one was destroyed, not left billing storage
    assert result_of(project, "outbid")[1] >= 5
    assert cli.account() == [] and ledger_ids(cli, "outbid") == {iid, rec["to_instance"]}


# ----- a dead host ---------------------------------------------------------------------------------
def test_host_down_mid_run_relaunches_on_another_machine_from_the_synced_checkpoint(cli, sim, project):  # noqa: F811
    up = launch(cli, "hd", "60", str(STEP_S))
    iid, machine = up["instance_id"], cli.state()["instances"][str(up["instance_id"])]["machine_id"]
    proc = watch(cli, "hd", "--sync-interval", "1")
    local = project / ".vasticlaude" / "runs" / "hd" / "checkpoints" / "state.json"
    wait_for(lambda: step_of(local) >= 10, what="a checkpoint synced home")
    at_fault = step_of(on_instance(sim, iid, "hd", "checkpoints/state.json"))
    sim.fault("host-down", instance=iid)

    data = finished(cli, proc)
    [rec] = data["recoveries"]
    assert rec["kind"] == "host_offline" and rec["to_instance"] != iid
    new = cli.state()["instances"][str(rec["to_instance"])]
    assert new["machine_id"] != machine and machine in {f["machine_id"] for f in cli.state()["failed_machines"]}
    assert sim.instance(iid) is None  # the dead one is destroyed (confirmed), not left billing storage
    total, resumed = result_of(project, "hd")
    lost_s = (at_fault - resumed) * STEP_S
    assert total == 60 and resumed > 0
    assert lost_s <= 1 + 0.5 + 2 * STEP_S, f"lost {lost_s:.1f} s of work: more than one sync interval"
    kinds = [e["event"] for e in events(cli, "hd")]
    assert kinds.index("recover_start") < kinds.index("recovered")
    assert cli.account() == [] and ledger_ids(cli, "hd") == {iid, rec["to_instance"]}
    assert data["spent_usd"] > 0
    report = Path(cli.json("report", "--experiment", "hd")["report"]).read_text()
    assert "## Recoveries" in report and "host_offline" in report and f"{iid} → {rec['to_instance']}" in report
    assert "Spent on the instances given up" in report


def test_ssh_failing_past_the_backoff_for_long_enough_moves_the_job(cli, sim, project):  # noqa: F811
    cfg = project / ".vasticlaude" / "config.json"
    cfg.write_text(json.dumps({"recovery": {"sync_interval_s": 1, "unreachable_after_s": 2}}))
    up = launch(cli, "nossh", "60", str(STEP_S))
    iid = up["instance_id"]
    proc = watch(cli, "nossh")
    local = project / ".vasticlaude" / "runs" / "nossh" / "checkpoints" / "state.json"
    wait_for(lambda: step_of(local) >= 5, what="a checkpoint synced home")
    sim.fault("ssh-drop", instance=iid, refuse=100000)  # Vast says running; SSH never answers again
    data = finished(cli, proc)
    [rec] = data["recoveries"]
    assert rec["kind"] == "ssh_unreachable" and rec["to_instance"] != iid
    start = next(e for e in events(cli, "nossh") if e["event"] == "recover_start")
    assert "SSH fails" in start["evidence"][0]
    assert result_of(project, "nossh")[1] >= 5 and sim.instance(iid) is None and cli.account() == []


def test_a_frozen_instance_is_seen_stale_and_moved(cli, sim, project):  # noqa: F811
    cfg = project / ".vasticlaude" / "config.json"
    cfg.write_text(json.dumps({"recovery": {"sync_interval_s": 1, "stale_after_s": 1}}))
    up = cli.json("up", "--experiment", "frozen", "--image", IMAGE, "--disk", "8", "--hours", "1")
    cli.json("push", "--experiment", "frozen", "--no-setup")
    cli.run("run", "--json", "--experiment", "frozen", "--heartbeat", "1", "--", "python3", "train.py", "60", str(STEP_S))
    iid = up["instance_id"]
    proc = watch(cli, "frozen")
    wait_for(lambda: step_of(project / ".vasticlaude/runs/frozen/checkpoints/state.json") >= 5, what="a synced checkpoint")
    run_dir = on_instance(sim, iid, "frozen", "run")
    for name in ("wrapper_pid", "job_pid"):  # each leads its own process group: freeze them whole
        os.killpg(int((run_dir / name).read_text()), signal.SIGSTOP)
    data = finished(cli, proc)
    [rec] = data["recoveries"]
    assert rec["kind"] == "stale" and rec["to_instance"] != iid and sim.instance(iid) is None
    assert result_of(project, "frozen")[1] >= 5 and cli.account() == []
    assert cli.state()["instances"][str(rec["to_instance"])]["destroyed_at"]


def test_a_recovery_killed_midway_is_finished_by_the_next_one(cli, sim, project):  # noqa: F811
    up = launch(cli, "midway", "60", str(STEP_S))
    iid = up["instance_id"]
    wait_for(lambda: step_of(on_instance(sim, iid, "midway", "checkpoints/state.json")) >= 5, what="step 5")
    cli.json("pull", "--experiment", "midway", "--path", "checkpoints")  # a checkpoint at home
    sim.fault("host-down", instance=iid)
    proc = cli.spawn("recover", "--experiment", "midway", "--json")
    wait_for(lambda: any(e["event"] == "recover_step" and " ready " in e["step"] for e in events(cli, "midway")),
             what="the new instance")
    sim.fault("slow", delay=3, count=4)  # hold the next API reads: the kill lands before the job restarts
    cli.kill9(proc)
    sim.admin("DELETE", "/sim/faults")

    again = cli.json("recover", "--experiment", "midway")
    assert again["fault"]["kind"] == "recovery_interrupted" and again["done"]
    data = finished(cli, watch(cli, "midway"))
    assert data["outcome"] == "finished" and result_of(project, "midway")[1] >= 5
    mine = [r for r in cli.state()["instances"].values() if r["experiment"] == "midway"]
    assert len(mine) == 2 and sim.instance(iid) is None and cli.account() == []  # no duplicate rental
    assert ledger_ids(cli, "midway") == {r["id"] for r in mine}


# ----- a full disk ---------------------------------------------------------------------------------
def test_full_disk_is_pulled_relaunched_with_more_disk_and_finished(cli, sim, project):  # noqa: F811
    up = launch(cli, "full", "20", "0.05", str(8 * 10**6), disk="0.1")  # 160 MB of outputs on a 100 MB disk
    iid = up["instance_id"]
    data = finished(cli, watch(cli, "full"))
    [rec] = data["recoveries"]
    assert rec["kind"] == "disk_full" and rec["to_instance"] != iid
    assert cli.state()["instances"][str(rec["to_instance"])]["disk"] == pytest.approx(0.2)
    outputs = project / ".vasticlaude" / "runs" / "full" / "outputs"
    assert sorted(p.name for p in outputs.glob("chunk_*.bin"))[-1] == "chunk_020.bin"
    assert len(list(outputs.glob("chunk_*.bin"))) == 20  # what the full disk held came home, the rest after
    assert result_of(project, "full")[1] > 0
    start = next(e for e in events(cli, "full") if e["event"] == "recover_start")
    assert any("disk" in ev.lower() or "too large" in ev.lower() for ev in start["evidence"])
    assert cli.account() == [] and ledger_ids(cli, "full") == {iid, rec["to_instance"]}


# ----- SSH drops -----------------------------------------------------------------------------------
def test_status_and_pull_complete_through_repeated_ssh_drops(cli, sim, project):  # noqa: F811
    # 15 steps of 3 x STEP_S: the job must still run when the first status looks, even on a busy machine
    up = launch(cli, "drops", "15", str(3 * STEP_S), "20000")
    iid = up["instance_id"]
    sim.fault("ssh-drop", instance=iid, refuse=3)
    snap = cli.json("status", "--experiment", "drops")
    assert snap["job"]["state"] == "running" and "fault" not in snap
    wait_for(lambda: on_instance(sim, iid, "drops", "run/exit_code").exists(), what="the job's end")
    sim.fault("ssh-drop", instance=iid, refuse=3)
    got = cli.json("pull", "--experiment", "drops")
    assert got["verified"] and (project / ".vasticlaude/runs/drops/outputs/result.txt").is_file()
    assert len(list((project / ".vasticlaude/runs/drops/outputs").glob("chunk_*"))) == 15
    cli.json("down", "--experiment", "drops")
    assert cli.account() == []


# ----- API trouble, limits, code failures -------------------------------------------------------
def test_a_persistent_api_outage_stops_watch_with_the_state_it_last_saw(cli, sim, project):  # noqa: F811
    up = launch(cli, "api", "400", str(STEP_S))
    base = cli.env
    cli.env = lambda: {**base(), "VASTICLAUDE_POLL_SCALE": "0.01"}  # watch's patience, shrunk: ~8 s, not 11 min
    proc = watch(cli, "api")
    cli.env = base
    wait_for(lambda: (cli.vchome / "experiments/api/watch.json").exists(), what="a first check")
    sim.fault("http", status=503, count=None, path="^/api/")
    data = finished(cli, proc, rc=3)
    assert data["outcome"] == "api_down"
    assert f"instance {up['instance_id']} running" in data["message"] and "watchdog" in data["message"]
    sim.admin("DELETE", "/sim/faults")
    assert cli.json("down", "--experiment", "api")["destroyed"]


def test_recover_says_what_it_would_do_and_refuses_what_it_must_not(cli, sim, project):  # noqa: F811
    up = launch(cli, "lim", "400", str(STEP_S))
    iid = up["instance_id"]
    assert cli.json("recover", "--experiment", "lim")["fault"] is None  # healthy: nothing to do

    sim.fault("container-exit", instance=iid)
    plan = cli.json("recover", "--experiment", "lim", "--dry-run")
    assert plan["fault"]["kind"] == "container_exited" and plan["done"] is False and sim.instance(iid)

    limited = cli.json("recover", "--experiment", "lim", "--max-attempts", "0", rc=1)
    assert limited["code"] == "recovery_limit" and sim.instance(iid)

    cfg = project / ".vasticlaude" / "config.json"
    settings = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**settings, "budget": {"experiment_usd": 0.01}}))  # spent so far: a few $0.0001
    broke = cli.json("recover", "--experiment", "lim", rc=1)  # a new rental's estimate would break it
    assert broke["code"] == "over_budget" and "budget" in broke["message"]
    assert sim.instance(iid) is None and cli.account() == []  # the dead one went; nothing new was rented
    kinds = [e["event"] for e in events(cli, "lim")]
    assert kinds.count("recover_start") == 1 and kinds[-1] == "recover_failed"

    cfg.write_text(json.dumps({**settings, "budget": {"experiment_usd": 0.000001}}))
    spent = cli.json("recover", "--experiment", "lim", rc=1)
    assert spent["code"] == "over_budget"  # spent already: no recovery is even tried


def test_a_failing_command_is_not_retried(cli, sim, project):  # noqa: F811
    cli.json("up", "--experiment", "bad", "--image", IMAGE, "--disk", "8")
    cli.json("push", "--experiment", "bad", "--no-setup")
    cli.run("run", "--experiment", "bad", "--", "python3", "-c", "import time, sys; time.sleep(1.5); sys.exit(3)")
    data = finished(cli, watch(cli, "bad"), rc=1)
    assert data["outcome"] == "failed" and not data.get("recoveries") and "code 3" in data["message"]
    assert cli.json("recover", "--experiment", "bad", rc=1)["fault"]["kind"] == "job_failed"
    cli.json("down", "--experiment", "bad")


def test_watch_after_the_run_was_pulled_and_torn_down_says_finished(cli, sim, project):  # noqa: F811
    up = launch(cli, "late", "8", "0.2")
    wait_for(lambda: on_instance(sim, up["instance_id"], "late", "run/exit_code").exists(), what="the job's end")
    cli.json("pull", "--experiment", "late")
    cli.json("down", "--experiment", "late")
    data = finished(cli, watch(cli, "late"))
    assert data["outcome"] == "finished" and not data.get("recoveries")  # nothing is relaunched
    assert cli.json("recover", "--experiment", "late")["fault"] is None and cli.account() == []

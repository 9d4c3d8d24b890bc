"""What the chaos campaign (bench/chaos_bench.py) found, each pinned by a test through the real parts.

1. A `run` killed -9 after the job started on the instance but before it was recorded: the job
   finished, its watchdog stopped the instance (results never pulled), and the session-end reap
   destroyed it as "stopped: nothing can run on it" — the results were lost (chaos seed 1015).
   `run` now writes the run down before launching it, so the reap keeps the stopped disk.
2. A reap whose pull failed destroyed the results on the instance (seeds 1022, 1026): it now stops it.
3. A stop answered 404 for an instance destroyed meanwhile (the reap listed it running, its pull
   failed, its watchdog destroyed it before the reap's stop; a re-run of seed 1005): the reap said
   "not done" (exit 4) though nothing billed. A stop of a gone instance is now "already gone", as
   a destroy's is (`down` is idempotent; `--keep-disk` too).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from test_hooks import VC, User, last_report, push, user, wait_worker  # noqa: F401 — `user` drives the sandbox
from vasticlaude.ops.reaping import Decision, act
from vasticlaude.store import state
from vasticlaude.vast.account import Endpoint
from vasticlaude.vast.gateway import Vast

JOB = r'''
import os, sys, time
open(sys.argv[1], "w").write("started\n")
time.sleep(0.5)
open(os.path.join(os.environ["VASTICLAUDE_OUTPUT_DIR"], "result.txt"), "w").write("done\n")
'''


def test_a_run_killed_mid_launch_keeps_its_results_through_the_reap(user, sim, tmp_path):
    (user.project / ".vasticlaude").mkdir(exist_ok=True)
    (user.project / ".vasticlaude" / "config.json").write_text(json.dumps({"guard": {"grace_s": 1, "check_s": 1}}))
    (user.project / "job.py").write_text(JOB)
    iid = user.up("mid-launch")
    push(user, "mid-launch")
    marker = tmp_path / "job-started"  # sandbox containers share this machine's files
    proc = subprocess.Popen([VC, "run", "--experiment", "mid-launch", "--", "python3", "job.py", str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=user.env(), cwd=user.project,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    user.procs.append(proc)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the job runs; `run` had not returned yet
    proc.wait(timeout=30)
    assert marker.exists(), "the job never started"
    sim.wait_status(iid, "stopped", timeout=60)  # its watchdog: ended, not pulled, grace over: stop, keep the disk
    wait_worker(user.session_end())
    report = last_report(user.vchome)
    assert [(i["id"], i["action"]) for i in report["instances"]] == [(iid, "left-stopped")], report["instances"]
    assert iid in user.account()
    user.run("down", "--experiment", "mid-launch")


def test_a_finished_job_whose_results_cannot_be_pulled_is_stopped_not_destroyed(user, sim):
    """2. The reap's pull failed (SSH refused: the watchdog stopping it, or the network) and the instance
    was destroyed with the job's results on it (chaos seeds 1022, 1026). Now it is stopped, the disk kept."""
    (user.project / "job.py").write_text(JOB)
    iid = user.up("no-pull")
    push(user, "no-pull")
    user.run("run", "--experiment", "no-pull", "--", "python3", "job.py", "/dev/null")
    user.run("status", "--experiment", "no-pull", "--wait", "--interval", "0.3", "--timeout", "60")
    sim.fault("ssh-drop", instance=iid, refuse=1000)
    wait_worker(user.session_end())
    report = last_report(user.vchome)
    assert [(i["id"], i["action"]) for i in report["instances"]] == [(iid, "stopped")], report["instances"]
    assert user.account()[iid]["actual_status"] in ("stopped", "exited")
    user.run("down", "--experiment", "no-pull")


def destroy_behind_our_back(user: User, sim, iid: int) -> None:
    sim.sdk().destroy_instance(id=iid)
    deadline = time.monotonic() + 30
    while iid in user.account() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert iid not in user.account()


def test_the_reaps_stop_of_an_instance_destroyed_meanwhile_is_already_gone_not_undone(user, sim):
    """3. The reap listed it running and chose stop; its watchdog destroyed it before the stop came."""
    iid = user.up("gone-meanwhile")
    row = user.account()[iid]  # the reap's listing, taken while it ran
    destroy_behind_our_back(user, sim, iid)
    vast = Vast(Endpoint(url=sim.url, api_key=sim.api_key, key_source="test", sandbox=True))
    action, failure = act(vast, iid, row, Decision("stop", "its run's results are not home"), "reap test")
    assert (action, failure) == ("already-gone", None)
    record = state.load()["instances"][str(iid)]
    assert record.get("destroyed_at"), record


def test_down_keep_disk_of_a_gone_instance_is_already_gone(user, sim):
    """`down` is idempotent: an instance already gone counts as success, with --keep-disk too."""
    iid = user.up("keep-gone")
    destroy_behind_our_back(user, sim, iid)
    data = user.json("down", str(iid), "--keep-disk")
    assert (data["already_gone"], data["failed"], data["exit_code"]) == ([iid], [], 0), data
    assert user.json("down", "--experiment", "keep-gone", "--keep-disk")["failed"] == []

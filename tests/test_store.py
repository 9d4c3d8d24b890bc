"""The results store (issue 15): the instance ships checkpoints and results to S3-compatible storage,
then is destroyed within seconds, laptop or not.

Everything runs through the sandbox with its embedded S3 server (moto behind the sandbox's key and
fault gate), the real vastai SDK, real ssh/rsync and boto3, as a user would: `vasticlaude`
subprocesses, and after `run` no vasticlaude process at all until the assertions.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from test_lifecycle import cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME
from test_watchdog import GONE, ended_at, rent, run_file, start, status_of, wait_state, world_rec

BUCKET = "vasticlaude-results"


# ----- helpers -------------------------------------------------------------------------------
def store_info(sim) -> dict:
    return json.loads((sim.state / "sim.json").read_text())["store"]


def configure(cli, sim, prefix: str, key_id: str | None = None, **store: object) -> dict:
    """The project's config names the sandbox's S3 endpoint; the keys go in .vasticlaude/.env, as a user's would."""
    info = store_info(sim)
    folder = cli.cwd / ".vasticlaude"
    folder.mkdir(exist_ok=True)
    cfg = {"store": {"url": f"s3://{BUCKET}/{prefix}", "endpoint_url": info["endpoint_url"], **store}}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / ".env").write_text(f"VASTICLAUDE_STORE_ACCESS_KEY_ID={key_id or info['access_key_id']}\n"
                                 f"VASTICLAUDE_STORE_SECRET_ACCESS_KEY={info['secret_access_key']}\n")
    return info


def s3(sim):
    info = store_info(sim)
    return boto3.client("s3", endpoint_url=info["endpoint_url"], region_name="us-east-1",
                        aws_access_key_id=info["access_key_id"], aws_secret_access_key=info["secret_access_key"],
                        config=Config(s3={"addressing_style": "path"}))


def stored(sim, key: str) -> bytes | None:
    try:
        return s3(sim).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3(sim).exceptions.NoSuchKey:
        return None


def assert_no_store_secret(cli, sim, iid: int | None = None) -> None:
    """The store's secret is in no output, no state file, no instance file but the 0600 one, no argv."""
    import psutil
    secret = store_info(sim)["secret_access_key"]
    files = [p for p in cli.vchome.rglob("*") if p.is_file()]
    assert not any(secret in text for text in cli.outputs), "the store secret leaked into output"
    assert not any(secret.encode() in p.read_bytes() for p in files), "the store secret leaked into state"
    if iid is not None:
        home = sim.state / "instances" / str(iid) / "root"
        for path in [p for p in home.rglob("*") if p.is_file() and p.name != ".store_credentials"]:
            assert secret.encode() not in path.read_bytes(), f"the store secret is in {path}"
        for path in home.rglob(".store_credentials"):
            assert path.stat().st_mode & 0o077 == 0, "the credentials file is readable by others"
    for proc in psutil.process_iter():  # never on a command line, never in an environment
        try:
            seen = " ".join(proc.cmdline()) + " ".join(proc.environ().values())
        except (psutil.Error, OSError):
            continue
        assert secret not in seen, f"the store secret is visible in process {proc.pid}"


def laptop_processes(cli) -> list[int]:
    """vasticlaude processes of this test's user (its VASTICLAUDE_HOME), e.g. a watch or a status --wait."""
    import psutil
    found = []
    for proc in psutil.process_iter():
        try:
            line = " ".join(proc.cmdline())
            if proc.environ().get("VASTICLAUDE_HOME") == str(cli.vchome) and "vasticlaude" in line \
                    and "sim serve" not in line:  # the sandbox stands in for Vast, not for the laptop
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


JOB = ("mkdir -p $VASTICLAUDE_CHECKPOINT_DIR $VASTICLAUDE_OUTPUT_DIR; "
       "echo step-3 > $VASTICLAUDE_CHECKPOINT_DIR/ckpt.txt; echo 42 > $VASTICLAUDE_OUTPUT_DIR/answer.txt; "
       "head -c 300000 /dev/urandom > $VASTICLAUDE_OUTPUT_DIR/weights.bin; sleep 1; echo done")


# ----- must show -------------------------------------------------------------------------------
def test_unwatched_job_ships_to_the_store_and_the_instance_goes_at_once(cli, sim):
    configure(cli, sim, "t1")
    up = rent(cli, "shipped")
    iid = up["instance_id"]
    data = start(cli, "shipped", "--grace", "600", "--check", "1", "--", "sh", "-c", JOB)
    assert data["guard"]["store"] is True
    # From here on no vasticlaude process runs: only the instance's watchdog and uploader act.
    assert not laptop_processes(cli)
    wait_state(sim, iid, "shipped", GONE, 60)
    end = float(stored(sim, "t1/shipped/run/ended_at"))  # the wrapper's own record, shipped with the run files
    gone = world_rec(sim, iid)["destroyed_at"]
    assert gone - end <= 10, f"destroyed {gone - end:.1f} s after the job's exit"
    assert world_rec(sim, iid)["actual_status"] != "stopped"  # destroyed: no storage billing
    manifest = json.loads(stored(sim, "t1/shipped/manifest.json"))
    names = {f["path"]: f for f in manifest["files"]}
    assert {"outputs/answer.txt", "outputs/weights.bin", "checkpoints/ckpt.txt", "run/job.log"} <= set(names)
    assert stored(sim, "t1/shipped/outputs/answer.txt") == b"42\n"
    assert manifest["exit_code"] == "0" and names["outputs/weights.bin"]["size"] == 300000
    shipped_log = stored(sim, "t1/shipped/run/watchdog.log").decode()  # the instance's own copy went with it
    assert "store: shipping outputs, checkpoints and the run files" in shipped_log
    print(f"destroyed {gone - end:.2f} s after the job's exit")

    snap = cli.json("status", "--experiment", "shipped")  # the laptop comes back: what happened is clear
    assert snap["job"]["state"] == "exited" and snap["job"]["exit_code"] == 0 and "fault" not in snap
    assert snap["store"]["state"] == "verified" and "vasticlaude pull --experiment shipped" in snap["next"]
    pulled = cli.json("pull", "--experiment", "shipped")
    assert pulled["source"] == "store" and pulled["verified"]
    home = Path(pulled["local_path"])
    assert (home / "outputs" / "answer.txt").read_text() == "42\n"
    assert (home / "outputs" / "weights.bin").stat().st_size == 300000
    assert "done" in (home / "run" / "job.log").read_text()
    cost = cli.json("cost", "--experiment", "shipped")
    [exp] = cost["experiments"]
    assert exp["stored_bytes"] == manifest["bytes"] > 300000
    assert "in the results store" in cli.run("cost", "--experiment", "shipped").stdout
    report = Path(cli.json("report", "--experiment", "shipped", "--offline")["report"]).read_text()
    assert "| Results store |" in report and "s3://vasticlaude-results/t1" in report
    assert_no_store_secret(cli, sim, iid)


def test_wrong_store_keys_are_refused_at_run_before_the_job_starts(cli, sim):
    configure(cli, sim, "t2", key_id="AKIAWRONGWRONGWRONG0")
    up = rent(cli, "badkeys")
    iid = up["instance_id"]
    proc = cli.run("run", "--json", "--experiment", "badkeys", "--workdir", ".", "--", "sleep", "30")
    envelope = json.loads(proc.stdout)
    assert proc.returncode == 1 and not envelope["ok"], proc.stdout + proc.stderr
    assert envelope["error"]["code"] == "store_denied"
    assert "InvalidAccessKeyId" in envelope["error"]["message"] and "nothing was started" in envelope["error"]["hint"]
    assert not run_file(sim, iid, "badkeys", "job_pid") and not run_file(sim, iid, "badkeys", "watchdog_pid")
    assert status_of(sim, iid) == "running"  # still yours: fix the keys and run again
    doctor = cli.run("doctor", "--json")
    [store] = [c for c in json.loads(doctor.stdout)["data"]["checks"] if c["name"] == "store"]
    assert doctor.returncode == 1 and store["status"] == "fail" and "InvalidAccessKeyId" in store["detail"]
    configure(cli, sim, "t2")  # the right keys: a probe object written and deleted from the laptop
    assert "store" in cli.json("doctor")["passed"]
    assert_no_store_secret(cli, sim, iid)
    cli.json("down", "--experiment", "badkeys")


def test_store_down_at_the_end_falls_back_to_waiting_for_a_pull(cli, sim):
    configure(cli, sim, "t3", timeout_s=3)
    up = rent(cli, "fallback")
    iid = up["instance_id"]
    start(cli, "fallback", "--grace", "120", "--check", "1", "--", "sh", "-c", "sleep 5; " + JOB)
    sim.fault("store-5xx", status=503)  # the keys were checked at run; the store dies before the end
    ended_at(sim, iid, "fallback")
    snap = None
    for _ in range(100):
        snap = cli.json("status", "--experiment", "fallback")
        if (snap.get("store") or {}).get("fallback"):
            break
        time.sleep(0.3)
    assert snap["store"]["fallback"] and snap["store"]["state"] == "failed", snap
    assert "SlowDown" in snap["store"]["message"] or "503" in snap["store"]["message"]
    assert snap["next"].startswith("the results store failed") and "vasticlaude pull --experiment fallback" in snap["next"]
    human = cli.run("status", "--experiment", "fallback").stdout
    assert "FALLBACK: waiting for a pull" in human
    log = run_file(sim, iid, "fallback", "watchdog.log")
    assert "store FAILED" in log and "falling back to waiting for a pull" in log
    assert status_of(sim, iid) == "running"  # nothing destroyed: the results are only on the instance
    pulled = cli.json("pull", "--experiment", "fallback")  # nothing lost: the pull the watchdog waits for
    assert pulled.get("source") != "store"
    assert (Path(pulled["local_path"]) / "outputs" / "answer.txt").read_text() == "42\n"
    wait_state(sim, iid, "fallback", GONE, 20)  # pulled, so the watchdog destroys it, as without a store
    assert_no_store_secret(cli, sim)


def test_host_down_mid_run_resumes_from_the_store_without_the_laptop(cli, sim, tmp_path):
    from test_recovery import STEP_S, TRAIN, result_of, step_of, wait_for
    from test_recovery import launch as launch_job
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    cli.cwd = project
    configure(cli, sim, "t4", sync_interval_s=1)
    up = launch_job(cli, "hdstore", "60", str(STEP_S))
    iid = up["instance_id"]

    def shipped_step() -> int:
        doc = stored(sim, "t4/hdstore/checkpoints/state.json")
        return json.loads(doc)["step"] if doc else 0
    wait_for(lambda: shipped_step() >= 5, timeout=60, what="a checkpoint in the store")
    at_fault = step_of(sim.state / "instances" / str(iid) / "root" / "vasticlaude" / "hdstore" / "checkpoints" / "state.json")
    sim.fault("host-down", instance=iid)

    done = cli.json("recover", "--experiment", "hdstore")
    assert done["done"] and done["to_instance"] != iid and done["checkpoint"]["source"] == "store", done["steps"]
    assert any("fetched the checkpoint from the results store" in s for s in done["steps"])
    local = project / ".vasticlaude" / "runs" / "hdstore"
    assert not (local / "checkpoints").exists()  # the laptop never held, let alone relayed, the checkpoint
    new = done["to_instance"]
    wait_state(sim, new, "hdstore", GONE, 60)  # finished, shipped, and destroyed by its own watchdog
    pulled = cli.json("pull", "--experiment", "hdstore")
    assert pulled["source"] == "store"
    total, resumed = result_of(project, "hdstore")
    assert total == 60 and resumed >= 5
    assert (at_fault - resumed) * STEP_S <= 1 + 1 + 2 * STEP_S  # at most one sync interval of work lost
    assert "resumed from step" in (local / "run" / "job.log").read_text()
    assert_no_store_secret(cli, sim, new)


def test_the_sandbox_answers_vast_connections_and_cloud_copy_with_vast_shapes(sim):
    """vastai 1.9.1's own SDK: show_connections, cloud_copy both ways; an instance key may not copy."""
    from vastai import VastAI
    iid, _ = sim.rent()
    try:
        sim.wait_status(iid, "running")
        sdk = sim.sdk()
        [conn] = sdk.show_connections()
        assert conn["cloud_type"] == "s3" and {"id", "name"} <= set(conn)
        home = sim.state / "instances" / str(iid) / "root"
        (home / "results").mkdir()
        (home / "results" / "a.txt").write_text("alpha\n")
        sdk.cloud_copy(src="/root/results", dst=f"{BUCKET}/copied", instance=str(iid), connection=str(conn["id"]),
                       transfer="Instance to Cloud")
        deadline = time.monotonic() + 30
        while "Finished" not in (sim.instance(iid) or {}).get("status_msg", "") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stored(sim, "copied/a.txt") == b"alpha\n"
        sdk.cloud_copy(src=f"{BUCKET}/copied", dst="/workspace/back", instance=str(iid), connection=str(conn["id"]),
                       transfer="Cloud To Instance")
        deadline = time.monotonic() + 30
        while not (home / "workspace" / "back" / "a.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (home / "workspace" / "back" / "a.txt").read_text() == "alpha\n"
        world = json.loads((sim.state / "world.json").read_text())
        instance_key = world["instances"][str(iid)]["instance_api_key"]
        with pytest.raises(Exception):  # the instance's own key may only start, stop or destroy it
            VastAI(api_key=instance_key, server_url=sim.url, retry=1).cloud_copy(
                src="/root/results", dst=f"{BUCKET}/x", instance=str(iid), connection=str(conn["id"]))
    finally:
        sim.vastai("destroy", "instance", str(iid), "-y")


def test_the_sandbox_store_keeps_its_objects_and_port_across_restarts(tmp_path):
    """A bucket keeps what it was given: after `sim stop` (or the idle stop) and start, and after a
    kill -9 once the save has run, the objects come back with their bytes, content type and metadata,
    on the same endpoint; the save's own requests pass a fault that refuses everyone else."""
    from simkit import scratch
    with scratch("vcsim-store-", "--time-scale", "0") as (sim, _):
        endpoint = store_info(sim)["endpoint_url"]
        s3(sim).put_object(Bucket=BUCKET, Key="exp/outputs/a.txt", Body=b"alpha\n", ContentType="text/plain",
                           Metadata={"sha256": "abc"})
        sim.stop()  # at once: the stop saves what the last write left
        sim.start("--time-scale", "0")
        assert store_info(sim)["endpoint_url"] == endpoint
        got = s3(sim).get_object(Bucket=BUCKET, Key="exp/outputs/a.txt")
        assert got["Body"].read() == b"alpha\n" and got["ContentType"] == "text/plain" and got["Metadata"] == {"sha256": "abc"}

        s3(sim).put_object(Bucket=BUCKET, Key="exp/checkpoints/b.bin", Body=bytes(range(256)) * 4)
        s3(sim).delete_object(Bucket=BUCKET, Key="exp/outputs/a.txt")
        sim.fault("store-denied")  # everyone else is refused from now on; the save is not
        manifest = sim.state / "objectstore" / "objects" / "manifest.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [e["key"] for e in json.loads(manifest.read_text())] != ["exp/checkpoints/b.bin"]:
            time.sleep(0.2)
        sim.kill9()
        sim.start("--time-scale", "0")
        listed = s3(sim).list_objects_v2(Bucket=BUCKET).get("Contents", [])
        assert [o["Key"] for o in listed] == ["exp/checkpoints/b.bin"]
        assert stored(sim, "exp/checkpoints/b.bin") == bytes(range(256)) * 4

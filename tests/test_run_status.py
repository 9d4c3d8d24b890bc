"""run → status → logs on the sandbox, as Claude runs them; the job outlives every local process."""
from __future__ import annotations

import json
import subprocess
import time

from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME

TRAIN = r'''
import json, os, sys, time
ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
ckpt = os.path.join(ckpt_dir, "state.json")
start = json.load(open(ckpt))["step"] if os.environ["VASTICLAUDE_RESUME"] == "1" else 0
total = int(sys.argv[1]) if len(sys.argv) > 1 else 30
for step in range(start + 1, total + 1):
    time.sleep(0.1)
    print(f"epoch 1/1 step {step}/{total} loss={1.0 / step:.4f}", flush=True)
    if step % 10 == 0:
        json.dump({"step": step}, open(ckpt + ".tmp", "w")); os.replace(ckpt + ".tmp", ckpt)
open(os.path.join(out_dir, "result.txt"), "w").write(f"done from {start}\n")
'''


def start(cli, experiment: str, *cmd: str, rc: int = 0) -> dict:
    """`vasticlaude run --json --experiment X -- CMD` (flags must come before the `--`)."""
    proc = cli.run("run", "--json", "--experiment", experiment, "--", *cmd)
    assert proc.returncode == rc, proc.stderr
    return json.loads(proc.stdout)["data"]


def put_code(cli, up: dict, experiment: str) -> None:
    ssh = up["ssh"]
    code = f"mkdir -p vasticlaude/{experiment}/code && cat > vasticlaude/{experiment}/code/train.py"
    subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-i", str(cli.vchome / "ssh" / "id_ed25519"), "-p", str(ssh["port"]), f"root@{ssh['host']}", code],
                   input=TRAIN.encode(), check=True, timeout=30)


def test_run_status_wait_logs(cli, sim):
    up = cli.json("up", "--experiment", "train", "--image", IMAGE, "--disk", "8")
    put_code(cli, up, "train")
    # 160 steps of 0.1 s: the job still runs when `status --wait` starts, even on a busy machine
    started = start(cli, "train", "python3", "train.py", "160")
    assert started["state"] == "running" and started["instance_id"] == up["instance_id"]

    busy = cli.run("run", "--experiment", "train", "--", "python3", "train.py")
    assert busy.returncode == 1 and "still going" in busy.stderr

    time.sleep(1.5)
    snap = cli.json("status", "--experiment", "train")
    assert snap["job"]["state"] == "running" and snap["instance"]["status"] == "running"
    assert snap["progress"]["step"].endswith("/160") and "loss" in snap["progress"]["metrics"]
    assert snap["log_tail"] and snap["gpu"]["count"] == 1 and snap["disk"]["size_gb"] > 0
    human = cli.run("status", "--experiment", "train")
    assert human.returncode == 0 and len(human.stdout.encode()) <= 1500 and "next:" in human.stdout

    sim.fault("ssh-drop", instance=up["instance_id"])  # every connection drops: the job must not notice
    done = cli.run("status", "--experiment", "train", "--wait", "--interval", "0.5", "--timeout", "60", "--json")
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)["data"]
    assert snap["job"]["state"] == "exited" and snap["job"]["exit_code"] == 0
    assert snap["job"]["elapsed_s"] >= 16
    assert "vasticlaude: train: " in done.stderr and "train: " not in done.stdout  # progress lines: stderr only

    logs = cli.json("logs", "--experiment", "train", "-n", "50")
    assert any("step 160/160" in line for line in logs["lines"]) and "ended" in logs["lines"][-1]
    assert cli.json("logs", "--experiment", "train", "-n", "3", "--grep", "step 3")["lines"]


def test_commands_that_fail_at_once(cli):
    up = cli.json("up", "--experiment", "oops", "--image", IMAGE, "--disk", "8")
    put_code(cli, up, "oops")
    data = start(cli, "oops", "no-such-command", "--flag", rc=1)
    assert data["exit_code"] == 127
    assert any("not found" in line for line in data["log_tail"])
    failing = start(cli, "oops", "python3 -c 'import sys; sys.exit(3)'", rc=1)
    assert failing["state"] == "exited" and failing["exit_code"] == 3
    status = cli.json("status", "--experiment", "oops")
    assert status["job"]["state"] == "exited" and "failed" in status["next"]


def test_resume_from_checkpoint_after_a_kill(cli, sim):
    up = cli.json("up", "--experiment", "resume", "--image", IMAGE, "--disk", "8")
    put_code(cli, up, "resume")
    start(cli, "resume", "python3", "train.py", "200")
    time.sleep(2.5)  # past step 10: a checkpoint exists
    row = sim.instance(up["instance_id"])
    sim.ensure_ssh_key()
    kill = sim.ssh(row, "kill -TERM $(cat vasticlaude/resume/run/wrapper_pid)")
    assert kill.returncode == 0
    time.sleep(0.5)
    snap = cli.json("status", "--experiment", "resume")
    assert snap["job"]["state"] == "killed" and snap["job"]["signal"] == "TERM"
    start(cli, "resume", "python3", "train.py", "25")
    waited = cli.json("status", "--experiment", "resume", "--wait", "--interval", "0.5", "--timeout", "60")
    assert waited["job"]["exit_code"] == 0
    result = sim.ssh(row, "cat vasticlaude/resume/outputs/result.txt").stdout
    assert result.startswith("done from ") and int(result.split()[-1]) >= 10


FILL = r'''
import os
os.makedirs("out", exist_ok=True)
with open(os.path.join(os.environ["VASTICLAUDE_OUTPUT_DIR"], "partial.txt"), "w") as f:
    f.write("written before the disk filled\n")
chunk = b"x" * (1 << 20)
with open("big.bin", "wb") as f:
    for i in range(400):
        f.write(chunk); f.flush()
        import time; time.sleep(0.01)
'''


def test_a_job_that_fills_the_disk_is_said_and_what_exists_can_be_pulled(cli, sim, tmp_path):
    up = cli.json("up", "--experiment", "full", "--image", IMAGE, "--disk", "0.1")
    ssh = up["ssh"]
    subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-i", str(cli.vchome / "ssh" / "id_ed25519"), "-p", str(ssh["port"]), f"root@{ssh['host']}",
                    "mkdir -p vasticlaude/full/code && cat > vasticlaude/full/code/fill.py"],
                   input=FILL.encode(), check=True, timeout=30)
    start(cli, "full", "python3", "fill.py")
    done = cli.run("status", "--experiment", "full", "--wait", "--interval", "0.5", "--timeout", "60", "--json")
    snap = json.loads(done.stdout)["data"]
    # the job fails writing; with the disk full the wrapper may not manage to record its exit code either
    assert done.returncode == 1 and snap["job"]["state"] in ("exited", "vanished")
    assert snap["job"].get("exit_code", 1) != 0
    assert snap["disk"]["pct"] >= 95 and snap["fault"]["kind"] == "disk_full" and snap["fault"]["evidence"]
    assert "vasticlaude recover" in snap["next"] and "larger disk" in snap["next"]
    # (its traceback cannot reach job.log either: the log lives on the same full disk)
    pulled = cli.json("pull", "--experiment", "full", "--dest", str(tmp_path / "back"))
    assert pulled["verified"] and (tmp_path / "back" / "outputs" / "partial.txt").read_text().startswith("written")


def test_huge_lines_and_binary_output_stay_bounded(cli):
    up = cli.json("up", "--experiment", "noisy", "--image", IMAGE, "--disk", "8")
    put_code(cli, up, "noisy")
    start(cli, "noisy", "python3 -c \"import os,sys; print('x'*200000); sys.stdout.flush(); "
                        "os.write(1, bytes(range(256))*50); print(); print('loss=0.5 step 1/1')\"")
    time.sleep(1.5)
    status = cli.run("status", "--experiment", "noisy")
    assert status.returncode == 0 and len(status.stdout.encode()) <= 1500
    logs = cli.json("logs", "--experiment", "noisy", "-n", "10")
    assert all(len(line) <= 400 for line in logs["lines"])
    assert not any(ch in "".join(logs["lines"]) for ch in "\x00\x07\x1b")

"""Real `ssh` and `rsync` (the system binaries) into running sandbox instances."""
from __future__ import annotations

import filecmp
import os
import subprocess
import time

import pytest


@pytest.fixture(scope="module")
def running(sim):
    sim.ensure_ssh_key()
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    yield iid, row
    if sim.instance(iid):
        sim.vastai("destroy", "instance", str(iid), "-y")


def test_vast_env_inside_the_instance(sim, running):
    iid, row = running
    out = sim.ssh(row, "echo $CONTAINER_ID $VAST_CONTAINERLABEL $GPU_COUNT $PUBLIC_IPADDR $VAST_TCP_PORT_22; "
                       "test -n \"$CONTAINER_API_KEY\" && echo has-key; pwd; whoami >/dev/null && echo $HOME")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].split() == [str(iid), f"C.{iid}", str(row["num_gpus"]), "127.0.0.1",
                                row["ports"]["22/tcp"][0]["HostPort"]]
    assert lines[1] == "has-key" and lines[2] == lines[3]


def test_proxy_route_reaches_the_same_instance(sim, running):
    iid, row = running
    cmd = sim.ssh_cmd(row, direct=False)
    out = subprocess.run([*cmd, "echo $CONTAINER_ID"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == str(iid), out.stderr


def test_exit_codes_and_nvidia_smi(sim, running):
    _, row = running
    assert sim.ssh(row, "exit 7").returncode == 7
    smi = sim.ssh(row, "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits")
    name, mem = smi.stdout.strip().split("\n")[0].split(", ")
    assert name.endswith(row["gpu_name"]) and int(mem) == row["gpu_ram"]  # "NVIDIA GeForce RTX 3090"


def test_rsync_round_trip_is_byte_identical(sim, running, tmp_path):
    _, row = running
    src = tmp_path / "src dir"
    (src / "sub folder").mkdir(parents=True)
    (src / "sub folder" / "big file.bin").write_bytes(os.urandom(3 << 20))
    (src / "small.txt").write_text("héllo\n")
    (src / "link").symlink_to("small.txt")
    ssh = " ".join(sim.ssh_cmd(row)[:-1])
    target = "root@127.0.0.1:"
    up = subprocess.run(["rsync", "-az", "-e", ssh, f"{src}/", target + "project/"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = subprocess.run(["rsync", "-az", "-e", ssh, target + "project/", f"{back}/"], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert (back / "link").is_symlink()
    cmp = filecmp.dircmp(src, back)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert filecmp.cmp(src / "sub folder" / "big file.bin", back / "sub folder" / "big file.bin", shallow=False)


def test_detached_process_survives_the_session(sim, running):
    _, row = running
    sim.ssh(row, "setsid nohup sh -c 'sleep 2; echo done > detached.txt' >/dev/null 2>&1 < /dev/null &")
    sim.ssh(row, "(sleep 2; echo done > attached.txt) >/dev/null 2>&1 &")
    time.sleep(3.5)
    files = sim.ssh(row, "ls").stdout.split()
    assert "detached.txt" in files
    assert "attached.txt" not in files  # a child left in the session's group dies with it


def test_self_destroy_from_inside(sim):
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    out = sim.ssh(row, "vastai destroy instance $CONTAINER_ID -y --api-key $CONTAINER_API_KEY", timeout=60)
    assert out.returncode in (0, 255), out.stderr  # the session may be cut as the instance goes
    deadline = time.monotonic() + 10
    while sim.instance(iid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sim.instance(iid) is None


def test_instance_key_may_not_touch_other_instances(sim, running):
    from vastai import VastAI
    other, _ = sim.rent()
    key = sim.sdk().show_instance(id=other)  # the row never carries the key: read it from create instead
    assert "instance_api_key" not in key
    created = sim.sdk().create_instance(id=sim.sdk().search_offers(query="num_gpus=1", order="dph", limit=1)[0]["id"],
                                        image="vastai/base:0.0.2", disk=4)
    restricted = VastAI(api_key=created["instance_api_key"], server_url=sim.url, retry=1)
    import requests
    with pytest.raises(requests.HTTPError):
        restricted.destroy_instance(id=running[0])
    with pytest.raises(requests.HTTPError):
        restricted.show_instances()
    assert restricted.stop_instance(id=created["new_contract"])["success"]
    assert restricted.destroy_instance(id=created["new_contract"])["success"]
    sim.sdk().destroy_instance(id=other)

"""Each sandbox fault, observed through the official CLI/SDK or real ssh."""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import requests


@pytest.fixture(autouse=True)
def _clear_faults(sim):
    yield
    sim.admin("DELETE", "/sim/faults")
    for row in sim.sdk().show_instances():
        sim.sdk().destroy_instance(id=row["id"])


def cheapest(sim, n=3, query="num_gpus=1", kind="on-demand"):
    return sim.sdk().search_offers(query=query, order="dph", limit=n, type=kind)


def test_offer_vanishes_when_rented(sim):
    offer = cheapest(sim)[0]
    sim.fault("offer-vanish", offer=offer["id"])
    proc = sim.vastai("create", "instance", str(offer["id"]), "--image", "x", "--raw", check_error=False)
    err = json.loads(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and err["status_code"] == 404 and "not available" in err["msg"]
    assert offer["id"] not in [o["id"] for o in cheapest(sim, 50)]


def test_offer_busy_with_and_without_cancel_unavail(sim):
    offer = cheapest(sim)[0]
    sim.fault("offer-busy", offer=offer["id"])
    with pytest.raises(requests.HTTPError) as info:
        sim.sdk().create_instance(id=offer["id"], image="x", disk=4, cancel_unavail=True)
    assert info.value.response.status_code == 410
    iid = sim.sdk().create_instance(id=offer["id"], image="x", disk=4)["new_contract"]
    row = sim.instance(iid)
    assert row["actual_status"] == "stopped" and row["intended_status"] == "running"


def test_stuck_in_loading(sim):
    offer = cheapest(sim)[0]
    sim.fault("stuck-loading", offer=offer["id"])
    iid = sim.sdk().create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4)["new_contract"]
    sim.wait_status(iid, "loading")
    time.sleep(1.0)
    assert sim.instance(iid)["actual_status"] == "loading"


@pytest.mark.parametrize("mode", ["exited", "created"])
def test_fails_to_start_with_an_oci_error(sim, mode):
    offer = cheapest(sim)[0]
    sim.fault("fail-start", machine=offer["machine_id"], mode=mode)
    iid = sim.sdk().create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4)["new_contract"]
    time.sleep(0.6)
    row = sim.instance(iid)
    assert row["actual_status"] == mode
    assert "OCI runtime create failed" in row["status_msg"]


def test_preemption_kills_processes_keeps_data_and_resumes_on_a_winning_bid(sim):
    offer = cheapest(sim, kind="bid")[0]
    bid = round(offer["min_bid"] * 1.05, 4)
    iid = sim.sdk().create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4, ssh=True,
                                    direct=True, bid_price=bid)["new_contract"]
    row = sim.wait_status(iid, "running")
    # `ps` on an instance sees every process of this machine (the sandbox has no PID namespace),
    # so the process to look for must be this test's own, not any `sleep 300` of another sandbox.
    nap = f"sleep 300.{uuid.uuid4().int % 10**9:09d}"
    sim.ssh(row, f"echo keep > data.txt; setsid nohup {nap} >/dev/null 2>&1 < /dev/null &")
    deadline = time.monotonic() + 10
    while nap not in sim.ssh(row, "ps -eo args").stdout:  # it runs (so its absence later means killed)
        assert time.monotonic() < deadline, f"{nap} never started"
        time.sleep(0.1)
    sim.fault("preempt", instance=iid, bid=bid * 2)
    row = sim.instance(iid)
    assert (row["actual_status"], row["intended_status"]) == ("stopped", "running")
    assert subprocess.run(sim.ssh_cmd(row, direct=False)[:-1] + ["root@127.0.0.1", "true"],
                          capture_output=True, timeout=30).returncode == 255
    time.sleep(0.5)
    assert sim.instance(iid)["actual_status"] == "stopped"  # still outbid
    sim.vastai("change", "bid", str(iid), "--price", str(bid * 2.5))
    row = sim.wait_status(iid, "running")
    assert sim.ssh(row, "cat data.txt").stdout.strip() == "keep"
    assert nap not in sim.ssh(row, "ps -eo args").stdout


def test_host_death(sim):
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    sim.fault("host-down", instance=iid)
    after = sim.instance(iid)
    assert after["actual_status"] == "offline"
    assert sim.ssh(row, "true", timeout=30).returncode == 255


def test_container_exit(sim):
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    sim.fault("container-exit", instance=iid)
    assert sim.instance(iid)["actual_status"] == "exited"
    assert sim.ssh(row, "true", timeout=30).returncode == 255


def test_dropped_ssh_connections(sim):
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    session = subprocess.Popen([*sim.ssh_cmd(row), "sleep 30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    sim.fault("ssh-drop", instance=iid, refuse=1)
    assert session.wait(timeout=10) == 255
    assert sim.ssh(row, "true").returncode == 255          # refused once
    assert sim.ssh(row, "echo back").stdout.strip() == "back"  # then it works again


def test_429_burst_with_retry_after_is_retried_by_the_cli(sim):
    sim.fault("http", status=429, count=2, retry_after=1, path="bundles")
    start = time.monotonic()
    offers = sim.vastai_json("search", "offers", "num_gpus=1", "--limit", "2")
    assert offers and time.monotonic() - start >= 2.0


def test_429_without_retry_after_and_5xx(sim):
    sim.fault("http", status=429, count=5, path="instances")
    proc = sim.vastai("show", "instances", "--raw", check_error=False)
    err = json.loads(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0 and err["status_code"] == 429
    sim.admin("DELETE", "/sim/faults")
    sim.fault("http", status=500, count=1, path="users")
    proc = sim.vastai("show", "user", "--raw", check_error=False)
    assert json.loads(proc.stderr.strip().splitlines()[-1])["status_code"] == 500
    sim.fault("http", status=503, count=1, path="users")
    assert sim.vastai_json("show", "user")["balance"] > 0  # 503 is retried by the client


def test_ghost_create_leaves_an_instance(sim):
    offer = cheapest(sim)[0]
    sim.fault("http", status=502, count=3, path="asks", ghost=True)
    with pytest.raises(requests.HTTPError):
        sim.sdk().create_instance(id=offer["id"], image="x", disk=4, label="ghost-1")
    labels = [r["label"] for r in sim.sdk().show_instances()]
    assert "ghost-1" in labels


def test_slow_api(sim):
    sim.fault("slow", delay=1.0, count=1, path="users")
    start = time.monotonic()
    sim.sdk().show_user()
    assert time.monotonic() - start >= 1.0

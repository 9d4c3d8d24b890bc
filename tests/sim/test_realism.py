"""What the real Vast does that a clean emulator forgets (sim/realism.py): each behaviour alone,
then the whole realism profile, seen through the real vastai SDK/CLI, real ssh and rsync.

Sources of each behaviour: README.md, "Faults on demand", and realism.SOURCES.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import pytest
import requests
from simkit import SSH_OPTS

VC = [sys.executable, "-m", "vasticlaude"]
IMAGE = "vastai/base:0.0.2"


@pytest.fixture(autouse=True)
def _clean(sim):
    yield
    sim.reset()


# ----- helpers --------------------------------------------------------------------------------
def offers(sim, n=3, query="num_gpus=1", kind="on-demand"):
    return sim.sdk().search_offers(query=query, order="dph", limit=n, type=kind)


def rent(sim, offer=None, **kw) -> tuple[int, dict]:
    """An instance with --ssh --direct, running; returns (id, row)."""
    sim.ensure_ssh_key()
    offer = offer or offers(sim)[0]
    iid = sim.sdk().create_instance(id=offer["id"], image=IMAGE, disk=8, ssh=True, direct=True, **kw)["new_contract"]
    return iid, sim.wait_status(iid, "running")


def http(sim, method: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(sim.url + path, method=method, headers={"Authorization": f"Bearer {sim.api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ssh_to(sim, host: str, port, command: str, timeout: float = 30, connect: int = 10) -> subprocess.CompletedProcess:
    opts = [o if o != "ConnectTimeout=10" else f"ConnectTimeout={connect}" for o in SSH_OPTS]
    return subprocess.run(["ssh", *opts, "-i", str(sim.ensure_ssh_key()), "-p", str(port), f"root@{host}", command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def direct_port(row: dict) -> str:
    return row["ports"]["22/tcp"][0]["HostPort"]


def charges_of(sim, iid: int) -> dict:
    rows = sim.admin("GET", "/api/v0/charges/")["results"]
    row = next(r for r in rows if r["source"] == f"instance-{iid}")
    return {item["type"]: item for item in row["items"]}


def watch(sim, iid: int, until: str, timeout: float = 20) -> list[tuple[str, str]]:
    """The (actual_status, status_msg) pairs seen until `until` is reached."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = sim.instance(iid)
        pair = (row["actual_status"], row["status_msg"])
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if pair[0] == until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{iid} never reached {until}: {seen}")


# ----- 1. public_ipaddr with a newline ---------------------------------------------------------
def test_public_ipaddr_carries_a_newline_the_sdk_strips_only_in_lists(sim):
    iid, row = rent(sim)
    sim.fault("ip-whitespace")
    one = sim.sdk().show_instance(id=iid)
    assert one["public_ipaddr"] == "127.0.0.1\n"
    assert sim.vastai_json("show", "instance", str(iid))["public_ipaddr"] == "127.0.0.1\n"
    listed = next(r for r in sim.sdk().show_instances() if r["id"] == iid)
    assert listed["public_ipaddr"] == "127.0.0.1"  # vastai strips strings of list rows only
    assert ssh_to(sim, one["public_ipaddr"], direct_port(one), "true").returncode == 255
    assert ssh_to(sim, one["public_ipaddr"].strip(), direct_port(one), "true").returncode == 0


# ----- 2. the SSH-key list wrapped in an object ------------------------------------------------
def test_ssh_key_list_answered_as_an_object(sim):
    sim.ensure_ssh_key()
    assert isinstance(sim.vastai_json("show", "ssh-keys"), list)
    sim.fault("ssh-keys-wrapped")
    shown = sim.vastai_json("show", "ssh-keys")
    assert isinstance(shown, dict) and shown["ssh_keys"][0]["public_key"].startswith("ssh-ed25519")
    assert isinstance(sim.sdk().show_ssh_keys(), dict)


# ----- 3. a destroyed instance: 404, or a row that says so -------------------------------------
def test_destroyed_instance_answers_404_no_such_instance(sim):
    sim.fault("destroyed-404")
    iid = sim.sdk().create_instance(id=offers(sim)[0]["id"], image=IMAGE, disk=4)["new_contract"]
    sim.sdk().destroy_instance(id=iid)
    with pytest.raises(requests.HTTPError) as info:
        sim.sdk().show_instance(id=iid)
    assert info.value.response.status_code == 404
    assert info.value.response.json()["error"] == "no_such_instance"
    proc = sim.vastai("show", "instance", str(iid), "--raw", check_error=False)
    assert proc.returncode == 0 and json.loads(proc.stderr.strip().splitlines()[-1])["status_code"] == 404


@pytest.mark.parametrize("mode", ["destroyed", "terminated"])
def test_destroyed_instance_as_a_row_reading_destroyed(sim, mode):
    sim.fault("destroyed-404", mode=mode)
    iid = sim.sdk().create_instance(id=offers(sim)[0]["id"], image=IMAGE, disk=4)["new_contract"]
    sim.sdk().destroy_instance(id=iid)
    row = sim.sdk().show_instance(id=iid)
    assert (row["actual_status"], row["intended_status"]) == (mode, mode)
    assert iid not in [r["id"] for r in sim.sdk().show_instances()]


# ----- 4. direct SSH dead while the proxy works, and the opposite -------------------------------
def test_direct_route_null_while_the_proxy_works(sim):
    iid, row = rent(sim)
    old_direct = direct_port(row)
    sim.fault("direct-ssh-dead", instance=iid)
    now = sim.sdk().show_instance(id=iid)
    assert "22/tcp" in now["ports"] and now["ports"]["22/tcp"] is None
    assert sim.vastai("ssh-url", str(iid)).stdout.strip() == f"ssh://root@127.0.0.1:{now['ssh_port']}"
    assert ssh_to(sim, now["ssh_host"], now["ssh_port"], "echo $CONTAINER_ID").stdout.strip() == str(iid)
    refused = ssh_to(sim, "127.0.0.1", old_direct, "true")
    assert refused.returncode == 255 and "refused" in refused.stderr


def test_direct_route_blackholed_while_the_proxy_works(sim):
    iid, row = rent(sim)
    sim.fault("direct-ssh-dead", instance=iid, mode="blackhole")
    now = sim.sdk().show_instance(id=iid)
    assert direct_port(now) == direct_port(row)  # still advertised
    start = time.monotonic()
    hung = ssh_to(sim, "127.0.0.1", direct_port(now), "true", connect=2)
    assert hung.returncode == 255 and time.monotonic() - start >= 1.5 and "timed out" in hung.stderr
    assert ssh_to(sim, now["ssh_host"], now["ssh_port"], "echo ok").stdout.strip() == "ok"


@pytest.mark.parametrize("mode", ["tls", "refuse"])
def test_proxy_route_dead_while_direct_works(sim, mode):
    iid, row = rent(sim)
    sim.fault("proxy-ssh-dead", instance=iid, mode=mode)
    broken = ssh_to(sim, row["ssh_host"], row["ssh_port"], "true", connect=5)
    assert broken.returncode == 255
    assert ssh_to(sim, "127.0.0.1", direct_port(row), "echo ok").stdout.strip() == "ok"
    assert sim.sdk().ssh_url(id=iid) == f"ssh://root@127.0.0.1:{row['ssh_port']}"  # the SDK picks the dead one
    assert sim.vastai("ssh-url", str(iid)).stdout.strip() == f"ssh://root@127.0.0.1:{direct_port(row)}"


# ----- 5 and 6. the status vocabulary, and outages that end -----------------------------------------
def test_frozen_pauses_processes_keeps_billing_the_gpu_then_thaws(sim):
    iid, row = rent(sim)
    ticks = sim.state / "instances" / str(iid) / "root" / "ticks"
    sim.ssh(row, "setsid nohup sh -c 'while :; do echo x >> ticks; sleep 0.1; done' >/dev/null 2>&1 < /dev/null &")
    time.sleep(0.5)
    gpu_before = charges_of(sim, iid)["gpu"]["amount"]
    sim.fault("frozen", instance=iid, seconds=4)
    frozen = sim.instance(iid)
    assert (frozen["actual_status"], frozen["intended_status"]) == ("frozen", "frozen")
    size = ticks.stat().st_size
    assert ssh_to(sim, "127.0.0.1", direct_port(row), "true", connect=1).returncode == 255
    time.sleep(0.8)
    assert ticks.stat().st_size == size  # paused with memory: nothing runs
    assert charges_of(sim, iid)["gpu"]["amount"] > gpu_before  # ...and the GPU still bills
    sim.wait_status(iid, "running")
    time.sleep(0.5)
    assert ticks.stat().st_size > size  # the same process goes on
    assert sim.ssh(row, "echo ok").stdout.strip() == "ok"


def test_reboot_passes_through_rebooting(sim):
    iid, _ = rent(sim)
    sim.fault("rebooting", instance=iid, seconds=1)
    seen = watch(sim, iid, "running")
    assert seen[0][0] == "rebooting" and [s for s, _ in seen][-1] == "running"
    sim.fault("rebooting", seconds=2)  # every API reboot now reads `rebooting` first
    assert sim.sdk().reboot_instance(id=iid)["success"]
    assert watch(sim, iid, "running")[0][0] == "rebooting"


def test_start_waits_in_scheduling_while_the_gpu_is_in_use(sim):
    iid, _ = rent(sim)
    sim.sdk().stop_instance(id=iid)
    sim.wait_status(iid, "stopped")
    sim.fault("scheduling", instance=iid, seconds=1.5)
    sim.sdk().start_instance(id=iid)
    row = sim.instance(iid)
    assert row["actual_status"] == "scheduling"
    assert row["status_msg"] == "Attempting to schedule your instance. Your GPU is currently in use."
    start = time.monotonic()
    sim.wait_status(iid, "running")
    assert time.monotonic() - start >= 1.0


def test_unknown_is_a_heartbeat_gap_that_ends(sim):
    iid, row = rent(sim)
    sim.fault("unknown", instance=iid, seconds=1.5)
    assert sim.instance(iid)["actual_status"] == "unknown"
    assert sim.ssh(row, "echo alive").stdout.strip() == "alive"  # the box runs on
    sim.wait_status(iid, "running")


@pytest.mark.parametrize("kind,status", [("host-down", "offline"), ("container-exit", "exited")])
def test_offline_and_exited_then_back_running(sim, kind, status):
    iid, row = rent(sim)
    sim.ssh(row, "echo kept > data.txt")
    sim.fault(kind, instance=iid, seconds=3)
    assert sim.instance(iid)["actual_status"] == status
    assert ssh_to(sim, "127.0.0.1", direct_port(row), "true").returncode == 255
    seen = watch(sim, iid, "running")
    assert seen[0][0] == status
    back = sim.instance(iid)
    assert sim.ssh(back, "cat data.txt").stdout.strip() == "kept"


# ----- 7. an insufficient bid: error, and a stopped instance that bills storage --------------------
def test_insufficient_bid_creates_a_stopped_instance_and_an_error(sim):
    sim.fault("bid-too-low")
    first, second = offers(sim, 2, kind="bid")
    bid = round(first["min_bid"] * 1.05, 4)  # above the advertised floor, below the winning bid
    with pytest.raises(requests.HTTPError) as info:
        sim.sdk().create_instance(id=first["id"], image=IMAGE, disk=4, bid_price=bid)
    body = info.value.response.json()
    assert info.value.response.status_code == 400 and body["error"] == "insufficient_bid"
    iid = body["new_contract"]
    row = sim.instance(iid)
    assert (row["actual_status"], row["intended_status"], row["is_bid"]) == ("stopped", "running", True)
    time.sleep(1.3)
    billed = {r["description"].split()[2]: r["quantity"] for r in http(sim, "GET", "/api/v0/users/me/invoices")[1]
              ["invoices"] if r.get("instance_id") == iid}
    assert billed["disk"] > 0 and billed["gpu"] == 0  # storage bills (hours), the GPU not
    # The CLI shows only the error; the contract is left behind, stopped.
    proc = sim.vastai("create", "instance", str(second["id"]), "--image", IMAGE, "--disk", "4",
                      "--bid_price", str(round(second["min_bid"] * 1.05, 4)), "--raw", check_error=False)
    assert proc.returncode == 0 and json.loads(proc.stderr.strip().splitlines()[-1])["status_code"] == 400
    assert second["id"] in [r["bundle_id"] for r in sim.sdk().show_instances() if r["actual_status"] == "stopped"]
    sim.vastai("change", "bid", str(iid), "--price", str(round(first["min_bid"] * 1.3, 4)))
    sim.wait_status(iid, "running")


# ----- 8. long boots with progress, and boot failures ---------------------------------------------
def test_long_boot_shows_pull_progress(sim):
    offer = offers(sim)[0]
    sim.fault("slow-boot", offer=offer["id"], seconds=2.5)
    start = time.monotonic()
    iid = sim.sdk().create_instance(id=offer["id"], image="pytorch/pytorch:latest", disk=8)["new_contract"]
    seen = watch(sim, iid, "running")
    progress = [msg for status, msg in seen if status == "loading" and "Downloading" in msg]
    assert len(progress) >= 3 and progress[0] != progress[-1] and "GB/7.90GB" in progress[-1]
    assert time.monotonic() - start >= 2.5


def test_boot_failure_manifest_not_found_stays_created(sim):
    offer = offers(sim)[0]
    sim.fault("fail-start", offer=offer["id"], mode="manifest")
    iid = sim.sdk().create_instance(id=offer["id"], image="nosuch/image:v9", disk=4)["new_contract"]
    time.sleep(0.6)
    row = sim.instance(iid)
    assert row["actual_status"] == "created"
    assert row["status_msg"] == ("Error response from daemon: manifest for nosuch/image:v9 not found: "
                                 "manifest unknown: manifest unknown")


def test_boot_failure_docker_build_is_loading_with_intended_stopped(sim):
    offer = offers(sim)[0]
    sim.fault("fail-start", offer=offer["id"], mode="docker-build")
    iid = sim.sdk().create_instance(id=offer["id"], image=IMAGE, disk=4)["new_contract"]
    time.sleep(0.6)
    row = sim.instance(iid)
    assert (row["actual_status"], row["intended_status"]) == ("loading", "stopped")
    assert row["status_msg"].startswith("docker_build() error")


# ----- 9. bandwidth billing --------------------------------------------------------------------------
def test_bandwidth_is_billed_per_byte_at_the_offers_rates(fresh_sim, tmp_path):
    market = tmp_path / "market.json"
    market.write_text(json.dumps([{"id": 501, "machine_id": 77, "gpu_name": "RTX 4090", "num_gpus": 1,
                                   "gpu_ram": 24564, "dph_base": 0.4, "inet_up_cost": 2.0, "inet_down_cost": 1.0}]))
    sim = fresh_sim.start("--time-scale", "0", "--market", str(market))
    offer = sim.sdk().search_offers(query="num_gpus=1", limit=1)[0]
    assert (offer["inet_up_cost"], offer["inet_down_cost"]) == (2.0, 1.0)  # $/GB, on every offer
    iid, row = rent(sim, offer)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(8 << 20))
    cmd = sim.ssh_cmd(row)
    with open(blob, "rb") as src:  # before bandwidth billing: free
        subprocess.run([*cmd, "cat > before.bin"], stdin=src, check=True, timeout=60)
    sim.fault("bandwidth-billing")
    blob.write_bytes(os.urandom(32 << 20))
    with open(blob, "rb") as src:
        subprocess.run([*cmd, "cat > up.bin"], stdin=src, check=True, timeout=60)
    down = subprocess.run([*cmd, "cat up.bin"], capture_output=True, check=True, timeout=60)
    assert len(down.stdout) == 32 << 20
    time.sleep(1.5)
    items = charges_of(sim, iid)
    gib = float(1 << 30)
    for kind, rate in (("inet_down", 1.0), ("inet_up", 2.0)):
        moved = items[kind]["metadata"]["bytes"]
        assert 32 << 20 <= moved <= (32 << 20) * 1.06, (kind, moved)
        assert items[kind]["amount"] == pytest.approx(moved / gib * rate, abs=2e-6)


# ----- 10. images without rsync/curl/pkill; df shows the host -------------------------------------
def test_minimal_image_lacks_rsync_curl_pkill(sim, tmp_path):
    iid, row = rent(sim)
    probe = "for c in rsync curl pkill ls; do command -v $c >/dev/null && echo $c; done"
    assert sim.ssh(row, probe).stdout.split() == ["rsync", "curl", "pkill", "ls"]
    sim.fault("image-minimal", instance=iid)
    assert sim.ssh(row, probe).stdout.split() == ["ls"]
    assert sim.ssh(row, "rsync --version").returncode == 127
    (tmp_path / "f.txt").write_text("x")
    push = subprocess.run(["rsync", "-a", "-e", " ".join(sim.ssh_cmd(row)[:-1]), str(tmp_path / "f.txt"),
                           "root@127.0.0.1:f.txt"], capture_output=True, text=True, timeout=60)
    assert push.returncode != 0 and "command not found" in push.stderr


def test_df_reports_the_host_disk_not_the_rented_size(sim):
    iid, row = rent(sim)
    rented = int(sim.ssh(row, "df -P -k ~ | tail -1").stdout.split()[1])
    assert rented == 8 << 20  # 8 GiB in 1K blocks: the stand-in reports the quota
    sim.fault("df-host", instance=iid)
    host = int(sim.ssh(row, "df -P -k ~ | tail -1").stdout.split()[1])
    st = os.statvfs(sim.state)
    assert host != rented and abs(host - st.f_blocks * st.f_frsize // 1024) <= 1


# ----- 11. the old v0 list answers 410 ----------------------------------------------------------------
def test_old_v0_instance_list_answers_410(sim):
    iid, _ = rent(sim)
    assert http(sim, "GET", "/api/v0/instances/")[0] == 200
    sim.fault("list-v0-gone")
    status, body = http(sim, "GET", "/api/v0/instances/")
    assert status == 410 and body["msg"] == "Use /api/v1/instances/ instead"
    assert iid in [r["id"] for r in sim.vastai_json("show", "instances")]  # vastai 1.9.1 lists through v1
    assert http(sim, "GET", f"/api/v0/instances/{iid}/?owner=me")[0] == 200  # per-id v0 routes live on


# ----- the whole profile ------------------------------------------------------------------------------
def test_realism_profile_all_together(fresh_sim, tmp_path):
    sim = fresh_sim.start("--time-scale", "0", "--seed", "3", "--realism")
    env = {**sim.env(), "VASTICLAUDE_HOME": str(tmp_path / "vch")}
    status = subprocess.run([*VC, "sim", "status", "--state", str(sim.state)], capture_output=True, text=True,
                            env=env, timeout=60)
    for kind in ("ip-whitespace", "direct-ssh-dead", "bandwidth-billing", "list-v0-gone", "blips"):
        assert f"realism: {kind}" in status.stdout
    sim.ensure_ssh_key()
    assert isinstance(sim.vastai_json("show", "ssh-keys"), dict)
    assert http(sim, "GET", "/api/v0/instances/")[0] == 410
    ids = [sim.sdk().create_instance(id=o["id"], image=IMAGE, disk=8, ssh=True, direct=True)["new_contract"]
           for o in offers(sim, 8)]
    rows = [sim.wait_status(i, {"running", "created", "loading"}) for i in ids]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(r["actual_status"] != "running"
                                              and "error" not in r["status_msg"].lower() for r in rows):
        time.sleep(0.1)
        rows = [sim.instance(i) for i in ids]
    running = [r for r in rows if r["actual_status"] == "running"]
    assert running and all(r["public_ipaddr"] == "127.0.0.1\n" for r in running)
    null_direct = [r for r in running if r["ports"]["22/tcp"] is None]
    assert null_direct, "the profile leaves some instances without a direct route"
    r = null_direct[0]
    assert ssh_to(sim, r["ssh_host"], r["ssh_port"], "echo $CONTAINER_ID").stdout.strip() == str(r["id"])
    host_df = int(ssh_to(sim, r["ssh_host"], r["ssh_port"], "df -P -k ~ | tail -1").stdout.split()[1])
    assert host_df != 8 << 20
    bid_offer = offers(sim, 1, query="num_gpus=1 rentable=true", kind="bid")[0]
    with pytest.raises(requests.HTTPError) as info:
        sim.sdk().create_instance(id=bid_offer["id"], image=IMAGE, disk=4, bid_price=bid_offer["min_bid"])
    assert info.value.response.json()["error"] == "insufficient_bid"
    sim.sdk().destroy_instance(id=ids[0])
    with pytest.raises(requests.HTTPError):
        sim.sdk().show_instance(id=ids[0])
    cleared = subprocess.run([*VC, "sim", "fault", "clear", "--state", str(sim.state)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert cleared.returncode == 0 and sim.admin("GET", "/sim/state")["realism"] == {}
    again = subprocess.run([*VC, "sim", "fault", "realism", "--state", str(sim.state), "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert "list-v0-gone" in json.loads(again.stdout)["data"]["realism"]

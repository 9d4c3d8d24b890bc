"""`vasticlaude sim start|status|env|fault|stop` as a person or an agent runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

VC = [sys.executable, "-m", "vasticlaude"]


def vc(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*VC, *args], capture_output=True, text=True, env=env, timeout=120)


def test_start_status_fault_stop(tmp_path: Path):
    env = {**os.environ, "VASTICLAUDE_HOME": str(tmp_path / "home")}
    started = vc("sim", "start", "--time-scale", "0", "--json", env=env)
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)["data"]
        assert info["url"].startswith("http://127.0.0.1:")
        again = json.loads(vc("sim", "start", "--json", env=env).stdout)["data"]
        assert again["pid"] == info["pid"]  # idempotent: one sandbox per home

        exports = vc("sim", "env", env=env).stdout
        assert f"export VAST_URL={info['url']}" in exports and "VASTAI_NO_UPDATE_CHECK=1" in exports

        from vastai import VastAI
        sdk = VastAI(api_key=info["api_key"], server_url=info["url"], retry=1)
        offer = sdk.search_offers(query="num_gpus=1", order="dph", limit=1)[0]
        iid = sdk.create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4)["new_contract"]
        deadline = time.monotonic() + 20
        while sdk.show_instance(id=iid)["actual_status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)

        status = vc("sim", "status", env=env)
        assert status.returncode == 0 and str(iid) in status.stdout and "running" in status.stdout

        fault = vc("sim", "fault", "container-exit", "--instance", str(iid), "--json", env=env)
        assert json.loads(fault.stdout)["data"]["actual_status"] == "exited"
        bad = vc("sim", "fault", "nonsense", env=env)
        assert bad.returncode == 3 and "unknown fault kind" in bad.stderr
        assert vc("sim", "fault", "http", "--status", "503", "--count", "2", env=env).returncode == 0
        assert "503" in vc("sim", "status", env=env).stdout
        assert vc("sim", "fault", "clear", env=env).returncode == 0
    finally:
        stopped = vc("sim", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
    down = vc("sim", "status", env=env)
    assert down.returncode == 3 and "no sandbox is running" in down.stderr


def test_stop_leaves_no_container_process(tmp_path: Path):
    env = {**os.environ, "VASTICLAUDE_HOME": str(tmp_path / "home")}
    info = json.loads(vc("sim", "start", "--time-scale", "0", "--json", env=env).stdout)["data"]
    try:
        from vastai import VastAI
        sdk = VastAI(api_key=info["api_key"], server_url=info["url"], retry=1)
        for offer in sdk.search_offers(query="num_gpus=1", order="dph", limit=3):
            sdk.create_instance(id=offer["id"], image="x", disk=4)
        time.sleep(1.0)
        marker = json.loads((tmp_path / "home" / "sim" / "sim.json").read_text())["marker"]
    finally:
        vc("sim", "stop", env=env)
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("VAST_SIM_CONTAINER", "").startswith(marker):
                left.append(proc.pid)
        except psutil.Error:
            continue
    assert left == []


def test_sdk_execute_and_logs(sim):
    sdk = sim.sdk()
    iid, _ = sim.rent("--onstart-cmd", "echo from-onstart; echo second-line")
    sim.wait_status(iid, "running")
    time.sleep(0.3)
    assert "from-onstart" in sdk.logs(instance_id=iid, tail="10")
    sim.ssh(sim.instance(iid), "echo hi > note.txt")
    assert "note.txt" in str(sdk.execute(id=iid, command="ls"))
    sdk.destroy_instance(id=iid)


def test_the_sandbox_survives_garbage(sim):
    import random
    import urllib.error
    import urllib.request
    rng = random.Random(5)
    for _ in range(60):
        path = rng.choice(["/api/v0/bundles/", "/api/v0/asks/1/", "/api/v1/instances/", "/api/v0/instances/7/",
                           "/api/v0/ssh/", "/sim/faults", "/api/v0/instances/bid_price/3/"])
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        req = urllib.request.Request(sim.url + path, data=body if method != "GET" else None, method=method,
                                     headers={"Authorization": f"Bearer {sim.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.headers["Content-Type"] in ("application/json", "text/plain")
        except urllib.error.HTTPError as err:
            assert err.code < 500, (method, path, err.read())
            assert json.loads(err.read())["success"] is False
    assert sim.admin("GET", "/sim/health")["ok"] is True


def test_paths_with_and_without_trailing_slash_and_query_key(sim):
    for path in ("/api/v0/users/current", "/api/v0/users/current/", "/api/v1/instances", "/api/v1/instances/",
                 "/api/v0/ssh", "/api/v0/ssh/"):
        assert sim.admin("GET", path) is not None
    import urllib.request
    with urllib.request.urlopen(f"{sim.url}/api/v0/users/current?api_key={sim.api_key}", timeout=10) as resp:
        assert json.loads(resp.read())["username"] == "sandbox"


def test_an_idle_sandbox_stops_itself_and_says_when(tmp_path: Path):
    """A sandbox started for a rehearsal (`--sandbox` starts one with --idle-exit) does not outlive it:
    while an instance lives it stays; with none and no request for the idle time it stops itself."""
    env = {**os.environ, "VASTICLAUDE_HOME": str(tmp_path / "home")}
    started = vc("sim", "start", "--time-scale", "0", "--idle-exit", "3", "--json", env=env)
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)["data"]
        from vastai import VastAI
        sdk = VastAI(api_key=info["api_key"], server_url=info["url"], retry=1)
        offer = sdk.search_offers(query="num_gpus=1", order="dph", limit=1)[0]
        iid = sdk.create_instance(id=offer["id"], image="vastai/base:0.0.2", disk=4)["new_contract"]
        time.sleep(8)  # idle time passes with no request, but an instance lives: it stays
        assert psutil.pid_exists(info["pid"]) and "idle: stops by itself" in vc("sim", "status", env=env).stdout
        sdk.destroy_instance(id=iid)
        status = vc("sim", "status", "--json", env=env)
        assert json.loads(status.stdout)["data"]["idle_exit_s"] == 3
        deadline = time.monotonic() + 30
        while vc("sim", "status", env=env).returncode == 0 and time.monotonic() < deadline:
            time.sleep(4)  # each status is a request: poll slower than the idle time
        assert vc("sim", "status", env=env).returncode == 3, "the idle sandbox did not stop itself"
    finally:
        vc("sim", "stop", env=env)
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE


def test_the_default_sandbox_is_announced_when_it_starts_not_on_every_call(tmp_path: Path):
    """Without a key every command runs on the sandbox; the line that says so comes once, from the
    command that starts it (Claude reads every line; doctor and status name the target anyway)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "VASTICLAUDE_"))}
    env.update(HOME=str(tmp_path), VASTICLAUDE_HOME=str(tmp_path / "home"), VASTICLAUDE_SIM_TIME_SCALE="0",
               VASTAI_NO_UPDATE_CHECK="1")
    try:
        first = vc("offers", "--limit", "1", "--json", env=env)
        second = vc("offers", "--limit", "1", "--json", env=env)
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        assert "no Vast API key found, so this runs on the local sandbox" in first.stderr
        assert "sandbox" not in second.stderr, second.stderr
    finally:
        vc("sim", "stop", env=env)

"""`./dev live-check` (issue 12, part B): the shape comparison and the redacted record, tested
against the sandbox (the tests point it there with --url; by default it talks to the real Vast
and refuses to run without a key). The real-Vast run itself is never part of the tests.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_vast_realism import fixture

from vasticlaude.sim.market import load_market
from vasticlaude.vast import rows, shapes
from vasticlaude.vast.account import REAL_URL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "live_check.py"
IMAGE = "vastai/base:0.0.2"


def live_check(tmp_path: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    home = tmp_path / "lchome"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "XDG_"))}
    env.update(HOME=str(home), VASTICLAUDE_HOME=str(home / "vc"), VASTAI_NO_UPDATE_CHECK="1")
    if key:
        env["VAST_API_KEY"] = key
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=home, timeout=300, stdin=subprocess.DEVNULL)


# ----- pure: the comparison and the redaction -------------------------------------------------------
@pytest.mark.unit
def test_differences_say_what_the_normaliser_copes_with_and_what_it_does_not():
    wrapped = shapes.compare("ssh_keys", fixture("ssh_keys_wrapped.json")["body"])
    assert {"kind": "ssh_keys", "field": "(list)", "severity": "handled", "what": "wrapped as {'ssh_keys': [...]}"} \
        in wrapped
    row = {"id": "17", "actual_status": "hibernating", "intended_status": "running", "status_msg": None,
           "public_ipaddr": "203.0.113.9\n", "ports": {"22/tcp": None}, "ssh_host": "ssh4.vast.ai", "ssh_port": "x1",
           "dph_total": 0.2, "disk_space": 10, "label": None}
    found = {(d["field"], d["severity"], d["what"]) for d in shapes.compare("instance", {"instances": row})}
    assert ("id", "handled", "a number sent as a string") in found
    assert ("public_ipaddr", "handled", "whitespace around the string") in found
    assert ("ssh_port", "unexpected", "not a number: 'x1'") in found
    assert ("actual_status", "unexpected", "status word 'hibernating' is not in the vocabulary") in found
    assert ("ports.22/tcp", "handled", "null: no direct SSH route") in found
    assert ("label", "handled", "null") in found
    missing = shapes.compare("offers", [{"id": 1}])
    assert {"kind": "offers", "field": "gpu_name", "severity": "unexpected", "what": "missing"} in missing


@pytest.mark.unit
def test_redaction_hashes_ids_and_addresses_and_drops_secrets_keeping_the_shape():
    red = shapes.Redactor("salt", ("sekrit-key",))
    body = {"instances": [{"id": 4242, "machine_id": 77, "public_ipaddr": "203.0.113.9", "label": "vasticlaude-mine-1",
                           "ssh_host": "ssh4.vast.ai", "gpu_name": "RTX 4090", "jupyter_token": "tok",
                           "extra_env": [["HF_TOKEN", "hf_x"]], "onstart": "echo sekrit-key", "ssh_port": 4243,
                           "local_ipaddrs": "10.0.0.5 172.17.0.2", "status_msg": "pulled on 203.0.113.9"}]}
    out = red.body("instances", body)["instances"][0]
    assert isinstance(out["id"], int) and out["id"] != 4242 and out["id"] == red.body("instances", body)["instances"][0]["id"]
    assert isinstance(out["machine_id"], int) and out["machine_id"] != 77
    assert out["public_ipaddr"].startswith("198.18.") and "203.0.113.9" not in json.dumps(out)
    assert "10.0.0.5" not in out["local_ipaddrs"] and len(out["local_ipaddrs"].split()) == 2
    assert out["label"].startswith("label-") and out["gpu_name"] == "RTX 4090" and out["ssh_host"] == "ssh4.vast.ai"
    assert out["jupyter_token"] == "[redacted]" and out["extra_env"] is None and out["onstart"] == "[redacted]"
    assert out["ssh_port"] == 4243
    assert rows.instances(red.body("instances", body))[0]["id"] == out["id"]  # still a row the normaliser reads
    user = red.body("user", {"id": 5, "email": "a@b.c", "username": "me", "balance": 3.5, "api_key": "sekrit-key"})
    assert user["email"] == user["username"] == "[redacted]" and user["balance"] == 3.5 and user["id"] != 5


@pytest.mark.unit
def test_it_defaults_to_the_real_vast_and_refuses_without_a_key(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import live_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert live_check.parser().parse_args([]).url == REAL_URL
    proc = live_check_no_key = live_check_run(tmp_path)
    assert proc.returncode == 2 and "no Vast API key" in proc.stderr, live_check_no_key.stderr
    assert not list((tmp_path / "lchome").glob("live-check-*.json"))


def live_check_run(tmp_path: Path) -> subprocess.CompletedProcess:
    # VAST_URL of a sandbox in the environment must not stand in for a key or for Vast.
    home = tmp_path / "lchome"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "XDG_"))}
    env.update(HOME=str(home), VAST_URL="http://127.0.0.1:9", VASTAI_NO_UPDATE_CHECK="1")
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, cwd=home,
                          timeout=60, stdin=subprocess.DEVNULL)


# ----- against the sandbox ------------------------------------------------------------------------------
def test_read_only_check_prints_every_difference_and_writes_a_replayable_redacted_record(sim, tmp_path):
    sim.fault("ssh-keys-wrapped")
    iid = sim.sdk().create_instance(id=sim.sdk().search_offers(query="rentable=true", limit=1)[0]["id"],
                                    image=IMAGE, disk=10, label="vasticlaude-secret-project-1")["new_contract"]
    sim.wait_status(iid, "running")
    out = tmp_path / "record.json"
    proc = live_check(tmp_path, "--url", sim.url, "--out", str(out), key=sim.api_key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "handled    ssh_keys.(list): wrapped as {'ssh_keys': [...]}" in proc.stdout
    assert f"record: {out}" in proc.stdout
    text = out.read_text()
    doc = json.loads(text)
    assert sim.api_key not in text and "secret-project" not in text
    row = sim.sdk().show_instance(id=iid)
    for address in {str(row.get("public_ipaddr") or "").strip(), "127.0.0.1"} - {""}:
        assert address not in text
    assert {s["kind"] for s in doc["shapes"]} == {"user", "offers", "instances", "ssh_keys"}
    for shape in doc["shapes"]:  # each one in the tests/fixtures/vast/ format, read by the normaliser
        assert shape["_source"].startswith("vasticlaude live-check")
        {"user": rows.user, "offers": rows.offers, "instances": rows.instances, "ssh_keys": rows.ssh_keys}[
            shape["kind"]](shape["body"])
    [listed] = rows.instances(next(s for s in doc["shapes"] if s["kind"] == "instances")["body"])
    assert listed["id"] != iid and not re.search(rf"\b{iid}\b", text)
    market = load_market(out)  # `vasticlaude sim start --market RECORD` replays the offers
    assert len(market) == len(doc["offers"]) >= 1 and all(o["gpu_name"] for o in market)
    sim.sdk().destroy_instance(id=iid)


def test_rent_runs_the_cheapest_full_flow_under_the_cap_and_leaves_nothing(sim, tmp_path):
    out = tmp_path / "rent.json"
    proc = live_check(tmp_path, "--url", sim.url, "--out", str(out), "--rent", "--max-usd", "1", "--window", "120",
                      "--image", IMAGE, key=sim.api_key)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rent = json.loads(out.read_text())["rent"]
    assert rent["destroyed"] is True and rent["worst_case_usd"] <= 1
    assert any("GPU 0" in line for line in rent["nvidia_smi"]), rent
    assert rent["charged_usd"] is not None and rent["charged_usd"] <= rent["worst_case_usd"]
    assert sim.sdk().show_instances() == []

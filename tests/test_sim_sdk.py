"""The official SDK class (`vastai.VastAI`) against the sandbox: the same round trip."""
from __future__ import annotations

import pytest
import requests


def test_sdk_round_trip(sim):
    sdk = sim.sdk()
    offers = sdk.search_offers(query="num_gpus=1 gpu_ram>=16", order="dph", limit=3)
    assert offers and all(o["gpu_ram"] >= 16000 for o in offers)
    created = sdk.create_instance(id=offers[0]["id"], image="vastai/base:0.0.2", disk=8,
                                  label="sdk-a", ssh=True, direct=True)
    iid = created["new_contract"]
    assert created["success"] is True and created["instance_api_key"]
    row = sim.wait_status(iid, "running")
    assert isinstance(row["extra_env"], dict)
    assert iid in [r["id"] for r in sdk.show_instances()]
    assert sdk.ssh_url(id=iid).startswith("ssh://root@127.0.0.1:")
    assert sdk.label_instance(id=iid, label="sdk-b")["success"]
    assert sdk.stop_instance(id=iid)["success"]
    sim.wait_status(iid, "stopped")
    assert sdk.start_instance(id=iid)["success"]
    sim.wait_status(iid, "running")
    assert sdk.show_user()["balance"] > 0
    assert sdk.destroy_instance(id=iid)["success"]
    assert sdk.show_instance(id=iid) is None


def test_sdk_http_errors_raise(sim):
    from vastai import VastAI
    bad = VastAI(api_key="nope", server_url=sim.url, retry=1)
    with pytest.raises(requests.HTTPError) as info:
        bad.show_instances()
    assert info.value.response.status_code == 401


def test_v1_pages_of_25_with_next_token(sim):
    sdk = sim.sdk()
    offers = sdk.search_offers(query="rentable=true", order="dph", limit=30)
    assert len(offers) >= 27
    ids = [sdk.create_instance(id=o["id"], image="vastai/base:0.0.2", disk=4)["new_contract"] for o in offers[:27]]
    try:
        first = sim.admin("GET", "/api/v1/instances/?limit=25")
        assert len(first["instances"]) == 25 and first["next_token"]
        assert first["total_instances"] >= 27
        second = sim.admin("GET", f"/api/v1/instances/?limit=25&after_token={first['next_token']}")
        assert not second["next_token"]
        assert set(ids) <= {r["id"] for r in first["instances"] + second["instances"]}
        assert set(ids) <= {r["id"] for r in sdk.show_instances()}  # the SDK follows next_token
    finally:
        sdk_destroy_all(sdk, ids)


def sdk_destroy_all(sdk, ids):
    for iid in ids:
        sdk.destroy_instance(id=iid)


def test_boot_goes_created_loading_running_with_scaled_delays(fresh_sim):
    import time
    sim = fresh_sim.start("--time-scale", "0.1")
    sdk = sim.sdk()
    offer = sdk.search_offers(query="num_gpus=1", order="dph", limit=1)[0]
    t0 = time.monotonic()
    iid = sdk.create_instance(id=offer["id"], image="pytorch/pytorch:latest", disk=4)["new_contract"]
    seen = []
    while time.monotonic() - t0 < 20:
        status = sdk.show_instance(id=iid)["actual_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "running":
            break
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert seen == ["created", "loading", "running"]
    assert took >= 0.2 + 4.0  # 2 s created + 40 s pytorch pull, both x0.1
    sdk.destroy_instance(id=iid)

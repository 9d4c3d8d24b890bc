"""The official `vastai` CLI (subprocess, throwaway HOME) against the sandbox."""
from __future__ import annotations

import json

import pytest


def test_search_offers_with_query_and_order(sim):
    offers = sim.vastai_json("search", "offers",
                             "num_gpus=1 gpu_ram>=20 reliability>0.9 cuda_vers>=12.0 disk_space>=50 verified=any",
                             "-o", "dph,dlperf_usd-", "--limit", "7", "--storage", "20")
    assert 0 < len(offers) <= 7
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    for offer in offers:
        assert offer["num_gpus"] == 1 and offer["gpu_ram"] >= 20000
        assert offer["reliability"] > 0.9 and offer["cuda_max_good"] >= 12.0
        # dph_total folds in 20 GB of storage at the offer's $/GB/month
        assert offer["dph_total"] == pytest.approx(offer["dph_base"] + offer["storage_cost"] * 20 / 720, rel=1e-6)


def test_search_offers_table_and_interruptible_prices(sim):
    table = sim.vastai("search", "offers", "num_gpus=1", "--limit", "3").stdout
    assert "dph" in table.lower() or "$/hr" in table
    bids = sim.vastai_json("search", "offers", "num_gpus=1", "--type", "bid", "-o", "dph", "--limit", "3")
    for offer in bids:
        assert offer["dph_total"] == pytest.approx(offer["min_bid"] + offer["storage_total_cost"], rel=1e-6)


def test_on_demand_lifecycle_through_the_cli(sim):
    iid, offer = sim.rent("--label", "cli-a", "--onstart-cmd", "echo hello-onstart")
    row = sim.wait_status(iid, "running")
    assert row["gpu_name"] == offer["gpu_name"] and row["label"] == "cli-a"
    listed = sim.vastai_json("show", "instances")
    assert iid in [r["id"] for r in listed]
    assert sim.vastai_json("show", "instance", str(iid))["actual_status"] == "running"
    assert "cli-a" in sim.vastai("show", "instances").stdout

    url = sim.vastai("ssh-url", str(iid)).stdout.strip()
    assert url == f"ssh://root@127.0.0.1:{row['ports']['22/tcp'][0]['HostPort']}"

    sim.vastai("label", "instance", str(iid), "cli-b")
    assert sim.instance(iid)["label"] == "cli-b"

    assert "stopping instance" in sim.vastai("stop", "instance", str(iid)).stdout
    sim.wait_status(iid, "stopped")
    assert "starting instance" in sim.vastai("start", "instance", str(iid)).stdout
    sim.wait_status(iid, "running")

    logs = sim.vastai("logs", str(iid), "--tail", "20").stdout
    assert "hello-onstart" in logs

    sim.vastai("destroy", "instance", str(iid), "-y")
    assert sim.vastai_json("show", "instance", str(iid)) == {"instances": None}
    gone = sim.vastai("show", "instance", str(iid), check_error=False)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_interruptible_create_and_change_bid(sim):
    offers = sim.vastai_json("search", "offers", "num_gpus=1", "--type", "bid", "-o", "dph", "--limit", "3")
    offer = offers[0]
    bid = round(offer["min_bid"] * 1.1, 4)
    created = sim.vastai_json("create", "instance", str(offer["id"]), "--image", "vastai/base:0.0.2",
                              "--disk", "8", "--ssh", "--bid_price", str(bid))
    iid = created["new_contract"]
    row = sim.wait_status(iid, "running")
    assert row["is_bid"] is True and row["dph_base"] == pytest.approx(bid)
    assert "bid price changed" in sim.vastai("change", "bid", str(iid), "--price", str(bid * 2)).stdout
    assert sim.instance(iid)["dph_base"] == pytest.approx(bid * 2)
    sim.vastai("destroy", "instance", str(iid), "-y")


def test_destroy_without_yes_aborts_and_sends_nothing(sim):
    iid, _ = sim.rent()
    proc = sim.vastai("destroy", "instance", str(iid))
    assert "Aborted" in proc.stdout + proc.stderr
    assert sim.instance(iid) is not None
    sim.vastai("destroy", "instance", str(iid), "-y")
    assert sim.instance(iid) is None


def test_show_user_and_ssh_keys(sim):
    user = sim.vastai_json("show", "user")
    assert user["balance"] > 0 and "api_key" not in user
    key = sim.ensure_ssh_key().with_suffix(".pub").read_text().strip()
    keys = sim.vastai_json("show", "ssh-keys")
    assert key in [k["public_key"] for k in keys]


def test_attach_ssh_key_to_instance(sim, tmp_path):
    import subprocess
    iid, _ = sim.rent()
    row = sim.wait_status(iid, "running")
    extra = tmp_path / "extra"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(extra)], check=True)
    out = sim.vastai("attach", "ssh", str(iid), extra.with_suffix(".pub").read_text().strip()).stdout
    assert "attached" in out
    port = row["ports"]["22/tcp"][0]["HostPort"]
    from simkit import SSH_OPTS
    proc = subprocess.run(["ssh", *SSH_OPTS, "-i", str(extra), "-p", port, "root@127.0.0.1", "echo ok"],
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "ok", proc.stderr
    sim.vastai("destroy", "instance", str(iid), "-y")


def test_wrong_key_is_401_and_cli_exits_0(sim):
    proc = sim.vastai("show", "instances", "--raw", check_error=False, VAST_API_KEY="wrong")
    assert proc.returncode == 0 and proc.stdout.strip() == ""
    err = json.loads(proc.stderr.strip().splitlines()[-1])
    assert err["status_code"] == 401 and err["error"] is True


def test_gpu_names_endpoint_feeds_the_cli_parser(sim):
    names = sim.admin("GET", "/api/v0/gpu_names/unique/")["gpu_names"]
    assert "RTX 4090" in names and "H100 SXM" in names

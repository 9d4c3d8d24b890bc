"""Bandwidth is billed (issue 12, part B): offers carry inet_down_cost / inet_up_cost ($/GB) and
the sandbox's `bandwidth-billing` charges the bytes through an instance's SSH ports.

Through the real vastai package, ssh and rsync on the sandbox: estimates include the expected
transfer, push and pull count their bytes into the ledger (which matches the sandbox's inet
charges), and a pull that would break the budget is refused before it moves anything.
"""
from __future__ import annotations

import json
import os

import pytest

from test_lifecycle import IMAGE, user_of
from test_recovery import on_instance

# One machine; bandwidth priced high so that it shows next to a cheap GPU.
PRICED = [{"id": 6661001, "machine_id": 9101, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564,
           "dph_base": 0.4, "storage_cost": 0.1, "disk_space": 100, "reliability": 0.99,
           "inet_down_cost": 2.0, "inet_up_cost": 8.0}]
MIB = 1 << 20


@pytest.fixture
def priced(fresh_sim, tmp_path):
    market = tmp_path / "market.json"
    market.write_text(json.dumps(PRICED))
    sim = fresh_sim.start("--time-scale", "0", "--market", str(market), "--balance", "50")
    sim.fault("bandwidth-billing")
    with user_of(sim, tmp_path / "bwhome") as user:
        (user.cwd / ".vasticlaude").mkdir()
        yield user


def inet_charges(sim, iid: int) -> dict[str, float]:
    charges = sim.vastai_json("show", "invoices-v1", "--charges")
    [row] = [r for r in charges["results"] if r["source"] == f"instance-{iid}"]
    return {i["type"]: i["amount"] for i in row["items"] if i["type"].startswith("inet_")}


def test_offers_price_the_expected_transfer(priced):
    (priced.cwd / ".vasticlaude" / "config.json").write_text(json.dumps({"transfer": {"results_gb": 0.5}}))
    (priced.cwd / "data.bin").write_bytes(b"x" * (4 * MIB))
    [cand] = priced.json("offers", "--disk", "8", "--hours", "2")["candidates"]
    # 4 MiB in at $2/GB + 0.5 GB out at $8/GB, on top of (GPU + storage) x 2 h.
    assert cand["transfer_usd"] == pytest.approx(4 / 1024 * 2 + 0.5 * 8, abs=0.001)
    assert cand["est_total_usd"] == pytest.approx(cand["dph"] * 2 + cand["transfer_usd"], abs=0.001)
    assert "inet_up_cost" not in cand  # --json stays compact


def test_the_ledger_counts_push_and_pull_bytes_as_vast_charges_them(priced):
    cli, sim = priced, priced.sim
    (cli.cwd / "data.bin").write_bytes(os.urandom(3 * MIB))
    iid = cli.json("up", "--experiment", "bw", "--image", IMAGE, "--disk", "8", "--hours", "1")["instance_id"]
    cli.json("push", "--experiment", "bw", "--no-setup")
    outputs = on_instance(sim, iid, "bw", "outputs")
    outputs.mkdir(parents=True)
    (outputs / "result.bin").write_bytes(os.urandom(12 * MIB))
    pulled = cli.json("pull", "--experiment", "bw", "--path", "outputs")
    assert pulled["bytes_received"] >= 12 * MIB
    cli.json("down", "--experiment", "bw")
    [row] = cli.json("cost", "--experiment", "bw")["instances"]
    charged = inet_charges(sim, iid)
    # What went through the SSH ports beyond rsync's own bytes (handshakes, the small ssh calls)
    # is a few kB a call: well inside 5 %.
    assert row["bandwidth_usd"] == pytest.approx(sum(charged.values()), rel=0.05)
    assert charged["inet_up"] == pytest.approx(12 / 1024 * 8, rel=0.05)
    assert row["total_usd"] == pytest.approx(row["gpu_usd"] + row["storage_usd"] + row["bandwidth_usd"], abs=1e-5)
    assert cli.account() == []


def test_a_pull_that_would_break_the_budget_moves_nothing(priced):
    cli, sim = priced, priced.sim
    (cli.cwd / ".vasticlaude" / "config.json").write_text(json.dumps({"transfer": {"results_gb": 0.001}}))
    iid = cli.json("up", "--experiment", "cap", "--image", IMAGE, "--disk", "8", "--hours", "0.1",
                   "--budget-usd", "0.2")["instance_id"]
    outputs = on_instance(sim, iid, "cap", "outputs")
    outputs.mkdir(parents=True)
    (outputs / "big.bin").write_bytes(os.urandom(40 * MIB))  # 40 MiB out at $8/GB: ~$0.31
    (outputs / "small.txt").write_text("the part that fits\n")
    refused = cli.run("pull", "--experiment", "cap", "--path", "outputs", "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "over_budget" and "nothing was sent" in error["message"]
    assert not (cli.cwd / ".vasticlaude" / "runs" / "cap" / "outputs" / "big.bin").exists()
    assert inet_charges(sim, iid).get("inet_up", 0.0) < 0.01  # the ssh calls only, not the 40 MiB
    small = cli.json("pull", "--experiment", "cap", "--path", "outputs/small.txt")
    assert small["files"] == 1
    cli.json("down", "--experiment", "cap")
    [row] = cli.json("cost", "--experiment", "cap")["instances"]
    assert row["total_usd"] < 0.2 and cli.account() == []


NETDEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: {lo} 5091711    0    0    0     0          0         0 {lo} 5091711    0    0    0     0       0          0
  eth0: {rx} 1000    0    0    0     0          0         0 {tx}    900    0    0    0     0       0          0
"""


@pytest.mark.unit
def test_the_watchdog_counts_the_interfaces_bytes_but_not_loopback(tmp_path):
    """The watchdog's spend: $/h x time + (bytes in x $/GB in + bytes out x $/GB out) since it started."""
    import subprocess

    from vasticlaude.ops.job import watchdog_script
    from vasticlaude.remote.layout import Layout
    guard = {"dph": 3.6, "already_spent_usd": 0.5, "budget_usd": 10.0, "max_hours": None, "grace_s": 60,
             "kill_grace_s": 5, "check_s": 1, "on_end": "stop", "usd_per_gb": [2, 8]}
    script = watchdog_script("e", Layout("e"), guard)  # as `run` renders it: every variable the template needs
    assert script.rstrip().endswith("\nmain")
    dev = tmp_path / "netdev"
    gib = 1 << 30
    dev.write_text(NETDEV.format(lo=10 * gib, rx=gib, tx=2 * gib))
    probe = (f"NETDEV={dev}\nNET0=$(net)\n"
             f"printf '%s\\n' '{NETDEV.format(lo=90 * gib, rx=2 * gib, tx=4 * gib)}' > {dev}\n"
             "spent 10\n")
    out = subprocess.run(["sh", "-c", script.rstrip()[: -len("main")] + probe], capture_output=True, text=True,
                         timeout=30, cwd=tmp_path, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    # 0.5 spent + 3.6 $/h x 10 s + 1 GiB in x $2 + 2 GiB out x $8 (the 80 GiB through lo count nothing)
    assert float(out.stdout.strip()) == pytest.approx(0.5 + 0.01 + 2 + 16, abs=1e-3), out.stderr

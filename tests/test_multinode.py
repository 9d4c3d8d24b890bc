"""Multi-node on the sandbox: clusters and overlay networks as vastai 1.9.1 reaches them, then the
product's `up --nodes N` / `run` / `watch` / `down` over them (README "Several nodes").

The sandbox part drives the official `vastai` CLI; the product part runs `vasticlaude` as
Claude does (subprocesses in a project folder, real ssh and rsync) with a job that does a real
TCP rendezvous over the overlay addresses, the contract torchrun's c10d store uses.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from simkit import Sim
from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME


def _offer(oid: int, machine: int, dph: float, cluster: int | None) -> dict:
    return {"id": oid, "machine_id": machine, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564,
            "dph_base": dph, "storage_cost": 0.1, "min_bid": dph / 2, "disk_space": 100, "reliability": 0.99,
            "cluster_id": cluster, "geolocation": "Oregon, US"}


# Cluster 4242: five machines (three nodes, and spares for a relaunch); cluster 77: two (too few for
# three nodes); two cheaper machines in no cluster, which a multi-node rental must pass over.
MARKET = ([_offer(7100 + i, 8100 + i, 0.30 + i / 100, 4242) for i in range(5)]
          + [_offer(7200 + i, 8200 + i, 0.20, 77) for i in range(2)]
          + [_offer(7300 + i, 8300 + i, 0.10, None) for i in range(2)])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    """This module's sandbox: time scale 0 and the pinned market above."""
    base = tmp_path_factory.mktemp("sim")
    (base / "market.json").write_text(json.dumps(MARKET))
    sandbox = Sim(state=base / "state", home=base / "home")
    sandbox.home.mkdir()
    try:
        yield sandbox.start("--time-scale", "0", "--market", str(base / "market.json"), "--balance", "100")
    finally:
        sandbox.stop()


def cluster_offers(sim) -> dict[int, list[dict]]:
    offers = sim.vastai_json("search", "offers", "cluster_id!=None rentable=true", "--limit", "200")
    by: dict[int, list[dict]] = {}
    for offer in offers:
        by.setdefault(offer["cluster_id"], []).append(offer)
    return by


def test_overlay_through_vastai(sim):
    """create overlay → create instances with --env "-n NAME" → show overlays → each instance has
    its own address that the others reach → delete overlay; an offer outside the cluster is refused.
    vastai 1.9.1's CLI has its overlay commands disabled ("cluster/overlay commands disabled for
    now", cli/main.py), so those go through its SDK, as vasticlaude's gateway does."""
    by = cluster_offers(sim)
    assert {c: len(g) for c, g in by.items()} == {4242: 5, 77: 2}
    cluster, group = 4242, by[4242]
    sdk = sim.sdk()
    assert "mn-net" in sdk.create_overlay(cluster, "mn-net")["msg"]
    sim.ensure_ssh_key()
    ids = []
    for offer in group[:2]:
        made = sim.vastai_json("create", "instance", str(offer["id"]), "--image", "vastai/base:0.0.2",
                               "--disk", "8", "--ssh", "--direct", "--env", "-n mn-net")
        ids.append(made["new_contract"])
    outsider = next(o for o in sim.vastai_json("search", "offers", "cluster_id=None rentable=true", "--limit", "5"))
    refused = sim.vastai("create", "instance", str(outsider["id"]), "--image", "vastai/base:0.0.2", "--disk", "8",
                         "--env", "-n mn-net", "--raw", check_error=False)
    assert "not in cluster" in refused.stdout + refused.stderr
    try:
        rows = [sim.wait_status(iid, "running") for iid in ids]
        [overlay] = [o for o in sdk.show_overlays() if o["name"] == "mn-net"]
        assert overlay["cluster_id"] == cluster and sorted(overlay["instances"]) == sorted(ids)
        ips = [sim.ssh(row, "echo $VAST_OVERLAY_IP").stdout.strip() for row in rows]
        subnet = overlay["internal_subnet"].rsplit(".", 1)[0]
        assert len(set(ips)) == 2 and all(ip.startswith(subnet + ".") for ip in ips)
        # node 1 listens on its overlay address, node 0 connects to it
        listen = ("python3 -c \"import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                  f"s.bind(('{ips[1]}',29511));s.listen();c,_=s.accept();c.sendall(b'hello '+c.recv(9))\"")
        server = subprocess.Popen([*sim.ssh_cmd(rows[1]), listen], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            talk = ("python3 -c \"import socket,time\nfor i in range(100):\n try: c=socket.create_connection(('"
                    + ips[1] + "',29511)); break\n except OSError: time.sleep(0.1)\nc.sendall(b'from-0');"
                    "print(c.recv(99).decode())\"")
            assert sim.ssh(rows[0], talk).stdout.strip() == "hello from-0"
        finally:
            server.kill()
            server.wait()
        sdk.join_overlay("mn-net", ids[0])  # idempotent: the same address
        assert sim.ssh(rows[0], "echo $VAST_OVERLAY_IP").stdout.strip() == ips[0]
        assert "deleted" in sdk.delete_overlay("mn-net")["msg"]
        assert not [o for o in sdk.show_overlays() if o["name"] == "mn-net"]
        assert sim.ssh(rows[0], "echo \"[$VAST_OVERLAY_IP]\"").stdout.strip() == "[]"
    finally:
        for iid in ids:
            sim.vastai("destroy", "instance", str(iid), "-y", check_error=False)


# ----- the product ----------------------------------------------------------------------------------
# A job with torch.distributed's env:// contract and no torch: rank 0 listens on MASTER_ADDR:MASTER_PORT,
# every other rank connects from its own overlay address (NODE_ADDR) and says who it is; rank 0 checks
# the world size and the sources, then sends each the world size and a payload that names the step it
# resumes from (rank 0's checkpoint). Then steps; rank 0 checkpoints after each.
RENDEZVOUS = r'''
import json, os, socket, sys, time
rank, world = int(os.environ["NODE_RANK"]), int(os.environ["WORLD_SIZE"])
master, port, me = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), os.environ["NODE_ADDR"]
ckpt_dir, out_dir = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
total, period = int(sys.argv[1]), float(sys.argv[2])
ckpt = os.path.join(ckpt_dir, "state.json")
start = json.load(open(ckpt))["step"] if os.environ["VASTICLAUDE_RESUME"] == "1" and os.path.exists(ckpt) else 0
peers = {}
if rank == 0:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((master, port)); srv.listen(); srv.settimeout(120)
    conns = []
    while len(conns) < world - 1:
        c, (ip, _) = srv.accept()
        hello = json.loads(c.makefile().readline())
        assert hello["world"] == world and hello["addr"] == ip, (hello, ip)
        peers[hello["rank"]] = ip
        conns.append(c)
    payload = f"rank0-{start}"
    for c in conns:
        c.sendall((json.dumps({"world": world, "payload": payload, "start": start}) + "\n").encode()); c.close()
else:
    for _ in range(1200):
        try:
            c = socket.create_connection((master, port), timeout=5, source_address=(me, 0)); break
        except OSError:
            time.sleep(0.1)
    c.sendall((json.dumps({"rank": rank, "world": world, "addr": me}) + "\n").encode())
    reply = json.loads(c.makefile().readline())
    assert reply["world"] == world
    payload, start = reply["payload"], reply["start"]
print(f"rendezvous rank={rank} world={world} payload={payload} start={start}", flush=True)
for step in range(start + 1, total + 1):
    time.sleep(period)
    print(f"step {step}/{total}", flush=True)
    if rank == 0:
        json.dump({"step": step}, open(ckpt + ".tmp", "w")); os.replace(ckpt + ".tmp", ckpt)
json.dump({"rank": rank, "world": world, "payload": payload, "start": start, "peers": peers, "addr": me},
          open(os.path.join(out_dir, "result.json"), "w"))
'''


@pytest.fixture
def project(cli, tmp_path: Path) -> Path:  # noqa: F811
    root = tmp_path / "project"
    (root / ".vasticlaude").mkdir(parents=True)
    (root / "rendezvous.py").write_text(RENDEZVOUS)
    (root / ".vasticlaude" / "config.json").write_text(json.dumps(
        {"recovery": {"sync_interval_s": 1}, "guard": {"grace_s": 600}}))
    cli.cwd = root
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def step_on(sim, iid: int, experiment: str) -> int:
    path = sim.state / "instances" / str(iid) / "root" / "vasticlaude" / experiment / "checkpoints" / "state.json"
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError):
        return 0


def test_three_nodes_rendezvous_survive_a_dead_host_and_leave_nothing(sim, cli, project):  # noqa: F811
    """up --nodes 3 → push → run (MASTER_ADDR…) → host-down of node 1 mid-run → the group restarts from
    rank 0's checkpoint and finishes → every rank saw world 3 and rank 0's payload → no instance, no overlay."""
    port = str(free_port())
    up = cli.json("up", "--experiment", "mn", "--image", IMAGE, "--disk", "8", "--hours", "1", "--nodes", "3",
                  "--any-verified", "--budget-usd", "3", "--master-port", port)
    assert len(up["nodes"]) == 3 and up["overlay"].startswith("vc-mn-") and up["cluster_id"] == 4242
    assert [n["offer_id"] for n in up["nodes"]] == [7100, 7101, 7102]  # the cluster's cheapest, not the cheaper loners
    [overlay] = [o for o in sim.sdk().show_overlays() if o["name"] == up["overlay"]]
    assert sorted(overlay["instances"]) == sorted(n["instance_id"] for n in up["nodes"])
    for n in up["nodes"]:  # one cluster; each node's watchdog gets a third of the budget
        assert json.loads((cli.vchome / "experiments" / n["experiment"] / "experiment.json").read_text())["budget_usd"] == 1.0
    cli.json("push", "--experiment", "mn", "--no-setup")
    proc = cli.run("run", "--json", "--experiment", "mn", "--", "python3", "rendezvous.py", "60", "0.25")
    assert proc.returncode == 0, proc.stderr
    started = json.loads(proc.stdout)["data"]
    assert started["state"] == "running" and len({n["address"] for n in started["nodes"]}) == 3
    assert started["endpoint"] == f"{started['nodes'][0]['address']}:{port}"
    status = cli.json("status", "--experiment", "mn")
    assert [n["node"] for n in status["nodes"]] == [0, 1, 2] and status["overlay"] == up["overlay"]

    watch = cli.spawn("watch", "--experiment", "mn", "--interval", "1", "--sync-interval", "1", "--json")
    node0, node1 = up["nodes"][0]["instance_id"], up["nodes"][1]["instance_id"]
    wait_for(lambda: step_on(sim, node0, "mn-n0") >= 4, 60, "rank 0's fourth checkpoint")
    time.sleep(1.5)  # a sync of it reaches home
    sim.fault("host-down", instance=node1)
    code, out, err = cli.finish(watch, timeout=240)
    result = json.loads(out)["data"]
    assert code == 0, err[-3000:]
    assert result["outcome"] == "finished" and [r["node"] for r in result["recoveries"]] == [1]
    assert result["recoveries"][0]["kind"] == "host_offline" and result["recoveries"][0]["to_instance"] != node1
    outs = [json.loads((project / ".vasticlaude" / "runs" / f"mn-n{r}" / "outputs" / "result.json").read_text())
            for r in range(3)]
    assert {o["world"] for o in outs} == {3} and len({o["payload"] for o in outs}) == 1
    assert outs[0]["start"] >= 3 and all(o["start"] == outs[0]["start"] for o in outs)  # resumed from rank 0's
    assert sorted(outs[0]["peers"].values()) == sorted(o["addr"] for o in outs[1:])  # over the overlay addresses
    assert cli.account() == []
    assert not [o for o in sim.sdk().show_overlays() if o["name"] == up["overlay"]]
    ledger = [json.loads(line) for line in (cli.vchome / "experiments" / "mn" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 4 and {e["node"] for e in ledger} == {"mn-n0", "mn-n1", "mn-n2"}  # the dead node's too
    assert 0 < result["spent_usd"] <= 3 and abs(sum(e["cost_usd"] for e in ledger) - result["spent_usd"]) < 0.01
    # cost and report see one experiment: every node's instances, the dead host's too
    [row] = cli.json("cost", "--experiment", "mn")["experiments"]
    assert (row["experiment"], row["nodes"], row["instances"], row["live"], row["budget_usd"]) == ("mn", 3, 4, 0, 3.0)
    assert abs(row["spent_usd"] - sum(e["cost_usd"] for e in ledger)) < 1e-4
    listed = [e["experiment"] for e in cli.json("cost")["experiments"]]
    assert "mn" in listed and not [e for e in listed if e.startswith("mn-n")]
    report = cli.json("report", "--experiment", "mn", "--offline")
    assert abs(report["total_usd"] - row["spent_usd"]) < 1e-4 and report["exit_code"] == 0 and report["failed_nodes"] == []
    assert [n["experiment"] for n in report["nodes"]] == ["mn-n0", "mn-n1", "mn-n2"]
    assert [len(n["instances"]) for n in report["nodes"]] == [1, 2, 1] and node1 in report["nodes"][1]["instances"]


@pytest.mark.unit
def test_the_launch_lines():
    """torchrun's flags (Vast's multi-node guide, c10d), the env contract, the overlay's address and name."""
    from vasticlaude.ops import nodes
    line = nodes.torchrun_line(["python3", "train.py", "--lr", "3e-4"], 3, 8, 1, "10.0.0.1:29500", "exp")
    assert line == ("torchrun --nnodes 3 --nproc-per-node 8 --node-rank 1 --rdzv-backend c10d --rdzv-endpoint "
                    "10.0.0.1:29500 --rdzv-id exp train.py --lr 3e-4")
    assert nodes.torchrun_line(["train.py"], 2, 1, 0, "a:1", "e").endswith("--rdzv-id e train.py")
    assert nodes.torchrun_line(["python", "t.py"], 2, 1, 0, "a:1", "e", "python -m torch.distributed.run").startswith(
        "python -m torch.distributed.run --nnodes 2 ")
    with pytest.raises(Exception, match="Python script"):
        nodes.torchrun_line(["bash", "go.sh"], 2, 1, 0, "a:1", "e")
    env = nodes.node_env({"A": "1"}, "10.0.0.1", 29500, 2, 3, "10.0.0.3")
    assert env == {"A": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "2", "RANK": "2",
                   "WORLD_SIZE": "3", "NNODES": "3", "NODE_ADDR": "10.0.0.3"}
    # the address in the overlay's subnet wins over the box's others (Vast: read from the interface)
    assert nodes.pick_address(["", "172.17.0.5", "10.8.0.7"], "10.8.0.0/24", "n") == "10.8.0.7"
    assert nodes.pick_address(["127.77.2.3", "192.168.1.9"], "127.77.2.0/24", "n") == "127.77.2.3"
    assert nodes._share(2, 3) * 3 <= 2 and nodes._share(3, 3) == 1.0 and nodes._share(None, 3) is None
    name = nodes.overlay_name("My_Exp.v2")
    assert name.startswith("vc-my-exp-v2-") and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert nodes.overlay_name("a.b") != nodes.overlay_name("a_b")
    assert nodes.group_state([{"fault": None, "job": "exited", "exit_code": 0}] * 2) == "finished"
    assert nodes.group_state([{"fault": None, "job": "running", "exit_code": None},
                              {"fault": "host_offline", "job": "unreachable", "exit_code": None}]) == "fault"


@pytest.mark.unit
def test_the_generated_market_has_clusters():
    """Some machines grouped in physical clusters: one GPU model and one place each, at most six, the
    same for a seed."""
    from vasticlaude.sim.market import generate_market
    market = generate_market(7, 60)
    assert market == generate_market(7, 60)
    by: dict[int, list[dict]] = {}
    for offer in market:
        if offer["cluster_id"] is not None:
            by.setdefault(offer["cluster_id"], []).append(offer)
    assert by and all(2 < len(g) <= 6 for g in by.values())
    assert all(len({(o["gpu_name"], o["geolocation"]) for o in g}) == 1 for g in by.values())
    assert len({o["machine_id"] for o in market}) == 60


# torchrun itself is too large for CI (its wheel pulls gigabytes of CUDA libraries): this stand-in takes
# its launch flags, sets what torchrun gives a worker from them alone (MASTER_*, RANK, WORLD_SIZE, …;
# vasticlaude's own rendezvous variables are dropped first), and runs the script.
FAKE_TORCHRUN = r'''#!/usr/bin/env python3
import argparse, os, sys
p = argparse.ArgumentParser()
for flag in ("--nnodes", "--nproc-per-node", "--node-rank"):
    p.add_argument(flag, type=int, required=True)
for flag in ("--rdzv-backend", "--rdzv-endpoint", "--rdzv-id"):
    p.add_argument(flag, required=True)
p.add_argument("script")
p.add_argument("args", nargs=argparse.REMAINDER)
a = p.parse_args()
assert a.rdzv_backend == "c10d" and a.nproc_per_node == 1, a
for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "RANK", "WORLD_SIZE", "NNODES"):
    os.environ.pop(name, None)
host, port = a.rdzv_endpoint.rsplit(":", 1)
os.environ.update(MASTER_ADDR=host, MASTER_PORT=port, NODE_RANK=str(a.node_rank), LOCAL_RANK="0",
                  RANK=str(a.node_rank * a.nproc_per_node), WORLD_SIZE=str(a.nnodes * a.nproc_per_node),
                  TORCHELASTIC_RUN_ID=a.rdzv_id)
print("torchrun", " ".join(sys.argv[1:]), flush=True)
os.execvp(sys.executable, [sys.executable, a.script, *a.args])
'''


def test_nodes_boot_at_once_and_a_failed_machine_moves_to_a_spare_no_other_node_holds(sim, cli):  # noqa: F811
    """Every first pull takes 4 s and node 1's machine fails to start: the nodes boot at once (node 2 is
    created before node 0 runs: one after another it would come after), node 1 moves to a spare of the
    cluster that neither other node holds, and down leaves nothing."""
    sim.fault("slow-boot", seconds=4)
    sim.fault("fail-start", offer=7101)
    try:
        up = cli.json("up", "--experiment", "par", "--image", "vastai/base:0.0.3", "--disk", "8", "--nodes", "3",
                      "--any-verified", "--deadline", "60")
    finally:
        sim.admin("DELETE", "/sim/faults")
    offers = [n["offer_id"] for n in up["nodes"]]
    assert offers[0] == 7100 and offers[2] == 7102 and offers[1] in (7103, 7104), offers
    assert [a["outcome"] for a in up["nodes"][1]["attempts"]] == ["failed", "ready"]
    records = cli.state()["instances"]
    history = {n: records[str(up["nodes"][n]["instance_id"])]["history"] for n in (0, 2)}
    running0 = next(h["at"] for h in history[0] if h["status"] == "running")
    assert history[2][0]["at"] < running0, history  # node 2 rented while node 0 was still pulling
    assert cli.json("down", "--experiment", "par")["overlay"] == up["overlay"]
    assert cli.account() == [] and not [o for o in sim.sdk().show_overlays() if o["name"] == up["overlay"]]


def test_torchrun_gets_the_flags_and_down_leaves_nothing(sim, cli, project):  # noqa: F811
    """run --torchrun on two nodes (config "torchrun": the stand-in): each runs `<it> --nnodes 2 --nproc-per-node 1 --node-rank i
    --rdzv-backend c10d --rdzv-endpoint <node 0>:<port> --rdzv-id tr script ARGS`, and the rendezvous
    works from those flags alone; watch pulls every node, then nothing is left."""
    (project / "bin").mkdir()
    (project / "bin" / "torchrun").write_text(FAKE_TORCHRUN)
    (project / "bin" / "torchrun").chmod(0o755)
    port = str(free_port())
    up = cli.json("up", "--experiment", "tr", "--image", IMAGE, "--disk", "8", "--nodes", "2", "--any-verified",
                  "--master-port", port)
    cli.json("push", "--experiment", "tr", "--no-setup")
    config = project / ".vasticlaude" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "torchrun": "python3 bin/torchrun"}))
    proc = cli.run("run", "--json", "--experiment", "tr", "--torchrun", "--", "python3", "rendezvous.py", "3", "0.1")
    assert proc.returncode == 0, proc.stderr
    started = json.loads(proc.stdout)["data"]
    assert started["torchrun"] and started["endpoint"] == f"{started['nodes'][0]['address']}:{port}"
    for rank in range(2):
        exp = json.loads((cli.vchome / "experiments" / f"tr-n{rank}" / "experiment.json").read_text())
        assert exp["runs"][-1]["command"] == (
            f"python3 bin/torchrun --nnodes 2 --nproc-per-node 1 --node-rank {rank} --rdzv-backend c10d --rdzv-endpoint "
            f"{started['endpoint']} --rdzv-id tr rendezvous.py 3 0.1")
    shown = [cli.json("logs", "--experiment", "tr", *node)["experiment"] for node in ([], ["--node", "1"])]
    assert shown == ["tr-n0", "tr-n1"]  # the group's log is rank 0's; --node picks another
    calm = cli.json("recover", "--experiment", "tr", "--dry-run")
    assert calm["fault"] is None and calm["done"] is False
    done = cli.json("watch", "--experiment", "tr", "--interval", "1")
    assert done["outcome"] == "finished" and done["down"]["overlay"] == up["overlay"]
    outs = [json.loads((project / ".vasticlaude" / "runs" / f"tr-n{r}" / "outputs" / "result.json").read_text())
            for r in range(2)]
    assert [o["world"] for o in outs] == [2, 2] and outs[0]["payload"] == outs[1]["payload"] == "rank0-0"
    assert cli.account() == [] and not [o for o in sim.sdk().show_overlays() if o["name"] == up["overlay"]]

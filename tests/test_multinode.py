"""Multi-node on the sandbox: clusters and overlay networks as vastai 1.9.1 reaches them, then the
product's `up --nodes N` / `run` / `watch` / `down` over them (README "Several nodes").

The sandbox part drives the official `vastai` CLI; the product part runs `vasticlaude` as
Claude does (subprocesses in a project folder, real ssh and rsync) with a job that does a real
TCP rendezvous over the overlay addresses, the contract torchrun's c10d store uses.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME


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
    assert by and all(len({o["gpu_name"] for o in group}) == 1 for group in by.values())
    cluster, group = max(by.items(), key=lambda kv: len(kv[1]))
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
        import subprocess
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

"""Vast's overlay networks: a private LAN for instances on machines of one physical cluster.

From vastai 1.9.1 `api/clusters.py` and `cli/commands/clusters.py` (the endpoints, methods,
payloads and the fields `show overlays` reads) and Vast's guide "Multi-Node training using
Torch + NCCL" (docs.vast.ai/multi-node-training-using-torch-nccl):

- `POST /overlay/ {"cluster_id", "name"}`: create one on a physical cluster (`cluster_id` on
  offers); the CLI prints the answer's `msg`.
- `GET /overlay/`: a list of `{overlay_id, name, internal_subnet, cluster_id, instances}`.
- `PUT /overlay/ {"name", "instance_id"}`: join a rented instance (its machine must be in the
  overlay's cluster); or at create, `--env "-n NAME"` (vastai's `parse_env` keeps only names of
  `a-z0-9-`, as the key `"-n NAME"`).
- `DELETE /overlay/ {"overlay_id"} | {"overlay_name"}`: "Deletes overlay and removes all of its
  associated instances". The sandbox reads "removes" as detaching them (they keep running, off
  the network); vasticlaude destroys its nodes before deleting, so either reading holds.

Addresses: on Vast an instance reads its overlay address from its own network interface. A
sandbox instance has no interface of its own, but every 127.x.y.z is local on Linux, so each
member gets a distinct one, 127.77.<overlay>.<n> in the overlay's `internal_subnet`, and the
sandbox exports it as `VAST_OVERLAY_IP` (with `VAST_OVERLAY_NAME`): the sandbox's choice, since
Vast documents no such variable.
"""
from __future__ import annotations

import re
import time

from .errors import ApiError, bad_request, not_found

NAME = re.compile(r"^[a-z0-9-]{1,64}$")  # what vastai's parse_env lets through for -n


def clusters(data: dict) -> set[int]:
    return {int(o["cluster_id"]) for o in data["offers"] if o.get("cluster_id") is not None}


def create(data: dict, body: dict) -> dict:
    name, cluster = body.get("name"), body.get("cluster_id")
    if not isinstance(name, str) or not NAME.match(name):
        raise bad_request("name must be lowercase letters, digits and dashes (what `--env \"-n NAME\"` accepts).")
    try:
        cluster = int(cluster)
    except (TypeError, ValueError):
        raise bad_request("cluster_id must be an integer.") from None
    if cluster not in clusters(data):
        raise not_found(f"Cluster {cluster} does not exist.", "no_such_cluster")
    table = data.setdefault("overlays", {})
    if any(o["name"] == name for o in table.values()):
        raise ApiError(409, "overlay_exists", f"An overlay named {name} already exists.")
    ids = data["next_ids"]
    ids["overlay"] = ids.get("overlay", 0) + 1
    oid = ids["overlay"]
    table[str(oid)] = {"overlay_id": oid, "name": name, "cluster_id": cluster, "created_at": time.time(),
                       "internal_subnet": f"127.77.{oid % 250 + 1}.0/24", "next_host": 1}
    return table[str(oid)]


def find(data: dict, name: object) -> dict:
    for overlay in data.get("overlays", {}).values():
        if overlay["name"] == name:
            return overlay
    raise not_found(f"No overlay named {name}.", "no_such_overlay")


def join(data: dict, overlay: dict, rec: dict) -> str:
    """Put the instance on the overlay; its address (new members get the next free host number)."""
    machine_cluster = next((o.get("cluster_id") for o in data["offers"] if o["machine_id"] == rec["machine_id"]), None)
    if machine_cluster is None or int(machine_cluster) != overlay["cluster_id"]:
        raise bad_request(f"Instance {rec['id']} is on machine {rec['machine_id']}, which is not in cluster "
                          f"{overlay['cluster_id']} of overlay {overlay['name']}.", "wrong_cluster")
    current = rec.get("overlay") or {}
    if current.get("overlay_id") == overlay["overlay_id"]:
        return current["ip"]
    if overlay["next_host"] > 254:
        raise bad_request(f"Overlay {overlay['name']} is full.")
    base = overlay["internal_subnet"].rsplit(".", 1)[0]
    ip = f"{base}.{overlay['next_host']}"
    overlay["next_host"] += 1
    rec["overlay"] = {"overlay_id": overlay["overlay_id"], "name": overlay["name"], "ip": ip}
    return ip


def requested(env: dict) -> str | None:
    """The overlay a create asks to join (`--env "-n NAME"` arrives as the key "-n NAME")."""
    for key in env:
        if key.startswith("-n "):
            return key[3:].strip()
    return None


def env_of(rec: dict) -> dict[str, str]:
    member = rec.get("overlay")
    if not member:
        return {}
    return {"VAST_OVERLAY_IP": member["ip"], "VAST_OVERLAY_NAME": member["name"]}


def rows(data: dict, live: list[dict]) -> list[dict]:
    out = []
    for overlay in data.get("overlays", {}).values():
        members = [r["id"] for r in live if (r.get("overlay") or {}).get("overlay_id") == overlay["overlay_id"]]
        out.append({k: overlay[k] for k in ("overlay_id", "name", "internal_subnet", "cluster_id")}
                   | {"instances": members})
    return out


def delete(data: dict, body: dict, live: list[dict]) -> dict:
    table = data.get("overlays", {})
    if body.get("overlay_id") is not None:
        overlay = table.get(str(body["overlay_id"]))
        if overlay is None:
            raise not_found(f"No overlay {body['overlay_id']}.", "no_such_overlay")
    else:
        overlay = find(data, body.get("overlay_name"))
    for rec in live:
        if (rec.get("overlay") or {}).get("overlay_id") == overlay["overlay_id"]:
            rec.pop("overlay")
    del table[str(overlay["overlay_id"])]
    return overlay

"""The sandbox's world: account, keys, market and instance records, persisted as JSON.

Everything the API reads or changes lives in one dict that is written atomically
after every change, so a kill -9 of the sandbox loses no instance record and a
restarted sandbox (or `sim status` from another process) sees the same world. The
running parts (containers, SSH endpoints, timers) live in `lifecycle.Engine`; this
module only keeps records and renders them in Vast's shapes (vast-api.md §8–§9).
"""
from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vasticlaude.store.jsonfile import read_json, write_json_atomic

from . import billing, market, overlays, query, realism
from .errors import ApiError, bad_request, forbidden, not_found, unauthorized

STATE_VERSION = 1
ONSTART_MAX = 4048
ACTIVE = {"created", "loading", "running", "frozen", "rebooting"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account, or one instance through its own restricted key."""

    instance_id: int | None = None

    @property
    def is_account(self) -> bool:
        return self.instance_id is None


class World:
    """Records of one sandbox account. Not thread-safe: the event loop owns it."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    # ----- persistence -------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path, *, seed: int, api_key: str | None,
             market_file: Path | None = None, machines: int = 60, balance: float = 100.0) -> "World":
        path = state_dir / "world.json"
        data = read_json(path)
        if data is None:
            data = _new_world(seed, api_key, market_file, machines, balance)
        elif api_key and api_key != data["api_key"]:
            data["api_key"] = api_key
        world = cls(path, data)
        world.save()
        return world

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    # ----- auth --------------------------------------------------------------------
    def authenticate(self, key: str | None) -> Principal:
        if key and secrets.compare_digest(key, self.data["api_key"]):
            return Principal()
        for rec in self.live_instances():
            if key and secrets.compare_digest(key, rec["instance_api_key"]):
                return Principal(instance_id=rec["id"])
        raise unauthorized()

    # ----- account -----------------------------------------------------------------
    @property
    def user(self) -> dict:
        return self.data["user"]

    def user_view(self) -> dict:
        keys = self.data["ssh_keys"]
        return {**self.user, "api_key": self.data["api_key"],
                "ssh_key": keys[0]["public_key"] if keys else None}

    def add_credit(self, amount: float) -> None:
        self.user["balance"] = round(self.user["balance"] + amount, 6)
        self.data["payments"].append({"id": len(self.data["payments"]) + 1, "amount": amount,
                                      "timestamp": time.time(), "type": "payment"})

    # ----- ssh keys ----------------------------------------------------------------
    def add_ssh_key(self, text: str) -> dict:
        text = _check_ssh_key(text)
        for key in self.data["ssh_keys"]:
            if key["public_key"] == text:
                return key
        key = {"id": self._next_id("ssh_key"), "user_id": self.user["id"], "public_key": text,
               "key": text, "created_at": _iso(time.time()), "deleted_at": None}
        self.data["ssh_keys"].append(key)
        return key

    def delete_ssh_key(self, key_id: int) -> None:
        before = len(self.data["ssh_keys"])
        self.data["ssh_keys"] = [k for k in self.data["ssh_keys"] if k["id"] != key_id]
        if len(self.data["ssh_keys"]) == before:
            raise not_found(f"SSH key {key_id} not found.", "no_such_key")

    def update_ssh_key(self, key_id: int, text: str) -> dict:
        text = _check_ssh_key(text)
        for key in self.data["ssh_keys"]:
            if key["id"] == key_id:
                key["public_key"] = key["key"] = text
                return key
        raise not_found(f"SSH key {key_id} not found.", "no_such_key")

    def authorized_keys(self, instance_id: int) -> list[str]:
        rec = self.data["instances"].get(str(instance_id))
        attached = rec.get("ssh_keys", []) if rec else []
        return [k["public_key"] for k in self.data["ssh_keys"]] + attached

    # ----- market ------------------------------------------------------------------
    def gpu_names(self) -> list[str]:
        return market.gpu_names(self.data["offers"])

    def search(self, body: dict) -> list[dict]:
        visible = [o for o in self.data["offers"] if not o.get("vanished")]
        try:
            return query.search(visible, body)
        except query.QueryError as err:
            raise bad_request(str(err)) from err

    def offer(self, offer_id: int) -> dict | None:
        for offer in self.data["offers"]:
            if offer["id"] == offer_id:
                return offer
        return None

    # ----- instances ---------------------------------------------------------------
    def live_instances(self) -> list[dict]:
        return [r for r in self.data["instances"].values() if not r.get("destroyed_at")]

    def instance(self, instance_id: int, principal: Principal | None = None) -> dict:
        rec = self.data["instances"].get(str(instance_id))
        if rec is None or rec.get("destroyed_at"):
            raise not_found(f"Instance {instance_id} not found.", "no_such_instance")
        if principal and not principal.is_account and principal.instance_id != instance_id:
            raise forbidden("This key may only manage its own instance.")
        return rec

    def find_instance(self, instance_id: int) -> dict | None:
        try:
            return self.instance(instance_id)
        except ApiError:
            return None

    def create_instance(self, offer_id: int, body: dict, now: float) -> dict:
        offer = self._rentable_offer(offer_id, body)
        bid_rule = offer.get("faults", {}).get("bid-too-low")
        if bid_rule is None:
            bid_rule = realism.active(self.data, None, "bid-too-low")
        spec = _launch_spec(body, offer, check_min_bid=bid_rule is None)
        network = overlays.requested(spec["env"])
        overlay = overlays.find(self.data, network) if network else None
        rec = {
            "id": self._next_id("instance"), "offer_id": offer["id"], "machine_id": offer["machine_id"],
            "host_id": offer["host_id"], "offer": market.price_offer(offer, "bid" if spec["is_bid"] else "on-demand", spec["disk"]),
            **spec, "instance_api_key": secrets.token_hex(32), "ssh_keys": [],
            "start_date": now, "intended_status": "running", "actual_status": "created",
            "cur_state": "running", "next_state": "running", "status_msg": "Creating instance",
            "phase_since": now, "ports": {}, "init_pid": None, "billing": billing.new_billing(now),
            "host_offline": False, "faults": dict(offer.get("faults", {})),
        }
        if overlay is not None:  # refused before the contract exists when the machine is elsewhere
            overlays.join(self.data, overlay, rec)
        offer["rented"], offer["rentable"] = True, False
        if rec["faults"].get("busy"):
            # Without cancel_unavail Vast still makes the contract, stopped, billing storage.
            rec.update(actual_status="stopped", cur_state="stopped", next_state="stopped",
                       status_msg="Unable to schedule: the GPU is in use; instance created stopped")
        if bid_rule is not None and spec["is_bid"]:
            floor = float(bid_rule.get("bid") or float(offer["min_bid"]) * float(bid_rule.get("factor", 1.25)))
            if spec["bid_price"] < floor:
                # dstack (api_client.py, PR #4036): Vast creates the interruptible instance
                # stopped and answers an error; the contract exists and bills storage.
                rec.update(actual_status="stopped", cur_state="stopped", next_state="stopped",
                           preempted={"competing_bid": floor, "until": None},
                           status_msg=f"Bid ${spec['bid_price']:.4f}/h is below the winning bid "
                                      f"${floor:.4f}/h: instance created stopped",
                           lost_bid=floor)
        self.data["instances"][str(rec["id"])] = rec
        return rec

    def release_offer(self, rec: dict) -> None:
        offer = self.offer(rec["offer_id"])
        if offer is not None and not offer.get("vanished"):
            offer["rented"], offer["rentable"] = False, True

    def _rentable_offer(self, offer_id: int, body: dict) -> dict:
        offer = self.offer(offer_id)
        if offer is None or offer.get("vanished") or offer.get("rented"):
            raise not_found(f"Offer {offer_id} is not available.", "no_such_ask")
        if offer.get("faults", {}).get("vanish_on_rent"):
            offer["vanished"] = True
            raise not_found(f"Offer {offer_id} is not available.", "no_such_ask")
        if offer.get("faults", {}).get("busy") and body.get("cancel_unavail"):
            raise ApiError(410, "unavailable", f"Offer {offer_id} cannot be scheduled now (cancel_unavail set).")
        return offer

    def _next_id(self, kind: str) -> int:
        ids = self.data["next_ids"]
        ids[kind] += 1
        return ids[kind]

    # ----- rendering ---------------------------------------------------------------
    def row(self, rec: dict, now: float) -> dict:
        return realism.adjust_row(self.data, rec, render_instance(rec, now, self.user["balance"]))


def _new_world(seed: int, api_key: str | None, market_file: Path | None,
               machines: int, balance: float) -> dict:
    rng = random.Random(seed)
    offers = market.load_market(market_file) if market_file else market.generate_market(seed, machines)
    now = time.time()
    return {
        "version": STATE_VERSION, "seed": seed, "created_at": now,
        "api_key": api_key or secrets.token_hex(32),
        "user": {"id": 100000 + rng.randrange(900000), "username": "sandbox", "fullname": "Sandbox User",
                 "email": "sandbox@vasticlaude.invalid", "balance": balance, "credit": 0.0,
                 "can_pay": True, "has_billing": True, "host_agreement_accepted": False,
                 "email_verified": True, "is_sandbox": True},
        "payments": [{"id": 1, "amount": balance, "timestamp": now, "type": "payment"}],
        "ssh_keys": [], "offers": offers, "instances": {}, "faults": [],
        "next_ids": {"instance": 20_000_000 + rng.randrange(9_000_000), "ssh_key": 40_000 + rng.randrange(10_000)},
    }


def _check_ssh_key(text: object) -> str:
    if not isinstance(text, str) or not text.strip().startswith(("ssh-", "ecdsa-", "sk-")):
        raise bad_request("ssh_key must be an OpenSSH public key (starting with 'ssh-').")
    return text.strip()


def _launch_spec(body: dict, offer: dict, check_min_bid: bool = True) -> dict:
    """Validate a create-instance body (vast-api.md §7) into the record's launch fields."""
    image = body.get("image")
    if not image and not body.get("template_hash_id"):
        raise bad_request("image is required (or a template_hash_id).")
    disk = _number(body.get("disk", 10), "disk")
    if disk <= 0 or disk > float(offer["disk_space"]):
        raise bad_request(f"disk must be between 0 and {offer['disk_space']} GB on this offer.")
    onstart = body.get("onstart") or ""
    if not isinstance(onstart, str) or len(onstart) > ONSTART_MAX:
        raise bad_request(f"onstart is limited to {ONSTART_MAX} characters (gzip+base64 a longer script).")
    price = body.get("price")
    is_bid = price is not None
    if is_bid:
        price = _number(price, "price")
        if not 0.001 <= price <= 128:
            raise bad_request("price must be between 0.001 and 128 $/h.", "invalid_price")
        if check_min_bid and price < float(offer["min_bid"]):
            raise bad_request(f"Bid ${price:.4f}/h is below the minimum bid ${offer['min_bid']:.4f}/h.", "invalid_price")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise bad_request("label must be a string.")
    return {"image": image or "template", "env": _env_dict(body.get("env")), "onstart": onstart,
            "runtype": _runtype(body), "disk": disk, "label": label, "is_bid": is_bid,
            "bid_price": price, "args": body.get("args"), "cancel_unavail": bool(body.get("cancel_unavail"))}


def _number(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise bad_request(f"{name} must be a number.") from None
    if number != number:
        raise bad_request(f"{name} must be a number.")
    return number


def _env_dict(env: object) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, str):
        from vastai.utils import (
            parse_env,  # the CLI's own parser: the string form means the same
        )
        env = parse_env(env)
    if not isinstance(env, dict):
        raise bad_request("env must be an object of variables.")
    return {str(k): str(v) for k, v in env.items()}


def _runtype(body: dict) -> str:
    runtype = body.get("runtype")
    if runtype is None:
        return "args" if body.get("args") is not None else "ssh"
    if not isinstance(runtype, str):
        raise bad_request("runtype must be a string.")
    return runtype


def has_direct(rec: dict) -> bool:
    return "direc" in rec["runtype"]


def render_instance(rec: dict, now: float, balance: float) -> dict:
    """The instance in the shape `GET /instances/{id}/` and the v1 list return."""
    offer = rec["offer"]
    gpu_rate, disk_rate = billing.gpu_rate(rec), billing.disk_rate(rec)
    running = rec["actual_status"] == "running"
    ports = rec.get("ports", {})
    row = {k: offer.get(k) for k in _OFFER_FIELDS}
    row.update({
        "id": rec["id"], "machine_id": rec["machine_id"], "host_id": rec["host_id"],
        "bundle_id": rec["offer_id"], "label": rec.get("label"),
        "actual_status": rec["actual_status"], "intended_status": rec["intended_status"],
        "cur_state": rec["cur_state"], "next_state": rec["next_state"], "status_msg": rec["status_msg"],
        "image_uuid": rec["image"], "image_runtype": rec["runtype"], "image_args": rec.get("args") or [],
        "onstart": rec["onstart"], "extra_env": [[k, v] for k, v in rec["env"].items()],
        "template_id": None, "template_hash_id": None, "template_name": None, "jupyter_token": None,
        "gpu_totalram": offer.get("gpu_total_ram"), "gpu_util": rec.get("stats", {}).get("gpu_util", 0.0) if running else None,
        "gpu_temp": 61.0 if running else None, "cpu_util": rec.get("stats", {}).get("cpu_util", 0.0) if running else None,
        "mem_usage": rec.get("stats", {}).get("mem_usage"), "mem_limit": offer.get("cpu_ram"), "vmem_usage": None,
        "disk_space": rec["disk"], "disk_usage": rec.get("stats", {}).get("disk_usage", 0.0),
        "disk_util": rec.get("stats", {}).get("disk_util", 0.0), "volume_info": [],
        "dph_base": gpu_rate, "dph_total": gpu_rate + disk_rate, "storage_cost": offer["storage_cost"],
        "storage_total_cost": disk_rate, "is_bid": rec["is_bid"], "min_bid": offer.get("min_bid"),
        "credit_balance": balance, "credit_discount": None,
        "search": {"gpuCostPerHour": offer["dph_base"], "diskHour": disk_rate, "totalHour": offer["dph_base"] + disk_rate},
        "instance": {"gpuCostPerHour": gpu_rate, "diskHour": disk_rate, "totalHour": gpu_rate + disk_rate},
        "ssh_host": "127.0.0.1" if ports.get("proxy") else None, "ssh_idx": "0",
        "ssh_port": ports.get("proxy"), "public_ipaddr": "127.0.0.1",
        "local_ipaddrs": "127.0.0.1\n", "ports": _docker_ports(rec) if running else {},
        "direct_port_start": ports.get("direct"), "direct_port_end": ports.get("direct"),
        "direct_port_count": 1 if ports.get("direct") else 0, "machine_dir_ssh_port": ports.get("direct"),
        "start_date": rec["start_date"], "end_date": offer.get("end_date"), "duration": now - rec["start_date"],
        "uptime_mins": (now - rec["phase_since"]) / 60 if running else 0,
        "client_run_time": rec["billing"]["gpu"]["seconds"] / 3600, "host_run_time": rec["billing"]["disk"]["seconds"] / 3600,
        "time_remaining": "", "time_remaining_isbid": "", "rentable": False, "external": False,
    })
    return row


_OFFER_FIELDS = (
    "gpu_name", "num_gpus", "gpu_ram", "gpu_frac", "gpu_arch", "compute_cap", "cuda_max_good",
    "driver_version", "driver_vers", "cpu_name", "cpu_cores", "cpu_cores_effective", "cpu_ram",
    "cpu_ghz", "cpu_arch", "has_avx", "disk_name", "disk_bw", "pcie_bw", "pci_gen", "gpu_lanes",
    "inet_up", "inet_down", "inet_up_cost", "inet_down_cost", "reliability2", "dlperf",
    "dlperf_per_dphtotal", "total_flops", "geolocation", "geolocode", "verification", "static_ip",
    "vram_costperhour", "credit_discount_max", "os_version", "hosting_type", "score",
)


def _docker_ports(rec: dict) -> dict:
    ports = rec.get("ports", {})
    out = {}
    if ports.get("direct"):
        out["22/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(ports["direct"])},
                         {"HostIp": "::", "HostPort": str(ports["direct"])}]
    for key, host_port in rec.get("extra_ports", {}).items():
        out[key] = [{"HostIp": "0.0.0.0", "HostPort": str(host_port)}]
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


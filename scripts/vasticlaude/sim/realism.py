"""What the real Vast does that a clean emulator forgets, each behaviour a fault of its own.

The sandbox is made from evidence, not from the product's wishes: every behaviour here names
its source (vast-api.md §17 gathers them; README.md "Faults on demand" has the table). Each is
off by default and can be turned on alone with `vasticlaude sim fault KIND`, or all together
with the realism profile (`sim start --realism`, or `sim fault realism`).

Scope of a behaviour, like the other faults: `--instance I` (that instance, at once),
`--offer O` / `--machine M` (instances rented there later), or no target (every instance,
now and later; `--rate P` makes it a seeded draw per instance, which is how the profile
spreads per-instance trouble). The global settings live in `world.data["realism"]`,
persisted with the world; `sim fault clear` removes them.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from .errors import bad_request, not_found

if TYPE_CHECKING:
    from .app import Sandbox

# ----- messages Vast shows (sources in SOURCES) ------------------------------------------------
SCHEDULING_MSG = "Attempting to schedule your instance. Your GPU is currently in use."
MANIFEST_MSG = "Error response from daemon: manifest for {image} not found: manifest unknown: manifest unknown"
DOCKER_BUILD_MSG = "docker_build() error writing dockerfile"
UNKNOWN_MSG = "No recent heartbeat from the host"
FROZEN_MSG = "Instance paused (frozen): memory kept, GPU still billed"
REBOOTING_MSG = "Rebooting instance"
GONE_V0_MSG = "Use /api/v1/instances/ instead"
DEFAULT_HIDDEN = ("rsync", "curl", "pkill")

# Behaviours that take a scope (instance, offer/machine, or everything).
SCOPED = {"ip-whitespace", "destroyed-404", "direct-ssh-dead", "proxy-ssh-dead", "bid-too-low",
          "slow-boot", "image-minimal", "df-host", "scheduling", "bandwidth-billing", "rebooting"}
# Behaviours of the account's API as a whole.
GLOBAL = {"ssh-keys-wrapped", "list-v0-gone"}
# Things that happen to one running instance now, for --seconds.
EVENTS = {"frozen", "unknown"}
KINDS = SCOPED | GLOBAL | EVENTS | {"realism"}

MODES = {
    "direct-ssh-dead": ("null", "refuse", "blackhole"),
    "proxy-ssh-dead": ("tls", "refuse", "blackhole"),
    "destroyed-404": ("404", "destroyed", "terminated"),
}
FAIL_MODES = ("exited", "created", "manifest", "docker-build")

# Where each behaviour comes from (README.md's table is made from the same facts).
SOURCES = {
    "ip-whitespace": "dstack src/dstack/_internal/core/backends/vastai/compute.py (`public_ipaddr.strip()`); "
                     "vastai 1.9.1 api/instances.py strips list rows only",
    "ssh-keys-wrapped": "vast-cli tests/live/test_live_ssh_key_cycle.py and tests/cli/test_keys_commands.py",
    "destroyed-404": "vast-cli vastai/cli/commands/machines.py (self-test), tests/cli/test_machines_commands.py; "
                     "PRs #405, #408; dstack api_client.py (`no_such_instance`)",
    "direct-ssh-dead": "SkyPilot sky/provision/vast/instance.py (get_cluster_info: ports['22/tcp'] may be None, "
                       "direct access blocked); vast-api.md §17",
    "proxy-ssh-dead": "vast-api.md §17 (proxy seen answering TLS); Vast users' scripts: proxy fails with "
                      "kex_exchange_identification while the direct port works",
    "frozen": "vastai 1.9.1 SKILL.md, Instance status values",
    "rebooting": "vastai 1.9.1 SKILL.md (transient); SkyPilot instance.py maps REBOOTING to INIT",
    "scheduling": "Vast docs guides/reference/troubleshooting.mdx; peers' fixtures with this status_msg",
    "unknown": "vastai 1.9.1 SKILL.md; SkyPilot instance.py (UNKNOWN/OFFLINE → INIT on refresh)",
    "bid-too-low": "dstack api_client.py VastAICreateInstanceError.created_instance_id (PR #4036)",
    "slow-boot": "dstack #2809; vast-cli self-test waits 900 s; SkyPilot DEFAULT_PROVISION_TIMEOUT 30 min",
    "fail-start": "vast-cli tests/cli/test_machines_commands.py and test_self_test_support_bundle.py",
    "bandwidth-billing": "vastai 1.9.1 cli/commands/offers.py (inet_up_cost/inet_down_cost in $/GB); Vast pricing docs",
    "image-minimal": "SkyPilot sky/provision/docker_utils.py installs rsync/curl into images; axolotl PR #1627; "
                     "eclipse-platform releng PR #2678 (pkill missing)",
    "df-host": "moby/moby #22677",
    "list-v0-gone": "SkyPilot sky/adaptors/vast.py `_patch_sdk_instances_endpoint`",
}


def profile(time_scale: float) -> dict:
    """The realism profile: every behaviour at once, per-instance ones at Vast-like rates.

    Durations are Vast-like seconds times the sandbox's time scale, like boot delays.
    """
    def s(seconds: float) -> float:
        return round(seconds * time_scale, 3)
    return {
        "ip-whitespace": {},
        "ssh-keys-wrapped": {},
        "destroyed-404": {"mode": "404"},
        "list-v0-gone": {},
        "bandwidth-billing": {},
        "bid-too-low": {"factor": 1.25},
        "direct-ssh-dead": {"rate": 0.3, "mode": "null"},
        "proxy-ssh-dead": {"rate": 0.15, "mode": "tls"},
        "slow-boot": {"seconds": [s(60), s(2700)]},  # up to 45 min (43 min in loading has been seen)
        "fail-start": {"rate": 0.05, "mode": ["manifest", "docker-build"]},
        "image-minimal": {"rate": 0.5, "tools": list(DEFAULT_HIDDEN)},
        "df-host": {},
        "scheduling": {"rate": 0.5, "seconds": s(45)},
        "rebooting": {"seconds": s(20)},
        "blips": {"rate": 0.3, "after": [s(60), s(1800)],
                  "events": {"unknown": s(30), "host-down": s(120), "container-exit": s(20), "frozen": s(30)}},
    }


# ----- which behaviours apply to an instance ---------------------------------------------------
def settings(data: dict) -> dict:
    return data.setdefault("realism", {})


def draw(data: dict, iid: int | None, kind: str) -> float:
    """A fixed number in [0, 1) per (world seed, instance, behaviour): runs repeat."""
    return random.Random(f"{data.get('seed', 0)}:{iid}:{kind}").random()


def active(data: dict, rec: dict | None, kind: str, iid: int | None = None) -> dict | None:
    """The settings of `kind` for this instance, or None when it does not apply."""
    if rec is not None:
        own = rec.get("faults", {}).get(kind)
        if own is not None:
            return own if isinstance(own, dict) else {}
        iid = rec["id"]
    spec = data.get("realism", {}).get(kind)
    if spec is None:
        return None
    rate = spec.get("rate")
    if rate is not None and draw(data, iid, kind) >= float(rate):
        return None
    if kind == "proxy-ssh-dead" and rec is not None and active(data, rec, "direct-ssh-dead") is not None:
        return None  # a global setting never kills both routes of one instance
    return spec


def value(data: dict, iid: int, kind: str, spec: dict, key: str, default: object = None) -> object:
    """A setting; a list is a choice (strings) or a range (numbers) drawn per instance."""
    raw = spec.get(key, default)
    if not isinstance(raw, list) or not raw:
        return raw
    rng = random.Random(f"{data.get('seed', 0)}:{iid}:{kind}:{key}")
    if all(isinstance(x, (int, float)) for x in raw):
        low, high = min(raw), max(raw)
        # Long boots are the tail: most draws land in the lower part of the range.
        return round(low + (high - low) * rng.random() ** 3, 3)
    return rng.choice(raw)


def adjust_row(data: dict, rec: dict, row: dict) -> dict:
    """The instance row as the real Vast may show it."""
    if active(data, rec, "ip-whitespace") is not None and isinstance(row.get("public_ipaddr"), str):
        row["public_ipaddr"] += "\n"
    direct = active(data, rec, "direct-ssh-dead")
    if direct is not None and direct.get("mode", "null") == "null" and "22/tcp" in (row.get("ports") or {}):
        row["ports"]["22/tcp"] = None
    return row


def gone_row(data: dict, rec: dict | None, iid: int, render) -> dict | None:
    """What a single GET of a destroyed (or unknown) instance answers under `destroyed-404`;
    None when the behaviour is off (then `{"instances": null}`)."""
    spec = active(data, rec, "destroyed-404", iid)
    if spec is None:
        return None
    mode = spec.get("mode", "404")
    if mode == "404" or rec is None:
        raise not_found(f"Instance {iid} not found.", "no_such_instance")
    row = render(rec)
    row.update(actual_status=mode, intended_status=mode, cur_state="unloaded", next_state="unloaded",
               ports={}, status_msg=f"Instance {mode}")
    return row


def hidden_tools(data: dict, rec: dict) -> tuple[str, ...]:
    spec = active(data, rec, "image-minimal")
    if spec is None:
        return ()
    tools = spec.get("tools") or DEFAULT_HIDDEN
    if isinstance(tools, str):
        tools = tools.split(",")
    return tuple(t.strip() for t in tools if t.strip())


def pull_progress(image: str, fraction: float) -> str:
    """A Docker-pull-like progress line for `status_msg` while loading (the sandbox's wording)."""
    total = 7.9 if "pytorch" in image or "cuda" in image else 3.2
    layers = 12
    done = max(0.0, min(1.0, fraction))
    layer = min(layers, int(done * layers) + 1)
    width = 30
    bar = "=" * int(done * width)
    bar = (bar[:-1] + ">" if bar else ">").ljust(width)
    return (f"Pulling {image}: layer {layer}/{layers} Downloading [{bar}] "
            f"{done * total:.2f}GB/{total:.2f}GB")


# ----- applying a fault -------------------------------------------------------------------------
async def apply(sandbox: "Sandbox", kind: str, spec: dict) -> dict:
    """`POST /sim/faults` for the realism kinds; the answer names the behaviour's source."""
    result = await _apply(sandbox, kind, spec)
    if kind in SOURCES:
        result["source"] = SOURCES[kind]
    return result


async def _apply(sandbox: "Sandbox", kind: str, spec: dict) -> dict:
    world, engine = sandbox.world, sandbox.engine
    if kind == "realism":
        table = settings(world.data)
        table.clear()
        table.update(profile(engine.time_scale))
        await engine.refresh_all()
        return {"realism": sorted(table)}
    params = _params(kind, spec)
    if kind in EVENTS or (kind == "rebooting" and "instance" in spec):
        rec = world.instance(int(_need_instance(kind, spec)))
        seconds = params.get("seconds")
        if kind == "frozen":
            await engine.freeze(rec, seconds)
        elif kind == "unknown":
            await engine.lose_heartbeat(rec, 10.0 if seconds is None else seconds)
        else:
            await engine.reboot(rec, wipe=False, rebooting=0.0 if seconds is None else seconds)
        return {"instance": rec["id"], "actual_status": rec["actual_status"]}
    if kind in GLOBAL or not any(k in spec for k in ("instance", "offer", "machine")):
        settings(world.data)[kind] = params
        await engine.refresh_all()
        return {"realism": sorted(settings(world.data))}
    if "instance" in spec:
        rec = world.instance(int(spec["instance"]))
        rec["faults"][kind] = params
        await engine.refresh(rec)
        return {"instance": rec["id"], "actual_status": rec["actual_status"]}
    from .admin import target_offers
    offers = target_offers(sandbox, spec)
    for offer in offers:
        offer.setdefault("faults", {})[kind] = params
    return {"offers": [o["id"] for o in offers]}


def _need_instance(kind: str, spec: dict) -> int:
    if "instance" not in spec:
        raise bad_request(f"{kind} needs an instance")
    return spec["instance"]


def _params(kind: str, spec: dict) -> dict:
    """The settings a kind keeps, validated."""
    params: dict = {}
    if kind in MODES:
        mode = spec.get("mode") or MODES[kind][0]
        if mode not in MODES[kind]:
            raise bad_request(f"{kind}: mode must be one of {', '.join(MODES[kind])}")
        params["mode"] = mode
    elif spec.get("mode") is not None:
        raise bad_request(f"{kind} takes no mode")
    for key in ("seconds", "rate", "bid"):
        if spec.get(key) is not None:
            try:
                params[key] = float(spec[key])
            except (TypeError, ValueError):
                raise bad_request(f"{key} must be a number") from None
            if params[key] < 0:
                raise bad_request(f"{key} must not be negative")
    if "rate" in params and not 0 <= params["rate"] <= 1:
        raise bad_request("rate must be between 0 and 1")
    if kind == "image-minimal":
        tools = spec.get("tools") or list(DEFAULT_HIDDEN)
        if isinstance(tools, str):
            tools = [t for t in tools.split(",") if t.strip()]
        if not isinstance(tools, list) or not all(isinstance(t, str) and t.strip() and "/" not in t for t in tools):
            raise bad_request("tools must be command names, e.g. rsync,curl,pkill")
        params["tools"] = [t.strip() for t in tools]
    if kind == "slow-boot" and "seconds" not in params:
        params["seconds"] = 600.0
    return params

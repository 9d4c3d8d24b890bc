"""`./dev live-check`: the real Vast's answers against what the product expects, and with `--rent`
the cheapest full flow, written down as a redacted record (README "Live check").

Read-only part: `show user`, a small offer search, `show instances`, `show ssh-keys`, each body
as the SDK gives it compared with what vast/rows.py expects (vast/shapes.py). Rent part: the
cheapest on-demand or interruptible offer whose worst case (GPU + 10 GB of storage for the whole
window, plus a little transfer) fits `--max-usd`; rent it with the user's SSH key, wait for
running, read its single GET, run `nvidia-smi -L` over SSH, destroy it, confirm it gone, then
read what Vast charged. The instance is destroyed whatever happens after the create.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from vasticlaude.core import money
from vasticlaude.errors import BILLING_RISK, FAILED, Error
from vasticlaude.ops.launch import register
from vasticlaude.output import progress
from vasticlaude.remote import ssh
from vasticlaude.vast import shapes
from vasticlaude.vast.gateway import Vast

KINDS = ("user", "offers", "instances", "ssh_keys")
DISK_GB = 10
QUERY = "rentable=true num_gpus=1 verified=any"
POLL_S = 5.0


@dataclass(frozen=True)
class RentAsk:
    max_usd: float = 0.10
    image: str = "vastai/base-image:cuda-12.4.1-auto"
    window_s: float = 900.0  # boot, ssh, nvidia-smi and destroy must fit in it; priced in full


def read_only(vast: Vast) -> dict:
    """Each read's body and every difference from what the normaliser expects."""
    bodies: dict[str, Any] = {}
    found: list[dict] = []
    errors: list[dict] = []
    for kind in KINDS:
        progress(f"live-check: {kind}")
        try:
            bodies[kind] = vast.raw(kind)
        except Error as err:
            errors.append({"kind": kind, "error": err.message})
            continue
        found += shapes.compare(kind, bodies[kind])
    return {"bodies": bodies, "differences": found, "errors": errors}


def worst_case(offer: dict, interruptible: bool, window_s: float) -> tuple[float, float]:
    """(GPU $/h asked, the most the window can cost: GPU + storage for all of it, 0.1 GB each way)."""
    gpu = float(offer.get("min_bid") or 0) * 1.05 if interruptible else float(offer.get("dph_base") or 0)
    storage = float(offer.get("storage_total_cost") or 0) or float(offer.get("storage_cost") or 0) * DISK_GB / 720
    moved = money.transfer_usd(0.1 * money.GB, 0.1 * money.GB, offer.get("inet_down_cost") or 0,
                               offer.get("inet_up_cost") or 0)
    return round(gpu, 6), (gpu + storage) * window_s / 3600 + moved


def choose(vast: Vast, ask: RentAsk) -> tuple[dict, bool, float, float]:
    """The cheapest offer (on-demand or interruptible) whose worst case fits the cap."""
    picks = []
    for interruptible in (False, True):
        for offer in vast.search_offers(QUERY, "dph", 10, interruptible, DISK_GB):
            gpu, cost = worst_case(offer, interruptible, ask.window_s)
            if gpu > 0:
                picks.append((cost, interruptible, gpu, offer))
    fits = sorted((p for p in picks if p[0] <= ask.max_usd), key=lambda p: p[0])
    if not fits:
        cheapest = min((p[0] for p in picks), default=None)
        raise Error("too_dear", f"no offer fits ${ask.max_usd:.2f} for a {ask.window_s / 60:g}-minute window "
                    f"(cheapest ${cheapest:.3f})" if cheapest is not None else "no offer found",
                    "Raise --max-usd a little, or shorten --window.", FAILED)
    cost, interruptible, gpu, offer = fits[0]
    return offer, interruptible, gpu, cost


def rent(vast: Vast, ask: RentAsk, key: ssh.Key, hide: list[str]) -> dict:
    """The cheapest full flow; `hide` gets the instance's key (for the redaction)."""
    register(vast, key)
    offer, interruptible, gpu, worst = choose(vast, ask)
    spec: dict[str, Any] = {"image": ask.image, "disk": DISK_GB, "label": f"vasticlaude-livecheck-{secrets.token_hex(3)}",
                            "ssh": True, "direct": True, "cancel_unavail": True}
    if interruptible:
        spec["bid_price"] = gpu
    progress(f"live-check: renting offer {offer['id']} ({offer.get('gpu_name')}, ${gpu:.3f}/h"
             f"{' bid' if interruptible else ''}; at most ${worst:.3f} for {ask.window_s:g} s)")
    started = time.time()
    created = vast.create(int(offer["id"]), **spec)
    hide.append(created.instance_api_key)
    iid = created.instance_id
    out: dict[str, Any] = {"offer": offer, "interruptible": interruptible, "gpu_dph": gpu, "worst_case_usd": round(worst, 4),
                           "instance_id": iid}
    try:
        _use(vast, iid, key, started + ask.window_s, out)
    except Error as err:
        out["error"] = err.message
    finally:
        out.update(_destroy(vast, iid))
    out["seconds"] = round(time.time() - started, 1)
    out["charged_usd"] = _charged(vast, iid, started)
    return out


def _use(vast: Vast, iid: int, key: ssh.Key, until: float, out: dict) -> None:
    try:
        vast.attach_ssh(iid, key.public)
    except Error as err:
        progress(f"live-check: attach ssh: {err.message}")
    row = _running(vast, iid, until, out)
    out["raw_instance"] = vast.raw("instance", iid)
    out["differences"] = shapes.compare("instance", out["raw_instance"])
    route = ssh.route_for(row, key.private)
    while ssh.probe_any(route, timeout=20) is None:
        if time.time() > until:
            raise Error("no_ssh", f"instance {iid} never answered SSH", "", FAILED)
        time.sleep(POLL_S)
    out["ssh_s"] = round(time.time() - out["created_at"], 1)
    proc = ssh.run(route, "nvidia-smi -L", timeout=60, backoff=(5.0, 10.0))
    out["nvidia_smi"] = proc.stdout.decode("utf-8", "replace").strip().splitlines()[:8]
    out["nvidia_smi_exit"] = proc.returncode


def _running(vast: Vast, iid: int, until: float, out: dict) -> dict:
    out["created_at"] = time.time()
    seen: list[str] = []
    while True:
        row = vast.instance(iid)
        status = (row or {}).get("actual_status")
        if not seen or seen[-1] != str(status):
            seen.append(str(status))
            progress(f"live-check: instance {iid}: {status} {(row or {}).get('status_msg', '')[:80]}")
        out["statuses"] = seen
        if row is not None and status == "running":
            out["boot_s"] = round(time.time() - out["created_at"], 1)
            return row
        if row is None or time.time() > until:
            raise Error("not_running", f"instance {iid} did not run within the window (seen: {', '.join(seen)})",
                        "", FAILED)
        time.sleep(POLL_S)


def _destroy(vast: Vast, iid: int) -> dict:
    """Destroy and confirm: the row gone (None) within a minute."""
    for attempt in range(3):
        try:
            vast.destroy(iid)
            break
        except Error as err:
            progress(f"live-check: destroy {iid}: {err.message}")
            time.sleep(POLL_S * (attempt + 1))
    deadline = time.time() + 60
    while time.time() < deadline:
        if vast.instance(iid) is None:
            return {"destroyed": True}
        time.sleep(POLL_S)
    raise Error("not_destroyed", f"instance {iid} is not confirmed gone", f"Destroy it now: vasticlaude down {iid}",
                BILLING_RISK)


def _charged(vast: Vast, iid: int, since: float) -> float | None:
    """What Vast charged for the instance (charges may lag: read a few times)."""
    for _ in range(4):
        amounts = [float(r.get("amount") or 0) for r in vast.charges(since - 3600)
                   if str(r.get("source") or "") == f"instance-{iid}"]
        if amounts:
            return round(sum(amounts), 6)
        time.sleep(POLL_S)
    return None


# ----- the record --------------------------------------------------------------------------------
def record(checked: dict, rented: dict | None, hide: list[str], when: float) -> dict:
    """The redacted record: differences, the bodies as tests/fixtures/vast shapes, the offers as a
    sandbox market (`vasticlaude sim start --market RECORD` loads its "offers")."""
    red = shapes.Redactor(secrets.token_hex(8), tuple(hide))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    bodies = dict(checked["bodies"])
    if rented and "raw_instance" in rented:
        bodies["instance"] = rented["raw_instance"]
    fixtures = [{"_source": f"vasticlaude live-check {stamp} (redacted)", "kind": kind, "body": red.body(kind, body)}
                for kind, body in bodies.items()]
    offers, _ = shapes.items("offers", checked["bodies"].get("offers") or [])
    out = {"v": 1, "kind": "vasticlaude-live-check", "at": stamp, "vastai": _vastai_version(),
           "differences": checked["differences"] + (rented or {}).get("differences", []),
           "errors": checked["errors"], "shapes": fixtures, "offers": [red.value("", o) for o in offers]}
    if rented is not None:
        kept = {k: v for k, v in rented.items() if k not in ("raw_instance", "differences", "offer")}
        kept["offer"] = red.value("", rented.get("offer") or {})
        out["rent"] = red.value("", kept)
    return out


def _vastai_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("vastai")
    except Exception:  # noqa: BLE001 — a missing version is no reason to fail the record
        return None

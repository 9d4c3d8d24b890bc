"""The sandbox's HTTP face: Vast's REST API as vastai 1.9.1 calls it, plus `/sim/` admin routes.

Paths are matched with and without the trailing slash, under `/api/v0` and
`/api/v1`. Every answer is JSON with `Content-Type: application/json` exactly (the
CLI refuses anything else on search). Errors carry Vast's body shape and status;
no request, however malformed, gets a traceback or takes the sandbox down.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import billing, cloudcopy, overlays, realism
from .errors import ApiError, bad_request, forbidden, not_found
from .faults import FaultBook
from .lifecycle import Engine
from .query import filter_instances
from .world import Principal, World

log = logging.getLogger("vasticlaude.sim")
PAGE_MAX = 25
EXECUTE_ALLOWED = ("ls", "du", "rm", "cat", "df", "tail", "head")


@dataclass
class Call:
    """One request as a handler sees it."""

    request: web.Request
    principal: Principal | None
    body: dict
    match: tuple[str, ...]

    def query_json(self, name: str, default: object) -> object:
        raw = self.request.query.get(name)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError:
            raise bad_request(f"{name} must be JSON.") from None

    def int_arg(self, index: int = 0) -> int:
        return int(self.match[index])


Handler = Callable[["Sandbox", Call], Awaitable[object]]


class Sandbox:
    """Routes requests to the world and the engine."""

    def __init__(self, world: World, engine: Engine, faults: FaultBook):
        self.world = world
        self.engine = engine
        self.faults = faults
        self.results: dict[str, dict] = {}
        self.store: Any = None  # the S3-compatible object store (objectstore.py), attached at start
        self.copies: set[asyncio.Task] = set()  # cloud copies under way (cloudcopy.py)

    # ----- plumbing ------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info.get("tail", "").strip("/")
        try:
            handler, match, auth = _route(request.method, path)
            ghost = None if path.startswith("/sim/") else await self._inject_fault(request.method, path)
            principal = self._authenticate(request) if auth != "none" else None
            if auth == "account" and principal is not None and not principal.is_account:
                raise forbidden("An instance key may only start, stop or destroy its own instance.")
            call = Call(request, principal, await _json_body(request), match)
            result = await handler(self, call)
            if ghost is not None:  # the change happened; the client only sees the error
                raise ghost
            return _json(200, result)
        except ApiError as err:
            return _json(err.status, err.body(), err.headers)
        except Exception:  # the sandbox must answer, never crash, whatever it is sent
            log.exception("unhandled error on %s %s", request.method, path)
            return _json(500, {"success": False, "error": "server_error", "msg": "Internal server error"})

    async def _inject_fault(self, method: str, path: str) -> ApiError | None:
        """Delay or fail this request per the fault rules; a ghost error is returned, not raised."""
        rule = self.faults.pick(method, path)
        if rule is None:
            return None
        if rule.delay:
            await asyncio.sleep(rule.delay)
        err = rule.error()
        if err is not None and not rule.ghost:
            raise err
        return err

    def _authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header.startswith("Bearer ") else request.query.get("api_key")
        return self.world.authenticate(key)

    def changed(self) -> None:
        self.engine.changed()
        self.engine.save()

    # ----- account ---------------------------------------------------------------------
    async def gpu_names(self, call: Call) -> object:
        return {"gpu_names": self.world.gpu_names()}

    async def user(self, call: Call) -> object:
        return self.world.user_view()

    # ----- offers ----------------------------------------------------------------------
    async def bundles(self, call: Call) -> object:
        return {"offers": self.world.search(call.body)}

    async def search_asks(self, call: Call) -> object:
        q = call.body.get("q", call.body)
        if not isinstance(q, dict):
            raise bad_request("q must be an object.")
        return {"offers": self.world.search(q)}

    async def create(self, call: Call) -> object:
        rec = self.world.create_instance(call.int_arg(), call.body, time.time())
        self.changed()
        if rec.pop("lost_bid", None) is not None:  # the contract exists; the answer is an error
            raise ApiError(400, "insufficient_bid", rec["status_msg"], extra={"new_contract": rec["id"]})
        return {"success": True, "new_contract": rec["id"], "instance_api_key": rec["instance_api_key"]}

    # ----- instances -------------------------------------------------------------------
    async def show_instance(self, call: Call) -> object:
        iid = call.int_arg()
        rec = self.world.find_instance(iid)
        if rec is None:  # gone: null, or what the real Vast may answer instead (realism)
            dead = self.world.data["instances"].get(str(iid))
            return {"instances": realism.gone_row(self.world.data, dead, iid,
                                                  lambda r: self.world.row(r, time.time()))}
        return {"instances": self.world.row(rec, time.time())}

    async def list_v1(self, call: Call) -> object:
        rows = self._rows(call.query_json("select_filters", {}))
        rows = _order(rows, call.query_json("order_by", [{"col": "id", "dir": "asc"}]))
        limit = _limit(call.request.query.get("limit"))
        start = _token_offset(call.request.query.get("after_token"))
        page = rows[start:start + limit]
        cols = call.query_json("select_cols", None)
        if isinstance(cols, list) and cols and cols != ["*"]:
            page = [{k: r.get(k) for k in cols} for r in page]
        more = start + limit < len(rows)
        return {"success": True, "instances": page, "total_instances": len(rows),
                "next_token": _token(start + limit) if more else None,
                "label_counts": _label_counts(rows)}

    async def list_v0(self, call: Call) -> object:
        if realism.active(self.world.data, None, "list-v0-gone") is not None:
            raise ApiError(410, "gone", realism.GONE_V0_MSG)
        rows = self._rows({})
        return {"instances": rows, "instances_found": len(rows)}

    async def filters(self, call: Call) -> object:
        """The distinct (status, verification, GPU) combinations, as the CLI's table reads them."""
        combos = {(r["actual_status"], r["verification"], r["gpu_name"]) for r in self._rows({})}
        return {"success": True, "filters": [{"actual_status": a, "verification": v, "gpu_name": g}
                                             for a, v, g in sorted(combos, key=str)]}

    def _rows(self, select_filters: object) -> list[dict]:
        if not isinstance(select_filters, dict):
            raise bad_request("select_filters must be an object.")
        now = time.time()
        rows = [self.world.row(r, now) for r in self.world.live_instances()]
        try:
            return filter_instances(rows, select_filters)
        except Exception as err:
            raise bad_request(f"bad select_filters: {err}") from err

    async def put_instance(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg(), call.principal)
        body = call.body
        if "label" in body and call.principal.is_account:
            rec["label"] = None if body["label"] is None else str(body["label"])
            self.changed()
            return {"success": True, "msg": f"label for {rec['id']} set to {rec['label']}."}
        state = body.get("state")
        if state not in ("running", "stopped"):
            if not call.principal.is_account:
                raise forbidden("An instance key may only start, stop or destroy its own instance.")
            raise bad_request("state must be 'running' or 'stopped' (or give a label).")
        msg = await self.engine.request_state(rec, state)
        self.changed()
        return {"success": True, "msg": msg}

    async def put_instances(self, call: Call) -> object:
        ids, state = call.body.get("ids"), call.body.get("state")
        if not isinstance(ids, list) or state not in ("running", "stopped"):
            raise bad_request("give ids (a list) and state 'running' or 'stopped'.")
        for iid in ids:
            await self.engine.request_state(self.world.instance(int(iid)), state)
        self.changed()
        return {"success": True}

    async def delete_instance(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg(), call.principal)
        await self.engine.destroy(rec)
        return {"success": True, "msg": f"destroying instance {rec['id']}."}

    async def delete_instances(self, call: Call) -> object:
        ids = call.body.get("instance_ids")
        if not isinstance(ids, list):
            raise bad_request("instance_ids must be a list.")
        for iid in ids:
            await self.engine.destroy(self.world.instance(int(iid)))
        return {"success": True}

    async def bid_price(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        if not rec["is_bid"]:
            raise bad_request("Only interruptible (bid) instances have a bid price.", "invalid_price")
        price = call.body.get("price")
        rec["bid_price"] = float(price) if price is not None else _winning_bid(rec)
        self.changed()
        return {"success": True, "msg": f"bid price of {rec['id']} set to {rec['bid_price']:.4f}."}

    async def reboot(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        await self.engine.reboot(rec, wipe=False)
        self.changed()
        return {"success": True, "msg": f"rebooting instance {rec['id']}."}

    async def recycle(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        await self.engine.reboot(rec, wipe=True)
        self.changed()
        return {"success": True, "msg": f"recycling instance {rec['id']}."}

    async def request_logs(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        text = self.engine.container_log(rec)
        tail = call.body.get("tail")
        if tail is not None:
            text = "\n".join(text.splitlines()[-max(0, int(str(tail))):])
        if call.body.get("filter"):
            text = "\n".join(l for l in text.splitlines() if str(call.body["filter"]) in l)
        return self._result(call, text)

    async def command(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        command = str(call.body.get("command", "")).strip()
        if not command or command.split()[0] not in EXECUTE_ALLOWED:
            raise bad_request(f"Only {', '.join(EXECUTE_ALLOWED)} commands can be executed.")
        if rec["actual_status"] != "running":
            raise bad_request(f"Instance {rec['id']} is not running.")
        text = await self.engine.execute(rec, command)
        return {**self._result(call, text), "writeable_path": ""}

    def _result(self, call: Call, text: str) -> dict:
        token = secrets.token_urlsafe(12)
        self.results[token] = {"text": text, "gets": 0, "at": time.time()}
        base = f"{call.request.scheme}://{call.request.host}"
        return {"success": True, "result_url": f"{base}/sim/results/{token}"}

    async def result(self, call: Call) -> object:
        entry = self.results.get(call.match[0])
        if entry is None:
            raise not_found("No such result.")
        entry["gets"] += 1
        if entry["gets"] == 1:  # Vast's logs are not ready at once; the client polls
            raise not_found("Result not ready yet.", "not_ready")
        return _Text(entry["text"])

    # ----- ssh keys ----------------------------------------------------------------------
    async def add_key(self, call: Call) -> object:
        key = self.world.add_ssh_key(call.body.get("ssh_key"))
        self.changed()
        return {"success": True, "key": key, **key}

    async def list_keys(self, call: Call) -> object:
        if realism.active(self.world.data, None, "ssh-keys-wrapped") is not None:
            return {"ssh_keys": self.world.data["ssh_keys"]}
        return self.world.data["ssh_keys"]

    async def delete_key(self, call: Call) -> object:
        self.world.delete_ssh_key(call.int_arg())
        self.changed()
        return {"success": True}

    async def update_key(self, call: Call) -> object:
        key = self.world.update_ssh_key(call.int_arg(), call.body.get("ssh_key"))
        self.changed()
        return {"success": True, "key": key}

    async def attach_key(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        text = call.body.get("ssh_key")
        if not isinstance(text, str) or not text.startswith(("ssh-", "ecdsa-", "sk-")):
            raise bad_request("ssh_key must be an OpenSSH public key (starting with 'ssh-').")
        if text.strip() not in rec["ssh_keys"]:
            rec["ssh_keys"].append(text.strip())
        self.changed()
        return {"success": True, "msg": f"SSH key attached to instance {rec['id']}."}

    async def detach_key(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        index = call.int_arg(1)
        if not 0 <= index < len(rec["ssh_keys"]):
            raise not_found(f"Key {index} is not attached to instance {rec['id']}.")
        rec["ssh_keys"].pop(index)
        self.changed()
        return {"success": True}

    async def instance_keys(self, call: Call) -> object:
        rec = self.world.instance(call.int_arg())
        return {"success": True, "ssh_keys": [{"id": i, "public_key": k} for i, k in enumerate(rec["ssh_keys"])]}

    # ----- overlay networks (vastai 1.9.1 api/clusters.py) ----------------------------------
    async def show_overlays(self, call: Call) -> object:
        return overlays.rows(self.world.data, self.world.live_instances())

    async def create_overlay(self, call: Call) -> object:
        made = overlays.create(self.world.data, call.body)
        self.changed()
        return {"success": True, "overlay_id": made["overlay_id"],
                "msg": f"Overlay network {made['name']} created on cluster {made['cluster_id']} "
                       f"(subnet {made['internal_subnet']})."}

    async def join_overlay(self, call: Call) -> object:
        overlay = overlays.find(self.world.data, call.body.get("name"))
        try:
            rec = self.world.instance(int(call.body.get("instance_id")))
        except (TypeError, ValueError):
            raise bad_request("instance_id must be an integer.") from None
        ip = overlays.join(self.world.data, overlay, rec)
        self.engine.set_network(rec)
        self.changed()
        return {"success": True, "msg": f"Instance {rec['id']} joined overlay {overlay['name']} ({ip})."}

    async def delete_overlay(self, call: Call) -> object:
        members = [r for r in self.world.live_instances()
                   if r.get("overlay") and (r["overlay"]["overlay_id"] == call.body.get("overlay_id")
                                            or r["overlay"]["name"] == call.body.get("overlay_name"))]
        gone = overlays.delete(self.world.data, call.body, self.world.live_instances())
        for rec in members:
            self.engine.set_network(rec)
        self.changed()
        return {"success": True, "msg": f"Overlay {gone['name']} deleted ({len(members)} instances removed from it)."}

    # ----- billing -----------------------------------------------------------------------
    async def charges(self, call: Call) -> object:
        recs = list(self.world.data["instances"].values())
        window = call.query_json("select_filters", {})
        day = window.get("day", {}) if isinstance(window, dict) else {}
        rows = [billing.charge_row(r) for r in recs if _in_window(r, day)]
        limit = _limit(call.request.query.get("limit"), 500)
        start = _token_offset(call.request.query.get("after_token"))
        more = start + limit < len(rows)
        return {"success": True, "results": rows[start:start + limit], "count": len(rows[start:start + limit]),
                "total": len(rows), "next_token": _token(start + limit) if more else None}

    async def invoices_v0(self, call: Call) -> object:
        rows = []
        for rec in self.world.data["instances"].values():
            for kind in ("gpu", "disk"):
                item = rec["billing"][kind]
                rate = billing.gpu_rate(rec) if kind == "gpu" else billing.disk_rate(rec)
                rows.append({"type": "charge", "amount": round(item["amount"], 6), "instance_id": rec["id"],
                             "description": f"Instance {rec['id']} {kind} charges", "quantity": item["seconds"] / 3600,
                             "rate": rate, "timestamp": rec["billing"]["last"]})
            for kind, item in billing.bandwidth_items(rec):
                rows.append({"type": "charge", "amount": round(item["amount"], 6), "instance_id": rec["id"],
                             "description": f"Instance {rec['id']} {kind} bandwidth charges",
                             "quantity": item["bytes"] / billing.GB, "rate": billing.bandwidth_rate(rec, kind),
                             "timestamp": rec["billing"]["last"]})
        rows += [{"type": "payment", "amount": p["amount"], "description": "Credit added",
                  "timestamp": p["timestamp"], "instance_id": None} for p in self.world.data["payments"]]
        spent = sum(r["amount"] for r in rows if r["type"] == "charge")
        return {"invoices": rows, "current": {"charges": spent, "service_fee": 0.0, "total": spent}}

    async def invoices_v1(self, call: Call) -> object:
        rows = [{"id": p["id"], "type": "payment", "amount": p["amount"], "when": p["timestamp"],
                 "description": "Credit added"} for p in self.world.data["payments"]]
        return {"success": True, "results": rows, "count": len(rows), "total": len(rows), "next_token": None}

    # ----- admin (/sim/) -------------------------------------------------------------------
    async def health(self, call: Call) -> object:
        return {"ok": True, "sandbox": True, "time_scale": self.engine.time_scale}

    # ----- cloud connections and cloud copy (cloudcopy.py) --------------------------------
    async def cloud_connections(self, call: Call) -> object:
        return cloudcopy.connections() if self.store is not None else []

    async def cloud_copy(self, call: Call) -> object:
        if self.store is None:
            raise bad_request("This sandbox has no object store, so no cloud connection.")
        return await cloudcopy.start(self, call.body)

    async def state(self, call: Call) -> object:
        now = time.time()
        rows = [self.world.row(r, now) for r in self.world.live_instances()]
        return {"balance": self.world.user["balance"], "time_scale": self.engine.time_scale,
                "instances": [{k: r[k] for k in ("id", "label", "actual_status", "intended_status", "status_msg",
                                                  "gpu_name", "dph_total", "ssh_port", "disk_space", "disk_usage")}
                              for r in rows],
                "spent": sum(billing.total(r) for r in self.world.data["instances"].values()),
                "faults": self.faults.describe() + (self.store.describe() if self.store else []),
                "offers": len(self.world.data["offers"]),
                "realism": self.world.data.get("realism", {})}

    async def add_fault(self, call: Call) -> object:
        from .admin import (
            apply_fault,  # the fault catalogue lives with the admin helpers
        )
        result = await apply_fault(self, call.body)
        self.changed()
        return {"success": True, **result}

    async def clear_faults(self, call: Call) -> object:
        self.faults.clear()
        if self.store is not None:
            self.store.clear()
        for offer in self.world.data["offers"]:
            offer.pop("faults", None)
        for rec in self.world.data["instances"].values():
            rec["faults"] = {}
        self.world.data["realism"] = {}
        await self.engine.refresh_all()
        self.changed()
        return {"success": True}


class _Text(str):
    """A plain-text answer (the result_url of logs and execute)."""


def _json(status: int, data: object, headers: dict | None = None) -> web.Response:
    if isinstance(data, _Text):
        return web.Response(status=status, body=str(data).encode(), headers={"Content-Type": "text/plain"})
    body = json.dumps(data).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json", **(headers or {})})


async def _json_body(request: web.Request) -> dict:
    if request.method in ("GET", "HEAD") or not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise bad_request("Malformed JSON in request body.", "invalid_request") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object.", "invalid_request")
    return data


def _limit(raw: str | None, maximum: int = PAGE_MAX) -> int:
    try:
        value = int(raw) if raw is not None else maximum
    except ValueError:
        raise bad_request("limit must be an integer.") from None
    if value < 1:
        raise bad_request("limit must be positive.")
    return min(value, maximum)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _token_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        raise bad_request("Invalid after_token.", "invalid_token") from None


def _order(rows: list[dict], order_by: object) -> list[dict]:
    if not isinstance(order_by, list):
        raise bad_request("order_by must be a list.")
    for spec in reversed(order_by):
        if not isinstance(spec, dict) or "col" not in spec:
            raise bad_request("order_by entries need a col.")
        rows = sorted(rows, key=lambda r: (r.get(spec["col"]) is None, r.get(spec["col"]) or 0
                                           if not isinstance(r.get(spec["col"]), str) else r.get(spec["col"])),
                      reverse=spec.get("dir") == "desc")
    return rows


def _label_counts(rows: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("label") or ""] = counts.get(row.get("label") or "", 0) + 1
    return counts


def _in_window(rec: dict, day: dict) -> bool:
    start, end = rec["start_date"], rec.get("destroyed_at") or time.time()
    gte, lte = day.get("gte"), day.get("lte")
    return (lte is None or start <= float(lte)) and (gte is None or end >= float(gte))


def _winning_bid(rec: dict) -> float:
    pre = rec.get("preempted")
    floor = float(rec["offer"].get("min_bid") or rec["bid_price"])
    return round(max(floor, pre["competing_bid"] if pre else floor) * 1.01, 4)


_N = r"(\d+)"
_ROUTES: list[tuple[str, str, str, Handler]] = [
    ("GET", r"/api/v0/gpu_names/unique", "none", Sandbox.gpu_names),
    ("GET", r"/api/v0/users/current", "account", Sandbox.user),
    ("POST", r"/api/v0/bundles", "account", Sandbox.bundles),
    ("PUT", r"/api/v0/search/asks", "account", Sandbox.search_asks),
    ("PUT", rf"/api/v0/asks/{_N}", "account", Sandbox.create),
    ("GET", r"/api/v1/instances", "account", Sandbox.list_v1),
    ("GET", r"/api/v0/instances", "account", Sandbox.list_v0),
    ("GET", r"/api/v0/instances/filters", "account", Sandbox.filters),
    ("GET", rf"/api/v0/instances/{_N}", "account", Sandbox.show_instance),
    ("PUT", rf"/api/v0/instances/{_N}", "instance", Sandbox.put_instance),
    ("PUT", r"/api/v0/instances", "account", Sandbox.put_instances),
    ("DELETE", rf"/api/v0/instances/{_N}", "instance", Sandbox.delete_instance),
    ("DELETE", r"/api/v0/instances", "account", Sandbox.delete_instances),
    ("PUT", rf"/api/v0/instances/bid_price/{_N}", "account", Sandbox.bid_price),
    ("PUT", rf"/api/v0/instances/reboot/{_N}", "account", Sandbox.reboot),
    ("PUT", rf"/api/v0/instances/recycle/{_N}", "account", Sandbox.recycle),
    ("PUT", rf"/api/v0/instances/request_logs/{_N}", "account", Sandbox.request_logs),
    ("PUT", rf"/api/v0/instances/command/{_N}", "account", Sandbox.command),
    ("POST", rf"/api/v0/instances/{_N}/ssh", "account", Sandbox.attach_key),
    ("GET", rf"/api/v0/instances/{_N}/ssh", "account", Sandbox.instance_keys),
    ("DELETE", rf"/api/v0/instances/{_N}/ssh/{_N}", "account", Sandbox.detach_key),
    ("POST", r"/api/v0/ssh", "account", Sandbox.add_key),
    ("GET", r"/api/v0/ssh", "account", Sandbox.list_keys),
    ("DELETE", rf"/api/v0/ssh/{_N}", "account", Sandbox.delete_key),
    ("PUT", rf"/api/v0/ssh/{_N}", "account", Sandbox.update_key),
    ("GET", r"/api/v0/overlay", "account", Sandbox.show_overlays),
    ("POST", r"/api/v0/overlay", "account", Sandbox.create_overlay),
    ("PUT", r"/api/v0/overlay", "account", Sandbox.join_overlay),
    ("DELETE", r"/api/v0/overlay", "account", Sandbox.delete_overlay),
    ("GET", r"/api/v0/charges", "account", Sandbox.charges),
    ("GET", r"/api/v0/users/me/invoices", "account", Sandbox.invoices_v0),
    ("GET", r"/api/v1/invoices", "account", Sandbox.invoices_v1),
    ("GET", r"/api/v0/users/cloud_integrations", "account", Sandbox.cloud_connections),
    ("POST", r"/api/v0/commands/rclone", "account", Sandbox.cloud_copy),
    ("GET", r"/sim/results/([A-Za-z0-9_-]+)", "none", Sandbox.result),
    ("GET", r"/sim/health", "none", Sandbox.health),
    ("GET", r"/sim/state", "account", Sandbox.state),
    ("POST", r"/sim/faults", "account", Sandbox.add_fault),
    ("DELETE", r"/sim/faults", "account", Sandbox.clear_faults),
]
_COMPILED = [(m, re.compile(p + r"\Z"), a, h) for m, p, a, h in _ROUTES]


def _route(method: str, path: str) -> tuple[Handler, tuple[str, ...], str]:
    allowed = False
    for route_method, pattern, auth, handler in _COMPILED:
        found = pattern.match(path)
        if found and route_method == method:
            return handler, found.groups(), auth
        allowed = allowed or bool(found)
    if allowed:
        raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}.")
    raise not_found(f"No API endpoint at {path}.")


def build_app(sandbox: Sandbox) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", sandbox.dispatch)
    return app

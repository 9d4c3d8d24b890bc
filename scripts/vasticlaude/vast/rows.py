"""The one normaliser of what Vast answers: every row the gateway returns passes through here.

The real API is looser than its docs (README "Realism"): strings carry whitespace
(`public_ipaddr` ends in a newline in single GETs), numbers arrive as strings, fields are
null, lists come bare or wrapped (`{"ssh_keys": [...]}`, `{"instances": [...]}`), and
`ports["22/tcp"]` is null when the host maps no direct SSH port. The rest of the package
reads only what this module gives back:

- every string stripped (in nested dicts and lists too);
- known numeric fields as int or float (a value that does not parse stays as it was);
- `ports` always a dict (null → {}), `status_msg` always a string, `actual_status` and
  `intended_status` lower-case words or None (their meaning is core/lifecycle's);
- lists always lists, whichever wrapper the server chose.

Pure: no I/O, no SDK, so it is tested on recorded shapes (tests/fixtures/vast/).
"""
from __future__ import annotations

import re
from typing import Any

INT_FIELDS = {"id", "machine_id", "host_id", "ssh_port", "num_gpus", "ask_contract_id", "bundle_id",
              "cpu_cores", "gpu_ram", "cpu_ram", "new_contract", "direct_port_count", "direct_port_start",
              "direct_port_end", "inet_up_billed", "inet_down_billed", "gpu_totalram", "user_id", "verification_id",
              "cluster_id"}
FLOAT_FIELDS = {"dph_total", "dph_base", "storage_cost", "storage_total_cost", "inet_up_cost", "inet_down_cost",
                "min_bid", "bid_price", "start_date", "end_date", "disk_space", "disk_util", "gpu_util",
                "cpu_util", "mem_usage", "mem_limit", "dlperf", "dlperf_per_dphtotal", "reliability", "reliability2",
                "score", "inet_up", "inet_down", "disk_bw", "gpu_mem_bw", "total_flops", "cuda_max_good",
                "duration", "credit", "balance", "vram_costperhour", "gpu_frac", "cpu_cores_effective",
                "pcie_bw", "compute_cap", "discounted_dph_total", "discount_rate", "rentable_until",
                "cur_state_since", "storage_dph", "gpu_dph", "total_dph"}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
STATUS_FIELDS = ("actual_status", "intended_status", "cur_state", "next_state")


def clean(value: Any) -> Any:
    """Strings stripped, at every depth."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return int(value) if kind is int and float(value).is_integer() else (float(value) if kind is float else value)
    if isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
        return int(number) if kind is int and number.is_integer() else number
    return value


def row(body: Any) -> dict:
    """One generic row: strings stripped, known numbers as numbers."""
    out = clean(dict(body or {}))
    for key in out.keys() & INT_FIELDS:
        out[key] = _number(out[key], int)
    for key in out.keys() & FLOAT_FIELDS:
        out[key] = _number(out[key], float)
    return out


def _listed(body: Any, *wrappers: str) -> list:
    """A list, bare or under one of `wrappers` (or any single list value); [] for null."""
    if body is None:
        return []
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for name in wrappers:
            if name in body:
                return list(body[name] or [])
        lists = [v for v in body.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise ValueError(f"expected a list of rows, got {type(body).__name__}")


def instance(body: Any) -> dict | None:
    """An instance row (bare, or `{"instances": row}` as the single GET wraps it); None for none."""
    if isinstance(body, dict) and "instances" in body and not isinstance(body.get("instances"), list) \
            and "id" not in body:
        body = body["instances"]
    if body is None:
        return None
    out = row(body)
    ports = out.get("ports")
    out["ports"] = ports if isinstance(ports, dict) else {}
    out["status_msg"] = str(out.get("status_msg") or "")
    for key in STATUS_FIELDS:
        if key in out:
            value = out[key]
            out[key] = value.lower() if isinstance(value, str) and value else None
    if isinstance(out.get("extra_env"), list):  # [[name, value], ...] as the API gives it; the SDK makes a dict
        out["extra_env"] = {pair[0]: pair[1] for pair in out["extra_env"] if isinstance(pair, list) and len(pair) == 2}
    return out


def instances(body: Any) -> list[dict]:
    return [r for r in (instance(b) for b in _listed(body, "instances")) if r is not None]


def offers(body: Any) -> list[dict]:
    return [row(b) for b in _listed(body, "offers")]


def ssh_keys(body: Any) -> list[dict]:
    return [row(b) for b in _listed(body, "ssh_keys", "keys")]


def overlays(body: Any) -> list[dict]:
    """`show overlays` rows: {overlay_id, name, internal_subnet, cluster_id, instances: [ids]}."""
    out = []
    for item in _listed(body, "overlays", "results"):
        one = row(item)
        for key in ("overlay_id", "cluster_id"):
            one[key] = _number(one.get(key), int)
        one["instances"] = [int(i) for i in one.get("instances") or [] if str(i).strip().isdigit()]
        out.append(one)
    return out


def user(body: Any) -> dict:
    out = row(body)
    out.pop("api_key", None)
    return out

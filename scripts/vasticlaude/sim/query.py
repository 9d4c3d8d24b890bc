"""The server side of Vast's search filter language, for the sandbox.

``search`` answers a ``POST /api/v0/bundles/`` body exactly as vastai 1.9.1 builds it
(vast-api.md §6): ``{"field": {"op": value}, ..., "order": [[f, dir]], "type": ...,
"limit": n, "allocated_storage": gb}``. The client leaves most values as strings ("1",
"0.99"), converts GB to MB and days to seconds, and turns underscores into spaces, so the
server must coerce values to each field's type — that is what this module does.

Malformed input raises :class:`QueryError` (the HTTP layer turns it into a 400
``invalid_args``); a well-formed filter nothing satisfies simply returns ``[]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from vasticlaude.sim.market import (
    country_code,
    normalize_offer_type,
    numeric_driver_version,
    price_offer,
)

DEFAULT_LIMIT = 64  # what Vast returns when the body has no "limit"
DEFAULT_STORAGE_GB = 5.0
DEFAULT_ORDER: list[list[str]] = [["score", "desc"]]
CONTROL_KEYS = frozenset(
    {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"})

OPERATORS = {"eq": "eq", "neq": "neq", "gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte",
             "in": "in", "notin": "notin", "nin": "notin"}
MEMBERSHIP_OPS = frozenset({"in", "notin"})

# The CLI already maps these (api/query.py offers_alias), but raw API callers may not.
ALIASES = {"cuda_vers": "cuda_max_good", "dph": "dph_total", "dlperf_usd": "dlperf_per_dphtotal",
           "flops_usd": "flops_per_dphtotal", "display_active": "gpu_display_active"}

NUMERIC_FIELDS = frozenset({
    "id", "ask_contract_id", "bundle_id", "machine_id", "host_id", "num_gpus", "gpu_ram",
    "gpu_total_ram", "gpu_frac", "compute_cap", "gpu_lanes", "gpu_mem_bw", "gpu_max_power",
    "gpu_max_temp", "bw_nvlink", "pci_gen", "pcie_bw", "cuda_max_good", "driver_vers",
    "cpu_cores", "cpu_cores_effective", "cpu_ram", "cpu_ghz", "has_avx", "disk_space",
    "disk_bw", "dph_base", "dph_total", "storage_cost", "storage_total_cost",
    "vram_costperhour", "discounted_dph_total", "credit_discount_max", "min_bid", "inet_up",
    "inet_down", "inet_up_cost", "inet_down_cost", "direct_port_count", "reliability",
    "reliability2", "reliability_mult", "expected_reliability", "dlperf",
    "dlperf_per_dphtotal", "flops_per_dphtotal", "total_flops", "score", "geolocode",
    "vericode", "hosting_type", "cluster_id", "start_date", "end_date", "duration",
})
BOOL_FIELDS = frozenset({
    "verified", "rentable", "rented", "external", "static_ip", "vms_enabled",
    "gpu_display_active", "is_bid", "datacenter", "is_vm_deverified",
})
SPECIAL_KINDS = {"gpu_name": "gpu", "geolocation": "geo", "driver_version": "driver"}


class QueryError(ValueError):
    """A search body or filter the server cannot interpret (HTTP 400 invalid_args)."""


@dataclass(frozen=True)
class Condition:
    """One ``field op value`` test; ``kind`` None means "infer from each row's value"."""

    field: str
    op: str
    value: Any
    kind: str | None


@dataclass(frozen=True)
class SearchOptions:
    """The non-filter keys of a search body, validated."""

    offer_type: str
    storage_gb: float
    order: list[list[str]]
    limit: int


# --------------------------------------------------------------------------- entry points


def search(offers: Iterable[dict], body: Any, now: float | None = None) -> list[dict]:
    """Price, filter, order and cut ``offers`` as Vast answers a ``/bundles/`` body.

    Filters see the *priced* offer, so ``dph_total`` includes storage for
    ``allocated_storage`` and is the min bid for a bid search. Offers whose disk is smaller
    than ``allocated_storage`` cannot host the request and are left out. A ``--new`` style
    ``{"q": {...}}`` wrapper is unwrapped. ``now`` refreshes ``duration`` from ``end_date``.
    """
    body = _unwrap(body)
    options = parse_options(body)
    conditions = compile_filters(body)
    hits = []
    for offer in offers:
        priced = price_offer(offer, options.offer_type, options.storage_gb, now)
        if _fits_disk(priced, options.storage_gb) and matches_all(priced, conditions):
            hits.append(priced)
    return order_rows(hits, options.order)[: options.limit]


def filter_instances(rows: Iterable[dict], select_filters: Any) -> list[dict]:
    """Rows of the v1 instance list that pass ``select_filters`` (same operators as search).

    Accepts the decoded dict or the JSON string from the query string. No key is treated as
    a control key here: every key names a column.
    """
    if select_filters is None or select_filters == "":
        return list(rows)
    if isinstance(select_filters, str):
        try:
            select_filters = json.loads(select_filters)
        except json.JSONDecodeError as exc:
            raise QueryError(f"select_filters is not valid JSON: {exc}") from None
    conditions = compile_filters(select_filters, control_keys=frozenset())
    return [row for row in rows if matches_all(row, conditions)]


def _unwrap(body: Any) -> dict:
    """The filter dict itself, whether sent bare or as ``{"select_cols": .., "q": {..}}``."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise QueryError(f"search body must be a JSON object, got {type(body).__name__}")
    inner = body.get("q")
    if isinstance(inner, dict):
        return inner
    return body


def _fits_disk(offer: dict, storage_gb: float) -> bool:
    """Whether the host has room for the requested disk."""
    return float(offer.get("disk_space") or 0.0) >= storage_gb


# --------------------------------------------------------------------------- options


def parse_options(body: dict) -> SearchOptions:
    """Validate ``type``, ``allocated_storage``, ``order`` and ``limit`` with Vast's defaults."""
    try:
        offer_type = normalize_offer_type(body.get("type"))
    except ValueError as exc:
        raise QueryError(str(exc)) from None
    storage = body.get("allocated_storage")
    storage_gb = DEFAULT_STORAGE_GB if storage is None else _to_number(storage)
    if storage_gb is None or storage_gb < 0 or math.isinf(storage_gb):
        raise QueryError(f"allocated_storage must be a non-negative number, got {storage!r}")
    return SearchOptions(offer_type, storage_gb, parse_order(body.get("order")),
                         _parse_limit(body.get("limit")))


def _parse_limit(raw: Any) -> int:
    """``limit`` as a non-negative int; absent means Vast's page of 64."""
    if raw is None:
        return DEFAULT_LIMIT
    number = _to_number(raw)
    if number is None or math.isinf(number) or number != int(number):
        raise QueryError(f"limit must be an integer, got {raw!r}")
    if number < 0:
        raise QueryError(f"limit must be >= 0, got {raw!r}")
    return int(number)


def parse_order(raw: Any) -> list[list[str]]:
    """``[[field, "asc"|"desc"], ...]`` with aliases applied; empty or absent -> score desc."""
    if raw is None or raw == []:
        return [list(pair) for pair in DEFAULT_ORDER]
    if not isinstance(raw, (list, tuple)):
        raise QueryError(f"order must be a list of [field, direction] pairs, got {raw!r}")
    order = []
    for entry in raw:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise QueryError(f"order entry must be a [field, direction] pair, got {entry!r}")
        field, direction = entry
        if not isinstance(field, str) or not isinstance(direction, str):
            raise QueryError(f"order entry must hold two strings, got {entry!r}")
        if direction.lower() not in ("asc", "desc"):
            raise QueryError(f"order direction must be asc or desc, got {direction!r}")
        order.append([ALIASES.get(field, field), direction.lower()])
    return order


# --------------------------------------------------------------------------- compiling


def compile_filters(filters: dict, control_keys: frozenset[str] = CONTROL_KEYS
                    ) -> list[Condition]:
    """Turn ``{"field": {"op": value}}`` into coerced :class:`Condition` objects.

    A non-dict value is an implicit ``eq``. Coercion happens here, once, so a malformed
    value fails the whole request even when no offer would have been compared.
    """
    if not isinstance(filters, dict):
        raise QueryError(f"filters must be a JSON object, got {type(filters).__name__}")
    conditions = []
    for key, spec in filters.items():
        if key in control_keys:
            continue
        field = ALIASES.get(key, key)
        ops = spec if isinstance(spec, dict) else {"eq": spec}
        for op_name, raw in ops.items():
            op = OPERATORS.get(op_name) if isinstance(op_name, str) else None
            if op is None:
                raise QueryError(f"unknown operator {op_name!r} for field {key!r}")
            kind = field_kind(field)
            conditions.append(Condition(field, op, _coerce_operand(field, kind, op, raw), kind))
    return conditions


def field_kind(field: str) -> str | None:
    """num | bool | gpu | geo | driver | str for known fields; None to infer per row."""
    if field in SPECIAL_KINDS:
        return SPECIAL_KINDS[field]
    if field in NUMERIC_FIELDS:
        return "num"
    if field in BOOL_FIELDS:
        return "bool"
    return None


def _coerce_operand(field: str, kind: str | None, op: str, raw: Any) -> Any:
    """The operand in the field's type: a tuple for in/notin, a scalar otherwise."""
    if op in MEMBERSHIP_OPS:
        if not isinstance(raw, (list, tuple)):
            raise QueryError(f"{field}: {op} needs a list, got {raw!r}")
        return tuple(_coerce_scalar(field, kind, item) for item in raw)
    if isinstance(raw, (list, tuple, dict)):
        raise QueryError(f"{field}: {op} needs a single value, got {raw!r}")
    return _coerce_scalar(field, kind, raw)


def _coerce_scalar(field: str, kind: str | None, raw: Any) -> Any:
    """Coerce one value for a known field kind; unknown fields keep the raw value."""
    if raw is None or kind is None:
        return raw
    if isinstance(raw, (list, tuple, dict)):
        raise QueryError(f"{field}: expected a single value, got {raw!r}")
    coerced = _COERCERS[kind](raw)
    if coerced is None:
        raise QueryError(f"{field}: cannot use {raw!r} as a {_KIND_NAMES[kind]}")
    return coerced


def _to_number(raw: Any) -> float | None:
    """'0.99' / 1 / True -> float; None when the value is not a number (or is NaN)."""
    if isinstance(raw, bool):
        return float(raw)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _to_bool(raw: Any) -> bool | None:
    """true/false in the spellings clients send; None when it is neither."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    text = str(raw).strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(text)


def _to_driver(raw: Any) -> int | None:
    """'535.86.05' or its integer form 535086005 -> 535086005."""
    if isinstance(raw, str) and "." in raw and raw.count(".") == 2:
        try:
            return numeric_driver_version(raw)
        except ValueError:
            return None
    number = _to_number(raw)
    if number is None or isinstance(raw, bool) or number != int(number):
        return None
    return int(number)


def _to_text(raw: Any) -> str | None:
    """Any scalar as text (numbers included: os_version=22.04 may arrive as a float)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


_COERCERS = {"num": _to_number, "bool": _to_bool, "driver": _to_driver, "gpu": _to_text,
             "geo": _to_text, "str": _to_text}
_KIND_NAMES = {"num": "number", "bool": "boolean", "driver": "driver version",
               "gpu": "GPU name", "geo": "location", "str": "string"}


# --------------------------------------------------------------------------- matching


def matches_all(row: dict, conditions: Iterable[Condition]) -> bool:
    """Whether ``row`` passes every condition."""
    return all(matches(row, condition) for condition in conditions)


def matches(row: dict, condition: Condition) -> bool:
    """One condition against one row; absent/null values pass only neq / notin."""
    actual = lookup(row, condition.field)
    kind = condition.kind or _infer_kind(actual)
    if actual is None and kind == "bool" and condition.field in row:
        actual = False  # Vast's own examples carry "external": null for "not external"
    if actual is None:
        return _match_missing(condition)
    value = condition.value
    if condition.kind is None:
        value = _coerce_dynamic(kind, condition)
        if value is _UNCOMPARABLE:
            return condition.op in ("neq", "notin")
    return _compare(kind, actual, condition.op, value)


def lookup(row: dict, field: str) -> Any:
    """A row's value for ``field``, including the virtual fields the server understands."""
    if field == "verified" and "verification" in row:
        return row["verification"] == "verified"
    if field == "datacenter" and "datacenter" not in row:
        hosting_type = row.get("hosting_type")
        return None if hosting_type is None else float(hosting_type) >= 1
    if field == "driver_version":
        if row.get("driver_vers") is not None:
            return int(row["driver_vers"])
        return _to_driver(row.get("driver_version")) if row.get("driver_version") else None
    return row.get(field)


def _infer_kind(actual: Any) -> str:
    """For fields outside the schema, compare by the type the row holds."""
    if isinstance(actual, bool):
        return "bool"
    if isinstance(actual, (int, float)):
        return "num"
    return "str"


_UNCOMPARABLE = object()


def _coerce_dynamic(kind: str, condition: Condition) -> Any:
    """Coerce an unknown field's operand to the row's type; mismatch -> _UNCOMPARABLE."""
    def one(raw: Any) -> Any:
        if raw is None:
            return None
        coerced = _COERCERS[kind](raw)
        return _UNCOMPARABLE if coerced is None else coerced

    if condition.op in MEMBERSHIP_OPS:
        return tuple(v for v in map(one, condition.value) if v is not _UNCOMPARABLE)
    return one(condition.value)


def _match_missing(condition: Condition) -> bool:
    """SQL-ish null handling, except that "not X" keeps rows that lack the field."""
    op, value = condition.op, condition.value
    if op == "eq":
        return value is None
    if op == "neq":
        return value is not None
    if op == "in":
        return None in value
    if op == "notin":
        return None not in value
    return False


def _compare(kind: str, actual: Any, op: str, value: Any) -> bool:
    """Apply ``op`` between a present row value and a coerced operand."""
    if op in ("eq", "neq"):
        equal = value is not None and _equal(kind, actual, value)
        return equal if op == "eq" else not equal
    if op in MEMBERSHIP_OPS:
        found = any(v is not None and _equal(kind, actual, v) for v in value)
        return found if op == "in" else not found
    if value is None:
        return False
    left, right = _orderable(kind, actual), _orderable(kind, value)
    if type(left) is not type(right):
        return False
    return {"gt": left > right, "gte": left >= right,
            "lt": left < right, "lte": left <= right}[op]


def _equal(kind: str, actual: Any, value: Any) -> bool:
    """Equality in the field's terms (numbers numerically, GPU names loosely, places by
    country code or full string)."""
    if kind in ("num", "driver"):
        number = _to_number(actual)
        return number is not None and number == float(value)
    if kind == "bool":
        return bool(actual) == value
    if kind == "gpu":
        return normalize_gpu_name(str(actual)) == normalize_gpu_name(value)
    if kind == "geo":
        wanted = value.strip().casefold()
        code = country_code(str(actual)) or ""
        return str(actual).strip().casefold() == wanted or code.casefold() == wanted
    return str(actual) == value


def _orderable(kind: str, raw: Any) -> Any:
    """A sortable form: numbers as floats, numeric-looking strings too, other text folded."""
    if kind in ("num", "driver", "bool"):
        number = _to_number(raw)
        return number if number is not None else str(raw)
    number = _to_number(raw) if not isinstance(raw, bool) else None
    return number if number is not None else str(raw).casefold()


def normalize_gpu_name(name: str) -> str:
    """'RTX_4090', 'rtx 4090' and 'RTX-4090' all mean the same card (the CLI's -g choices
    replace spaces and hyphens with underscores; parse_query turns underscores to spaces)."""
    text = name.replace("_", " ").replace("-", " ").casefold()
    return " ".join(text.split())


# --------------------------------------------------------------------------- ordering


def order_rows(rows: list[dict], order: list[list[str]]) -> list[dict]:
    """Stable multi-key sort; rows lacking a key go last whichever the direction."""
    result = list(rows)
    for field, direction in reversed(order):
        present = [r for r in result if lookup(r, field) is not None]
        missing = [r for r in result if lookup(r, field) is None]
        present.sort(key=lambda r, f=field: _sort_key(lookup(r, f)),
                     reverse=direction == "desc")
        result = present + missing
    return result


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers (and booleans) before text, so mixed columns still sort."""
    number = _to_number(value)
    return (0, number) if number is not None else (1, str(value).casefold())

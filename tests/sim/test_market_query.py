"""The sandbox market (sim/market.py) and its search language (sim/query.py).

Bodies are built with the real vastai 1.9.1 query parser and SDK wherever possible, because
what matters is that the sandbox answers exactly what the real client sends.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

try:
    import vasticlaude  # noqa: F401
except ImportError:  # running from a checkout without an editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from vastai.api.client import VastClient
from vastai.api.offers import search_offers
from vastai.api.query import offers_alias, offers_fields, offers_mult, parse_order, parse_query

from vasticlaude.sim.market import (GPU_NAMES, MARKET_EPOCH, generate_market, gpu_names,
                                    load_market, normalize_offer, numeric_driver_version,
                                    price_offer, storage_dph)
from vasticlaude.sim.query import DEFAULT_LIMIT, QueryError, filter_instances, search

pytestmark = pytest.mark.unit  # pure: no sandbox, SSH or Claude Code

# vast-api.md §8, minus the fields priced per search.
STORED_FIELDS = """
id ask_contract_id bundle_id machine_id host_id gpu_name num_gpus gpu_ram gpu_total_ram gpu_frac
gpu_arch compute_cap gpu_lanes pci_gen pcie_bw cuda_max_good driver_version driver_vers cpu_name
cpu_cores cpu_cores_effective cpu_ram cpu_ghz cpu_arch has_avx disk_space disk_bw disk_name
dph_base storage_cost vram_costperhour credit_discount_max min_bid inet_up inet_down
inet_up_cost inet_down_cost direct_port_count static_ip public_ipaddr reliability reliability2
reliability_mult dlperf total_flops score geolocation geolocode verification vericode verified
hosting_type cluster_id os_version vms_enabled resource_type rentable rented external
start_date end_date duration logo webpage
""".split()
PRICED_FIELDS = ("dph_total", "storage_total_cost", "dlperf_per_dphtotal",
                 "flops_per_dphtotal", "is_bid", "discounted_dph_total")
CLI_DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


def offer(id_: int, **fields) -> dict:
    """A pinned offer: a plausible RTX 4090 in Texas unless the test says otherwise."""
    base = {"id": id_, "machine_id": id_ % 100_000, "gpu_name": "RTX 4090", "num_gpus": 1,
            "gpu_ram": 24564, "dph_base": 0.40, "min_bid": 0.20, "storage_cost": 0.144,
            "reliability": 0.995, "geolocation": "Texas, US", "cuda_max_good": 12.4,
            "disk_space": 100.0, "dlperf": 41.0, "total_flops": 82.0, "score": 100.0}
    base.update(fields)
    return normalize_offer(base)


@pytest.fixture
def market() -> list[dict]:
    """Twelve offers, each differing from #1001 in one way the §6 example query cares about."""
    return [
        offer(1001),
        offer(1002, geolocation="Stockholm, SE", verification="unverified", dph_base=0.35),
        offer(1003, geolocation="Bavaria, DE"),
        offer(1004, reliability=0.98),
        offer(1005, num_gpus=2, dph_base=0.80),
        offer(1006, cuda_max_good=12.0),
        offer(1007, dph_base=1.49, storage_cost=0.3, score=50.0),   # 1.49 + 0.0083 < 1.5
        offer(1008, dph_base=1.495, storage_cost=0.3, score=60.0),  # 1.495 + 0.0083 > 1.5
        offer(1009, disk_space=40.0),
        offer(1010, gpu_name="RTX 3090", gpu_ram=24576),
        offer(1011, external=True),
        offer(1012, rentable=False),
        offer(1013, geolocation="US", gpu_ram=12282, gpu_name="RTX 4070", dph_base=0.1),
        offer(1014, verification="deverified", num_gpus=4, gpu_ram=81559,
              gpu_name="H100 SXM", dph_base=9.0, reliability=0.90, driver_version="535.86.05",
              driver_vers=535086005, duration=86400.0, end_date=MARKET_EPOCH + 86400),
    ]


def ids(rows: list[dict]) -> list[int]:
    return [row["id"] for row in rows]


def idset(rows: list[dict]) -> set[int]:
    return {row["id"] for row in rows}


# --------------------------------------------------------------------------- market


def test_generate_market_is_a_pure_function_of_the_seed():
    first, again, other = generate_market(7), generate_market(7), generate_market(8)
    assert first == again
    assert first != other
    assert len(first) == 60 and len(generate_market(7, n_machines=5)) == 5
    assert len({o["id"] for o in first}) == 60
    assert all(1_000_000 <= o["id"] <= 99_999_999 and o["ask_contract_id"] == o["id"]
               for o in first)
    assert all(1_000 <= o["machine_id"] <= 99_999 for o in first)
    assert len({o["machine_id"] for o in first}) == 60


def test_every_offer_carries_the_documented_fields_and_no_search_prices():
    for o in generate_market(3):
        assert not set(STORED_FIELDS) - o.keys(), o["id"]
        assert not set(PRICED_FIELDS) & o.keys()
        assert not set(PRICED_FIELDS) - price_offer(o, "on-demand", 5.0).keys()


def test_generated_values_are_plausible():
    offers = generate_market(11, n_machines=400)
    verified = sum(o["verification"] == "verified" for o in offers) / len(offers)
    assert 0.65 < verified < 0.85
    assert sum(o["num_gpus"] == 1 for o in offers) > len(offers) / 2
    assert {o["num_gpus"] for o in offers} == {1, 2, 4, 8}
    assert set(GPU_NAMES) == set(gpu_names(offers))
    for o in offers:
        per_gpu = o["dph_base"] / o["num_gpus"]
        assert 0.85 <= o["reliability"] <= 0.999
        assert 11.8 <= o["cuda_max_good"] <= 12.8
        assert o["driver_vers"] == numeric_driver_version(o["driver_version"])
        assert re.fullmatch(r".+, [A-Z]{2}", o["geolocation"])
        assert 0.35 <= o["min_bid"] / o["dph_base"] <= 0.6 + 1e-3
        assert 0.05 <= o["storage_cost"] <= 0.3
        assert o["gpu_total_ram"] == o["gpu_ram"] * o["num_gpus"]
        assert o["verified"] == (o["verification"] == "verified")
        assert o["hosting_type"] in (0, 1) and o["duration"] > 0
        if o["gpu_name"] == "RTX 4090":
            assert 0.25 <= per_gpu <= 0.6 and o["gpu_ram"] == 24564
        if o["gpu_name"].startswith("H100"):
            assert 1.6 <= per_gpu <= 3.0
        if o["gpu_name"] == "RTX 5090":
            assert o["cuda_max_good"] >= 12.8


def test_load_market_fills_a_minimal_pinned_file(tmp_path):
    path = tmp_path / "market.json"
    path.write_text(json.dumps({"offers": [
        {"id": 4242, "machine_id": 77, "gpu_name": "RTX 4090", "num_gpus": 2,
         "gpu_ram": 24564, "dph_base": 0.8},
        {"id": "4243", "machine_id": 78, "gpu_name": "A40", "num_gpus": 1, "gpu_ram": 46068,
         "dph_base": 0.4, "reliability": 0.97, "min_bid": 0.1, "verified": False},
    ]}))
    first, second = load_market(path)
    assert not set(STORED_FIELDS) - first.keys()
    assert first["ask_contract_id"] == 4242 and first["gpu_total_ram"] == 49128
    assert first["min_bid"] == pytest.approx(0.4) and first["verified"] is True
    assert second["id"] == 4243 and second["min_bid"] == 0.1
    assert second["verification"] == "unverified" and second["verified"] is False
    path.write_text(json.dumps([{"id": 1, "machine_id": 2, "gpu_name": "L4", "num_gpus": 1,
                                 "gpu_ram": 23034, "dph_base": 0.3}]))
    assert ids(load_market(path)) == [1]


@pytest.mark.parametrize("content, message", [
    ([{"id": 1, "machine_id": 2, "gpu_name": "L4", "num_gpus": 1}], "dph_base"),
    ([{"machine_id": 2, "gpu_name": "L4", "num_gpus": 1, "gpu_ram": 1, "dph_base": 1}], "id"),
    ([{"id": 1, "machine_id": 2, "gpu_name": "L4", "num_gpus": "two", "gpu_ram": 1,
       "dph_base": 1}], "num_gpus"),
    ({"machines": []}, "list of offers"),
    ([{"id": 1, "machine_id": 2, "gpu_name": "L4", "num_gpus": 1, "gpu_ram": 1,
       "dph_base": 1}] * 2, "duplicate offer id 1"),
])
def test_load_market_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_market(path)


def test_price_offer_exact_numbers():
    o = offer(1, dph_base=0.40, min_bid=0.20, storage_cost=0.144, credit_discount_max=0.2)
    assert storage_dph(o, 50) == pytest.approx(0.01)  # 0.144 $/GB/month * 50 GB / 720 h
    on_demand = price_offer(o, "on-demand", 50)
    assert on_demand["dph_total"] == pytest.approx(0.41)
    assert on_demand["storage_total_cost"] == pytest.approx(0.01)
    assert on_demand["is_bid"] is False
    assert on_demand["dlperf_per_dphtotal"] == pytest.approx(41.0 / 0.41)
    assert on_demand["flops_per_dphtotal"] == pytest.approx(200.0)
    assert on_demand["discounted_dph_total"] == pytest.approx(0.41)
    bid = price_offer(o, "interruptible", 50)
    assert bid["dph_total"] == pytest.approx(0.21) and bid["is_bid"] is True
    reserved = price_offer(o, "reserved", 50)
    assert reserved["dph_total"] == pytest.approx(0.41)
    assert reserved["discounted_dph_total"] == pytest.approx(0.41 - 0.08)
    assert "dph_total" not in o  # the catalogue entry is untouched
    with pytest.raises(ValueError, match="offer type"):
        price_offer(o, "spot", 5)


# --------------------------------------------------------------------------- search


def test_empty_body_applies_vast_defaults(market):
    rows = search(market, {})
    assert 1009 in idset(rows)  # 40 GB disk still fits the default 5 GB
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert rows[0]["dph_total"] == pytest.approx(rows[0]["dph_base"] + 0.144 * 5 / 720)
    assert len(search(generate_market(1, n_machines=100), {})) == DEFAULT_LIMIT


@pytest.mark.parametrize("filters, expected", [
    ({"num_gpus": {"eq": "1"}}, set(range(1001, 1015)) - {1005, 1014}),
    ({"num_gpus": {"neq": "1"}}, {1005, 1014}),
    ({"num_gpus": {"gt": "1", "lt": 4}}, {1005}),
    ({"num_gpus": {"gte": "2", "lte": "4"}}, {1005, 1014}),
    ({"num_gpus": {"in": ["2", "4"]}}, {1005, 1014}),
    ({"num_gpus": {"nin": ["1"]}}, {1005, 1014}),
    ({"reliability": {"lt": "0.99"}}, {1004, 1014}),
    ({"gpu_ram": {"gte": 80000.0}}, {1014}),            # MB, as parse_query sends it
    ({"gpu_ram": {"lt": 20 * 1000.0}}, {1013}),
    ({"gpu_name": {"eq": "RTX_3090"}}, {1010}),
    ({"gpu_name": {"eq": "rtx 3090"}}, {1010}),
    ({"gpu_name": {"in": ["RTX 4070", "H100_SXM"]}}, {1013, 1014}),
    ({"geolocation": {"in": ["SE", "DE"]}}, {1002, 1003}),
    ({"geolocation": {"eq": "Bavaria, DE"}}, {1003}),
    ({"geolocation": {"notin": ["US"]}}, {1002, 1003}),
    ({"verified": {"eq": False}}, {1002, 1014}),
    ({"verified": {"eq": "true"}}, set(range(1001, 1015)) - {1002, 1014}),
    ({"verification": {"eq": "deverified"}}, {1014}),
    ({"external": {"eq": True}}, {1011}),
    ({"rentable": {"eq": False}}, {1012}),
    ({"cuda_vers": {"lt": "12.1"}}, {1006}),
    ({"cuda_max_good": {"lt": 12.1}}, {1006}),
    ({"driver_version": {"lt": 536000000}}, {1014}),
    ({"driver_version": {"eq": "535.86.05"}}, {1014}),
    ({"duration": {"lt": 2 * 86400.0}}, {1014}),
    ({"gpu_name": "RTX 3090"}, {1010}),                 # a bare value means eq
    ({"gpu_ram": {"gt": 10 ** 9}}, set()),              # impossible but well-formed
    ({"no_such_field": {"eq": 1}}, set()),              # absent fields fail ...
    ({"no_such_field": {"neq": 1}}, set(range(1001, 1015))),  # ... except neq / notin
    ({"cluster_id": {"eq": None}}, set(range(1001, 1015))),
])
def test_operators_and_coercion(market, filters, expected):
    assert idset(search(market, filters)) == expected


def test_price_filters_see_storage_and_offer_type(market):
    under = {"dph": {"lt": "1.5"}, "allocated_storage": 20.0, "gpu_name": {"eq": "RTX 4090"}}
    assert {1007, 1008} & idset(search(market, under)) == {1007}
    bids = search(market, {**under, "type": "bid"})  # min_bid 0.20 for every pinned 4090
    assert {1007, 1008} <= idset(bids)
    assert all(r["is_bid"] and r["dph_total"] == pytest.approx(0.2 + r["storage_cost"] / 36)
               for r in bids)
    assert 1009 not in idset(search(market, {"allocated_storage": 50}))
    reserved = search(market, {"type": "reserved", "id": {"eq": 1001}})[0]
    assert reserved["discounted_dph_total"] < reserved["dph_total"]


def test_order_with_two_keys_and_limit(market):
    body = {"order": [["num_gpus", "desc"], ["dph", "asc"]], "limit": 4}
    rows = search(market, body)
    assert ids(rows) == [1014, 1005, 1013, 1002]
    assert ids(search(market, {"order": [["dlperf_usd", "desc"]], "limit": 1})) == [1013]
    assert search(market, {"limit": 0}) == []
    assert len(search(market, {"limit": "3"})) == 3


def test_new_search_wrapper_is_unwrapped(market):
    body = {"select_cols": ["*"], "q": {"gpu_name": {"eq": "RTX 3090"}, "limit": 5}}
    assert ids(search(market, body)) == [1010]


@pytest.mark.parametrize("body, message", [
    ({"num_gpus": {"between": [1, 2]}}, "unknown operator"),
    ({"geolocation": {"in": "US"}}, "needs a list"),
    ({"reliability": {"gt": "high"}}, "reliability"),
    ({"verified": {"eq": "maybe"}}, "verified"),
    ({"order": [["score"]]}, "pair"),
    ({"order": [["score", "up"]]}, "direction"),
    ({"order": "score"}, "order"),
    ({"limit": -1}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"type": "spot"}, "offer type"),
    ({"allocated_storage": "lots"}, "allocated_storage"),
    ({"num_gpus": {"gt": [1]}}, "single value"),
    ([], "JSON object"),
])
def test_malformed_bodies_raise_query_error(market, body, message):
    with pytest.raises(QueryError, match=message):
        search(market, body)


def test_filter_instances_uses_the_same_operators():
    rows = [{"id": 1, "actual_status": "running", "label": "a", "gpu_name": "RTX 4090"},
            {"id": 2, "actual_status": "stopped", "label": None, "gpu_name": "RTX 3090"},
            {"id": 3, "actual_status": "running", "label": "b", "gpu_name": "RTX 3090"}]
    assert ids(filter_instances(rows, {"actual_status": {"in": ["running"]}})) == [1, 3]
    assert ids(filter_instances(rows, {"label": {"in": [None, "b"]}})) == [2, 3]
    assert ids(filter_instances(rows, '{"gpu_name": {"in": ["RTX_3090"]}}')) == [2, 3]
    assert ids(filter_instances(rows, {"id": {"gte": "2"}})) == [2, 3]
    assert ids(filter_instances(rows, {})) == [1, 2, 3]
    with pytest.raises(QueryError):
        filter_instances(rows, {"id": {"like": 1}})


# --------------------------------------------------------------------------- real client

EXAMPLE_QUERY = ("num_gpus=1 gpu_name=RTX_4090 gpu_ram>=20 reliability>0.99 "
                 "geolocation in [US,SE] cuda_vers>=12.1 dph<1.5 disk_space>=50 verified=any")


def cli_body(query: str, order: str, storage: float, limit: int | None = None) -> dict:
    """The body ``vastai search offers QUERY -o ORDER --storage S`` posts (cli/commands/offers.py
    search__offers), built with the client's own parse_query and parse_order."""
    body = parse_query(query, json.loads(json.dumps(CLI_DEFAULTS)), offers_fields, offers_alias,
                       offers_mult)
    body["order"] = parse_order(order)
    body["type"] = "on-demand"
    if limit:
        body["limit"] = limit
    body["allocated_storage"] = storage
    return json.loads(json.dumps(body))  # exactly what crosses the wire


def test_cli_body_matches_the_observed_wire_format():
    body = cli_body(EXAMPLE_QUERY + " duration>3", "dph,dlperf_usd-", 20.0, limit=5)
    assert body == {
        "external": {"eq": False}, "rentable": {"eq": True}, "num_gpus": {"eq": "1"},
        "gpu_name": {"eq": "RTX 4090"}, "gpu_ram": {"gte": 20000.0},
        "reliability": {"gt": "0.99"}, "geolocation": {"in": ["US", "SE"]},
        "cuda_max_good": {"gte": "12.1"}, "dph_total": {"lt": "1.5"},
        "disk_space": {"gte": "50"}, "duration": {"gt": 259200.0},
        "order": [["dph_total", "asc"], ["dlperf_per_dphtotal", "desc"]],
        "type": "on-demand", "limit": 5, "allocated_storage": 20.0}


def test_cli_example_query_selects_what_a_hand_written_predicate_does(market):
    storage = 20.0

    def wanted(o: dict) -> bool:
        dph_total = o["dph_base"] + o["storage_cost"] * storage / 720
        return (o["num_gpus"] == 1 and o["gpu_name"] == "RTX 4090" and o["gpu_ram"] >= 20000
                and o["reliability"] > 0.99 and o["geolocation"].split(", ")[-1] in ("US", "SE")
                and o["cuda_max_good"] >= 12.1 and dph_total < 1.5 and o["disk_space"] >= 50
                and not o["external"] and o["rentable"])

    expected = sorted((o for o in market if wanted(o)),
                      key=lambda o: o["dph_base"] + o["storage_cost"] * storage / 720)
    rows = search(market, cli_body(EXAMPLE_QUERY, "dph,dlperf_usd-", storage))
    assert ids(rows) == ids(expected) == [1002, 1001, 1007]


@pytest.fixture
def bundles_server(market):
    """A throwaway HTTP endpoint answering POST /api/v0/bundles/ with ``search``.

    It lets the real VastClient and SDK search_offers build and send the request; it is not
    the sandbox's server, only enough of one to observe the body on the wire.
    """
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            payload = json.dumps({"offers": search(market, body)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_sdk_search_offers_round_trip(bundles_server):
    url, seen = bundles_server
    client = VastClient(api_key="test-key", server_url=url, retry=1, timeout=5)
    query = parse_query("gpu_name=RTX_4090 num_gpus=1 geolocation in [US,SE] "
                        "reliability>0.99 cuda_vers>=12.1", None,
                        offers_fields, offers_alias, offers_mult)
    rows = search_offers(client, query=query, order=parse_order("dph+"), storage=50.0)
    assert seen[0]["rented"] == {"eq": False} and seen[0]["verified"] == {"eq": True}
    # 1002 is unverified, 1009's 40 GB disk cannot hold 50 GB; cheapest first
    assert ids(rows) == [1001, 1007, 1008]
    assert rows[0]["dph_total"] == pytest.approx(0.40 + 0.144 * 50 / 720)
    bids = search_offers(client, query=query, offer_type="interruptible", limit=2)
    assert seen[1]["type"] == "bid" and seen[1]["limit"] == 2
    assert len(bids) == 2 and all(r["is_bid"] for r in bids)

"""The sandbox's offer catalogue: a deterministic, realistic-looking Vast.ai market.

Offers carry every field of a real ``POST /api/v0/bundles/`` result (vast-api.md §8) so the
real ``vastai`` CLI and SDK can display and filter them. The search-dependent price fields
(``dph_total``, ``storage_total_cost``, ``dlperf_per_dphtotal``, ``flops_per_dphtotal``,
``is_bid``, ``discounted_dph_total``) are *not* stored: they depend on the search's
``type`` and ``allocated_storage``, so :func:`price_offer` computes them per search.

Everything is driven by ``random.Random(seed)`` so a seed pins the whole market; a test that
needs exact offers pins its own with :func:`load_market`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 2026-01-01T00:00:00Z. The default "now" keeps generate_market deterministic; the server
# passes the real clock so end_date/duration stay in the future.
MARKET_EPOCH = 1_767_225_600.0

HOURS_PER_MONTH = 30 * 24  # storage_cost is $/GB/month; prices are $/h


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: memory, capability and the per-GPU on-demand price band hosts ask."""

    name: str
    vram_mb: int
    compute_cap: int
    price: tuple[float, float]  # per-GPU $/h
    dlperf: float  # per GPU
    tflops: float  # per GPU, fp32
    mem_bw: float  # GB/s
    max_power: int  # W
    min_cuda: float  # oldest CUDA whose driver supports the card
    datacenter: bool
    weight: float  # relative frequency on the market


GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("RTX 3060", 12288, 860, (0.05, 0.12), 9.5, 12.7, 360, 170, 11.8, False, 5),
    GpuSpec("RTX 3090", 24576, 860, (0.12, 0.30), 22.0, 35.6, 936, 350, 11.8, False, 10),
    GpuSpec("RTX 4070", 12282, 890, (0.08, 0.18), 18.0, 29.1, 504, 200, 11.8, False, 4),
    GpuSpec("RTX 4080", 16376, 890, (0.15, 0.30), 30.0, 48.7, 717, 320, 11.8, False, 4),
    GpuSpec("RTX 4090", 24564, 890, (0.25, 0.60), 45.0, 82.6, 1008, 450, 11.8, False, 14),
    GpuSpec("RTX 5090", 32607, 1200, (0.45, 0.95), 65.0, 104.8, 1792, 575, 12.8, False, 6),
    GpuSpec("RTX A4000", 16376, 860, (0.10, 0.20), 14.0, 19.2, 448, 140, 11.8, False, 3),
    GpuSpec("RTX A5000", 24564, 860, (0.15, 0.30), 20.0, 27.8, 768, 230, 11.8, False, 3),
    GpuSpec("RTX A6000", 49140, 860, (0.35, 0.70), 31.0, 38.7, 768, 300, 11.8, True, 4),
    GpuSpec("A40", 46068, 860, (0.30, 0.55), 30.0, 37.4, 696, 300, 11.8, True, 2),
    GpuSpec("L4", 23034, 890, (0.25, 0.45), 17.0, 30.3, 300, 72, 11.8, True, 2),
    GpuSpec("L40S", 46068, 890, (0.60, 1.10), 55.0, 91.6, 864, 350, 12.0, True, 3),
    GpuSpec("A100 PCIE", 40960, 800, (0.70, 1.30), 45.0, 19.5, 1555, 250, 11.8, True, 3),
    GpuSpec("A100 SXM4", 81920, 800, (0.90, 1.60), 55.0, 19.5, 2039, 400, 11.8, True, 4),
    GpuSpec("H100 PCIE", 81559, 900, (1.60, 2.60), 80.0, 51.2, 2000, 350, 12.0, True, 3),
    GpuSpec("H100 SXM", 81559, 900, (1.80, 3.00), 100.0, 66.9, 3350, 700, 12.0, True, 5),
    GpuSpec("H200", 143771, 900, (2.60, 4.00), 115.0, 66.9, 4800, 700, 12.4, True, 2),
)

GPU_NAMES: tuple[str, ...] = tuple(spec.name for spec in GPU_SPECS)

# (driver_version, cuda_max_good): the CUDA a host reports follows its driver.
DRIVERS: tuple[tuple[str, float], ...] = (
    ("520.61.05", 11.8), ("525.147.05", 12.0), ("530.41.03", 12.1), ("535.183.01", 12.2),
    ("545.29.06", 12.3), ("550.127.05", 12.4), ("555.58.02", 12.5), ("560.35.03", 12.6),
    ("565.57.01", 12.7), ("570.124.06", 12.8),
)

# (geolocation, geolocode, weight); the country code ends the string, as on Vast.
REGIONS: tuple[tuple[str, int, float], ...] = (
    ("Texas, US", 840048, 6), ("California, US", 840006, 5), ("Oregon, US", 840041, 3),
    ("Virginia, US", 840051, 3), ("Nevada, US", 840032, 2), ("Quebec, CA", 124024, 3),
    ("Ontario, CA", 124035, 2), ("Bavaria, DE", 276009, 2), ("Hesse, DE", 276006, 2),
    ("Stockholm, SE", 752001, 2), ("North Holland, NL", 528007, 2), ("England, GB", 826001, 2),
    ("Ile-de-France, FR", 250011, 1), ("Uusimaa, FI", 246018, 1), ("Oslo, NO", 578003, 1),
    ("Mazovia, PL", 616014, 1), ("Prague, CZ", 203010, 1), ("Tokyo, JP", 392013, 2),
    ("Seoul, KR", 410011, 1), ("Taipei, TW", 158001, 1), ("Singapore, SG", 702001, 1),
    ("New South Wales, AU", 36002, 1), ("Sao Paulo, BR", 76025, 1), ("Hanoi, VN", 704064, 1),
)

CPUS: tuple[tuple[str, int, float], ...] = (  # (name, threads, GHz)
    ("AMD EPYC 7742 64-Core Processor", 128, 2.25),
    ("AMD EPYC 7543 32-Core Processor", 64, 2.8),
    ("AMD EPYC 9354 32-Core Processor", 64, 3.25),
    ("Intel Xeon Platinum 8480+", 112, 2.0),
    ("Intel Xeon Gold 6338 CPU @ 2.00GHz", 64, 2.0),
    ("AMD Ryzen 9 7950X 16-Core Processor", 32, 4.5),
    ("AMD Ryzen Threadripper PRO 5975WX 32-Cores", 64, 3.6),
    ("13th Gen Intel Core i9-13900K", 32, 3.0),
    ("AMD Ryzen 9 5950X 16-Core Processor", 32, 3.4),
)

DISKS = ("Samsung SSD 980 PRO 2TB", "WD_BLACK SN850X 2000GB", "INTEL SSDPE2KX040T8",
         "Micron_7450_MTFDKCC3T8TFR", "KINGSTON SA400S37960G", "nvme")
MOBOS = ("ROMED8-2T", "H12SSL-i", "WRX80E-SAGE SE", "PRO WS W790-ACE", "ROG STRIX X670E-E",
         "X13DEG-OAD", "G292-Z20")
LOGO = "/static/logos/vastai_small2.png"

# Optional fields load_market fills in when a pinned market omits them.
STATIC_DEFAULTS: dict[str, Any] = {
    "gpu_frac": 1.0, "gpu_arch": "nvidia", "compute_cap": 890, "gpu_lanes": 16,
    "gpu_mem_bw": 1000.0, "gpu_max_power": 450.0, "gpu_max_temp": 83.0, "bw_nvlink": 0.0,
    "pci_gen": 4.0, "pcie_bw": 24.5, "cuda_max_good": 12.4, "driver_version": "550.127.05",
    "driver_vers": 550127005, "cpu_name": "AMD EPYC 7543 32-Core Processor", "cpu_cores": 64,
    "cpu_cores_effective": 16.0, "cpu_ram": 128000, "cpu_ghz": 2.8, "cpu_arch": "amd64",
    "has_avx": 1, "mobo_name": "H12SSL-i", "disk_space": 200.0, "disk_bw": 2000.0,
    "disk_name": "nvme", "storage_cost": 0.1, "credit_discount_max": 0.2, "inet_up": 800.0,
    "inet_down": 900.0, "inet_up_cost": 0.005, "inet_down_cost": 0.005,
    "direct_port_count": 100, "static_ip": True, "public_ipaddr": "198.18.0.1",
    "reliability": 0.99, "dlperf": 40.0, "total_flops": 80.0, "geolocation": "Texas, US",
    "geolocode": 840048, "verification": "verified", "hosting_type": 0, "cluster_id": None,
    "os_version": "22.04", "ubuntu_version": "22.04", "vms_enabled": False,
    "is_vm_deverified": False, "gpu_display_active": False, "resource_type": "gpu",
    "rentable": True, "rented": False, "external": False, "hostname": None, "logo": LOGO,
    "webpage": None, "start_date": MARKET_EPOCH - 30 * 86400, "end_date": None,
    "duration": 30 * 86400.0, "bundled_results": None, "avail_vol_ask_id": None,
    "avail_vol_dph": None, "avail_vol_size": None, "nw_disk_min_bw": None,
    "nw_disk_max_bw": None, "nw_disk_avg_bw": None, "platform_fee": None,
}
REQUIRED_FIELDS = ("id", "machine_id", "gpu_name", "num_gpus", "gpu_ram", "dph_base")

OFFER_TYPES = {"on-demand": "on-demand", "ondemand": "on-demand", "on_demand": "on-demand",
               "bid": "bid", "interruptible": "bid", "reserved": "reserved"}


def numeric_driver_version(version: str) -> int:
    """'535.86.05' -> 535086005, the integer form the CLI sends and ``driver_vers`` stores."""
    parts = version.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"driver version must look like 535.86.05, got {version!r}")
    return int("".join(p.zfill(3) for p in parts))


def country_code(geolocation: str | None) -> str | None:
    """The country code that ends a Vast geolocation ('Texas, US' -> 'US')."""
    if not geolocation:
        return None
    return geolocation.rsplit(",", 1)[-1].strip() or None


# --------------------------------------------------------------------------- generation


def generate_market(seed: int, n_machines: int = 60, now: float = MARKET_EPOCH) -> list[dict]:
    """A deterministic catalogue of ``n_machines`` offers (one offer per machine).

    ``now`` anchors ``start_date``/``end_date``/``duration``; the default keeps the output a
    pure function of the seed.
    """
    if n_machines < 0:
        raise ValueError("n_machines must be >= 0")
    rng = random.Random(seed)
    offer_ids = rng.sample(range(1_000_000, 100_000_000), n_machines)
    machine_ids = rng.sample(range(1_000, 100_000), n_machines)
    bundle_ids = rng.sample(range(100_000_000, 1_000_000_000), n_machines)
    host_pool = rng.sample(range(10_000, 1_000_000), max(1, n_machines // 2))
    offers = []
    for i in range(n_machines):
        ids = {"id": offer_ids[i], "ask_contract_id": offer_ids[i], "machine_id": machine_ids[i],
               "bundle_id": bundle_ids[i], "host_id": rng.choice(host_pool)}
        offers.append(_make_offer(rng, i, ids, now))
    assign_clusters(offers, seed)
    return offers


def assign_clusters(offers: list[dict], seed: int) -> None:
    """Group some machines into physical clusters (`cluster_id`), as Vast's hosts register them.

    A cluster is machines of one host on one LAN (docs.vast.ai/clusters): the same GPU model here,
    in one place. About half the GPU models with three or more machines get one cluster of up to
    six; a separate generator, so the rest of the market is the same as without clusters."""
    rng = random.Random(seed * 7919 + 17)
    by_gpu: dict[str, list[dict]] = {}
    for offer in sorted(offers, key=lambda o: o["id"]):
        by_gpu.setdefault(offer["gpu_name"], []).append(offer)
    groups = [members for _, members in sorted(by_gpu.items()) if len(members) >= 3]
    chosen = [g for g in groups if rng.random() < 0.5] or groups[:1]
    for members in chosen:
        cluster_id, first = rng.randrange(100, 10_000), members[0]
        for offer in members[:6]:
            offer.update(cluster_id=cluster_id, geolocation=first["geolocation"], geolocode=first["geolocode"])


def _make_offer(rng: random.Random, index: int, ids: dict, now: float) -> dict:
    """Assemble one offer from independently drawn parts (order of draws is fixed)."""
    spec = rng.choices(GPU_SPECS, weights=[s.weight for s in GPU_SPECS])[0]
    offer: dict[str, Any] = dict(ids)
    offer.update(_gpu_part(rng, spec))
    offer.update(_host_part(rng, spec, offer["gpu_frac"]))
    offer.update(_network_part(rng, index))
    offer.update(_placement_part(rng, spec))
    offer.update(_availability_part(rng, now))
    offer.update(_price_part(rng, spec, offer))
    return offer


def _gpu_part(rng: random.Random, spec: GpuSpec) -> dict:
    """GPU count, memory and capability; multi-GPU boxes are commoner for datacenter cards."""
    weights = (55, 15, 15, 15) if spec.datacenter else (72, 14, 9, 5)
    num_gpus = rng.choices((1, 2, 4, 8), weights=weights)[0]
    machine_gpus = max(num_gpus, rng.choices((1, 2, 4, 8), weights=(60, 15, 15, 10))[0])
    driver, cuda = rng.choice([d for d in DRIVERS if d[1] >= spec.min_cuda])
    sxm = "SXM" in spec.name or spec.name == "H200"
    return {
        "gpu_name": spec.name, "num_gpus": num_gpus, "gpu_ram": spec.vram_mb,
        "gpu_total_ram": spec.vram_mb * num_gpus, "gpu_frac": num_gpus / machine_gpus,
        "gpu_arch": "nvidia", "compute_cap": spec.compute_cap,
        "gpu_ids": [rng.randint(10_000, 999_999) for _ in range(num_gpus)],
        "gpu_lanes": rng.choice((8, 16, 16, 16)), "gpu_mem_bw": float(spec.mem_bw),
        "gpu_max_power": float(spec.max_power), "gpu_max_temp": float(rng.choice((83, 85, 87))),
        "bw_nvlink": 450.0 if sxm and num_gpus > 1 else 0.0,
        "cuda_max_good": cuda, "driver_version": driver,
        "driver_vers": numeric_driver_version(driver),
        "gpu_display_active": (not spec.datacenter) and rng.random() < 0.15,
    }


def _host_part(rng: random.Random, spec: GpuSpec, gpu_frac: float) -> dict:
    """CPU, RAM, disk and PCIe; the offer gets the machine's share (gpu_frac) of CPU/RAM."""
    cpu_name, threads, ghz = rng.choice(CPUS)
    ram_gb = rng.choice((32, 64, 128, 256, 512, 1024 if spec.datacenter else 128))
    pci_gen = rng.choice((3.0, 4.0, 4.0, 5.0) if spec.compute_cap >= 890 else (3.0, 4.0))
    low, high = rng.choices(((16, 60), (60, 600), (300, 4000)), weights=(15, 50, 35))[0]
    disk_space = rng.uniform(low, high)
    return {
        "cpu_name": cpu_name, "cpu_cores": threads,
        "cpu_cores_effective": round(threads * gpu_frac, 1),
        "cpu_ram": int(ram_gb * 1024 * gpu_frac), "cpu_ghz": ghz, "cpu_arch": "amd64",
        "has_avx": 1, "mobo_name": rng.choice(MOBOS), "pci_gen": pci_gen,
        "pcie_bw": round(pci_gen ** 1.55 * rng.uniform(1.6, 2.1), 1),
        "disk_space": round(disk_space, 1), "disk_bw": round(rng.uniform(400, 7000), 1),
        "disk_name": rng.choice(DISKS),
    }


def _network_part(rng: random.Random, index: int) -> dict:
    """Bandwidth (Mbps), bandwidth prices ($/GB) and addressing.

    Public IPs come from 198.18.0.0/15 (reserved for benchmarking) so nothing in the sandbox
    ever points at a real host.
    """
    host = index + 1  # skip the .0 network address
    inet_down = round(rng.uniform(50, 10_000), 1)
    inet_up_cost = round(rng.choice((0.0, rng.uniform(0.001, 0.02))), 5)
    inet_down_cost = round(rng.choice((0.0, rng.uniform(0.001, 0.02))), 5)
    return {
        "inet_down": inet_down, "inet_up": round(inet_down * rng.uniform(0.3, 1.0), 1),
        "inet_up_cost": inet_up_cost, "inet_down_cost": inet_down_cost,
        "internet_up_cost_per_tb": round(inet_up_cost * 1000, 3),
        "internet_down_cost_per_tb": round(inet_down_cost * 1000, 3),
        "direct_port_count": rng.choice((0, 10, 20, 50, 100, 200, 500)),
        "static_ip": rng.random() < 0.7,
        "public_ipaddr": f"198.{18 + (host >> 16) % 2}.{(host >> 8) % 256}.{host % 256}",
        "hostname": None,
    }


def _placement_part(rng: random.Random, spec: GpuSpec) -> dict:
    """Location, verification (~75% verified) and hosting type."""
    geolocation, geolocode, _ = rng.choices(REGIONS, weights=[r[2] for r in REGIONS])[0]
    verification = rng.choices(("verified", "unverified", "deverified"), (75, 20, 5))[0]
    hosting_type = int(rng.random() < (0.7 if spec.datacenter else 0.1))
    os_version = rng.choice(("20.04", "22.04", "22.04", "24.04"))
    return {
        "geolocation": geolocation, "geolocode": geolocode, "verification": verification,
        "vericode": {"verified": 1, "unverified": 0, "deverified": -1}[verification],
        "verified": verification == "verified", "hosting_type": hosting_type,
        "cluster_id": None, "os_version": os_version, "ubuntu_version": os_version,
        "vms_enabled": rng.random() < 0.2, "is_vm_deverified": False, "resource_type": "gpu",
        "logo": LOGO, "webpage": None,
    }


def _availability_part(rng: random.Random, now: float) -> dict:
    """Listing state and the host's contract window (a few offers end within a week)."""
    days = rng.uniform(0.5, 7) if rng.random() < 0.15 else rng.uniform(7, 180)
    end_date = float(int(now + days * 86400))
    return {
        "rentable": rng.random() < 0.93, "rented": False, "external": rng.random() < 0.05,
        "start_date": float(int(now - rng.uniform(1, 120) * 86400)), "end_date": end_date,
        "duration": end_date - now, "bundled_results": None, "avail_vol_ask_id": None,
        "avail_vol_dph": None, "avail_vol_size": None, "nw_disk_min_bw": None,
        "nw_disk_max_bw": None, "nw_disk_avg_bw": None, "platform_fee": None,
    }


def _price_part(rng: random.Random, spec: GpuSpec, offer: dict) -> dict:
    """Host asking prices plus quality metrics that depend on them (score)."""
    n = offer["num_gpus"]
    dph_base = round(rng.uniform(*spec.price) * n, 4)
    reliability = round(0.999 - 0.149 * rng.random() ** 3, 4)
    dlperf = round(spec.dlperf * n * (0.92 if n > 1 else 1.0) * rng.uniform(0.85, 1.05), 2)
    reliability_mult = round(reliability ** 4, 4)
    return {
        "dph_base": dph_base, "min_bid": round(dph_base * rng.uniform(0.35, 0.6), 4),
        "storage_cost": round(rng.uniform(0.05, 0.3), 4),
        "vram_costperhour": round(dph_base / (spec.vram_mb * n / 1024), 6),
        "credit_discount_max": rng.choice((0.1, 0.15, 0.2, 0.25, 0.3, 0.4)),
        "reliability": reliability, "reliability2": reliability,
        "reliability_mult": reliability_mult, "expected_reliability": reliability,
        "dlperf": dlperf, "total_flops": round(spec.tflops * n, 2),
        "score": round(dlperf / dph_base * reliability_mult, 4),
    }


# --------------------------------------------------------------------------- loading


def load_market(path: str | Path) -> list[dict]:
    """Read a pinned market (a JSON list of offers, or ``{"offers": [...]}``).

    Minimal offers are completed with :func:`normalize_offer` so a test can write only the
    fields it cares about.
    """
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    offers = data.get("offers") if isinstance(data, dict) else data
    if not isinstance(offers, list):
        raise ValueError(f"{path}: expected a list of offers or {{\"offers\": [...]}}")
    market = [normalize_offer(raw, where=f"{path}: offer #{i}") for i, raw in enumerate(offers)]
    seen: set[int] = set()
    for offer in market:
        if offer["id"] in seen:
            raise ValueError(f"{path}: duplicate offer id {offer['id']}")
        seen.add(offer["id"])
    return market


def normalize_offer(raw: Any, where: str = "offer") -> dict:
    """Validate the required keys of one offer and fill every other §8 field with a default."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    missing = [key for key in REQUIRED_FIELDS if raw.get(key) is None]
    if missing:
        raise ValueError(f"{where}: missing required field(s): {', '.join(missing)}")
    offer = {**STATIC_DEFAULTS, **_derived_defaults(raw, where), **raw}
    for key in ("id", "machine_id", "num_gpus", "gpu_ram"):
        offer[key] = _as_int(offer[key], key, where)
    if offer["num_gpus"] < 1:
        raise ValueError(f"{where}: num_gpus must be >= 1")
    for key in ("dph_base", "min_bid", "storage_cost", "disk_space", "reliability"):
        offer[key] = _as_float(offer[key], key, where)
    if not isinstance(offer["gpu_name"], str) or not offer["gpu_name"].strip():
        raise ValueError(f"{where}: gpu_name must be a non-empty string")
    _sync_verification(offer, raw)
    return offer


def _derived_defaults(raw: dict, where: str) -> dict:
    """Defaults that follow from the required fields (ids, totals, floors)."""
    dph_base = _as_float(raw["dph_base"], "dph_base", where)
    return {
        "ask_contract_id": raw["id"], "host_id": raw["machine_id"], "bundle_id": raw["id"],
        "gpu_total_ram": int(_as_float(raw["gpu_ram"], "gpu_ram", where)
                             * _as_float(raw["num_gpus"], "num_gpus", where)),
        "min_bid": round(dph_base * 0.5, 6), "vram_costperhour": 0.0,
        "reliability2": raw.get("reliability", STATIC_DEFAULTS["reliability"]),
        "expected_reliability": raw.get("reliability", STATIC_DEFAULTS["reliability"]),
        "reliability_mult": 1.0, "score": 0.0, "gpu_ids": [],
        "internet_up_cost_per_tb": 5.0, "internet_down_cost_per_tb": 5.0,
    }


def _sync_verification(offer: dict, raw: dict) -> None:
    """Keep ``verification`` (the server's truth) and the ``verified`` bool in step."""
    if "verification" not in raw and "verified" in raw:
        offer["verification"] = "verified" if raw["verified"] else "unverified"
    if offer["verification"] not in ("verified", "unverified", "deverified"):
        raise ValueError(f"unknown verification {offer['verification']!r}")
    offer["verified"] = offer["verification"] == "verified"
    offer.setdefault("vericode", {"verified": 1, "unverified": 0}.get(offer["verification"], -1))


def _as_int(value: Any, key: str, where: str) -> int:
    """An integer field, accepting 3 / 3.0 / '3' but not 3.5 or booleans."""
    number = _as_float(value, key, where)
    if number != int(number):
        raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
    return int(number)


def _as_float(value: Any, key: str, where: str) -> float:
    """A numeric field; booleans are rejected because True/False are never prices."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}") from None


def gpu_names(market: list[dict]) -> list[str]:
    """Sorted unique GPU names on a market, for ``GET /api/v0/gpu_names/unique/``."""
    return sorted({offer["gpu_name"] for offer in market})


# --------------------------------------------------------------------------- pricing


def normalize_offer_type(offer_type: str | None) -> str:
    """Map the spellings clients send to 'on-demand' | 'bid' | 'reserved'."""
    if offer_type is None:
        return "on-demand"
    kind = OFFER_TYPES.get(str(offer_type).strip().lower())
    if kind is None:
        raise ValueError(f"unknown offer type {offer_type!r}; expected on-demand, bid or reserved")
    return kind


def storage_dph(offer: dict, disk_gb: float) -> float:
    """$/h for ``disk_gb`` of this host's storage (storage_cost is $/GB/month)."""
    return float(offer.get("storage_cost") or 0.0) * float(disk_gb) / HOURS_PER_MONTH


def price_offer(offer: dict, offer_type: str = "on-demand",
                allocated_storage_gb: float = 5.0, now: float | None = None) -> dict:
    """A copy of ``offer`` with the per-search price fields filled in.

    ``dph_total`` is the GPU part (``dph_base``, or ``min_bid`` for a bid search) plus storage
    for ``allocated_storage_gb``. Reserved searches keep ``dph_total`` undiscounted and show
    the ``credit_discount_max`` saving in ``discounted_dph_total``. With ``now``, ``duration``
    is recomputed from ``end_date``.
    """
    kind = normalize_offer_type(offer_type)
    storage = storage_dph(offer, allocated_storage_gb)
    bid_floor = offer.get("min_bid")
    gpu = float(bid_floor if kind == "bid" and bid_floor is not None else offer["dph_base"])
    total = gpu + storage
    rate = float(offer.get("credit_discount_max") or 0.0) if kind == "reserved" else 0.0
    discount = gpu * rate
    priced = dict(offer)
    priced.update({
        "dph_total": total, "storage_total_cost": storage, "is_bid": kind == "bid",
        "discount_rate": rate, "discounted_hourly": discount,
        "discounted_dph_total": total - discount,
        "dlperf_per_dphtotal": _per_dollar(offer.get("dlperf"), total),
        "flops_per_dphtotal": _per_dollar(offer.get("total_flops"), total),
        "search": {"gpuCostPerHour": gpu, "diskHour": storage, "totalHour": total,
                   "discountTotalHour": discount, "discountedTotalPerHour": total - discount},
    })
    if now is not None and offer.get("end_date") is not None:
        priced["duration"] = max(0.0, float(offer["end_date"]) - now)
    return priced


def _per_dollar(value: Any, dph_total: float) -> float:
    """value / ($/h), 0 for free or unknown offers rather than a division error."""
    if value is None or dph_total <= 0:
        return 0.0
    return float(value) / dph_total

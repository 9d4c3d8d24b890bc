"""What a rental asks for and how offers rank: pure rules, no API call.

The query is built from named terms so a search that finds nothing can say which
constraint to relax; candidates rank by the estimated total for the run: GPU and storage
for the hours, plus the expected transfer (push in, results out) at the offer's $/GB.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from vasticlaude.core import money
from vasticlaude.errors import FAILED, Error

RELAX_ORDER = ("region", "verified", "reliability", "max_dph", "cuda", "vram", "disk", "num_gpus", "gpu", "cluster")


QUERY_ORDER = ("num_gpus", "gpu", "vram", "reliability", "cuda", "disk", "max_dph", "region", "verified", "cluster")


@dataclass(frozen=True)
class Wanted:
    """What the user asked for, flags over config."""

    gpus: tuple[str, ...] = ()
    num_gpus: int | None = 1
    min_vram_gb: float | None = None
    min_reliability: float | None = None
    cuda: float | None = None
    disk_gb: float = 40.0
    max_dph: float | None = None
    regions: tuple[str, ...] = ()
    verified: bool = True
    interruptible: bool = False
    hours: float = 1.0
    limit: int = 5
    cluster_id: int | None = None  # several nodes: machines of this physical cluster only
    push_gb: float = 0.0     # expected bytes sent to the instance (the code): billed at inet_down_cost
    results_gb: float = 0.0  # expected results brought home: billed at inet_up_cost


@dataclass(frozen=True)
class Term:
    """One constraint of the query, named so a no-match can say which to relax."""

    name: str
    text: str
    flag: str


@dataclass(frozen=True)
class Candidate:
    offer_id: int
    machine_id: int
    gpu_name: str
    num_gpus: int
    vram_gb: float
    dph: float
    gpu_dph: float
    storage_dph: float
    est_total_usd: float
    reliability: float
    dlperf_per_usd: float
    location: str
    verified: bool
    interruptible: bool
    transfer_usd: float = 0.0    # the expected push and pull at the offer's $/GB (inside est_total_usd)
    inet_down_cost: float = 0.0  # $/GB into the instance
    inet_up_cost: float = 0.0    # $/GB out of it


def terms(w: Wanted) -> list[Term]:
    """The constraints, in RELAX_ORDER; `rentable=true` is not one (it is never relaxed)."""
    out = {
        "region": w.regions and Term("region", f"geolocation in [{','.join(w.regions)}]", "--region"),
        "verified": w.verified and Term("verified", "verified=true", "--any-verified"),
        "reliability": w.min_reliability is not None and Term("reliability", f"reliability>={w.min_reliability:g}", "--min-reliability"),
        "max_dph": w.max_dph is not None and Term("max_dph", f"dph<={w.max_dph:g}", "--max-dph"),
        "cuda": w.cuda is not None and Term("cuda", f"cuda_vers>={w.cuda:g}", "--cuda"),
        "vram": w.min_vram_gb is not None and Term("vram", f"gpu_ram>={w.min_vram_gb:g}", "--min-vram"),
        "disk": Term("disk", f"disk_space>={w.disk_gb:g}", "--disk"),
        "num_gpus": w.num_gpus is not None and Term("num_gpus", f"num_gpus={int(w.num_gpus)}", "--num-gpus"),
        "cluster": w.cluster_id is not None and Term("cluster", f"cluster_id={int(w.cluster_id)}", "--nodes"),
        "gpu": w.gpus and Term("gpu", f"gpu_name in [{','.join(g.replace(' ', '_') for g in w.gpus)}]", "--gpu"),
    }
    return [out[name] for name in RELAX_ORDER if out[name]]


def query_of(w: Wanted, dropped: str = "") -> str:
    kept = sorted((t for t in terms(w) if t.name != dropped), key=lambda t: QUERY_ORDER.index(t.name))
    parts = [t.text for t in kept]
    return " ".join(parts + ([] if w.verified and dropped != "verified" else ["verified=any"]) + ["rentable=true"])


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").casefold().split())


def resolve_gpus(requested: tuple[str, ...], market: list[str]) -> tuple[str, ...]:
    """The market's spelling of each requested GPU; an unknown one fails with the nearest names."""
    index = {_norm(n): n for n in market}
    index.update({_norm(n).replace(" ", ""): n for n in market})
    out = []
    for name in requested:
        hit = index.get(_norm(name)) or index.get(_norm(name).replace(" ", ""))
        if hit is None:
            near = difflib.get_close_matches(_norm(name), [_norm(n) for n in market], n=3, cutoff=0.3)
            names = [index[n] for n in near] or market[:5]
            raise Error("unknown_gpu", f"unknown GPU {name!r}; nearest on the market: {', '.join(names)}",
                        f'Use one of those, e.g. --gpu "{names[0]}".' if names else "", FAILED)
        out.append(hit)
    return tuple(dict.fromkeys(out))


def candidate(offer: dict, w: Wanted) -> Candidate:
    gpu = float(offer.get("min_bid") if w.interruptible and offer.get("min_bid") is not None else offer["dph_base"])
    storage = float(offer.get("storage_total_cost") or 0.0)
    dph = gpu + storage
    down, up = float(offer.get("inet_down_cost") or 0.0), float(offer.get("inet_up_cost") or 0.0)
    transfer = money.transfer_usd(w.push_gb * money.GB, w.results_gb * money.GB, down, up)
    return Candidate(
        offer_id=int(offer["id"]), machine_id=int(offer["machine_id"]), gpu_name=str(offer["gpu_name"]),
        num_gpus=int(offer["num_gpus"]), vram_gb=round(float(offer.get("gpu_ram") or 0) / 1000, 1),
        dph=round(dph, 6), gpu_dph=round(gpu, 6), storage_dph=round(storage, 6),
        est_total_usd=round(dph * w.hours + transfer, 4), reliability=round(float(offer.get("reliability") or 0), 4),
        dlperf_per_usd=round(float(offer.get("dlperf") or 0) / dph, 2) if dph > 0 else 0.0,
        location=str(offer.get("geolocation") or "?"), verified=offer.get("verification", "verified") == "verified",
        interruptible=w.interruptible, transfer_usd=round(transfer, 4), inet_down_cost=down, inet_up_cost=up)


def rank(offers: list[dict], w: Wanted, excluded: set[int]) -> list[Candidate]:
    cands = [candidate(o, w) for o in offers if int(o["machine_id"]) not in excluded]
    return sorted(cands, key=lambda c: (c.est_total_usd, -c.reliability, -c.dlperf_per_usd))[: w.limit]

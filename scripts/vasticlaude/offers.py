"""vasticlaude offers: the GPU offers that fit, ranked by what the whole run would cost.

Usage:
  vasticlaude offers [--gpu NAME]... [--num-gpus N] [--min-vram GB] [--min-reliability R]
                     [--cuda VERSION] [--disk GB] [--max-dph USD] [--region CC]...
                     [--verified | --any-verified] [--interruptible] [--hours H] [--limit N]
                     [--sandbox] [--api-key KEY] [--json]

Builds one vastai query (e.g. `num_gpus=1 gpu_name in [RTX_4090,RTX_3090] gpu_ram>=16
reliability>=0.95 cuda_vers>=12.1 disk_space>=40 dph<=2 geolocation in [US,CA]
verified=true rentable=true`), searches with the disk priced in (interruptible: bid
prices), skips machines that failed you in the last 7 days (`up` records them), and
ranks by the estimated total for the run: (GPU $/h — the minimum bid when interruptible
— + storage $/h for the disk) × hours. Why total and not $/h: a run is paid as a whole,
and the estimate is what the budget is checked against. Defaults come from
.vasticlaude/config.json. GPU names may be written "RTX 4090" or RTX_4090; an unknown
name is answered with the market's nearest names. When nothing matches, each constraint
is dropped in turn (cheapest to give up first) and the message names one whose removal
alone gives results.

JSON data: {"query", "hours", "interruptible", "candidates": [{"offer_id", "machine_id",
  "gpu_name", "num_gpus", "vram_gb", "dph" (GPU + storage $/h), "gpu_dph", "storage_dph",
  "est_total_usd", "reliability", "dlperf_per_usd", "location", "verified",
  "interruptible"}]} — candidates cheapest total first.

Env: VASTICLAUDE_POLL_SCALE multiplies the waits between retried reads (default 1).

Exit codes: 0 candidates found · 1 no offer matches (the message names what to relax) or
unknown GPU name · 2 usage · 3 Vast/sandbox API failure.
"""
from __future__ import annotations

import argparse
import difflib
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Iterator

from . import command, config, credentials, state
from .errors import FAILED, Error
from .vast import READ_BACKOFF, Vast

FAILED_MACHINE_TTL = 7 * 24 * 3600  # a host that failed once is worth avoiding for a while, not forever
FAILED_MACHINE_CAP = 200
RELAX_ORDER = ("region", "verified", "reliability", "max_dph", "cuda", "vram", "disk", "num_gpus", "gpu")
QUERY_ORDER = ("num_gpus", "gpu", "vram", "reliability", "cuda", "disk", "max_dph", "region", "verified")


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


# ----- flags and config -----------------------------------------------------------------------
def add_search_flags(p: argparse.ArgumentParser) -> None:
    """The search flags, shared with `up` so both rank the same way."""
    p.add_argument("--gpu", action="append", help='GPU model, repeatable ("RTX 4090" or RTX_4090)')
    p.add_argument("--num-gpus", type=int, help="GPUs per instance (default 1)")
    p.add_argument("--min-vram", type=float, metavar="GB", help="minimum memory per GPU")
    p.add_argument("--min-reliability", type=float, metavar="R", help="0–1 (default 0.95)")
    p.add_argument("--cuda", type=float, metavar="VERSION", help="minimum CUDA the host driver supports")
    p.add_argument("--disk", type=float, metavar="GB", help="disk to rent (default 40); priced into $/h")
    p.add_argument("--max-dph", type=float, metavar="USD", help="maximum GPU + storage $/h")
    p.add_argument("--region", action="append", metavar="CC", help="country code, repeatable (US, CA, DE…)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--verified", dest="verified", action="store_true", default=None, help="verified hosts only (default)")
    group.add_argument("--any-verified", dest="verified", action="store_false", help="verified or not")
    p.add_argument("--interruptible", action="store_true", default=None, help="bid prices: cheaper, can be preempted")
    p.add_argument("--hours", type=float, metavar="H", help="expected duration, for the total estimate (default 1)")
    command.add_target_flags(p)


def wanted_from(args: argparse.Namespace, cfg: dict, limit: int = 5) -> Wanted:
    def pick(flag: object, key: str) -> object:
        return flag if flag is not None else cfg.get(key)
    return Wanted(gpus=tuple(args.gpu or cfg.get("gpu") or ()), num_gpus=pick(args.num_gpus, "num_gpus"),
                  min_vram_gb=pick(args.min_vram, "min_vram_gb"),
                  min_reliability=pick(args.min_reliability, "min_reliability"), cuda=pick(args.cuda, "cuda"),
                  disk_gb=float(pick(args.disk, "disk_gb") or 40), max_dph=pick(args.max_dph, "max_dph"),
                  regions=tuple(c.upper() for c in (args.region or cfg.get("region") or ())),
                  verified=bool(pick(args.verified, "verified")), interruptible=bool(pick(args.interruptible, "interruptible")),
                  hours=float(pick(args.hours, "hours") or 1.0), limit=limit)


def connect(args: argparse.Namespace, cfg: dict) -> Vast:
    """The gateway for these flags and config, with the lifecycle's longer read retries.

    Reads are retried 8 times (about 40 s) rather than the gateway's 5: giving up halfway
    through a rental or a teardown costs more than waiting. Waits are × VASTICLAUDE_POLL_SCALE.
    """
    target = credentials.resolve(args.api_key, args.sandbox or None, config_target=cfg.get("target"))
    return Vast(target, backoff=tuple(pause * poll_scale() for pause in READ_BACKOFF + (8.0, 8.0, 8.0)))


def poll_scale() -> float:
    """VASTICLAUDE_POLL_SCALE (default 1): tests shrink every wait between API calls with it."""
    try:
        return max(0.0, float(os.environ.get("VASTICLAUDE_POLL_SCALE") or 1.0))
    except ValueError:
        return 1.0


def backoff(first: float, cap: float) -> Iterator[float]:
    """first, 2×first, 4×first … capped at cap, all scaled; endless (the caller bounds it)."""
    pause = first
    while True:
        yield pause * poll_scale()
        pause = min(pause * 2, cap)


# ----- the query ----------------------------------------------------------------------------
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
        "gpu": w.gpus and Term("gpu", f"gpu_name in [{','.join(g.replace(' ', '_') for g in w.gpus)}]", "--gpu"),
    }
    return [out[name] for name in RELAX_ORDER if out[name]]


def query_of(w: Wanted, dropped: str = "") -> str:
    kept = sorted((t for t in terms(w) if t.name != dropped), key=lambda t: QUERY_ORDER.index(t.name))
    parts = [t.text for t in kept]
    return " ".join(parts + ([] if w.verified and dropped != "verified" else ["verified=any"]) + ["rentable=true"])


# ----- GPU names ----------------------------------------------------------------------------
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


# ----- search and rank ----------------------------------------------------------------------
def candidate(offer: dict, w: Wanted) -> Candidate:
    gpu = float(offer.get("min_bid") if w.interruptible and offer.get("min_bid") is not None else offer["dph_base"])
    storage = float(offer.get("storage_total_cost") or 0.0)
    dph = gpu + storage
    return Candidate(
        offer_id=int(offer["id"]), machine_id=int(offer["machine_id"]), gpu_name=str(offer["gpu_name"]),
        num_gpus=int(offer["num_gpus"]), vram_gb=round(float(offer.get("gpu_ram") or 0) / 1000, 1),
        dph=round(dph, 6), gpu_dph=round(gpu, 6), storage_dph=round(storage, 6),
        est_total_usd=round(dph * w.hours, 4), reliability=round(float(offer.get("reliability") or 0), 4),
        dlperf_per_usd=round(float(offer.get("dlperf") or 0) / dph, 2) if dph > 0 else 0.0,
        location=str(offer.get("geolocation") or "?"), verified=offer.get("verification", "verified") == "verified",
        interruptible=w.interruptible)


def rank(offers: list[dict], w: Wanted, excluded: set[int]) -> list[Candidate]:
    cands = [candidate(o, w) for o in offers if int(o["machine_id"]) not in excluded]
    return sorted(cands, key=lambda c: (c.est_total_usd, -c.reliability, -c.dlperf_per_usd))[: w.limit]


def search(vast: Vast, w: Wanted, dropped: str = "", extra: int = 0) -> list[dict]:
    storage = 5.0 if dropped == "disk" else w.disk_gb
    return vast.search_offers(query_of(w, dropped), "dph", w.limit + extra, w.interruptible, storage)


def find(vast: Vast, w: Wanted) -> dict:
    """The ranked candidates, or an Error that says what to change."""
    if w.gpus:
        w = replace(w, gpus=resolve_gpus(w.gpus, vast.gpu_names()))
    excluded = failed_machines()
    offers = search(vast, w, extra=len(excluded))
    cands = rank(offers, w, excluded)
    if not cands:
        raise no_match(vast, w, bool(offers))
    return {"query": query_of(w), "hours": w.hours, "interruptible": w.interruptible,
            "candidates": [asdict(c) for c in cands]}


def no_match(vast: Vast, w: Wanted, only_failed: bool) -> Error:
    if only_failed:
        return Error("no_offer", "the only matching offers are on machines that failed you in the last 7 days",
                     "Relax a constraint (e.g. another --gpu or --region) to reach other machines.", FAILED)
    for term in terms(w):
        if search(vast, replace(w, limit=1), dropped=term.name):
            return Error("no_offer", f"no offer matches `{query_of(w)}`; without {term.name} "
                         f"(`{term.text}`) there would be", f"Relax {term.flag} and retry.", FAILED)
    return Error("no_offer", f"no offer matches `{query_of(w)}`, and dropping any one constraint is not enough",
                 "Relax several constraints (GPU, region, price, reliability) and retry.", FAILED)


# ----- machines that failed this user -------------------------------------------------------
def failed_machines(now: float | None = None) -> set[int]:
    now = now or time.time()
    return {int(f["machine_id"]) for f in state.load().get("failed_machines", [])
            if now - float(f.get("at", 0)) < FAILED_MACHINE_TTL}


def remember_failed(machine_id: int, offer_id: int, reason: str) -> None:
    """Record a machine that failed, so the next search skips it (kept 7 days, at most 200)."""
    now = time.time()
    with state.transaction() as data:
        kept = [f for f in data.get("failed_machines", []) if now - float(f.get("at", 0)) < FAILED_MACHINE_TTL]
        kept.append({"machine_id": machine_id, "offer_id": offer_id, "reason": reason[:200], "at": now})
        data["failed_machines"] = kept[-FAILED_MACHINE_CAP:]


# ----- the command --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = command.parser("vasticlaude offers", __doc__)
    add_search_flags(p)
    p.add_argument("--limit", type=int, default=5, help="how many candidates (default 5)")
    return p


def run(args: argparse.Namespace) -> dict:
    cfg = config.load()
    return find(connect(args, cfg), wanted_from(args, cfg, limit=max(1, args.limit)))


def human(data: object) -> str:
    assert isinstance(data, dict)
    n = len(data["candidates"])
    lines = [f"{n} offer{'s' if n != 1 else ''} for {data['hours']:g} h, cheapest total first ({data['query']}):"]
    for c in data["candidates"]:
        lines.append(f"  offer {c['offer_id']}: {c['num_gpus']}x {c['gpu_name']} {c['vram_gb']:g} GB  "
                     f"${c['dph']:.3f}/h  est ${c['est_total_usd']:.2f}  rel {c['reliability']:.3f}  "
                     f"{c['dlperf_per_usd']:.0f} dlperf/$  {c['location']}  machine {c['machine_id']}"
                     f"{'' if c['verified'] else '  unverified'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return command.main(argv, build_parser, run, human)

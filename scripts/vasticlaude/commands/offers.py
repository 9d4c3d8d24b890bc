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
— + storage $/h for the disk) × hours, + the expected transfer at the offer's bandwidth
prices (Vast bills bytes both ways: the code pushed at `inet_down_cost`, the results pulled
at `inet_up_cost`, $/GB; sizes from the config's "transfer" block: push_gb, default the
project as push would send it, and results_gb, default 1). Why total and not $/h: a run is paid as a whole,
and the estimate is what the budget is checked against. Defaults come from
.vasticlaude/config.json. GPU names may be written "RTX 4090" or RTX_4090; an unknown
name is answered with the market's nearest names. When nothing matches, each constraint
is dropped in turn (cheapest to give up first) and the message names one whose removal
alone gives results.

JSON data: {"hours", "interruptible": true (only when searching bid prices),
  "candidates": [{"offer_id", "machine_id", "gpu_name", "vram_gb", "dph" (GPU + storage $/h, 4 decimals),
  "est_total_usd", "transfer_usd" (the bandwidth part of the total; only when not 0),
  "reliability", "location", "verified": false (only when not verified)}]} — candidates cheapest
  total first; the GPU count is the query's. The human output adds the query (with --json it is
  said only when nothing matches: then the error names it and what to relax) and dlperf/$.

Env: VASTICLAUDE_POLL_SCALE multiplies the waits between retried reads (default 1).

Exit codes: 0 candidates found · 1 no offer matches (the message names what to relax) or
unknown GPU name · 2 usage · 3 Vast/sandbox API failure.
"""
from __future__ import annotations

import argparse

from vasticlaude import console
from vasticlaude.ops.search import find
from vasticlaude.store import config


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude offers", __doc__)
    console.add_search_flags(p)
    p.add_argument("--limit", type=console.COUNT, default=5, help="how many candidates (default 5)")
    return p


def run(args: argparse.Namespace) -> dict:
    cfg = config.load()
    return find(console.connect(args, cfg), console.wanted_from(args, cfg, limit=max(1, args.limit)))


def human(data: object) -> str:
    assert isinstance(data, dict)
    n = len(data["candidates"])
    lines = [f"{n} offer{'s' if n != 1 else ''} for {data['hours']:g} h, cheapest total first ({data['query']}):"]
    for c in data["candidates"]:
        lines.append(f"  offer {c['offer_id']}: {c['num_gpus']}x {c['gpu_name']} {c['vram_gb']:g} GB  "
                     f"${c['dph']:.3f}/h  est ${c['est_total_usd']:.2f}"
                     f"{' (transfer $%.2f)' % c['transfer_usd'] if c.get('transfer_usd') else ''}  "
                     f"rel {c['reliability']:.3f}  "
                     f"{c['dlperf_per_usd']:.0f} dlperf/$  {c['location']}  machine {c['machine_id']}"
                     f"{'' if c['verified'] else '  unverified'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, json_view=json_view)


def json_view(data: dict) -> dict:
    """--json: what `up --offer` and the budget need of each candidate. Left out: what another field
    says (dph is gpu + storage; num_gpus is the query's; interruptible is the search's, shown only when
    true), what only ranks (dlperf, the $/GB: the human output has them) and the query (Claude wrote
    the flags; when nothing matches, the error names the query); verified only when it is not,
    transfer_usd only when not 0; dph to 4 decimals, as Vast's own tables show it."""
    drop = {"gpu_dph", "storage_dph", "interruptible", "dlperf_per_usd", "inet_down_cost", "inet_up_cost",
            "num_gpus"}
    cands = [{k: round(v, 4) if k == "dph" else v for k, v in c.items() if k not in drop
              and not (k == "verified" and v) and not (k == "transfer_usd" and not v)} for c in data["candidates"]]
    view = {k: v for k, v in data.items() if k != "query"} | {"candidates": cands}
    if not view.get("interruptible"):
        view.pop("interruptible", None)
    return view

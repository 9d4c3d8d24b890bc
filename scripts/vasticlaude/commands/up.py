"""vasticlaude up: rent a GPU for an experiment and wait until it answers over SSH.

Usage:
  vasticlaude up [--experiment ID] [--offer ID] [--image IMAGE] [--disk GB] [--hours H]
                 [--budget-usd USD] [--interruptible [--bid PRICE]] [--max-attempts N]
                 [--deadline SECONDS] [--no-wait] [the search flags of `vasticlaude offers`]
                 [--sandbox] [--api-key KEY] [--json]

Picks the cheapest candidate by estimated total (the ranking of `offers`, same flags), or
exactly --offer ID (then no failover). Refuses (exit 1, before any rental) when the
estimate for --hours breaks the per-experiment (--budget-usd) or daily budget; --budget-usd
then stays the experiment's budget (a later `run` enforces it). Rents it
labelled `vasticlaude-<experiment>` with SSH (direct when the host allows) and
cancel_unavail, so an offer that cannot start fails instead of leaving a stopped
instance that bills storage. The SSH key is ~/.ssh/id_ed25519 or id_rsa, else one made
in the vasticlaude home; it is registered on the account when missing and attached.

Safety, in order: the intent to rent is written to instances.json before the create, the
instance right after it (so a kill -9 at any point leaves something `reconcile` can
match by label). A create is never blindly retried: after an ambiguous failure (5xx,
429, timeout) the account is searched by label first and what exists is adopted.

Waiting polls with backoff (2, 4, 8, 16, 16 … s) until the instance is running and an
SSH probe answers (direct, then Vast's proxy), recording each status in the state and the
experiment's events and, once the boot has taken 10 s, printing the status and Vast's
status_msg (the image pull's progress) on stderr whenever they change. Transient states
(scheduling, rebooting, unknown) are waited out. It gives up at once on exited, offline,
stopped, a boot error in status_msg (OCI runtime, manifest not found, docker_build), as on
404 no_such_ask / 410, and at the boot deadline:
--deadline, else config deadlines.up_s, else by the image's size (600 s for small base
images such as vastai/base or ubuntu, 1800 s for pytorch/cuda/tensorflow, 2700 s for huge
ones such as vllm or -devel, 900 s for an image of unknown size), never above
deadlines.up_cap_s (3600 s). The deadline is a wall: no API retry or SSH probe (its
ConnectTimeout cut to the time left) carries an attempt past it by more than one poll.
What was created is then destroyed (and confirmed gone, within at most 30 s more) or named
(exit 4), the machine is skipped by later searches for 7 days, and the next candidate on
another machine is tried, up to --max-attempts (default 3), each with its own deadline.

Env: VASTICLAUDE_POLL_SCALE multiplies every wait between polls and retried reads
(default 1; tests use a small value).

JSON data: {"experiment", "instance_id", "offer_id", "gpu_name", "dph",
  "ssh": {"host", "port", "user": "root", "route": "direct"|"proxy"} (absent with --no-wait),
  "attempts": [{"offer_id", "machine_id", "outcome": "ready"|"created"|"failed", "reason"}] (only
  when an offer failed first), "estimate_usd", "waited_s"}. The label is vasticlaude-<experiment>;
  the key's path is in the human output's ssh line. Status lines on stderr start once a boot
  has taken 10 s: a quick boot prints only the renting line.

Several nodes (--nodes N, N >= 2; README "Several nodes"): N instances of one physical cluster
(`cluster_id` on offers; the cluster whose N cheapest fitting machines cost least) on one Vast
overlay network, created first and joined at create (`--env "-n NAME"`). Each node is an
experiment of its own, <experiment>-n<i>; --budget-usd is the group's, split evenly into the
nodes' budgets (each node's watchdog cap). The nodes boot at once, node i on the cluster's i-th
machine; a node whose machine fails moves to a spare no other node holds. One node failing to
come up takes down the others and the overlay. JSON data then: {"experiment", "nodes": [one
node's data as above], "cluster_id", "overlay", "port", "dph", "estimate_usd", "waited_s" (the
longest)}.

Exit codes: 0 ready (or created, with --no-wait) · 1 refused by a budget, or no offer
worked (nothing left billing) · 2 usage · 3 Vast/sandbox API failure · 4 an instance
could not be confirmed destroyed, or it is unknown whether a rental happened (the
message says what to run).
"""
from __future__ import annotations

import argparse
import secrets
import shutil
import time

from vasticlaude import console
from vasticlaude.output import compact
from vasticlaude.core import budget
from vasticlaude.core.lifecycle import boot_deadline
from vasticlaude.errors import USAGE, Error
from vasticlaude.ops import launch, nodes
from vasticlaude.store import config, paths


def make_plan(args: argparse.Namespace, cfg: dict) -> launch.Plan:
    experiment = paths.experiment_name(args.experiment or time.strftime("exp-%Y%m%d-") + secrets.token_hex(2))
    image = args.image or cfg["image"]
    wanted = console.wanted_from(args, cfg, limit=max(5, 2 * args.max_attempts))
    if args.bid is not None and not wanted.interruptible:
        raise Error("bad_bid", "--bid only applies to interruptible rentals", "Add --interruptible, or drop --bid.", USAGE)
    if not args.no_wait and shutil.which("ssh") is None:
        raise Error("no_ssh", "the OpenSSH client (ssh) is not installed", "Install openssh-client, or use --no-wait.")
    deadlines = cfg.get("deadlines") or {}
    seconds, source = boot_deadline(image, args.deadline, deadlines.get("up_s"), deadlines.get("up_cap_s"))
    return launch.Plan(experiment, image, wanted, args.bid, seconds, not args.no_wait, max(1, args.max_attempts),
                       budget.Limits.from_config(cfg, experiment_usd=args.budget_usd), deadline_why=source)


def build_parser() -> argparse.ArgumentParser:
    p = console.parser("vasticlaude up", __doc__)
    p.add_argument("--experiment", type=console.experiment, help="experiment id (default exp-YYYYMMDD-xxxx); the label is vasticlaude-<id>")
    p.add_argument("--offer", type=console.ID, help="rent exactly this offer (no failover)")
    p.add_argument("--image", help="Docker image (default from config: a pytorch image)")
    p.add_argument("--budget-usd", type=console.USD, help="cap for this experiment's total spend")
    p.add_argument("--bid", type=console.DPH, metavar="PRICE", help="GPU $/h bid when --interruptible (default min bid x1.15)")
    p.add_argument("--max-attempts", type=console.number(100, whole=True), default=3, help="offers to try, each on another machine (default 3)")
    p.add_argument("--deadline", type=console.SECONDS, metavar="SECONDS", help="boot deadline, a wall (default by the image: 600 small … 2700 huge; cap deadlines.up_cap_s)")
    p.add_argument("--no-wait", action="store_true", help="return once rented, without waiting for SSH")
    p.add_argument("--nodes", type=console.number(64, whole=True), default=1,
                   help="instances of one physical cluster on one overlay network, for multi-node training (default 1)")
    p.add_argument("--master-port", type=console.number(65535, whole=True), default=nodes.MASTER_PORT,
                   help=f"rendezvous port on node 0 with --nodes (default {nodes.MASTER_PORT})")
    console.add_search_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    cfg = config.load()
    plan = make_plan(args, cfg)
    if args.nodes > 1:
        if args.offer is not None or args.no_wait:
            raise Error("bad_nodes", "--nodes picks its own cluster and waits for every node",
                        "Drop --offer and --no-wait.", USAGE)
        return nodes.up(console.connect(args, cfg), plan, args.nodes, args.master_port)
    return launch.up(console.connect(args, cfg), plan, args.offer)


def human(data: object) -> str:
    assert isinstance(data, dict)
    if "nodes" in data:
        lines = [f"{len(data['nodes'])} nodes for experiment {data['experiment']} on cluster {data['cluster_id']}, "
                 f"overlay {data['overlay']} (${data['dph']:.3f}/h together, est ${data['estimate_usd']:.2f})"]
        return "\n".join(lines + [f"  node {i}: instance {n['instance_id']} ({n['gpu_name']}, ${n['dph']:.3f}/h) "
                                   f"as {n['experiment']}" for i, n in enumerate(data["nodes"])])
    ssh = data["ssh"]
    head = (f"instance {data['instance_id']} ({data['gpu_name']}, ${data['dph']:.3f}/h, est "
            f"${data['estimate_usd']:.2f}) for experiment {data['experiment']}")
    if ssh["host"] is None:
        return head + ": rented, not waited for ('vasticlaude reconcile' shows its status)"
    return f"{head}: ready after {data['waited_s']:g} s\n  ssh -i {ssh['key']} -p {ssh['port']} root@{ssh['host']}"


def main(argv: list[str]) -> int:
    return console.main(argv, build_parser, run, human, json_view=json_view)


def json_view(data: dict) -> dict:
    """--json: what the next steps need. Left out: the label (vasticlaude-<experiment>), the key's path
    (the human output shows the ssh line) and the attempts when the first offer simply worked; dph to 4
    decimals, as `offers` and Vast's own tables show it."""
    if "nodes" in data:
        return compact({**data, "nodes": [json_view(n) for n in data["nodes"]]})
    ssh = {k: v for k, v in data["ssh"].items() if k != "key"} if data["ssh"]["host"] is not None else None
    plain = [a["outcome"] for a in data.get("attempts") or []] in (["ready"], ["created"])
    view = {k: v for k, v in {**data, "ssh": ssh}.items() if k != "label" and not (k == "attempts" and plain)}
    return compact({**view, "dph": round(view["dph"], 4)} if isinstance(view.get("dph"), float) else view)

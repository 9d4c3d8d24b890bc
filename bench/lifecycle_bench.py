"""Benchmark: what vasticlaude's lifecycle commands cost in time and in output, on the sandbox.

Starts its own sandbox at time scale 0 (like bench/sim_bench.py), with a throwaway
HOME and VASTICLAUDE_HOME, and reports:
  - median wall time of `vasticlaude cost` (human and --json, on a 30-record state and on
    10,000 records over 300 experiments: months of use) and `vasticlaude --help`: no API
    call, goal <= 0.2 s;
  - `vasticlaude offers` and `vasticlaude down ID` against the bare SDK call they wrap in
    a fresh process (`python -c 'from vastai import VastAI; VastAI(...).search_offers(...)'`)
    and the equivalent `vastai` CLI call; ratio goal <= 1.2x the SDK;
  - bytes printed (stdout + stderr) by offers/up/down/cost, --json and human, against the
    raw `vastai` CLI for the same step: search offers --raw; create instance --raw +
    show instance --raw polled until running; destroy instance -y --raw + show instance
    --raw to confirm; show invoices --raw and show invoices-v1 --charges --raw.
A command that does not exist yet (its --help fails) is reported "not available".

Usage: .venv/bin/python bench/lifecycle_bench.py [--runs 7] [--api-runs 5]
Output: JSON on stdout, also written to bench/results/lifecycle.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from simkit import Sim, scratch  # noqa: E402

BIN = Path(sys.executable).parent
VC, VASTAI = str(BIN / "vasticlaude"), str(BIN / "vastai")
QUERY_FALLBACK = "num_gpus=1 reliability>=0.95 disk_space>=40 verified=true rentable=true"
IMAGE = "vastai/base:0.0.2"
GOAL_LOCAL_S, GOAL_RATIO = 0.2, 1.2


class Bench:
    """One sandbox, one throwaway home, and the commands to time against it."""

    def __init__(self, sim: Sim, work: Path):
        self.sim, self.work = sim, work
        self.project = work / "project"
        self.project.mkdir()
        os.environ["VASTICLAUDE_HOME"] = str(work / "vchome")  # for state.upsert_instance below
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "XDG_", "CLAUDE_SESSION"))}
        self.env.update(HOME=str(sim.home), XDG_CONFIG_HOME=str(sim.home / ".config"), VAST_URL=sim.url,
                        VAST_API_KEY=sim.api_key, VASTAI_NO_UPDATE_CHECK="1", VASTICLAUDE_POLL_SCALE="0.05",
                        VASTICLAUDE_HOME=str(work / "vchome"))

    def run(self, argv: list[str], timeout: float = 300) -> tuple[float, subprocess.CompletedProcess]:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=self.project,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        return time.perf_counter() - t0, proc

    def median(self, argv: list[str], runs: int) -> dict:
        times, proc = [], None
        for _ in range(runs):
            took, proc = self.run(argv)
            times.append(took)
        assert proc is not None
        return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": runs,
                "exit": proc.returncode, **({"stderr": proc.stderr.strip()[-300:]} if proc.returncode else {})}

    def available(self, command: str) -> bool:
        return self.run([VC, command, "--help"])[1].returncode == 0

    def sdk_call(self, code: str) -> list[str]:
        """A fresh process doing one bare SDK call (key and URL from the env, as the CLI takes them)."""
        return [sys.executable, "-c", "import os; from vastai import VastAI; "
                "sdk = VastAI(api_key=os.environ['VAST_API_KEY'], server_url=os.environ['VAST_URL'], retry=1); " + code]


def out_bytes(proc: subprocess.CompletedProcess) -> int:
    return len(proc.stdout.encode()) + len(proc.stderr.encode())


# ----- state for cost ---------------------------------------------------------------------------
def synthetic_state(count: int = 30, experiments: int = 4, step_s: float = 3600) -> None:
    """A realistic instances.json: destroyed, stopped and running records with histories."""
    from vasticlaude.store import state
    now = time.time()
    with state.transaction() as data:
        for i in range(count):
            start = now - step_s * (count - i)
            hist = [{"at": start, "status": "created", "why": ""}, {"at": start + 60, "status": "running", "why": ""}]
            rec = {"id": 900000 + i, "label": f"vasticlaude-exp{i % experiments}-{i}", "experiment": f"exp{i % experiments}",
                   "gpu_name": "RTX 4090", "gpu_dph": 0.4 + i / 100, "storage_dph": 0.02, "created_at": start,
                   "created_by": f"me@host session=s{i % 3} pid=1", "status": "running", "history": hist}
            if i % 3 == 0:
                hist.append({"at": start + 1800, "status": "destroyed", "why": ""})
                rec.update(status="destroyed", destroyed_at=start + 1800)
            data["instances"][str(rec["id"])] = rec


def time_local(b: Bench, runs: int) -> dict:
    synthetic_state()
    out = {"cost_human": b.median([VC, "cost"], runs), "cost_json": b.median([VC, "cost", "--json"], runs),
           "help": b.median([VC, "--help"], runs), "python_startup": b.median([sys.executable, "-c", "pass"], runs)}
    out.update(time_months(b, runs))
    out["goal_s"] = GOAL_LOCAL_S
    out["meets_goal"] = all(out[k]["median_s"] <= GOAL_LOCAL_S
                            for k in ("cost_human", "cost_json", "help", "cost_json_10k", "cost_human_10k"))
    return out


def time_months(b: Bench, runs: int) -> dict:
    """`cost` on a few months of use: 10,000 instance records over 300 experiments, each with its experiment.json."""
    from vasticlaude.store import state
    home = b.work / "months"
    before, os.environ["VASTICLAUDE_HOME"] = os.environ["VASTICLAUDE_HOME"], str(home)
    try:
        synthetic_state(10_000, 300, step_s=360)
        for i in range(300):
            with state.experiment(f"exp{i}") as exp:
                exp.update(experiment=f"exp{i}", budget_usd=5.0)
    finally:
        os.environ["VASTICLAUDE_HOME"] = before
    saved, b.env = b.env, {**b.env, "VASTICLAUDE_HOME": str(home)}
    try:
        return {"cost_json_10k": b.median([VC, "cost", "--json"], runs), "cost_human_10k": b.median([VC, "cost"], runs)}
    finally:
        b.env = saved


# ----- offers ----------------------------------------------------------------------------------
def offers_query(b: Bench) -> str:
    _, proc = b.run([VC, "offers", "--json"])
    try:
        return json.loads(proc.stdout)["data"]["query"]
    except (ValueError, KeyError, TypeError):
        return QUERY_FALLBACK


def time_offers(b: Bench, runs: int) -> dict:
    if not b.available("offers"):
        return {"status": "not available"}
    query = offers_query(b)
    ours = b.median([VC, "offers", "--json", "--limit", "5"], runs)
    sdk = b.median(b.sdk_call(f"sdk.search_offers(query={query!r}, order='dph', limit=5, storage=40)"), runs)
    cli = b.median([VASTAI, "search", "offers", query, "-o", "dph", "--limit", "5", "--storage", "40", "--raw"], runs)
    return {"query": query, "vasticlaude": ours, "sdk": sdk, "vastai_cli": cli, **ratios(ours, sdk, cli)}


def ratios(ours: dict, sdk: dict, cli: dict) -> dict:
    ratio = ours["median_s"] / sdk["median_s"]
    return {"ratio_vs_sdk": round(ratio, 3), "ratio_cli_vs_sdk": round(cli["median_s"] / sdk["median_s"], 3),
            "goal_ratio": GOAL_RATIO, "meets_goal": ratio <= GOAL_RATIO}


# ----- down ------------------------------------------------------------------------------------
def rent(b: Bench, tag: str) -> int:
    """An instance rented with the SDK and recorded as `up` would record it (not timed)."""
    from vasticlaude.store import state
    sdk = b.sim.sdk()
    offer = sdk.search_offers(query="num_gpus=1 rentable=true", order="dph", limit=1)[0]
    iid = sdk.create_instance(id=offer["id"], image=IMAGE, disk=8)["new_contract"]
    storage = float(offer.get("storage_cost") or 0) * 8 / 720
    state.upsert_instance(iid, label=f"vasticlaude-bench-{tag}", experiment="bench", offer_id=offer["id"],
                          machine_id=offer.get("machine_id"), gpu_name=offer.get("gpu_name"),
                          gpu_dph=float(offer["dph_base"]), storage_dph=storage, disk=8, image=IMAGE, status="created")
    b.sim.wait_status(iid, "running")
    state.upsert_instance(iid, status="running")
    return iid


def time_destroy(b: Bench, runs: int, make_argv) -> dict:
    times, proc = [], None
    for i in range(runs):
        iid = rent(b, f"d{i}-{time.monotonic_ns()}")
        took, proc = b.run(make_argv(iid))
        times.append(took)
        ensure_gone(b, iid)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": runs,
            "exit": proc.returncode if proc else None}


def ensure_gone(b: Bench, iid: int) -> None:
    """Destroy what a timed command may have left (a 404 means it is already gone)."""
    try:
        b.sim.sdk().destroy_instance(id=iid)
    except Exception as err:  # noqa: BLE001
        if getattr(getattr(err, "response", None), "status_code", None) != 404:
            raise


def time_down(b: Bench, runs: int) -> dict:
    if not b.available("down"):
        return {"status": "not available"}
    ours = time_destroy(b, runs, lambda iid: [VC, "down", str(iid), "--json"])
    sdk = time_destroy(b, runs, lambda iid: b.sdk_call(f"sdk.destroy_instance(id={iid})"))
    cli = time_destroy(b, runs, lambda iid: [VASTAI, "destroy", "instance", str(iid), "-y", "--raw"])
    return {"vasticlaude": ours, "sdk": sdk, "vastai_cli": cli, **ratios(ours, sdk, cli),
            "note": "down also confirms the instance is gone and records its cost; the bare calls only destroy"}


# ----- bytes printed ---------------------------------------------------------------------------
def bytes_offers(b: Bench, query: str) -> dict:
    if not b.available("offers"):
        return {"status": "not available"}
    return {"vasticlaude_json": out_bytes(b.run([VC, "offers", "--json", "--limit", "5"])[1]),
            "vasticlaude_human": out_bytes(b.run([VC, "offers", "--limit", "5"])[1]),
            "vastai_raw": out_bytes(b.run([VASTAI, "search", "offers", query, "-o", "dph", "--limit", "5", "--raw"])[1]),
            "vastai_raw_no_limit": out_bytes(b.run([VASTAI, "search", "offers", query, "-o", "dph", "--raw"])[1])}


def vastai_create_and_poll(b: Bench) -> dict:
    """create instance --raw, then show instance --raw until running: what a raw-CLI user reads."""
    offer = b.sim.sdk().search_offers(query="num_gpus=1 rentable=true", order="dph", limit=1)[0]
    _, created = b.run([VASTAI, "create", "instance", str(offer["id"]), "--image", IMAGE, "--disk", "8",
                        "--ssh", "--direct", "--raw"])
    iid = json.loads(created.stdout)["new_contract"]
    total, polls, per_poll = out_bytes(created), 0, 0
    for _ in range(60):
        _, shown = b.run([VASTAI, "show", "instance", str(iid), "--raw"])
        polls, per_poll = polls + 1, out_bytes(shown)
        total += per_poll
        if json.loads(shown.stdout).get("actual_status") == "running":
            break
        time.sleep(0.5)
    return {"id": iid, "bytes": total, "polls": polls, "bytes_per_poll": per_poll,
            "note": "at time scale 0 the instance runs at once; on Vast expect one poll per few seconds of loading"}


def bytes_up(b: Bench) -> dict:
    raw = vastai_create_and_poll(b)
    iid = raw.pop("id")
    _, destroyed = b.run([VASTAI, "destroy", "instance", str(iid), "-y", "--raw"])
    _, confirm = b.run([VASTAI, "show", "instance", str(iid), "--raw"])
    out = {"vastai_raw_create_and_poll": raw, "vastai_raw_destroy_and_confirm": out_bytes(destroyed) + out_bytes(confirm)}
    if not b.available("up"):
        return {**out, "vasticlaude": "not available"}
    for form, extra in (("json", ["--json"]), ("human", [])):
        _, proc = b.run([VC, "up", "--experiment", f"bytes-{form}", "--image", IMAGE, "--disk", "8", *extra])
        out[f"vasticlaude_up_{form}"] = out_bytes(proc) if proc.returncode == 0 else \
            {"status": f"failed (exit {proc.returncode})", "stderr": proc.stderr.strip()[-300:]}
    return out


def bytes_down(b: Bench) -> dict:
    if not b.available("down"):
        return {"status": "not available"}
    out = {}
    for form, extra in (("json", ["--json"]), ("human", [])):
        _, proc = b.run([VC, "down", str(rent(b, f"bytes-{form}")), *extra])
        out[f"vasticlaude_{form}"] = out_bytes(proc)
    return out


def bytes_cost(b: Bench) -> dict:
    return {"vasticlaude_json": out_bytes(b.run([VC, "cost", "--json"])[1]),
            "vasticlaude_human": out_bytes(b.run([VC, "cost"])[1]),
            "vasticlaude_actual_json": out_bytes(b.run([VC, "cost", "--actual", "--json"])[1]),
            "vastai_raw_show_invoices": out_bytes(b.run([VASTAI, "show", "invoices", "--raw"])[1]),
            "vastai_raw_show_invoices_v1_charges": out_bytes(b.run([VASTAI, "show", "invoices-v1", "--charges", "--raw"])[1])}


# ----- main ------------------------------------------------------------------------------------
def measure(b: Bench, runs: int, api_runs: int) -> dict:
    b.run([VC, "doctor", "--register-ssh-key"])  # an SSH key on the account, as `up` needs
    report = {"local": time_local(b, runs), "offers": time_offers(b, api_runs), "down": time_down(b, api_runs)}
    report["bytes"] = {"offers": bytes_offers(b, report["offers"].get("query", QUERY_FALLBACK)),
                       "up": bytes_up(b), "down": bytes_down(b), "cost": bytes_cost(b)}
    report["cores"] = os.cpu_count()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="samples of each local command")
    parser.add_argument("--api-runs", type=int, default=5, help="samples of each API-bound command")
    args = parser.parse_args()
    with scratch("lifecyclebench-", "--time-scale", "0", "--seed", "11", "--balance", "10000") as (sim, tmp):
        report = measure(Bench(sim, tmp), args.runs, args.api_runs)
    text = json.dumps(report, indent=1)
    out = ROOT / "bench" / "results" / "lifecycle.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""vasticlaude demo: a round trip on a throwaway local Vast sandbox.

Starts a sandbox, then with the unmodified official `vastai` CLI: searches offers,
rents the cheapest matching GPU, waits until it runs, registers an SSH key, runs
`nvidia-smi` over real SSH, sends a folder up and back with rsync, destroys the
instance, confirms it is gone and prints what it cost. Nothing reaches the
internet or a real account; the sandbox is stopped at the end, even on failure.

Usage: vasticlaude demo [--keep] [--time-scale X]

Exit codes: 0 the round trip worked · 1 a step failed (the message says which).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import Error
from .output import fail, progress
from .sim.cli import kill_containers, start_background, stop_background

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vasticlaude demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the demo's folder for a look afterwards")
    parser.add_argument("--time-scale", type=float, default=0.05, help="sandbox delays (1 = Vast-like)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vasticlaude-demo-"))
    state = work / "sim"
    try:
        info = start_background(state, ["--time-scale", str(args.time_scale), "--seed", "3"])
        progress(f"sandbox up at {info['url']} (state {state})")
        Demo(work, info).run()
        return 0
    except Error as err:
        return fail(err, False, "vasticlaude demo")
    finally:
        stop_background(state)
        if (state / "sim.json").exists():
            kill_containers(json.loads((state / "sim.json").read_text()).get("marker", ""))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


class Demo:
    """The steps, each with the official CLI or the real ssh/rsync."""

    def __init__(self, work: Path, info: dict):
        self.work = work
        self.home = work / "home"
        self.home.mkdir()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("VAST")},
                    "HOME": str(self.home), "VAST_URL": info["url"], "VAST_API_KEY": info["api_key"],
                    "VASTAI_NO_UPDATE_CHECK": "1"}
        self.vastai = str(Path(sys.executable).with_name("vastai"))

    def run(self) -> None:
        offer = self.find_offer()
        iid = self.rent(offer)
        try:
            row = self.wait_running(iid)
            self.use_over_ssh(row)
        finally:
            self.destroy(iid)
        self.report(iid)

    def cli(self, *args: str) -> str:
        proc = subprocess.run([self.vastai, *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=120)
        if proc.returncode or '"error": true' in proc.stderr:
            raise Error("demo_step", f"`vastai {' '.join(args[:3])}` failed: {proc.stderr.strip()[:200]}")
        return proc.stdout

    def find_offer(self) -> dict:
        query = "gpu_name in [RTX_4090,RTX_3090] num_gpus=1 reliability>0.95 disk_space>=20"
        offers = json.loads(self.cli("search", "offers", query, "-o", "dph", "--limit", "3", "--raw"))
        if not offers:
            raise Error("demo_no_offer", "the sandbox market had no matching offer")
        offer = offers[0]
        print(f"offer {offer['id']}: {offer['gpu_name']} at ${offer['dph_total']:.3f}/h, "
              f"reliability {offer['reliability']:.3f}, {offer['geolocation']}")
        return offer

    def rent(self, offer: dict) -> int:
        key = self.home / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.cli("create", "ssh-key", key.with_suffix(".pub").read_text().strip())
        created = json.loads(self.cli("create", "instance", str(offer["id"]), "--image", "vastai/base:0.0.2",
                                      "--disk", "10", "--ssh", "--direct", "--label", "vasticlaude-demo",
                                      "--onstart-cmd", "echo demo container up", "--raw"))
        print(f"rented instance {created['new_contract']}")
        return int(created["new_contract"])

    def wait_running(self, iid: int, timeout: float = 120) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            row = json.loads(self.cli("show", "instance", str(iid), "--raw"))
            if row.get("actual_status") != last:
                last = row.get("actual_status")
                progress(f"instance {iid}: {last} ({row.get('status_msg')})")
            if last == "running":
                return row
            time.sleep(0.2)
        raise Error("demo_timeout", f"instance {iid} was not running after {timeout:.0f} s")

    def use_over_ssh(self, row: dict) -> None:
        port = row["ports"]["22/tcp"][0]["HostPort"]
        ssh = ["ssh", *SSH_OPTS, "-i", str(self.home / "id_ed25519"), "-p", port]
        out = subprocess.run([*ssh, f"root@{row['public_ipaddr']}", "nvidia-smi -L; echo $CONTAINER_ID"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise Error("demo_ssh", f"ssh failed: {out.stderr.strip()[:200]}")
        print("over ssh: " + " | ".join(out.stdout.split("\n")[:2]))
        self.rsync_round_trip(" ".join(ssh), row["public_ipaddr"])

    def rsync_round_trip(self, ssh: str, host: str) -> None:
        src, back = self.work / "up", self.work / "back"
        (src / "data").mkdir(parents=True)
        (src / "train.py").write_text("print('hello from the sandbox')\n")
        (src / "data" / "blob.bin").write_bytes(os.urandom(1 << 20))
        for args in ([f"{src}/", f"root@{host}:project/"], [f"root@{host}:project/", f"{back}/"]):
            proc = subprocess.run(["rsync", "-az", "-e", ssh, *args], capture_output=True, text=True, timeout=120)
            if proc.returncode:
                raise Error("demo_rsync", f"rsync failed: {proc.stderr.strip()[:200]}")
        same = not filecmp.dircmp(src, back).diff_files and filecmp.cmp(src / "data/blob.bin", back / "data/blob.bin", False)
        print(f"rsync up and back: {'byte-identical' if same else 'DIFFERENT'}")
        if not same:
            raise Error("demo_rsync", "the folder came back different")

    def destroy(self, iid: int) -> None:
        self.cli("destroy", "instance", str(iid), "-y")
        gone = json.loads(self.cli("show", "instance", str(iid), "--raw")).get("instances", "x") is None
        print(f"destroyed instance {iid}: {'confirmed gone' if gone else 'STILL LISTED'}")
        if not gone:
            raise Error("demo_destroy", f"instance {iid} is still listed after destroy")

    def report(self, iid: int) -> None:
        user = json.loads(self.cli("show", "user", "--raw"))
        charges = json.loads(self.cli("show", "invoices-v1", "--charges", "--raw"))
        rows = charges.get("results", []) if isinstance(charges, dict) else []
        spent = sum(r["amount"] for r in rows)
        print(f"charged ${spent:.4f} for instance {iid}; balance now ${user['balance']:.4f}")

"""Test helpers that drive the real sandbox, the real `vastai` CLI/SDK and real ssh.

Every sandbox a test starts is stopped by the fixture that started it, and any
container process it left behind is killed by its marker, even when the test fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from vasticlaude.sim.client import kill_containers, running_info, start_background, stop_background

VASTAI = str(Path(sys.executable).with_name("vastai"))
API_KEY = "sandbox-test-key-0123456789abcdef0123456789abcdef0123456789abcdef"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


@dataclass
class Sim:
    """A running sandbox plus a throwaway HOME for the official CLI."""

    state: Path
    home: Path
    url: str = ""
    api_key: str = API_KEY
    marker: str = ""
    pid: int = 0
    ssh_key: Path | None = None
    extra_env: dict = field(default_factory=dict)

    # ----- process ---------------------------------------------------------------------------
    def start(self, *flags: str) -> "Sim":
        info = start_background(self.state, ["--api-key", self.api_key, *flags])
        self.url, self.pid, self.marker = info["url"], info["pid"], info["marker"]
        return self

    def stop(self) -> None:
        stop_background(self.state)
        if self.marker:
            kill_containers(self.marker)

    def kill9(self) -> None:
        os.kill(self.pid, 9)
        deadline = time.monotonic() + 10
        while running_info(self.state) and time.monotonic() < deadline:
            time.sleep(0.05)

    # ----- clients ---------------------------------------------------------------------------
    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "XDG_"))}
        env.update(HOME=str(self.home), VAST_URL=self.url, VAST_API_KEY=self.api_key, VASTAI_NO_UPDATE_CHECK="1")
        env.update({**self.extra_env, **extra})
        return env

    def vastai(self, *args: str, check_error: bool = True, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """Run the official CLI; an `{"error": true}` on stderr fails the test unless check_error=False."""
        proc = subprocess.run([VASTAI, *args], capture_output=True, text=True, env=self.env(**env),
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check_error and ('"error": true' in proc.stderr or "Failed with error" in proc.stderr or proc.returncode):
            raise AssertionError(f"vastai {' '.join(args)} failed: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def vastai_json(self, *args: str, **kw) -> object:
        return json.loads(self.vastai(*args, "--raw", **kw).stdout)

    def sdk(self):
        from vastai import VastAI
        return VastAI(api_key=self.api_key, server_url=self.url, retry=1)

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        """What a test leaves behind goes: its faults first (they may block the destroys), then every instance."""
        self.admin("DELETE", "/sim/faults")
        for row in self.sdk().show_instances():
            self.sdk().destroy_instance(id=row["id"])

    def fault(self, kind: str, **spec: object) -> dict:
        return self.admin("POST", "/sim/faults", {"kind": kind, **spec})

    def instance(self, iid: int) -> dict | None:
        return self.sdk().show_instance(id=iid)

    # ----- waiting and ssh ---------------------------------------------------------------------
    def wait_status(self, iid: int, wanted: str | set[str], timeout: float = 30) -> dict:
        wanted = {wanted} if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.instance(iid)
            if row and row["actual_status"] in wanted:
                return row
            time.sleep(0.1)
        raise AssertionError(f"instance {iid} never reached {wanted}: {row and row['actual_status']}")

    def ensure_ssh_key(self) -> Path:
        if self.ssh_key is None:
            key = self.home / "id_ed25519"
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            self.ssh_key = key
            self.vastai("create", "ssh-key", key.with_suffix(".pub").read_text().strip())
        return self.ssh_key

    def ssh_cmd(self, row: dict, direct: bool = True) -> list[str]:
        if direct and row.get("ports", {}).get("22/tcp"):
            host, port = row["public_ipaddr"], row["ports"]["22/tcp"][0]["HostPort"]
        else:
            host, port = row["ssh_host"], row["ssh_port"]
        return ["ssh", *SSH_OPTS, "-i", str(self.ensure_ssh_key()), "-p", str(port), f"root@{host}"]

    def ssh(self, row: dict, command: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_cmd(row), command], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kw)

    def rent(self, *extra: str, query: str = "num_gpus=1 rentable=true", order: str = "dph") -> tuple[int, dict]:
        """Create an instance on the cheapest matching offer; returns (id, offer)."""
        offers = self.vastai_json("search", "offers", query, "-o", order, "--limit", "5")
        offer = offers[0]
        created = self.vastai_json("create", "instance", str(offer["id"]), "--image", "vastai/base:0.0.2",
                                   "--disk", "8", "--ssh", "--direct", *extra)
        return created["new_contract"], offer


@contextmanager
def scratch(prefix: str, *flags: str) -> Iterator[tuple[Sim, Path]]:
    """A sandbox in a temp folder, started with `flags`; stopped with its processes and removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        sim = Sim(state=Path(tmp) / "state", home=Path(tmp) / "simhome")
        sim.home.mkdir()
        try:
            yield sim.start(*flags), Path(tmp)
        finally:
            sim.stop()


def clean_home(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path

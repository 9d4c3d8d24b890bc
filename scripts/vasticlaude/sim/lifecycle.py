"""The sandbox's moving parts: instance state machine, containers, SSH and billing.

One `Engine` per sandbox drives every instance through Vast's lifecycle
(vast-api.md §10): created → loading → running, stop/start, preemption of
interruptible instances, exited containers, offline hosts and destroy. Delays are
Vast-like and scaled by `time_scale` (0 = only the sandbox's own overhead). Billing
accrues per second of wall time whatever the scale, so a charge can be checked
against a known price and duration.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from pathlib import Path

from . import billing
from .container import Container, GpuSpec
from .sshd import SshEndpoint
from .world import World, has_direct

log = logging.getLogger("vasticlaude.sim")

CREATE_DELAY = 2.0          # seconds in `created` before the image pull starts
PULL_DELAYS = (("pytorch", 40.0), ("tensorflow", 45.0), ("cuda", 35.0), ("vastai/base", 15.0))
DEFAULT_PULL = 20.0
CACHED_PULL = 3.0           # image already on that machine
TICK = 0.1
BILLING_EVERY = 1.0
STATS_EVERY = 0.5
OCI_ERROR = ("Error response from daemon: failed to create task for container: failed to create shim task: "
             "OCI runtime create failed: runc create failed: unable to start container process: "
             "error during container init: nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8")


class Engine:
    """Owns containers and SSH endpoints; the event loop is its only thread of control."""

    def __init__(self, world: World, state_dir: Path, url: str, time_scale: float, marker: str):
        self.world = world
        self.state_dir = state_dir
        self.url = url
        self.time_scale = time_scale
        self.marker = marker
        self.containers: dict[int, Container] = {}
        self.endpoints: dict[int, SshEndpoint] = {}
        self._pulled: set[tuple[int, str]] = set()
        self._halting: set[int] = set()  # instances whose processes are being killed right now
        self._dirty = False
        self._last_billing = 0.0
        self._last_stats = 0.0
        self._last_save = 0.0

    # ----- the loop ------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # a bug in one tick must not stop billing or SSH for all
                log.exception("sandbox tick failed")
            await asyncio.sleep(TICK)

    async def tick(self, now: float) -> None:
        for rec in list(self.world.live_instances()):
            await self._advance(rec, now)
        if now - self._last_billing >= BILLING_EVERY:
            self._last_billing = now
            await self._bill(now)
        if now - self._last_stats >= STATS_EVERY:
            self._last_stats = now
            await self._refresh_stats()
        if self._dirty or now - self._last_save >= BILLING_EVERY:
            self.save(now)

    def save(self, now: float | None = None) -> None:
        self.world.save()
        self._dirty = False
        self._last_save = now or time.time()

    def changed(self) -> None:
        self._dirty = True

    # ----- transitions -------------------------------------------------------------
    async def _advance(self, rec: dict, now: float) -> None:
        if rec["id"] in self._halting:
            return
        status, faults = rec["actual_status"], rec["faults"]
        waited = now - rec["phase_since"]
        if rec.get("preempted"):
            await self._maybe_resume(rec, now)
        elif status == "created" and rec["intended_status"] == "running" and waited >= self._scaled(CREATE_DELAY):
            if faults.get("fail_start"):
                self._fail_start(rec, faults["fail_start"], now)
            else:
                self._set(rec, now, "loading", f"Pulling image {rec['image']}")
        elif status == "loading" and not faults.get("stuck_loading") and waited >= self._pull_delay(rec):
            await self._boot(rec, now)
        elif status == "running" and rec.get("init_pid") and rec["id"] in self.containers:
            if not Container.init_alive(rec["init_pid"], self.containers[rec["id"]].marker):
                await self._container_died(rec, now, "Container exited unexpectedly (exit code 137)")

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def _pull_delay(self, rec: dict) -> float:
        if (rec["machine_id"], rec["image"]) in self._pulled:
            return self._scaled(CACHED_PULL)
        for needle, seconds in PULL_DELAYS:
            if needle in rec["image"]:
                return self._scaled(seconds)
        return self._scaled(DEFAULT_PULL)

    def _set(self, rec: dict, now: float, actual: str, msg: str, **fields: object) -> None:
        self.charge(rec, now)  # the time before a change is billed at the old state's rates
        rec.update(actual_status=actual, status_msg=msg, phase_since=now, **fields)
        self.changed()

    def _fail_start(self, rec: dict, mode: str, now: float) -> None:
        if mode == "created":
            self._set(rec, now, "created", OCI_ERROR)
        else:
            self._set(rec, now, "exited", "Container exited with code 1 during start: " + OCI_ERROR)

    async def _boot(self, rec: dict, now: float) -> None:
        """Start the container's init, its SSH endpoint and onstart: the instance is running."""
        self._pulled.add((rec["machine_id"], rec["image"]))
        container = self._container(rec)
        try:
            rec["init_pid"] = await container.start_init()
            await self._open_ssh(rec, container)
        except Exception as err:  # a broken boot is an exited container, as on Vast
            log.exception("boot of instance %s failed", rec["id"])
            container.kill_all()
            self._set(rec, now, "exited", f"Container failed to start: {err}")
            return
        self._set(rec, time.time(), "running", f"success, running {rec['image']}/ssh",
                  cur_state="running", next_state="running")
        if rec["onstart"]:
            await container.run_onstart(rec["onstart"])

    def _container(self, rec: dict) -> Container:
        iid = rec["id"]
        ports = rec.setdefault("ports", {})
        ports["proxy"] = ports.get("proxy") or free_port()
        if has_direct(rec):
            ports["direct"] = ports.get("direct") or free_port()
        offer = rec["offer"]
        gpu = GpuSpec(name=offer["gpu_name"], count=int(offer["num_gpus"]),
                      mem_mb=int(offer["gpu_ram"]), cuda=float(offer["cuda_max_good"]),
                      driver=str(offer.get("driver_version", "550.54.14")))
        env = {**rec["env"], "CONTAINER_ID": str(iid), "CONTAINER_API_KEY": rec["instance_api_key"],
               "VAST_CONTAINERLABEL": f"C.{iid}", "PUBLIC_IPADDR": "127.0.0.1",
               "VAST_TCP_PORT_22": str(ports.get("direct") or ports["proxy"]),
               "GPU_COUNT": str(gpu.count), "VAST_URL": self.url, "DATA_DIRECTORY": "/workspace/"}
        env = {k: v for k, v in env.items() if not k.startswith("-")}
        container = Container(iid, self.instance_dir(iid) / "root", env, float(rec["disk"]), gpu,
                              f"{self.marker}:{iid}")
        self.containers[iid] = container
        return container

    async def _open_ssh(self, rec: dict, container: Container) -> None:
        iid = rec["id"]
        endpoint = SshEndpoint(container, self.instance_dir(iid) / "ssh_host_ed25519_key",
                               lambda: self.world.authorized_keys(iid))
        wanted = [rec["ports"]["proxy"]] + ([rec["ports"]["direct"]] if rec["ports"].get("direct") else [])
        try:
            bound = await endpoint.start(wanted)
        except OSError:  # a port taken meanwhile: take fresh ones, as a restarted Vast instance may
            bound = await endpoint.start([0] * len(wanted))
        rec["ports"]["proxy"] = bound[0]
        if len(bound) > 1:
            rec["ports"]["direct"] = bound[1]
        self.endpoints[iid] = endpoint

    def instance_dir(self, iid: int) -> Path:
        return self.state_dir / "instances" / str(iid)

    # ----- teardown of runtime parts -------------------------------------------------
    async def _halt(self, rec: dict, keep_init: bool = False) -> None:
        """Kill the instance's processes and close its SSH; the disk stays."""
        iid = rec["id"]
        self._halting.add(iid)  # the tick leaves it alone meanwhile: its init dying is not a crash
        try:
            await self._halt_now(rec, keep_init)
        finally:
            self._halting.discard(iid)

    async def _halt_now(self, rec: dict, keep_init: bool) -> None:
        iid = rec["id"]
        endpoint = self.endpoints.pop(iid, None)
        if endpoint is not None:
            await endpoint.stop()
        container = self.containers.get(iid) or self._container(rec)
        await asyncio.get_running_loop().run_in_executor(None, container.kill_all)
        if not keep_init:
            rec["init_pid"] = None
            self.containers.pop(iid, None)

    async def _container_died(self, rec: dict, now: float, msg: str) -> None:
        await self._halt(rec)
        self._set(rec, now, "exited", msg)

    # ----- requests from the API -----------------------------------------------------
    async def request_state(self, rec: dict, state: str) -> str:
        now = time.time()
        if state == "stopped":
            rec["intended_status"] = "stopped"
            if rec["actual_status"] not in ("stopped", "offline"):
                # The API shows the new state at once, as Vast does; killing the processes follows.
                self._set(rec, now, "stopped", "Instance stopped by user", cur_state="stopped", next_state="stopped")
                await self._halt(rec)
            return f"stopping instance {rec['id']}."
        rec["intended_status"] = "running"
        self.changed()
        if rec.get("host_offline") or rec.get("preempted") or rec["faults"].get("busy"):
            return f"starting instance {rec['id']}: scheduling, waiting for the GPU."
        if rec["actual_status"] in ("stopped", "exited", "created"):
            rec["faults"].pop("fail_start", None) if rec["actual_status"] == "exited" else None
            self._set(rec, now, "loading", "Starting container", cur_state="running", next_state="running")
        return f"starting instance {rec['id']}."

    async def reboot(self, rec: dict, wipe: bool = False) -> None:
        now = time.time()
        await self._halt(rec)
        if wipe:
            await self._remove_disk(rec["id"])
        self._set(rec, now, "loading", "Rebooting container" if not wipe else "Recycling container")

    async def destroy(self, rec: dict) -> None:
        now = time.time()
        self.charge(rec, now)
        await self._halt(rec)
        rec.update(destroyed_at=now, actual_status="destroyed", intended_status="destroyed", cur_state="unloaded")
        self.world.release_offer(rec)
        self.save(now)
        await self._remove_disk(rec["id"])

    async def _remove_disk(self, iid: int) -> None:
        home = self.instance_dir(iid) / "root"
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, home, True)

    # ----- faults ----------------------------------------------------------------------
    async def preempt(self, rec: dict, competing_bid: float, seconds: float | None, intended: str = "running") -> None:
        """Outbid: stopped, processes killed. Vast's fields then are undocumented: `intended`
        "running" (what the official skill checks) or "stopped" (what dstack checks), which
        then also needs a `start` before the instance can come back."""
        now = time.time()  # the API shows the new state at once; killing the processes follows
        rec["intended_status"] = intended
        rec["preempted"] = {"competing_bid": competing_bid, "until": now + seconds if seconds else None}
        self._set(rec, now, "stopped", "Instance stopped: outbid by a higher-priority rental",
                  cur_state="stopped", next_state="stopped")
        await self._halt(rec)

    async def _maybe_resume(self, rec: dict, now: float) -> None:
        pre = rec["preempted"]
        won = rec["is_bid"] and float(rec["bid_price"]) >= pre["competing_bid"]
        if won or (pre["until"] and now >= pre["until"]):
            rec.pop("preempted")
            if rec["intended_status"] == "running":
                self._set(rec, now, "loading", "Resuming: bid won the GPU back", cur_state="running", next_state="running")
            else:
                self.changed()

    async def host_down(self, rec: dict) -> None:
        rec["host_offline"] = True
        self._set(rec, time.time(), "offline", "Host is offline: no heartbeat from the machine")
        await self._halt(rec)

    async def container_exit(self, rec: dict) -> None:
        await self._container_died(rec, time.time(), "Container exited with code 137 (killed)")

    def container_log(self, rec: dict) -> str:
        """What `vastai logs` shows: the container's start-up and onstart output."""
        return _read_tail(self.instance_dir(rec["id"]) / "root" / ".vast" / "onstart.log")

    async def execute(self, rec: dict, command: str, timeout: float = 20.0) -> str:
        """Run one of the few commands Vast's `execute` allows, in the container."""
        container = self.containers.get(rec["id"])
        if container is None:
            return ""
        proc = await container.spawn(command, stdin=asyncio.subprocess.DEVNULL,
                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            out = b"(timed out)"
        return out.decode("utf-8", "replace")

    def drop_ssh(self, rec: dict, refuse_next: int) -> None:
        endpoint = self.endpoints.get(rec["id"])
        if endpoint is not None:
            endpoint.drop_connections(refuse_next)

    # ----- billing and stats ---------------------------------------------------------
    def charge(self, rec: dict, now: float) -> None:
        """Bill `rec` up to `now` and take it from the balance."""
        self.world.user["balance"] -= billing.accrue(rec, now)

    async def _bill(self, now: float) -> None:
        user = self.world.user
        for rec in self.world.live_instances():
            self.charge(rec, now)
        if user["balance"] <= 0:
            for rec in self.world.live_instances():
                if rec["actual_status"] in billing.GPU_ACTIVE | {"loading", "created"}:
                    await self._halt(rec)
                    rec["intended_status"] = "stopped"
                    self._set(rec, now, "stopped", "Stopped: account balance is zero",
                              cur_state="stopped", next_state="stopped")

    async def _refresh_stats(self) -> None:
        loop = asyncio.get_running_loop()
        for rec in self.world.live_instances():
            container = self.containers.get(rec["id"])
            if container is None or rec["actual_status"] != "running":
                continue
            rec["stats"] = await loop.run_in_executor(None, _stats, container)

    # ----- start-up and shutdown -------------------------------------------------------
    async def recover(self) -> None:
        """After a sandbox restart: reattach to surviving containers, mark the dead exited."""
        now = time.time()
        for rec in self.world.live_instances():
            rec["billing"]["last"] = min(rec["billing"]["last"], now)
            if rec["actual_status"] == "running" and rec.get("init_pid"):
                container = self._container(rec)
                if container.adopt_init(rec["init_pid"]):
                    await self._open_ssh(rec, container)
                    continue
            if rec["actual_status"] in ("running", "loading", "rebooting"):
                await self._halt(rec)
                self._set(rec, now, "exited", "Container exited: the sandbox host restarted")
        self.save(now)

    async def shutdown(self) -> None:
        """Stop every container (no process may outlive the sandbox) and save the world."""
        now = time.time()
        for rec in self.world.live_instances():
            self.charge(rec, now)
            if rec["id"] in self.containers or rec.get("init_pid"):
                await self._halt(rec)
                if rec["actual_status"] in ("running", "loading", "rebooting"):
                    self._set(rec, now, "exited", "Container exited: the sandbox host shut down")
        self.save(now)


def _stats(container: Container) -> dict:
    container.enforce_quota()
    return container.stats()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the endpoint binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_tail(path: Path, limit: int = 1_000_000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""

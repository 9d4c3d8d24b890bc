"""The sandbox's moving parts: instance state machine, containers, SSH and billing.

One `Engine` per sandbox drives every instance through Vast's lifecycle
(vast-api.md §10): created → loading → running, stop/start, preemption of
interruptible instances, exited containers, offline hosts and destroy; with the realism
behaviours (realism.py) also scheduling, rebooting, frozen and unknown, outages that end
(a "blip": the status reads X until a time, then the instance comes back), long boots
with pull progress, and the boot failures Vast reports. Delays are Vast-like and scaled
by `time_scale` (0 = only the sandbox's own overhead); a fault's own --seconds are wall
seconds. Billing accrues per second of wall time whatever the scale, so a charge can be
checked against a known price and duration.

Each instance's SSH server is reached through `routes.Route`s, the proxy port and (with
`--direct`) the direct port, which can refuse, black-hole or answer garbage on their own
and count the bytes that pass (bandwidth billing).
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import time
from pathlib import Path

from . import billing, overlays, realism
from .container import Container, GpuSpec
from .errors import bad_request
from .routes import Route
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
        self.routes: dict[int, dict[str, Route]] = {}
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
        blip = rec.get("blip")
        if blip is not None and blip["status"] != status:
            rec.pop("blip")  # stopped, restarted or destroyed meanwhile: the outage is over
            blip = None
        if blip is not None:
            fault_gone = blip.get("fault") and realism.active(self.world.data, rec, blip["fault"]) is None
            if (blip["until"] is not None and now >= blip["until"]) or (blip["until"] is None and fault_gone):
                await self._end_blip(rec, now)
        elif rec.get("preempted"):
            await self._maybe_resume(rec, now)
        elif status == "created" and rec["intended_status"] == "running" and waited >= self._scaled(CREATE_DELAY) \
                and not rec.get("boot_failed"):
            mode = self._fail_mode(rec)
            if mode:
                self._fail_start(rec, mode, now)
            else:
                self._set(rec, now, "loading", f"Pulling image {rec['image']}")
        elif status == "loading" and not faults.get("stuck_loading") and not rec.get("boot_failed"):
            delay = self._pull_delay(rec)
            if waited >= delay:
                await self._boot(rec, now)
            elif rec.get("slow_boot"):
                msg = realism.pull_progress(rec["image"], waited / delay if delay else 1.0)
                if msg != rec["status_msg"]:
                    rec["status_msg"] = msg
                    self.changed()
        elif status == "running" and rec.get("init_pid") and rec["id"] in self.containers:
            if not Container.init_alive(rec["init_pid"], self.containers[rec["id"]].marker):
                await self._container_died(rec, now, "Container exited unexpectedly (exit code 137)")
            elif rec.get("blip_plan") and now >= rec["blip_plan"]["at"]:
                await self._fire_blip(rec, rec.pop("blip_plan"))

    def _scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    def _pull_delay(self, rec: dict) -> float:
        if (rec["machine_id"], rec["image"]) in self._pulled:
            return self._scaled(CACHED_PULL)
        slow = realism.active(self.world.data, rec, "slow-boot")
        if slow is not None:  # a long first pull, with progress in status_msg
            rec["slow_boot"] = True
            return float(realism.value(self.world.data, rec["id"], "slow-boot", slow, "seconds", 600.0))
        for needle, seconds in PULL_DELAYS:
            if needle in rec["image"]:
                return self._scaled(seconds)
        return self._scaled(DEFAULT_PULL)

    def _fail_mode(self, rec: dict) -> str | None:
        if rec["faults"].get("fail_start"):
            return rec["faults"]["fail_start"]
        spec = realism.active(self.world.data, rec, "fail-start")
        if spec is None:
            return None
        return str(realism.value(self.world.data, rec["id"], "fail-start", spec, "mode", "exited"))

    def _set(self, rec: dict, now: float, actual: str, msg: str, **fields: object) -> None:
        self.charge(rec, now)  # the time before a change is billed at the old state's rates
        rec.update(actual_status=actual, status_msg=msg, phase_since=now, **fields)
        self.changed()

    def _fail_start(self, rec: dict, mode: str, now: float) -> None:
        if mode == "created":
            self._set(rec, now, "created", OCI_ERROR)
        elif mode == "manifest":  # the image does not exist: stays created (vast-cli self-test mocks)
            self._set(rec, now, "created", realism.MANIFEST_MSG.format(image=rec["image"]), boot_failed=True)
        elif mode == "docker-build":  # loading, but Vast has given up: intended stopped
            self._set(rec, now, "loading", realism.DOCKER_BUILD_MSG, intended_status="stopped",
                      cur_state="stopped", next_state="stopped", boot_failed=True)
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
        rec.pop("slow_boot", None)
        self._set(rec, time.time(), "running", f"success, running {rec['image']}/ssh",
                  cur_state="running", next_state="running")
        self._plan_blip(rec, time.time())
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
               "GPU_COUNT": str(gpu.count), "VAST_URL": self.url, "DATA_DIRECTORY": "/workspace/",
               # Sandbox only: where its current URL is kept (it may restart on another port; the
               # real Vast keeps one URL). The watchdog re-reads it before each call.
               "VASTICLAUDE_SIM_URL_FILE": str(self.state_dir / "url"),
               **overlays.env_of(rec)}
        env = {k: v for k, v in env.items() if not k.startswith("-")}
        container = Container(iid, self.instance_dir(iid) / "root", env, float(rec["disk"]), gpu,
                              f"{self.marker}:{iid}", hidden_tools=realism.hidden_tools(self.world.data, rec),
                              df_host=realism.active(self.world.data, rec, "df-host") is not None)
        self.containers[iid] = container
        return container

    async def _open_ssh(self, rec: dict, container: Container) -> None:
        """The instance's SSH server on an internal port, reached through its routes."""
        iid = rec["id"]
        endpoint = SshEndpoint(container, self.instance_dir(iid) / "ssh_host_ed25519_key",
                               lambda: self.world.authorized_keys(iid))
        internal = (await endpoint.start([0]))[0]
        self.endpoints[iid] = endpoint
        modes = self._route_modes(rec)
        routes: dict[str, Route] = {}
        try:
            for name in ("proxy", "direct") if rec["ports"].get("direct") else ("proxy",):
                route = Route(name, internal, self._meter(rec))
                try:
                    rec["ports"][name] = await route.start(rec["ports"].get(name) or 0, modes[name])
                except OSError:  # a port taken meanwhile: a fresh one, as a restarted Vast instance may get
                    rec["ports"][name] = await route.start(0, modes[name])
                routes[name] = route
        except BaseException:
            for route in routes.values():
                await route.stop()
            self.endpoints.pop(iid, None)
            await endpoint.stop()
            raise
        self.routes[iid] = routes

    def _meter(self, rec: dict):
        """Count the bytes through the routes: "in" to the instance, "out" from it."""
        def count(direction: str, size: int) -> None:
            net = rec.setdefault("net", {"in": 0, "out": 0})
            net[direction] = net.get(direction, 0) + size
        return count

    def _route_modes(self, rec: dict) -> dict[str, str]:
        """What each public port does now (realism: a dead direct or proxy route, a frozen box)."""
        if rec["actual_status"] == "frozen":
            return {"proxy": "blackhole", "direct": "blackhole"}
        modes = {"proxy": "open", "direct": "open"}
        direct = realism.active(self.world.data, rec, "direct-ssh-dead")
        if direct is not None:
            mode = direct.get("mode", "null")
            modes["direct"] = "refuse" if mode == "null" else mode
        proxy = realism.active(self.world.data, rec, "proxy-ssh-dead")
        if proxy is not None:
            modes["proxy"] = proxy.get("mode", "tls")
        return modes

    async def sync_routes(self, rec: dict) -> None:
        modes = self._route_modes(rec)
        for name, route in self.routes.get(rec["id"], {}).items():
            try:
                await route.set_mode(modes[name])
            except OSError:  # the port was taken while it refused: it stays closed
                log.warning("instance %s: cannot reopen its %s port %s", rec["id"], name, route.port)

    async def refresh(self, rec: dict) -> None:
        """Apply changed realism settings to a live instance at once."""
        await self.sync_routes(rec)
        container = self.containers.get(rec["id"])
        if container is not None:
            hidden = realism.hidden_tools(self.world.data, rec)
            df_host = realism.active(self.world.data, rec, "df-host") is not None
            await asyncio.get_running_loop().run_in_executor(None, container.configure, hidden, df_host)
        if realism.active(self.world.data, rec, "bandwidth-billing") is not None:
            self._bandwidth_baseline(rec)
        self.changed()

    async def refresh_all(self) -> None:
        for rec in list(self.world.live_instances()):
            await self.refresh(rec)

    def set_network(self, rec: dict) -> None:
        """A joined (or left) overlay reaches a live container's env at once; new sessions see it."""
        container = self.containers.get(rec["id"])
        if container is not None:
            container.set_env({"VAST_OVERLAY_IP": None, "VAST_OVERLAY_NAME": None, **overlays.env_of(rec)})

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
        for route in self.routes.pop(iid, {}).values():
            await route.stop()
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
        if rec["actual_status"] == "frozen":
            await self._thaw(rec, now)
            return f"starting instance {rec['id']}."
        if rec["actual_status"] == "created" and rec.get("boot_failed"):
            return f"starting instance {rec['id']}."  # the image still does not exist
        if rec["actual_status"] in ("stopped", "exited", "created"):
            rec["faults"].pop("fail_start", None) if rec["actual_status"] == "exited" else None
            rec.pop("boot_failed", None)
            sched = realism.active(self.world.data, rec, "scheduling")
            if sched is not None:  # a restart waits for its GPU (docs: "Scheduling")
                seconds = sched.get("seconds")
                self._set(rec, now, "scheduling", realism.SCHEDULING_MSG, cur_state="stopped", next_state="running")
                rec["blip"] = {"status": "scheduling", "until": None if seconds is None else now + float(seconds),
                               "then": "restart", "fault": "scheduling"}
                return f"starting instance {rec['id']}: scheduling."
            self._set(rec, now, "loading", "Starting container", cur_state="running", next_state="running")
        return f"starting instance {rec['id']}."

    async def reboot(self, rec: dict, wipe: bool = False, rebooting: float | None = None) -> None:
        """Restart the container (recycle: from a fresh disk). With the realism `rebooting`
        behaviour (or `rebooting` seconds given) it reads `rebooting` for a while first."""
        now = time.time()
        if rebooting is None and not wipe:
            spec = realism.active(self.world.data, rec, "rebooting")
            if spec is not None:
                rebooting = float(spec.get("seconds") or 0.0)
        await self._halt(rec)
        if wipe:
            await self._remove_disk(rec["id"])
        if rebooting is not None:
            self._set(rec, now, "rebooting", realism.REBOOTING_MSG)
            rec["blip"] = {"status": "rebooting", "until": now + rebooting, "then": "restart"}
            return
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

    async def host_down(self, rec: dict, seconds: float | None = None) -> None:
        """The host goes offline; with `seconds` it comes back and the container restarts."""
        now = time.time()
        rec["host_offline"] = True
        self._set(rec, now, "offline", "Host is offline: no heartbeat from the machine")
        await self._halt(rec)
        if seconds is not None:
            rec["blip"] = {"status": "offline", "until": now + seconds, "then": "restart"}

    async def container_exit(self, rec: dict, seconds: float | None = None) -> None:
        """The container dies; with `seconds` it is restarted after that long (onstart again)."""
        now = time.time()
        await self._container_died(rec, now, "Container exited with code 137 (killed)")
        if seconds is not None:
            rec["blip"] = {"status": "exited", "until": now + seconds, "then": "restart"}

    async def freeze(self, rec: dict, seconds: float | None) -> None:
        """Paused with memory kept: processes stopped, SSH unanswered, the GPU still billed.
        It thaws after `seconds`, or on a `start`."""
        if rec["actual_status"] != "running":
            raise bad_request(f"Instance {rec['id']} is not running.")
        now = time.time()
        container = self.containers.get(rec["id"])
        if container is not None:
            await asyncio.get_running_loop().run_in_executor(None, container.signal_all, signal.SIGSTOP)
        self._set(rec, now, "frozen", realism.FROZEN_MSG, intended_status="frozen")
        rec["blip"] = {"status": "frozen", "until": None if seconds is None else now + seconds, "then": "thaw"}
        await self.sync_routes(rec)

    async def _thaw(self, rec: dict, now: float) -> None:
        rec.pop("blip", None)
        container = self.containers.get(rec["id"])
        if container is not None:
            await asyncio.get_running_loop().run_in_executor(None, container.signal_all, signal.SIGCONT)
        self._set(rec, now, "running", f"success, running {rec['image']}/ssh", intended_status="running")
        await self.sync_routes(rec)

    async def lose_heartbeat(self, rec: dict, seconds: float) -> None:
        """`unknown` for `seconds`: Vast hears nothing from the host; the box itself runs on."""
        if rec["actual_status"] != "running":
            raise bad_request(f"Instance {rec['id']} is not running.")
        now = time.time()
        self._set(rec, now, "unknown", realism.UNKNOWN_MSG, gpu_billing=True)
        rec["blip"] = {"status": "unknown", "until": now + seconds, "then": "running"}

    async def _end_blip(self, rec: dict, now: float) -> None:
        then = rec.pop("blip")["then"]
        if then == "thaw":
            await self._thaw(rec, now)
        elif then == "running":
            self._set(rec, now, "running", f"success, running {rec['image']}/ssh")
            rec.pop("gpu_billing", None)
        else:  # restart: the host is back, or the GPU is free, or the reboot is done
            rec["host_offline"] = False
            if rec["intended_status"] == "running":
                self._set(rec, now, "loading", "Starting container", cur_state="running", next_state="running")
            else:
                self._set(rec, now, "stopped", "Instance stopped", cur_state="stopped", next_state="stopped")

    def _plan_blip(self, rec: dict, now: float) -> None:
        """Realism profile: some instances have one outage some time after they first run."""
        if rec.get("blip_planned"):
            return
        rec["blip_planned"] = True
        spec = realism.active(self.world.data, rec, "blips")
        if spec is None:
            return
        events = spec.get("events") or {}
        if not events:
            return
        kind = realism.value(self.world.data, rec["id"], "blips", {"kind": sorted(events)}, "kind")
        seconds = float(events.get(kind) or 0.0)
        if kind and seconds > 0:  # time scale 0: an outage of no length is none
            after = float(realism.value(self.world.data, rec["id"], "blips", spec, "after", 0.0))
            rec["blip_plan"] = {"at": now + after, "kind": kind, "seconds": seconds}

    async def _fire_blip(self, rec: dict, plan: dict) -> None:
        kind, seconds = plan["kind"], plan["seconds"]
        if kind == "unknown":
            await self.lose_heartbeat(rec, seconds)
        elif kind == "host-down":
            await self.host_down(rec, seconds)
        elif kind == "container-exit":
            await self.container_exit(rec, seconds)
        elif kind == "frozen":
            await self.freeze(rec, seconds)

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
        amount = billing.accrue(rec, now)
        if realism.active(self.world.data, rec, "bandwidth-billing") is not None:
            self._bandwidth_baseline(rec)
            amount += billing.accrue_bandwidth(rec)
        self.world.user["balance"] -= amount

    @staticmethod
    def _bandwidth_baseline(rec: dict) -> None:
        """Bytes moved before bandwidth billing was turned on stay free."""
        net = rec.get("net") or {}
        for kind, (direction, _) in billing.BANDWIDTH.items():
            rec["billing"].setdefault(kind, {"bytes": 0, "amount": 0.0, "from": int(net.get(direction, 0))})

    async def _bill(self, now: float) -> None:
        user = self.world.user
        for rec in self.world.live_instances():
            self.charge(rec, now)
        if user["balance"] <= 0:
            for rec in self.world.live_instances():
                if rec["actual_status"] in billing.GPU_ACTIVE | {"loading", "created", "rebooting", "scheduling",
                                                                 "unknown"}:
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
            if rec["actual_status"] in ("running", "frozen", "unknown") and rec.get("init_pid"):
                container = self._container(rec)
                if container.adopt_init(rec["init_pid"]):
                    await self._open_ssh(rec, container)
                    continue
            if rec["actual_status"] in ("running", "loading", "rebooting", "frozen", "unknown"):
                rec.pop("blip", None)
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
                if rec["actual_status"] in ("running", "loading", "rebooting", "frozen", "unknown"):
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

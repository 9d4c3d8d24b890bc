"""Run the sandbox: world + engine + HTTP API in one asyncio process.

`serve()` blocks until SIGTERM/SIGINT, then stops every container (no process may
outlive the sandbox) and saves the world. It writes `sim.json` (url, pid, api key;
mode 0600) into the state dir so `vasticlaude sim status|stop|fault` in other
processes find it.

One server per state folder: it holds `server.lock` (an flock, its pid inside) for its whole
life, and a second `serve` on the folder exits at once. It listens on the port it had last
time when that port is free (`port`), and writes its URL to `url`, which the instances'
watchdogs re-read: after a crash and a restart on another port they still reach it (the
real Vast keeps one URL; this is a sandbox-only concern).
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import sys
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from vasticlaude.store.jsonfile import write_json_atomic

from . import realism
from .app import Sandbox, build_app
from .faults import FaultBook
from .lifecycle import Engine
from .objectstore import ObjectStore
from .world import World

log = logging.getLogger("vasticlaude.sim")


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    port: int = 0
    seed: int = 1
    time_scale: float = 1.0
    api_key: str | None = None
    market_file: Path | None = None
    machines: int = 60
    balance: float = 100.0
    host: str = "127.0.0.1"
    realism: bool = False
    idle_exit: float = 0.0  # seconds with no instance and no request before it stops itself (0: never)


def serve(settings: Settings) -> None:
    """Run the sandbox in the foreground until signalled."""
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sim %(levelname)s %(message)s")
    lock = hold_server_lock(settings.state_dir)
    try:
        asyncio.run(_main(settings))
    finally:
        os.close(lock)


LOCK_FILE, PORT_FILE, URL_FILE = "server.lock", "port", "url"


def hold_server_lock(state_dir: Path) -> int:
    """Take the state folder's server lock for this process's life (its pid written in it), or exit:
    two servers on one folder would each run the instances' engine and fight over world.json."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by containers (O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        print(f"vasticlaude sim: another sandbox (pid {holder}) serves {state_dir}; not starting a second. "
              "Stop it with 'vasticlaude sim stop'.", file=sys.stderr)
        raise SystemExit(3)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def _main(settings: Settings) -> None:
    world = World.open(settings.state_dir, seed=settings.seed, api_key=settings.api_key,
                       market_file=settings.market_file, machines=settings.machines, balance=settings.balance)
    runner, port = await _start_http(settings, world)
    url = f"http://{settings.host}:{port}"
    write_text_atomic(settings.state_dir / PORT_FILE, f"{port}\n")
    write_text_atomic(settings.state_dir / URL_FILE, f"{url}\n")
    engine = Engine(world, settings.state_dir, url, settings.time_scale, marker_for(settings.state_dir))
    runner.app["sandbox"].engine = engine
    store = _start_store(settings, world)
    runner.app["sandbox"].store = store
    if settings.realism:  # every realism behaviour (realism.py), durations at this time scale
        world.data["realism"] = realism.profile(settings.time_scale)
    await engine.recover()
    write_json_atomic(settings.state_dir / "sim.json", {
        "url": url, "port": port, "pid": os.getpid(), "api_key": world.data["api_key"],
        "time_scale": settings.time_scale, "started_at": time.time(), "marker": engine.marker,
        "store": store.info()})
    log.info("sandbox listening on %s (state %s, time scale %s)", url, settings.state_dir, settings.time_scale)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.create_task(engine.run())
    idler = asyncio.create_task(_stop_when_idle(settings, world, runner.app, stop)) if settings.idle_exit > 0 else None
    await stop.wait()
    ticker.cancel()
    if idler is not None:
        idler.cancel()
    await engine.shutdown()
    store.stop()
    await runner.cleanup()
    (settings.state_dir / "sim.json").unlink(missing_ok=True)
    log.info("sandbox stopped")


def _start_store(settings: Settings, world: World) -> ObjectStore:
    """The S3-compatible results store (objectstore.py); its keys are kept with the world, like the API key."""
    keys = world.data.setdefault("store_keys", {})
    store = ObjectStore(settings.host, keys.get("access_key_id"), keys.get("secret_access_key"),
                        folder=settings.state_dir / "objectstore")
    keys.update(access_key_id=store.access_key_id, secret_access_key=store.secret_access_key)
    world.save()
    store.start()
    return store


IDLE_CHECK_S = 5.0


@web.middleware
async def _note_request(request: web.Request, handler):
    request.app["last_request"] = time.monotonic()
    return await handler(request)


async def _stop_when_idle(settings: Settings, world: World, app: web.Application, stop: asyncio.Event) -> None:
    """A sandbox started for a rehearsal must not outlive it: with no instance left and no request
    for `idle_exit` s it stops itself. `idle.json` says when it will, for `sim status`."""
    while not stop.is_set():
        await asyncio.sleep(min(IDLE_CHECK_S, settings.idle_exit))
        quiet = time.monotonic() - app["last_request"]
        busy = bool(world.live_instances())
        stops_at = None if busy else time.time() + max(0.0, settings.idle_exit - quiet)
        write_json_atomic(settings.state_dir / "idle.json", {"idle_exit_s": settings.idle_exit, "stops_at": stops_at})
        if not busy and quiet >= settings.idle_exit:
            log.info("no instance and no request for %.0f s: stopping", quiet)
            stop.set()


async def _start_http(settings: Settings, world: World) -> tuple[web.AppRunner, int]:
    sandbox = Sandbox(world, None, FaultBook(settings.seed))  # engine attached once the url is known
    app = build_app(sandbox)
    app["sandbox"] = sandbox
    app["last_request"] = time.monotonic()
    app.middlewares.append(_note_request)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    last = _last_port(settings.state_dir) if settings.port == 0 else None
    for port in ([last] if last else []) + [settings.port]:
        site = web.TCPSite(runner, settings.host, port, reuse_address=True)
        try:
            await site.start()
            break
        except OSError:  # the last port is taken now: any free one (an asked-for port fails loudly)
            if port != last:
                raise
    port = site._server.sockets[0].getsockname()[1]  # aiohttp exposes no public getter for port 0
    return runner, port


def _last_port(state_dir: Path) -> int | None:
    """The port this state folder's sandbox had last time: clients and instances that remember
    its URL reach it again after a restart."""
    try:
        port = int((state_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def marker_for(state_dir: Path) -> str:
    """The prefix that tags every process of this sandbox's containers."""
    digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return f"vcsim-{digest}"

"""The sandbox from outside: start it in the background, find it, call its admin routes, stop it.

The product (an account with no key, `--sandbox`), the demo and the tests use these;
`vasticlaude sim` (sim/cli.py) is the command around them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from vasticlaude.errors import API, Error
from vasticlaude.store import paths

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


# `python -m MODULE` with the working directory kept off sys.path (what 3.11's -P does, for 3.10 too).
SAFE_PATH = ('import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]\n'
             'import runpy; runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)')


def python_m(module: str) -> list[str]:
    """The argv that runs `module` as `python -m` would, but never imports from the current directory."""
    return [sys.executable, "-c", SAFE_PATH, module]


def start_background(state: Path, flags: list[str]) -> dict:
    """Start `sim serve` detached with its log in the state dir; wait until it answers.

    Never a second server on one state folder: when one is alive but does not answer (frozen,
    busy), wait for it, and report it (exit 3) rather than start another."""
    paths.ensure_private_dir(state)
    holder = serving_pid(state)
    if holder is not None:
        return wait_for_server(state, holder)
    (state / "sim.json").unlink(missing_ok=True)
    log = open(state / "sim.log", "ab")
    state = state.resolve()
    cmd = [*python_m("vasticlaude"), "sim", "serve", "--state", str(state), *flags]
    # Its own folder as the working directory: never the user's project (whose files could
    # shadow modules), and nothing the sandbox keeps open there for its lifetime.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            cwd=state)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = running_info(state)
        if info is not None:
            return info
        if proc.poll() is not None:
            other = serving_pid(state)
            if other is not None:  # another client started one first: use it
                return wait_for_server(state, other)
            raise Error("sim_failed", f"the sandbox exited at start (code {proc.returncode})",
                        f"See {state / 'sim.log'}.", API)
        time.sleep(0.05)
    proc.terminate()
    raise Error("sim_timeout", f"the sandbox did not answer within {START_TIMEOUT:.0f} s", f"See {state / 'sim.log'}.", API)


def serving_pid(state: Path) -> int | None:
    """The pid of the live sandbox serving this state folder (it holds `server.lock`), else None.
    Read, never locked: a probe that took the lock could make a starting server give up."""
    try:
        pid = int((state / "server.lock").read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not pid_alive(pid):
        return None
    try:
        import psutil
        cmdline = psutil.Process(pid).cmdline()
    except Exception:  # noqa: BLE001 — gone, or not ours to read: not a sandbox we can use
        return None
    return pid if "serve" in cmdline and str(state.resolve()) in cmdline else None


def frozen(pid: int) -> bool:
    """Stopped (SIGSTOP, a debugger): it will not answer until continued."""
    try:
        import psutil
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except Exception:  # noqa: BLE001
        return False


def wait_for_server(state: Path, pid: int) -> dict:
    """The info of the sandbox `pid` once it answers; an Error (exit 3) if it is stopped or stays silent."""
    deadline = time.monotonic() + START_TIMEOUT
    while not frozen(pid) and pid_alive(pid) and time.monotonic() < deadline:
        info = running_info(state)
        if info is not None:
            return info
        time.sleep(0.1)
    how = "is stopped (SIGSTOP?)" if frozen(pid) else "has exited" if not pid_alive(pid) else \
        f"did not answer within {START_TIMEOUT:.0f} s"
    raise Error("sim_unresponsive", f"the sandbox serving {state} (pid {pid}) {how}; a second one is never started "
                "on the same state", f"Continue it (kill -CONT {pid}), or run 'vasticlaude sim stop' and retry.", API)


def stop_background(state: Path) -> bool:
    """SIGTERM the sandbox (it stops its containers), SIGKILL if it will not go (a frozen one too)."""
    info = read_info(state)
    if not info or not pid_alive(info["pid"]):
        holder = serving_pid(state)
        if holder is None:
            return False
        info = {"pid": holder, "marker": (info or {}).get("marker", "")}
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pid_alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(info["pid"]):
        os.kill(info["pid"], signal.SIGKILL)
        kill_containers(info.get("marker", ""))
    (state / "sim.json").unlink(missing_ok=True)
    return True


def kill_containers(marker: str) -> int:
    """Kill every process carrying this sandbox's container marker (the last resort)."""
    import psutil
    killed = 0
    for proc in psutil.process_iter():
        try:
            if marker and proc.environ().get("VAST_SIM_CONTAINER", "").startswith(marker + ":"):
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


def pid_alive(pid: int) -> bool:
    """Is this process running (a zombie child of ours is not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not a running sandbox
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def running_info(state: Path) -> dict | None:
    """`sim.json` of a sandbox that is up and answering, else None."""
    info = read_info(state)
    if not info or not pid_alive(info["pid"]):
        return None
    try:
        with urllib.request.urlopen(info["url"] + "/sim/health", timeout=2) as resp:
            return info if resp.status == 200 else None
    except OSError:
        return None


def read_info(state: Path) -> dict | None:
    try:
        return json.loads((state / "sim.json").read_text())
    except (OSError, ValueError):
        return None


def admin_call(info: dict, method: str, path: str, body: dict | None = None) -> dict:
    """One call to the sandbox's /sim/ routes with its own key."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(info["url"] + path, data=data, method=method, headers={
        "Authorization": f"Bearer {info['api_key']}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        msg = json.loads(err.read() or b"{}").get("msg", str(err))
        raise Error("sim_refused", f"the sandbox refused: {msg}", "", API) from None
    except OSError as err:
        raise Error("sim_down", f"the sandbox did not answer ({err})", "Is it running? 'vasticlaude sim status'.", API) from None

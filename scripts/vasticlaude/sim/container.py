"""The "container" of a sandbox instance: a home directory plus a marked process tree.

A real Vast instance is a Docker container. The sandbox must run on a laptop without root, so a
container here is only:

- a home directory (``HOME`` and the cwd of every session; stands in for ``/root``),
- a private ``tools`` directory first on ``PATH`` with stand-ins for ``nvidia-smi``, ``df`` and
  the ``vastai`` CLI (sources in ``vasticlaude/sim/tools/``),
- a clean environment (the host's own environment never leaks in) carrying
  ``VAST_SIM_CONTAINER=<marker>``. Environment is inherited through fork/exec and survives
  ``setsid``/``nohup``, so scanning process environments finds every process of the container,
  including daemonised ones,
- an "init" process (``sleep 2147483647`` in its own session): while it lives, the container
  lives.

Honest limits, by design:

- **Disk quota without root.** There is no kernel quota, so :meth:`Container.enforce_quota`
  measures the home tree and, when usage reaches the quota, lowers ``RLIMIT_FSIZE`` (soft) to 0
  on every process of the container (``prlimit``; lowering needs no privilege). Writes that
  extend a file then fail with ``EFBIG`` ("File too large") instead of ``ENOSPC``; CPython
  ignores ``SIGXFSZ`` so Python jobs get an ``OSError``, while tools such as ``dd`` or a shell
  redirect are killed by ``SIGXFSZ``. Usage can overshoot the quota by whatever is written
  between two polls (the sandbox polls about twice a second). Overwriting inside an existing
  file's size still works. When usage falls below the quota the limit is lifted again.
  On macOS ``psutil`` cannot change another process's limits, so only processes started
  after the quota was reached are clamped there.
- **No isolation.** Jobs run as the sandbox's user and can see (and signal) the user's other
  processes and files; the container is a convention, not a jail.
- **Escaping the marker.** A process that execs with a scrubbed environment (``env -i``) is no
  longer found by :meth:`Container.processes`; jobs do not do that in practice.
- **GPU.** There is none. ``nvidia-smi`` reports the configured GPU and shows high utilisation
  while some job process of the container burns CPU (a heuristic refreshed every second).
- **Minimal images** (realism ``image-minimal``): commands such as rsync, curl and pkill are
  taken off ``PATH`` by replacing the host's bin directories with a directory of links to
  everything else; ``command -v rsync`` fails and a remote ``rsync --server`` exits 127, but an
  absolute path (``/usr/bin/rsync``) still reaches the host's binary.
- **boto3 in the image.** The sandbox's instances run the host's ``python3``; like an image that
  ships boto3 (or one where the uploader's ``pip install --user boto3`` already ran, which needs
  the internet the tests must not reach), ``PYTHONPATH`` points at ``tools-<id>/pylib``: links to
  the sandbox's own boto3, botocore, s3transfer and their pure-Python dependencies, so the results
  store's uploader (templates/store.py.j2) imports them without pip.
- **df** reports the rented disk (quota) for the home directory, unless the realism
  ``df-host`` behaviour makes it report the host's filesystem as Docker often does
  (moby/moby #22677). ``os.statvfs`` always sees the host's filesystem.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import sys
import termios
import threading
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import psutil

MARKER_VAR = "VAST_SIM_CONTAINER"
GIB = 1024**3
INIT_SECONDS = "2147483647"
TOOL_NAMES = ("nvidia-smi", "df", "vastai")
# What the results store's uploader imports (boto3 and its pure-Python dependencies): linked into pylib.
PYLIB_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
# Processes that do not count as "using the GPU": shells and file transfer around the job.
_NOT_JOBS = frozenset({"bash", "sh", "dash", "zsh", "rsync", "sftp-server", "scp", "sleep", "tmux"})
_BUSY_CPU = 0.2  # cores; a job burning less than this is treated as idle
_REFRESH_SECONDS = 1.0
_MIN_WINDOW_SECONDS = 0.5
_NEW_PROCESS_SECONDS = 2.0  # a process younger than this may still be between fork and exec
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HAS_PRLIMIT = hasattr(psutil.Process, "rlimit")
_RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE,
                  signal.SIGXFSZ, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                  signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD)

_VAST_ENV_SOURCE = '[ -r "$HOME/.vast_env" ] && . "$HOME/.vast_env"\n'
_BASHRC = (
    "# vasticlaude sandbox: Vast images export the container env to /etc/environment;\n"
    "# here it lives in ~/.vast_env.\n" + _VAST_ENV_SOURCE
)
_PROFILE = (
    "# vasticlaude sandbox login profile\n"
    'if [ -n "$BASH_VERSION" ] && [ -r "$HOME/.bashrc" ]; then . "$HOME/.bashrc"; '
    "else " + _VAST_ENV_SOURCE.strip() + "; fi\n"
)


@dataclass(frozen=True)
class GpuSpec:
    """What the instance's GPUs look like (per GPU memory in MiB)."""

    name: str
    count: int
    mem_mb: int
    cuda: float
    driver: str


class Container:
    """One sandbox instance's home, environment and processes (see module docstring).

    ``disk_gb`` is counted in GiB (like Docker's ``size=10G``); ``env`` is the instance's
    variables (CONTAINER_ID, CONTAINER_API_KEY, VAST_URL, user ``-e`` values…); ``marker`` must
    be unique to this instance, since it is how its processes are found.
    """

    def __init__(self, instance_id: int, home: Path, env: dict[str, str], disk_gb: float,
                 gpu: GpuSpec, marker: str, hidden_tools: tuple[str, ...] = (),
                 df_host: bool = False) -> None:
        self.instance_id = instance_id
        # Resolved, so HOME, $PWD and getcwd() agree (macOS: /tmp is /private/tmp).
        self.home = Path(home).resolve()
        # Outside home so the tools neither count against the quota nor get rsync --delete'd.
        self.tools_dir = self.home.parent / f"tools-{instance_id}"
        self.quota_bytes = int(disk_gb * GIB)
        self.gpu = gpu
        self.marker = marker
        self.user_env = dict(env)
        self.hidden_tools = tuple(hidden_tools)
        self.df_host = df_host
        self.env = _build_env(env, self.home, marker, self.tools_dir, self._bin_farm())
        self.init_pid: int | None = None
        self._clamped = False
        self._usage = (0, -1e9)  # (bytes, monotonic time) of the last enforce_quota()
        self._lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._cpu_prev: dict[tuple[int, float], tuple[float, float]] = {}
        self._load = _Load(busy=False, cpu=0.0, mem=0, at=0.0)
        self._stop_refresh = threading.Event()
        self._refresher: threading.Thread | None = None
        self._reapers: set[asyncio.Task[Any]] = set()
        self._prepare_files()

    # ----------------------------------------------------------------- files

    def _prepare_files(self) -> None:
        """Create home and tools; (re)write env and facts, keep user-edited dotfiles."""
        (self.home / ".vast").mkdir(parents=True, exist_ok=True)
        self.tools_dir.mkdir(parents=True, exist_ok=True)
        _install_tools(self.tools_dir)
        facts = {"instance_id": self.instance_id, "home": str(self.home),
                 "quota_bytes": self.quota_bytes, "gpu": asdict(self.gpu),
                 "df": "host" if self.df_host else "quota"}
        _atomic_write(self.tools_dir / "container.json", json.dumps(facts, indent=1))
        _atomic_write(self.tools_dir / "vastai.target", _vastai_target() + "\n")
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        _atomic_write(self.home / ".vast_env", "\n".join(lines) + "\n", mode=0o600)
        for name, text in ((".bashrc", _BASHRC), (".profile", _PROFILE)):
            if not (self.home / name).exists():
                _atomic_write(self.home / name, text)

    def configure(self, hidden_tools: tuple[str, ...], df_host: bool) -> None:
        """Change the image's missing commands and what df reports; new sessions see it."""
        hidden_tools = tuple(hidden_tools)
        if hidden_tools == self.hidden_tools and df_host == self.df_host:
            return
        self.hidden_tools, self.df_host = hidden_tools, df_host
        self.env = _build_env(self.user_env, self.home, self.marker, self.tools_dir, self._bin_farm())
        self._prepare_files()

    def set_env(self, changes: dict[str, str | None]) -> None:
        """Set (or, with None, drop) variables of the instance's env; new sessions see them."""
        for key, value in changes.items():
            if value is None:
                self.user_env.pop(key, None)
            else:
                self.user_env[key] = value
        self.env = _build_env(self.user_env, self.home, self.marker, self.tools_dir, self._bin_farm())
        self._prepare_files()

    def _bin_farm(self) -> Path | None:
        """A directory of links to every command on PATH except the hidden ones (None: no hiding)."""
        if not self.hidden_tools:
            return None
        farm = self.home.parent / f"bin-{self.instance_id}"
        shutil.rmtree(farm, ignore_errors=True)
        farm.mkdir(parents=True)
        for folder in _base_path(self.tools_dir):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name in self.hidden_tools or (farm / entry.name).exists():
                    continue
                try:
                    if entry.is_file() and os.access(entry.path, os.X_OK):
                        os.symlink(entry.path, farm / entry.name)
                except OSError:
                    continue
        return farm

    # ------------------------------------------------------------- processes

    async def start_init(self) -> int:
        """Start the container's "PID 1"; its life is the container's life."""
        devnull = asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            _which("sleep", self.env, self.tools_dir), INIT_SECONDS, stdin=devnull,
            stdout=devnull, stderr=devnull, cwd=self.home, env=self.env, start_new_session=True,
            preexec_fn=_preexec(clamp=False, ctty=False))
        self._reap(proc)
        self._adopt(proc.pid)
        return proc.pid

    def adopt_init(self, pid: int) -> bool:
        """After a sandbox restart: take over a surviving init (False if it is not ours)."""
        if not self.init_alive(pid, self.marker):
            return False
        self._adopt(pid)
        return True

    def _adopt(self, pid: int) -> None:
        self.init_pid = pid
        self._stop_refresh.clear()
        if self._refresher is None or not self._refresher.is_alive():
            self._refresher = threading.Thread(
                target=self._refresh_loop, name=f"vsim-gpu-{self.instance_id}", daemon=True)
            self._refresher.start()

    @staticmethod
    def init_alive(pid: int, marker: str | None = None) -> bool:
        """True if `pid` lives and carries the container marker (any marker if None)."""
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            value = proc.environ().get(MARKER_VAR)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return value is not None and (marker is None or value == marker)

    def alive(self) -> bool:
        """True while this container's init process runs."""
        return self.init_pid is not None and self.init_alive(self.init_pid, self.marker)

    async def run_onstart(self, script: str) -> int:
        """Write ``home/onstart.sh`` and run it detached; output goes to ``.vast/onstart.log``."""
        path = self.home / "onstart.sh"
        _atomic_write(path, script if script.endswith("\n") else script + "\n", mode=0o755)
        log = self.home / ".vast" / "onstart.log"
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                self._shell(), str(path), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, cwd=self.home, env=self.env,
                start_new_session=True, preexec_fn=_preexec(self._clamped, ctty=False))
        self._reap(proc)
        return proc.pid

    async def spawn(self, command: str | None, *, stdin: Any, stdout: Any, stderr: Any,
                    pty: bool = False, term: str | None = None,
                    size: tuple[int, int, int, int] | None = None,
                    env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
        """Start a session process: ``bash -c command``, or a login shell when command is None.

        With ``pty=True`` stdin/stdout/stderr must be the pty's slave fd; it becomes the
        controlling terminal. ``size`` is (cols, rows, xpixels, ypixels). ``env`` adds
        session variables (SSH_CONNECTION…). The process leads its own session and process
        group, so the SSH layer can signal the whole group.
        """
        argv = [self._shell()]
        argv += ["-c", command] if command is not None else (["-l", "-i"] if pty else ["-l"])
        full_env = dict(self.env)
        full_env.update(env or {})
        if term:
            full_env["TERM"] = term
        if pty and size:
            set_winsize(stdin, size)
        return await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=self.home, env=full_env,
            start_new_session=True, preexec_fn=_preexec(self._clamped, ctty=pty))

    def _shell(self) -> str:
        """bash when the host has it (Vast images do), else sh."""
        try:
            return _which("bash", self.env, self.tools_dir)
        except FileNotFoundError:
            return _which("sh", self.env, self.tools_dir)

    def _reap(self, proc: asyncio.subprocess.Process) -> None:
        """Keep a waiter on a detached child so asyncio reaps it and closes its transport."""
        task = asyncio.get_running_loop().create_task(proc.wait())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    def processes(self, max_age: float = 0.0) -> list[psutil.Process]:
        """Every live (non-zombie) process carrying this container's marker.

        `max_age` > 0 accepts a scan that recent (shared by every container of the
        sandbox); killing and hang-ups pass 0 for a fresh one.
        """
        return _INDEX.lookup(self.marker, max_age)

    def session_processes(self, sid: int) -> list[psutil.Process]:
        """Our processes in session `sid` (what a session's end must take down)."""
        members = []
        for proc in self.processes():
            try:
                if _session_of(proc.pid) == sid:
                    members.append(proc)
            except OSError:
                continue
        return members

    def kill_all(self, sig: int = signal.SIGKILL, include_init: bool = True) -> int:
        """Signal every marked process until none is left (bounded); return how many remain."""
        if include_init:
            self._stop_refresh.set()
        victims: list[psutil.Process] = []
        for _ in range(50):
            victims = [p for p in self.processes() if include_init or p.pid != self.init_pid]
            if not victims:
                return 0
            for proc in victims:
                try:
                    proc.send_signal(sig)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            time.sleep(0.02)
        return len(victims)

    def signal_all(self, sig: int) -> int:
        """Send `sig` once to every process of the container (SIGSTOP/SIGCONT: freeze, thaw)."""
        sent = 0
        for proc in self.processes():
            try:
                proc.send_signal(sig)
                sent += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return sent

    def kill_jobs(self) -> int:
        """Kill everything but init: what preemption or stop does (the data stays)."""
        return self.kill_all(include_init=False)

    # ----------------------------------------------------------------- quota

    @property
    def quota_full(self) -> bool:
        """True while the last :meth:`enforce_quota` found the disk full."""
        return self._clamped

    def disk_usage_bytes(self) -> int:
        """Allocated bytes under home (symlinks not followed, hard links counted once)."""
        return tree_usage(self.home)

    def enforce_quota(self) -> bool:
        """Clamp (or release) file growth of every process; return True when full."""
        used = self.disk_usage_bytes()
        self._usage = (used, time.monotonic())
        full = used >= self.quota_bytes
        was = self._clamped
        self._clamped = full  # set first: sessions spawned from now on start clamped
        if full or was:
            self._apply_fsize_clamp(full)
        return full

    def _apply_fsize_clamp(self, on: bool) -> None:
        """Set RLIMIT_FSIZE soft to 0 (on) or back to the hard limit (off) on our processes."""
        if not _HAS_PRLIMIT:
            return
        for proc in self.processes():
            try:
                soft, hard = proc.rlimit(psutil.RLIMIT_FSIZE)
                if on and soft != 0:
                    proc.rlimit(psutil.RLIMIT_FSIZE, (0, hard))
                elif not on and soft == 0:
                    proc.rlimit(psutil.RLIMIT_FSIZE, (hard, hard))
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue

    # ----------------------------------------------------------------- stats

    def refresh_gpu_state(self) -> bool:
        """Sample CPU use of our processes and publish busy/idle for ``nvidia-smi``."""
        with self._sample_lock:
            busy, cpu, mem = self._sample_load()
        self._load = _Load(busy=busy, cpu=cpu, mem=mem, at=time.monotonic())
        _atomic_write(self.tools_dir / "gpu_state.json",
                      json.dumps({"busy": busy, "updated": time.time()}))
        return busy

    def _sample_load(self) -> tuple[bool, float, int]:
        """(any job busy, cores used, resident bytes) since the previous sample."""
        busy, cpu, mem, now = False, 0.0, 0, time.time()
        samples: dict[tuple[int, float], tuple[float, float]] = {}
        for proc in self.processes(max_age=_REFRESH_SECONDS / 2):
            try:
                key = (proc.pid, proc.create_time())
                times = proc.cpu_times()
                used = times.user + times.system
                mem += proc.memory_info().rss
                prev = self._cpu_prev.get(key, (0.0, key[1]))
                rate = (used - prev[0]) / max(now - prev[1], 0.05)
                # Keep the older sample until the window is long enough to mean something:
                # the refresher thread and stats() callers sample at unrelated moments.
                samples[key] = prev if now - prev[1] < _MIN_WINDOW_SECONDS else (used, now)
                cpu += rate
                busy = busy or (rate >= _BUSY_CPU and self._is_job(proc))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._cpu_prev = samples
        return busy, cpu, mem

    def _is_job(self, proc: psutil.Process) -> bool:
        """Not init, not a shell or transfer tool, not one of our own stand-ins."""
        if proc.pid == self.init_pid or proc.name() in _NOT_JOBS:
            return False
        tools = str(self.tools_dir)
        return not any(arg.startswith(tools) for arg in proc.cmdline())

    def _refresh_loop(self) -> None:
        """Keep ``gpu_state.json`` fresh while init lives."""
        while not self._stop_refresh.wait(_REFRESH_SECONDS):
            if not self.alive():
                return
            try:
                self.refresh_gpu_state()
            except OSError:  # home or tools removed under us: the container is going away
                return

    def _fresh_load(self) -> _Load:
        if time.monotonic() - self._load.at > 2 * _REFRESH_SECONDS:
            self.refresh_gpu_state()
        return self._load

    def gpu_util(self) -> float:
        """0–1, high while a job burns CPU (there is no GPU; see module docstring)."""
        return random.uniform(0.85, 0.99) if self._fresh_load().busy else 0.0

    def stats(self) -> dict[str, float]:
        """Figures for the API's instance rows (GB are GiB, like the quota)."""
        load = self._fresh_load()
        used, at = self._usage  # enforce_quota() has usually just measured it
        if time.monotonic() - at > 1.0:
            used = self.disk_usage_bytes()
        vram = self.gpu.mem_mb * self.gpu.count / 1024
        return {
            "gpu_util": random.uniform(0.85, 0.99) if load.busy else 0.0,
            "gpu_temp": float(random.randint(68, 78) if load.busy else random.randint(30, 38)),
            "vmem_usage": round(vram * 0.75 if load.busy else 0.0, 3),
            "disk_usage": round(used / GIB, 4),
            "disk_util": round(used / self.quota_bytes, 4) if self.quota_bytes else 1.0,
            "cpu_util": round(load.cpu / (os.cpu_count() or 1), 4),
            "mem_usage": round(load.mem / GIB, 4),
        }


class _ProcessIndex:
    """One scan of the process table serves every container of the sandbox.

    Reading each process's environment is the cost of a scan, so the marker seen
    for a (pid, start time) is cached; a young process without our marker may be a
    fork that has not exec'd with its env yet, so that negative is not cached.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e9
        self._by_marker: dict[str, list[psutil.Process]] = {}
        self._markers: dict[tuple[int, float], str | None] = {}

    def lookup(self, marker: str, max_age: float) -> list[psutil.Process]:
        with self._lock:
            if time.monotonic() - self._at > max_age:
                self._rescan()
            return list(self._by_marker.get(marker, ()))

    def _rescan(self) -> None:
        by_marker: dict[str, list[psutil.Process]] = {}
        markers: dict[tuple[int, float], str | None] = {}
        now, me = time.time(), os.getpid()
        for proc in psutil.process_iter():
            try:
                key = (proc.pid, proc.create_time())
                marker = self._markers[key] if key in self._markers else _marker_of(proc)
                if marker or now - key[1] > _NEW_PROCESS_SECONDS:
                    markers[key] = marker
                if marker and proc.pid != me and proc.status() != psutil.STATUS_ZOMBIE:
                    by_marker.setdefault(marker, []).append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._by_marker, self._markers, self._at = by_marker, markers, time.monotonic()


def _marker_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(MARKER_VAR)
    except psutil.AccessDenied:
        return None


_INDEX = _ProcessIndex()


@dataclass(frozen=True)
class _Load:
    busy: bool
    cpu: float
    mem: int
    at: float


# ----------------------------------------------------------------- helpers


def _base_path(tools: Path) -> list[str]:
    """The container's PATH: its tools, the usual bin directories, then the caller's."""
    base = [str(tools), "/usr/local/bin", "/usr/bin", "/bin"]
    caller = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in base]
    return base + caller


def _build_env(user_env: dict[str, str], home: Path, marker: str,
               tools: Path, farm: Path | None = None) -> dict[str, str]:
    """A clean environment: nothing of the sandbox's own env except PATH tail and LANG.

    With a bin `farm` (hidden commands) PATH is the tools and the farm only."""
    path = [str(tools), str(farm)] if farm is not None else _base_path(tools)
    default_lang = "en_US.UTF-8" if sys.platform == "darwin" else "C.UTF-8"
    env = {"PATH": ":".join(path), "LANG": os.environ.get("LANG") or default_lang}
    # Names that are not shell identifiers (Vast's "-p 8080:8080" pseudo-entries) are dropped.
    env.update({k: str(v) for k, v in user_env.items() if _ENV_NAME.match(k)})
    if "PATH" in user_env and not env["PATH"].startswith(str(tools) + ":"):
        env["PATH"] = f"{tools}:{env['PATH']}"
    env.update({"HOME": str(home), MARKER_VAR: marker, "VASTAI_NO_UPDATE_CHECK": "1"})
    env.setdefault("PYTHONPATH", str(tools / "pylib"))
    return env


def _preexec(clamp: bool, ctty: bool) -> Callable[[], None]:
    """Child-side setup after setsid: a fresh signal state, quota clamp, pty as ctty."""

    def setup() -> None:
        # A sandbox started with `cmd &` from a script ignores SIGINT/SIGQUIT, and a shell
        # cannot un-ignore what it inherited: Ctrl-C and `kill -INT` would do nothing.
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if clamp:
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        if ctty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return setup


def set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    """Apply an SSH (cols, rows, xpix, ypix) size to a pty fd (0 = leave as is)."""
    cols, rows, xpix, ypix = size
    if cols and rows:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpix, ypix))


def tree_usage(root: Path) -> int:
    """Allocated bytes of a tree; the df stand-in repeats this rule."""
    total, seen, stack = 0, set(), [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def _session_of(pid: int) -> int:
    """getsid, or the process group where the OS refuses getsid across sessions."""
    try:
        return os.getsid(pid)
    except PermissionError:
        return os.getpgid(pid)


def _which(name: str, env: dict[str, str], skip: Path) -> str:
    """Resolve a host binary on the container PATH, skipping the container's own tools."""
    path = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(skip))
    found = shutil.which(name, path=path)
    if not found:
        raise FileNotFoundError(name)
    return found


def _vastai_target() -> str:
    """The vastai console script of the interpreter running the sandbox (else PATH's)."""
    beside = Path(sys.executable).parent / "vastai"
    if beside.exists():
        return str(beside)
    return shutil.which("vastai") or ""


def _install_tools(tools: Path) -> None:
    """Copy the stand-in scripts (package data) into the container's tools dir."""
    source = resources.files("vasticlaude.sim").joinpath("tools")
    for name in TOOL_NAMES:
        data = source.joinpath(name).read_bytes()
        _atomic_write(tools / name, data, mode=0o755)
    _link_pylib(tools / "pylib")


def _link_pylib(pylib: Path) -> None:
    """Links to the sandbox's own boto3 and its dependencies (module docstring: boto3 in the image)."""
    import importlib.util
    pylib.mkdir(exist_ok=True)
    for name in PYLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        source = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        link = pylib / source.name
        if not link.is_symlink() or os.readlink(link) != str(source):
            link.unlink(missing_ok=True)
            link.symlink_to(source)


def _atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write via a temp file + rename so readers (nvidia-smi, df) never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)

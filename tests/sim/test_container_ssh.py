"""A sandbox instance's container and SSH endpoint, driven by the real OpenSSH client and rsync.

The endpoint runs on an asyncio loop in a background thread so the tests can call `ssh`/`rsync`
as subprocesses. Every box is torn down (kill_all + stop) even when a test fails, and the
teardown asserts that no process of the container is left.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:  # the package is not necessarily installed in the venv
    sys.path.insert(0, str(SCRIPTS))

import psutil  # noqa: E402

from vasticlaude.sim.container import MARKER_VAR, Container, GpuSpec  # noqa: E402
from vasticlaude.sim.sshd import SshEndpoint  # noqa: E402

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("ssh", "ssh-keygen", "rsync", "python3")),
    reason="needs the OpenSSH client, ssh-keygen, rsync and python3")

GPU = GpuSpec(name="RTX 4090", count=2, mem_mb=24564, cuda=12.4, driver="550.54.15")
SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"]


class LoopThread:
    """An event loop in a daemon thread; tests submit coroutines to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)
        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Box:
    """One container + endpoint, and the ssh/rsync command lines that reach it."""

    container: Container
    endpoint: SshEndpoint
    ports: list[int]
    key: Path
    keys: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.container.home

    def ssh_argv(self, *, user: str = "root", key: Path | None = None,
                 port: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        return ["ssh", *SSH_OPTS, "-i", str(key or self.key), "-p", str(port or self.ports[0]),
                *extra, f"{user}@127.0.0.1"]

    def ssh(self, command: str, *, input: bytes | None = None, timeout: float = 20,
            **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.ssh_argv(**kw), command], input=input,
                              capture_output=True, timeout=timeout)

    def rsync(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        rsh = shlex.join(["ssh", *SSH_OPTS, "-i", str(self.key), "-p", str(self.ports[0])])
        return subprocess.run(["rsync", "-e", rsh, *args], capture_output=True, timeout=60)

    def marked(self, *cmd: str) -> list[psutil.Process]:
        """Container processes whose command line is exactly `cmd`."""
        found = []
        for proc in self.container.processes():
            try:
                if proc.cmdline() == list(cmd):
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
        return found


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def marker_processes(marker: str) -> list[int]:
    """Independent scan (not Container.processes) for leftovers."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_VAR) == marker and proc.status() != "zombie":
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    keys = {}
    for name in ("good", "other"):
        path = folder / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                        "-f", str(path)], check=True)
        keys[name] = path
    return keys


@pytest.fixture
def make_box(loop_thread: LoopThread, tmp_path: Path,
             client_keys: dict[str, Path]) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(disk_gb: float = 1.0, instance_id: int = 7000001) -> Box:
        env = {"CONTAINER_ID": str(instance_id), "CONTAINER_API_KEY": "instance-key-123",
               "VAST_CONTAINERLABEL": f"C.{instance_id}", "PUBLIC_IPADDR": "127.0.0.1",
               "GPU_COUNT": str(GPU.count), "FOO": "bar baz", "-p 8080:8080": "1"}
        root = tmp_path / f"i{instance_id}"
        container = Container(instance_id, root / "root", env, disk_gb, GPU,
                              f"vsim-test-{uuid.uuid4().hex}")
        keys = [client_keys["good"].with_suffix(".pub").read_text()]
        endpoint = SshEndpoint(container, root / "host_key", lambda: list(keys))
        box = Box(container, endpoint, [], client_keys["good"], keys)
        boxes.append(box)
        loop_thread.run(container.start_init())
        box.ports = loop_thread.run(endpoint.start([0, 0]))
        return box

    yield make
    for box in boxes:
        loop_thread.run(box.endpoint.stop())
        box.container.kill_all()
        assert marker_processes(box.container.marker) == []


@pytest.fixture
def box(make_box: Callable[..., Box]) -> Box:
    return make_box()


def test_exec_exit_codes_and_binary_stdio(box: Box) -> None:
    assert box.ssh("exit 7").returncode == 7
    payload = bytes(range(256)) * 2048 + os.urandom(300_000)
    (box.home / "blob.bin").write_bytes(payload)
    down = box.ssh("cat blob.bin")
    assert down.returncode == 0 and down.stdout == payload
    up = box.ssh("cat > up.bin && echo stored >&2", input=payload)
    assert up.returncode == 0 and up.stderr == b"stored\n"
    assert (box.home / "up.bin").read_bytes() == payload
    killed = box.ssh("echo dying >&2; kill -9 $$")
    assert killed.returncode == 255 and b"dying" in killed.stderr
    # The second listener (the "proxy" route) reaches the same container.
    assert box.ssh("cat blob.bin", port=box.ports[1]).stdout == payload


def test_environment_cwd_and_login_shell(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_SECRET_KEY", "must-not-leak")
    out = box.ssh('printf "%s\\n" "$CONTAINER_ID" "$HOME" "$PWD" "$VAST_CONTAINERLABEL" '
                  '"${PATH%%:*}" "$VASTAI_NO_UPDATE_CHECK" "${HOST_SECRET_KEY-unset}" '
                  '"$FOO" "$(command -v nvidia-smi)"')
    lines = out.stdout.decode().splitlines()
    home = str(box.home)
    tools = str(box.container.tools_dir)
    assert lines == ["7000001", home, home, "C.7000001", tools, "1", "unset", "bar baz",
                     f"{tools}/nvidia-smi"]
    # Login shells get the env from ~/.vast_env even when started with an empty env.
    login = box.ssh("env -i HOME=$HOME bash -l -c 'echo $CONTAINER_API_KEY $FOO'")
    assert login.stdout.decode().strip() == "instance-key-123 bar baz"


def test_auth_only_root_with_current_keys(box: Box, client_keys: dict[str, Path]) -> None:
    wrong = box.ssh("true", key=client_keys["other"])
    assert wrong.returncode == 255 and b"Permission denied" in wrong.stderr
    assert box.ssh("true", user="ubuntu").returncode == 255
    # Keys are read on every attempt: attaching one later works at once.
    box.keys.append(client_keys["other"].with_suffix(".pub").read_text())
    assert box.ssh("true", key=client_keys["other"]).returncode == 0


def _tree_digest(root: Path) -> dict[str, str]:
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            result[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[rel] = "dir"
    return result


def test_rsync_roundtrip_and_scp(box: Box, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir with space").mkdir(parents=True)
    (src / "dir with space" / "file one.txt").write_text("hello\n")
    (src / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (src / "gone.txt").write_text("to be deleted")
    (src / "link").symlink_to("dir with space/file one.txt")
    started = time.monotonic()
    up = box.rsync("-az", "--delete", "--partial", f"{src}/", "root@127.0.0.1:dest/")
    upload_s = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    assert _tree_digest(box.home / "dest") == _tree_digest(src)
    (src / "gone.txt").unlink()
    assert box.rsync("-az", "--delete", f"{src}/", "root@127.0.0.1:dest/").returncode == 0
    assert not (box.home / "dest" / "gone.txt").exists()
    back = tmp_path / "back"
    down = box.rsync("-az", "root@127.0.0.1:dest/", f"{back}/")
    assert down.returncode == 0, down.stderr
    assert _tree_digest(back) == _tree_digest(src)
    # scp (OpenSSH 9 speaks SFTP) lands relative to home.
    scp = subprocess.run(["scp", *SSH_OPTS, "-i", str(box.key), "-P", str(box.ports[0]),
                          str(src / "dir with space" / "file one.txt"),
                          "root@127.0.0.1:copied.txt"], capture_output=True, timeout=20)
    assert scp.returncode == 0, scp.stderr
    assert (box.home / "copied.txt").read_text() == "hello\n"
    print(f"rsync 5 MB upload: {upload_s:.2f}s")


def test_session_end_kills_all_but_detached(box: Box) -> None:
    out = box.ssh("sleep 301 >/dev/null 2>&1 & nohup sleep 302 >/dev/null 2>&1 & "
                  "setsid nohup sleep 303 >/dev/null 2>&1 </dev/null & echo started")
    assert out.returncode == 0 and out.stdout == b"started\n"
    assert wait_for(lambda: not box.marked("sleep", "301") and not box.marked("sleep", "302"),
                    timeout=4)
    assert box.marked("sleep", "303"), "a setsid'ed process must survive its session"


def _gpu_query(box: Box) -> list[list[str]]:
    out = box.ssh("nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu,"
                  "temperature.gpu,driver_version,count --format=csv,noheader,nounits")
    assert out.returncode == 0, out.stderr
    return [line.split(", ") for line in out.stdout.decode().splitlines()]


def test_nvidia_smi(box: Box) -> None:
    box.container.refresh_gpu_state()
    idle = _gpu_query(box)
    assert len(idle) == 2
    assert idle[0][0] == "NVIDIA GeForce RTX 4090" and idle[0][1] == "24564"
    assert int(idle[0][3]) < 10 and idle[0][5] == "550.54.15" and idle[0][6] == "2"
    table = box.ssh("nvidia-smi").stdout.decode()
    assert "CUDA Version: 12.4" in table and "24564MiB" in table
    listed = box.ssh("nvidia-smi -L").stdout.decode().splitlines()
    assert len(listed) == 2 and listed[1].startswith("GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-")
    header = box.ssh("nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv")
    assert header.stdout.decode().splitlines()[0] == "memory.used [MiB], utilization.gpu [%]"
    box.ssh("setsid python3 -c 'while True: pass' >/dev/null 2>&1 </dev/null &")
    time.sleep(0.4)
    box.container.refresh_gpu_state()
    time.sleep(0.3)
    assert box.container.refresh_gpu_state()
    busy = _gpu_query(box)
    assert int(busy[0][3]) >= 85 and int(busy[0][2]) > 10000
    assert box.container.stats()["gpu_util"] >= 0.85
    box.container.kill_jobs()
    box.container.refresh_gpu_state()
    assert int(_gpu_query(box)[0][3]) < 10


def test_df_reports_quota(box: Box) -> None:
    (box.home / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    out = box.ssh("df -P ~").stdout.decode().splitlines()
    assert out[0].split()[:2] == ["Filesystem", "1024-blocks"]
    fs, size, used, avail, pct, mount = out[1].split()
    assert (fs, int(size), mount) == ("overlay", 1024 * 1024, str(box.home))
    measured = box.container.disk_usage_bytes() // 1024
    assert abs(int(used) - measured) < 64 and int(avail) == 1024 * 1024 - int(used)
    human = box.ssh("df -h .").stdout.decode().splitlines()
    assert human[0].split()[1] == "Size" and human[1].split()[1] == "1.0G"
    other = box.ssh("df -k /").stdout.decode().splitlines()  # outside home: the real df
    assert other[1].split()[0] != "overlay" and other[1].split()[-1] == "/"


def test_quota_stops_writers(make_box: Callable[..., Box]) -> None:
    box = make_box(disk_gb=0.01)  # 10 MiB
    writer = ("import time\n"
              "chunk = b'x' * (1 << 20)\n"
              "with open('fill.bin', 'wb', buffering=0) as f:\n"
              "    for i in range(200):\n"
              "        try:\n"
              "            f.write(chunk)\n"
              "        except OSError as exc:\n"
              "            print('ERR', exc.errno, flush=True)\n"
              "            break\n"
              "        time.sleep(0.1)\n")  # 2 MiB per 0.2 s check below: the 4 MiB margin holds on a busy machine
    proc = subprocess.Popen([*box.ssh_argv(), f"python3 -c {shlex.quote(writer)}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        full_at = None
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            if box.container.enforce_quota() and full_at is None:
                full_at = time.monotonic()
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
        proc.wait()
    assert full_at is not None and out.decode().split() == ["ERR", str(errno.EFBIG)]
    assert time.monotonic() - full_at < 3
    assert (box.home / "fill.bin").stat().st_size < box.container.quota_bytes + 4 * (1 << 20)
    # New sessions start clamped; SFTP (scp) uploads, written by the sandbox itself, too.
    assert box.ssh("head -c 10 /dev/zero > more.bin").returncode != 0
    small = box.home.parent / "small.txt"
    small.write_text("x" * 100)
    scp = subprocess.run(["scp", *SSH_OPTS, "-i", str(box.key), "-P", str(box.ports[0]),
                          str(small), "root@127.0.0.1:small.txt"], capture_output=True, timeout=20)
    assert scp.returncode != 0
    assert box.ssh("df -P .").stdout.decode().splitlines()[1].split()[4] == "100%"
    (box.home / "fill.bin").unlink()
    assert box.container.enforce_quota() is False
    assert box.ssh("head -c 1000 /dev/zero > ok.bin && echo ok").stdout == b"ok\n"


def test_drop_and_refuse_connections(box: Box, loop_thread: LoopThread) -> None:
    proc = subprocess.Popen([*box.ssh_argv(), "sleep 30"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: box.marked("sleep", "30"), timeout=5)
        loop_thread.call(box.endpoint.drop_connections, 2)
        assert proc.wait(timeout=5) == 255
    finally:
        proc.kill()
        proc.wait()
    assert box.ssh("true").returncode == 255
    assert box.ssh("true").returncode == 255
    assert box.ssh("true").returncode == 0
    assert wait_for(lambda: not box.marked("sleep", "30"), timeout=3)


def test_pty_shell(box: Box) -> None:
    out = box.ssh("tty; echo term=$TERM", extra=("-tt",))
    text = out.stdout.decode()
    assert out.returncode == 0 and "/dev/" in text and "term=" in text
    # An interactive login shell runs jobs in their own process groups; ending the session
    # still ends them (they never left the session).
    shell = subprocess.run([*box.ssh_argv(extra=("-tt",))],
                           input=b"echo hi-$CONTAINER_ID\nsleep 306 &\nexit 3\n",
                           capture_output=True, timeout=20)
    assert shell.returncode == 3 and b"hi-7000001" in shell.stdout
    assert wait_for(lambda: not box.marked("sleep", "306"), timeout=4)


def test_jobs_get_default_signal_handling(box: Box) -> None:
    """A sandbox launched with `&` from a script ignores SIGINT; its jobs must not."""
    probe = "python3 -c 'import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)'"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        out = box.ssh(probe)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.stdout == b"False\n"


def test_onstart_and_kill_all(box: Box, loop_thread: LoopThread) -> None:
    c = box.container
    loop_thread.run(c.run_onstart("echo hello from onstart $CONTAINER_ID\nsleep 304\n"))
    log = box.home / ".vast" / "onstart.log"
    assert wait_for(lambda: log.exists() and "hello from onstart 7000001" in log.read_text())
    box.ssh("setsid nohup sleep 305 >/dev/null 2>&1 </dev/null &")
    assert wait_for(lambda: box.marked("sleep", "304") and box.marked("sleep", "305"))
    assert c.init_pid is not None and Container.init_alive(c.init_pid, c.marker)
    # A restarted sandbox builds a fresh Container and adopts the surviving init.
    twin = Container(c.instance_id, c.home, {}, 1.0, GPU, c.marker)
    assert not twin.adopt_init(os.getpid()) and twin.adopt_init(c.init_pid)
    assert twin.kill_jobs() == 0 and Container.init_alive(c.init_pid, c.marker)
    assert not box.marked("sleep", "304")
    assert c.kill_all() == 0
    assert marker_processes(c.marker) == []
    assert not Container.init_alive(c.init_pid, c.marker)

"""The one place that builds ssh and rsync commands, and runs them (through `sh`) with patience.

Every call to an instance goes through here: the direct route when the host maps
port 22, Vast's proxy otherwise; host keys pinned per instance without prompts
(`accept-new` into `<vasticlaude home>/known_hosts/<id>`, so a recycled IP:port never
trips a global known_hosts); keepalives so a dead link is noticed in ~45 s; and the
seed's backoff on connection failure — 2 s, 4 s, 8 s, 16 s — then a clear error.
ssh exits 255 when the connection itself failed; anything else is the remote
command's own status and is never retried here.
"""
from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from filelock import FileLock

from vasticlaude.core.retry import ssh_pauses
from vasticlaude.errors import API, Error
from vasticlaude.output import progress
from vasticlaude.store import paths

CONNECTION_FAILED = 255


@dataclass(frozen=True)
class Key:
    private: Path
    public: str


@dataclass(frozen=True)
class Route:
    """How to reach one instance over SSH."""

    instance_id: int
    host: str
    port: int
    key: Path
    user: str = "root"

    def options(self) -> list[str]:
        known = paths.ensure_private_dir(paths.home() / "known_hosts") / str(self.instance_id)
        return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-i", str(self.key), "-p", str(self.port)]

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    def as_dict(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "key": str(self.key)}


def ssh_key() -> Key:
    """~/.ssh/id_ed25519 or id_rsa, else a key of vasticlaude's own (made once)."""
    for name in ("id_ed25519", "id_rsa"):
        private = Path.home() / ".ssh" / name
        if private.is_file() and private.with_name(name + ".pub").is_file():
            return Key(private, private.with_name(name + ".pub").read_text().strip())
    private = paths.ensure_private_dir(paths.home() / "ssh") / "id_ed25519"
    # Several `up`s at once must not race ssh-keygen on one file: make it once, under a lock.
    with FileLock(str(private) + ".lock", timeout=60):
        if not private.is_file() or not private.with_name("id_ed25519.pub").is_file():
            private.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vasticlaude", "-f", str(private)],
                           check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return Key(private, private.with_name("id_ed25519.pub").read_text().strip())


def endpoint(row: dict) -> dict | None:
    """Direct SSH when the host maps port 22, else Vast's proxy; None while there is neither."""
    direct = (row.get("ports") or {}).get("22/tcp")
    if direct and row.get("public_ipaddr"):
        return {"host": row["public_ipaddr"], "port": int(direct[0]["HostPort"])}
    if row.get("ssh_host") and row.get("ssh_port"):
        return {"host": row["ssh_host"], "port": int(row["ssh_port"])}
    return None


def route_for(row: dict, key: Path) -> Route:
    found = endpoint(row)
    if found is None:
        raise Error("no_ssh_route", f"instance {row.get('id')} has no SSH endpoint (status {row.get('actual_status')})",
                    "Wait until it runs ('vasticlaude status'), or start it.", API)
    return Route(int(row["id"]), found["host"], found["port"], key)


def ssh_argv(route: Route, command: str) -> list[str]:
    return ["ssh", *route.options(), route.target, command]


def rsync_shell(route: Route) -> str:
    """The `-e` argument for rsync: the same ssh with the same options."""
    return shlex.join(["ssh", *route.options()])


def rsync_argv(route: Route, sources: Sequence[str], dest: str, extra: Sequence[str] = ()) -> list[str]:
    """rsync over our ssh; `remote:` in a source or dest is replaced by the instance's address."""
    fix = lambda p: p.replace("remote:", f"{route.target}:", 1) if p.startswith("remote:") else p  # noqa: E731
    return ["rsync", "-e", rsync_shell(route), *extra, *[fix(s) for s in sources], fix(dest)]


def call(argv: list[str], timeout: float, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    """Run ssh or rsync once through `sh` (no shell, no TTY, stdin closed unless given); its outcome.

    Raises subprocess.TimeoutExpired when it did not end within `timeout` s (sh kills it)."""
    import sh  # only the commands that reach an instance pay for it
    try:
        done = sh.Command(argv[0])(*argv[1:], _in=input_bytes or b"", _timeout=timeout, _ok_code=range(256),
                                   _tty_in=False, _tty_out=False, _return_cmd=True)
    except sh.TimeoutException:
        raise subprocess.TimeoutExpired(argv, timeout) from None
    return subprocess.CompletedProcess(argv, done.exit_code, done.stdout, done.stderr)


def probe(route: Route, timeout: float = 30) -> bool:
    """Does `ssh root@host true` answer right now (no retry)?"""
    try:
        return call(ssh_argv(route, "true"), timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def run(route: Route, command: str, *, timeout: float = 120, input_bytes: bytes | None = None,
        backoff: Sequence[float] | None = None, sleep: Callable[[float], None] = time.sleep) -> subprocess.CompletedProcess:
    """Run `command` on the instance; retry only when the connection itself failed."""
    return retrying(ssh_argv(route, command), f"ssh to instance {route.instance_id}", timeout=timeout,
                    input_bytes=input_bytes, backoff=backoff, sleep=sleep)


def retrying(argv: list[str], what: str, *, timeout: float, input_bytes: bytes | None = None,
             backoff: Sequence[float] | None = None, sleep: Callable[[float], None] = time.sleep,
             failed: Callable[[subprocess.CompletedProcess], bool] | None = None) -> subprocess.CompletedProcess:
    """Run an ssh or rsync command with the seed's backoff on connection failures."""
    failed = failed or (lambda proc: proc.returncode == CONNECTION_FAILED)
    backoff = ssh_pauses() if backoff is None else backoff
    last = ""
    for attempt, pause in enumerate((*backoff, None)):
        try:
            proc = call(argv, timeout, input_bytes)
        except subprocess.TimeoutExpired:
            proc, last = None, f"no answer within {timeout:g} s"
        else:
            if not failed(proc):
                return proc
            last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["connection failed"]
            last = last[0]
        if pause is None:
            break
        progress(f"vasticlaude: {what}: {last}; retrying in {pause:g} s ({attempt + 1}/{len(backoff)})")
        sleep(pause)
    raise Error("ssh_failed", f"{what} failed after {len(backoff) + 1} tries: {last}",
                "The instance may be down: check 'vasticlaude status'; the job itself keeps running.", API)

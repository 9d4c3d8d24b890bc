"""The one place that builds ssh and rsync commands, and runs them (through `sh`) with patience.

Every call to an instance goes through here. An instance has up to two routes: direct
(`public_ipaddr` and the host port mapped to 22/tcp) and Vast's proxy (`ssh_host`:`ssh_port`);
on the real Vast either may be dead while the other works (README "Realism"). A `Route` is
the one to try first with the other as its fallback: direct first, unless the instance's
record remembers (`ssh_route`) that the proxy was the one that answered. On a connection
failure the other route is tried at once, and the one that answers is remembered. Host keys
are pinned per instance without prompts (`accept-new` into `<vasticlaude home>/known_hosts/<id>`,
so a recycled IP:port never trips a global known_hosts); keepalives so a dead link is noticed in ~45 s; and the
seed's backoff on connection failure — 2 s, 4 s, 8 s, 16 s — then a clear error. Inside a command's
deadline (`core.retry.wall`) the ConnectTimeout, each call's time limit and each pause are cut
to the time left, and no try starts past it.
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

from vasticlaude.core import retry
from vasticlaude.core.retry import ssh_pauses
from vasticlaude.errors import API, Error
from vasticlaude.output import progress
from vasticlaude.store import paths, state

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
    name: str = "direct"  # "direct" or "proxy"
    other: Route | None = None  # the fallback: the instance's other route, if it has one

    def options(self) -> list[str]:
        known = paths.ensure_private_dir(paths.home() / "known_hosts") / str(self.instance_id)
        return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={known}", "-o", f"ConnectTimeout={self.connect_timeout()}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-i", str(self.key), "-p", str(self.port)]

    def connect_timeout(self) -> int:
        """Half the usual with a fallback behind it: a black-holed route hands over to the other within
        5 s, so the two together take no longer than one ordinary ConnectTimeout (10 s)."""
        return retry.connect_timeout(retry.SSH_CONNECT_FIRST_S if self.other is not None else retry.SSH_CONNECT_S)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    def as_dict(self) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "key": str(self.key), "route": self.name}

    def both(self) -> list[Route]:
        """This route, then its fallback (without a fallback of its own)."""
        return [self] + ([self.other] if self.other else [])


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


def endpoints(row: dict) -> dict[str, dict]:
    """The instance's SSH endpoints by route name ("direct", "proxy"), from a normalised row."""
    found: dict[str, dict] = {}
    mapped = (row.get("ports") or {}).get("22/tcp")
    try:
        host_port = int(mapped[0]["HostPort"]) if mapped else None
    except (KeyError, IndexError, TypeError, ValueError):
        host_port = None
    if host_port and row.get("public_ipaddr"):
        found["direct"] = {"host": str(row["public_ipaddr"]).strip(), "port": host_port}
    try:
        proxy_port = int(row.get("ssh_port") or 0)
    except (TypeError, ValueError):
        proxy_port = 0
    if row.get("ssh_host") and proxy_port:
        found["proxy"] = {"host": str(row["ssh_host"]).strip(), "port": proxy_port}
    return found


def route_for(row: dict, key: Path, prefer: str | None = None) -> Route:
    """The route to try first (`prefer`, e.g. what the record remembers) with the other as fallback."""
    found = endpoints(row)
    if not found:
        raise Error("no_ssh_route", f"instance {row.get('id')} has no SSH endpoint (status {row.get('actual_status')})",
                    "Wait until it runs ('vasticlaude status'), or start it.", API)
    order = sorted(found, key=lambda n: (n != prefer, n != "direct"))
    iid = int(row["id"])
    other = Route(iid, found[order[1]]["host"], found[order[1]]["port"], key, name=order[1]) if len(order) > 1 else None
    return Route(iid, found[order[0]]["host"], found[order[0]]["port"], key, name=order[0], other=other)


def remember(route: Route) -> None:
    """Note in the instance's record that this route answered (only when it changes, only for a record)."""
    try:
        with state.transaction() as data:
            rec = data["instances"].get(str(route.instance_id))
            if rec is not None and rec.get("ssh_route") != route.name:
                rec["ssh_route"] = route.name
    except Exception as err:  # noqa: BLE001 — a preference, never a reason to fail the call
        progress(f"vasticlaude: could not note the SSH route of instance {route.instance_id}: {err}")


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

    Raises subprocess.TimeoutExpired when it did not end within `timeout` s, cut to the command's
    deadline (sh kills it)."""
    import sh  # only the commands that reach an instance pay for it
    timeout = retry.clip(timeout)
    try:
        done = sh.Command(argv[0])(*argv[1:], _in=input_bytes or b"", _timeout=timeout, _ok_code=range(256),
                                   _tty_in=False, _tty_out=False, _return_cmd=True)
    except sh.TimeoutException:
        raise subprocess.TimeoutExpired(argv, timeout) from None
    return subprocess.CompletedProcess(argv, done.exit_code, done.stdout, done.stderr)


def probe(route: Route, timeout: float = 30) -> bool:
    """Does `ssh root@host true` answer right now on this route (no retry, no fallback)?"""
    try:
        return call(ssh_argv(route, "true"), timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def probe_any(route: Route, timeout: float = 30) -> Route | None:
    """The first of the route and its fallback that answers right now (remembered), or None."""
    for each in route.both():
        if probe(each, timeout):
            if each is not route:
                remember(each)
            return each
    return None


def run(route: Route, command: str, *, timeout: float = 120, input_bytes: bytes | None = None,
        backoff: Sequence[float] | None = None, sleep: Callable[[float], None] = time.sleep) -> subprocess.CompletedProcess:
    """Run `command` on the instance; retry only when the connection itself failed."""
    return retrying(lambda r: ssh_argv(r, command), f"ssh to instance {route.instance_id}", route=route,
                    timeout=timeout, input_bytes=input_bytes, backoff=backoff, sleep=sleep)


def retrying(argv: list[str] | Callable[[Route], list[str]], what: str, *, timeout: float,
             input_bytes: bytes | None = None, backoff: Sequence[float] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             failed: Callable[[subprocess.CompletedProcess], bool] | None = None,
             route: Route | None = None) -> subprocess.CompletedProcess:
    """Run an ssh or rsync command with the seed's backoff on connection failures.

    With `route` (and `argv` a function of the route), a connection failure on the route is
    followed at once by a try on its fallback; the route that answers is remembered and kept."""
    failed = failed or (lambda proc: proc.returncode == CONNECTION_FAILED)
    backoff = ssh_pauses() if backoff is None else backoff
    build = argv if callable(argv) else (lambda _r: argv)
    ways: list[Route | None] = route.both() if route is not None else [None]
    last = ""
    for attempt, pause in enumerate((*backoff, None)):
        for way in list(ways):
            try:
                proc = call(build(way), timeout, input_bytes)
            except subprocess.TimeoutExpired:
                proc, last = None, f"no answer within {timeout:g} s"
            else:
                if not failed(proc):
                    if way is not None and way is not ways[0]:
                        ways.remove(way)
                        ways.insert(0, way)  # keep using the one that answered
                    if way is not None and way is not route:
                        remember(way)
                    return proc
                last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["connection failed"]
                last = last[0]
            if way is not None and len(ways) > 1:
                last = f"{way.name} route: {last}"
        if pause is None or retry.passed():
            break
        progress(f"vasticlaude: {what}: {last}; retrying in {min(pause, retry.left()):g} s ({attempt + 1}/{len(backoff)})")
        retry.pause(pause, sleep)
    tries = f"{attempt + 1} tries" + (" (the deadline came first)" if retry.passed() and pause is not None else "")
    raise Error("ssh_failed", f"{what} failed after {tries}: {last}",
                "The instance may be down: check 'vasticlaude status'; the job itself keeps running.", API)

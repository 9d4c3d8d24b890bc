"""The SSH endpoint of a sandbox instance: real SSH (asyncssh) into a :class:`Container`.

The real OpenSSH client and rsync talk to it exactly as to a Vast instance:

- user ``root`` only, public-key auth only; ``authorized_keys()`` is asked on every attempt
  because keys can be attached after an instance was created,
- exec and shell requests run through :meth:`Container.spawn` (bash in home, the container's
  environment); stdin/stdout/stderr are bridged binary-safe through our own pipes (or a pty
  for ``ssh -t``), so rsync and scp work; the exit status or exit signal goes back,
- the ``sftp`` subsystem is asyncssh's SFTP server chrooted to home (OpenSSH 9 ``scp`` uses
  it); it refuses writes while the container's disk quota is full,
- local port forwards (``ssh -L``) to loopback addresses are allowed, like tunnelling to a
  service inside an instance.

On purpose stricter than sshd: when a session ends (command finished, client gone or the
connection dropped), every container process still in that session (the session's process
group and, for an interactive shell, its job groups) gets SIGHUP about 0.2 s later and SIGKILL
one second after that. Only work that properly detached into its own session (``setsid``,
``nohup setsid …``) survives; ``nohup cmd &`` alone does not. That is what the product must do
on a real instance anyway. Like sshd without a pty, a session lasts
until the command exits *and* its stdout/stderr are closed (a background child that keeps
them open keeps the session open).

Nothing here logs environment values or key material.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any, Callable

import asyncssh
import psutil

from .container import Container, set_winsize

log = logging.getLogger(__name__)

HANGUP_DELAY_SECONDS = 0.2
HANGUP_GRACE_SECONDS = 1.0
CHUNK = 65536
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_SECRET_ASSIGN = re.compile(r"(\b\w*(?:KEY|TOKEN|SECRET|PASS)\w*=|--api-key[= ])(\S+)", re.I)


class _RedactFilter(logging.Filter):
    """asyncssh logs exec commands (INFO) and client env values (DEBUG); commands such as
    `vastai … --api-key X` or `HF_TOKEN=… python train.py` carry secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if "Command: %s" in msg and record.args:
            record.args = (_SECRET_ASSIGN.sub(r"\1***", str(record.args[0])),)
        elif "Env: %s=%s" in msg and record.args:
            record.args = (record.args[0], "***")
        return True


def _install_log_redaction() -> None:
    pkg = logging.getLogger("asyncssh")
    if not any(isinstance(f, _RedactFilter) for f in pkg.filters):
        pkg.addFilter(_RedactFilter())


class SshEndpoint:
    """Listeners on 127.0.0.1 (direct and proxy routes) serving one container."""

    def __init__(self, container: Container, host_key_path: Path,
                 authorized_keys: Callable[[], list[str]]) -> None:
        _install_log_redaction()
        self.container = container
        self.host_key = _load_or_create_host_key(Path(host_key_path))
        self._authorized_keys = authorized_keys
        self._acceptors: list[asyncssh.SSHAcceptor] = []
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._sessions: set[asyncio.Task[Any]] = set()
        self._hangups: dict[int, asyncio.Task[None]] = {}
        self._refuse = 0

    async def start(self, ports: list[int]) -> list[int]:
        """Listen on each port (0 = pick a free one); return the bound ports in order."""
        bound: list[int] = []
        try:
            for port in ports:
                acceptor = await asyncssh.create_server(
                    lambda: _Server(self), "127.0.0.1", port,
                    server_host_keys=[self.host_key], process_factory=self._handle,
                    sftp_factory=self._sftp_server, allow_scp=False, line_editor=False,
                    encoding=None, keepalive_interval=15, keepalive_count_max=4,
                    agent_forwarding=False, x11_forwarding=False, gss_host=None,
                    login_timeout=30)
                self._acceptors.append(acceptor)
                bound.append(acceptor.get_port())
        except BaseException:
            await self.stop()
            raise
        return bound

    async def stop(self) -> None:
        """Host death: stop listening, abort every connection, end every session now."""
        for acceptor in self._acceptors:
            acceptor.close()
        self.drop_connections()
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=3)
        for acceptor in self._acceptors:
            await acceptor.wait_closed()
        self._acceptors.clear()
        for sid, task in list(self._hangups.items()):
            task.cancel()  # host death: no grace
            self._signal_session(sid, signal.SIGKILL)

    def drop_connections(self, refuse_next: int = 0) -> None:
        """Abort current connections; close the next `refuse_next` right after TCP accept."""
        self._refuse = refuse_next
        for conn in list(self._conns):
            conn.abort()

    # ------------------------------------------------------------ callbacks

    def _on_connect(self, conn: asyncssh.SSHServerConnection) -> bool:
        """Track a new connection, or refuse it (fault injection); True if kept."""
        if self._refuse > 0:
            self._refuse -= 1
            asyncio.get_running_loop().call_soon(conn.abort)
            return False
        self._conns.add(conn)
        return True

    def _on_disconnect(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conns.discard(conn)

    def _key_allowed(self, username: str, key: asyncssh.SSHKey) -> bool:
        """root with a key currently in authorized_keys()."""
        if username != "root":
            log.info("ssh: refused user %r (only root exists)", username)
            return False
        try:
            allowed = _public_blobs(self._authorized_keys())
        except Exception:  # a broken key source must deny, not crash the listener
            log.exception("ssh: authorized_keys() failed")
            return False
        return key.public_data in allowed

    def _sftp_server(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        return _QuotaSFTPServer(chan, self.container)

    async def _handle(self, process: asyncssh.SSHServerProcess) -> None:
        """process_factory: one exec/shell request."""
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            await _Session(self, process).run()
        finally:
            if task is not None:
                self._sessions.discard(task)

    def hangup(self, sid: int) -> None:
        """End a finished session: SIGHUP to every process still in it, SIGKILL after a grace.

        By session id, not process group: an interactive shell puts each job in its own group.
        """
        task = asyncio.get_running_loop().create_task(self._hangup(sid))
        self._hangups[sid] = task
        task.add_done_callback(lambda _: self._hangups.pop(sid, None))

    async def _hangup(self, sid: int) -> None:
        # A job that is detaching (`setsid cmd &`) has closed our pipes just before it
        # execs setsid; a short pause lets it leave the session before the signal.
        await asyncio.sleep(HANGUP_DELAY_SECONDS)
        if await asyncio.to_thread(self._signal_session, sid, signal.SIGHUP):
            await asyncio.sleep(HANGUP_GRACE_SECONDS)
            await asyncio.to_thread(self._signal_session, sid, signal.SIGKILL)

    def _signal_session(self, sid: int, sig: int) -> bool:
        """Signal the container's processes in session `sid`; False if none is left."""
        members = self.container.session_processes(sid)
        for proc in members:
            try:
                proc.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return bool(members)


class _Server(asyncssh.SSHServer):
    """Per-connection policy: root, public keys only, loopback forwards only."""

    def __init__(self, endpoint: SshEndpoint) -> None:
        self._endpoint = endpoint
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        if self._endpoint._on_connect(conn):
            self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._endpoint._on_disconnect(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self._endpoint._key_allowed(username, key)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        return dest_host in _LOOPBACK


class _QuotaSFTPServer(asyncssh.SFTPServer):
    """SFTP chrooted to home. It writes from the sandbox process, which RLIMIT_FSIZE does not
    clamp, so it checks the container's quota flag itself."""

    def __init__(self, chan: asyncssh.SSHServerChannel, container: Container) -> None:
        super().__init__(chan, chroot=os.fsencode(container.home))
        self._container = container

    def write(self, file_obj: object, offset: int, data: bytes) -> Any:
        if self._container.quota_full:
            raise asyncssh.SFTPFailure("No space left on device (instance disk quota)")
        return super().write(file_obj, offset, data)

    def exit(self) -> None:
        """Report status 0 like sftp-server under sshd; without it OpenSSH's scp sees
        "exit status -1" and fails although the copy worked."""
        try:
            self.channel.exit(0)
        except OSError:
            pass


class _Session:
    """One exec or shell request bridged to a container process group."""

    def __init__(self, endpoint: SshEndpoint, process: asyncssh.SSHServerProcess) -> None:
        self._endpoint = endpoint
        self._process = process
        self._proc: asyncio.subprocess.Process | None = None
        self._stdin_fd = -1   # our end of the child's stdin (the pty master with a pty)
        self._out_fds: list[tuple[int, Any]] = []  # (our read end, ssh writer)
        self._pty = process.term_type is not None

    async def run(self) -> None:
        try:
            self._proc = await self._start()
        except (OSError, ValueError) as exc:
            self._close_fds()
            self._fail(f"cannot start session: {exc}")
            return
        try:
            status = await self._bridge()
            if status is not None:
                self._send_exit(status)
        finally:
            self._close_fds()
            self._endpoint.hangup(self._proc.pid)

    async def _start(self) -> asyncio.subprocess.Process:
        """Spawn with our own pipes (or a pty): we can always close them, whoever else
        (a background child) still holds the other ends."""
        if self._process.subsystem:
            raise OSError(errno.EINVAL, f"unsupported subsystem {self._process.subsystem!r}")
        env = self._session_env()
        if self._pty:
            return await self._start_pty(env)
        in_r, self._stdin_fd = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._out_fds = [(out_r, self._process.stdout), (err_r, self._process.stderr)]
        try:
            return await self._endpoint.container.spawn(
                self._process.command, stdin=in_r, stdout=out_w, stderr=err_w, env=env)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)

    async def _start_pty(self, env: dict[str, str]) -> asyncio.subprocess.Process:
        master, slave = os.openpty()
        self._stdin_fd = master
        self._out_fds = [(os.dup(master), self._process.stdout)]
        env["SSH_TTY"] = os.ttyname(slave)
        try:
            return await self._endpoint.container.spawn(
                self._process.command, stdin=slave, stdout=slave, stderr=slave, pty=True,
                term=self._process.term_type, size=self._process.term_size, env=env)
        finally:
            os.close(slave)

    def _session_env(self) -> dict[str, str]:
        """What sshd adds: who is connected from where."""
        conn = self._process.channel.get_connection()
        peer = conn.get_extra_info("peername") or ("127.0.0.1", 0)
        local = conn.get_extra_info("sockname") or ("127.0.0.1", 0)
        return {"SSH_CLIENT": f"{peer[0]} {peer[1]} {local[1]}",
                "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}"}

    async def _bridge(self) -> int | None:
        """Pump until the command is done (its status) or the channel closes (None)."""
        assert self._proc is not None
        for fd in (self._stdin_fd, *(fd for fd, _ in self._out_fds)):
            os.set_blocking(fd, False)
        outputs = [asyncio.ensure_future(_copy_out(fd, writer)) for fd, writer in self._out_fds]
        finished = asyncio.ensure_future(self._finish(outputs))
        closed = asyncio.ensure_future(self._process.channel.wait_closed())
        feeder = asyncio.ensure_future(self._feed_stdin())
        tasks = [finished, closed, feeder, *outputs]
        try:
            await asyncio.wait({finished, closed}, return_when=asyncio.FIRST_COMPLETED)
            return finished.result() if finished.done() else None
        finally:
            for task in tasks:
                task.cancel()
            # Let every pump leave its fd wait before the fds are closed.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish(self, outputs: list[asyncio.Future[None]]) -> int:
        """The exit status, once the output is delivered."""
        assert self._proc is not None
        status = await self._proc.wait()
        if self._pty:
            # Jobs left in the background may hold the pty; take what is there and go.
            await asyncio.wait(outputs, timeout=0.5)
        else:
            await asyncio.gather(*outputs)
        return status

    async def _feed_stdin(self) -> None:
        """Client → command; EOF closes the command's stdin (ignored with a pty)."""
        broken = False
        while True:
            try:
                data = await self._process.stdin.read(CHUNK)
            except asyncssh.TerminalSizeChanged as exc:
                set_winsize(self._stdin_fd, (exc.width, exc.height, exc.pixwidth, exc.pixheight))
                continue
            except asyncssh.SignalReceived as exc:
                self._forward_signal(exc.signal)
                continue
            except (asyncssh.BreakReceived, asyncssh.SoftEOFReceived):
                continue
            except (OSError, asyncssh.Error):
                break
            if not data:
                break
            if not broken:  # after the command closed its stdin, discard like sshd
                broken = not await _write_all(self._stdin_fd, data)
        if not self._pty:
            self._close_stdin()

    def _forward_signal(self, name: str) -> None:
        sig = getattr(signal, f"SIG{name}", None)
        if self._proc is not None and isinstance(sig, signal.Signals):
            _signal_group(self._proc.pid, sig)

    def _send_exit(self, status: int) -> None:
        try:
            if status < 0:
                try:
                    name = signal.Signals(-status).name[3:]
                except ValueError:
                    name = "KILL"
                self._process.exit_with_signal(name)
            else:
                self._process.exit(status)
        except OSError:
            pass  # channel already gone

    def _fail(self, message: str) -> None:
        try:
            self._process.stderr.write(f"vasticlaude sandbox: {message}\n".encode())
            self._process.exit(1)
        except OSError:
            pass

    def _close_stdin(self) -> None:
        if self._stdin_fd >= 0:
            os.close(self._stdin_fd)
            self._stdin_fd = -1

    def _close_fds(self) -> None:
        self._close_stdin()
        for fd, _ in self._out_fds:
            os.close(fd)
        self._out_fds = []


# ----------------------------------------------------------------- helpers


async def _copy_out(fd: int, writer: Any) -> None:
    """Command → client until EOF; a vanished client just ends the copy."""
    try:
        while data := await _read_some(fd):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        pass


async def _read_some(fd: int) -> bytes:
    """Non-blocking read that waits in the loop; EIO (pty slave closed) counts as EOF."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _fd_ready(fd, write=False)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def _write_all(fd: int, data: bytes) -> bool:
    """Write everything; False once the reader is gone (EPIPE)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await _fd_ready(fd, write=True)
        except OSError:  # EPIPE/EIO: the command closed its stdin or exited
            return False
    return True


async def _fd_ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add, remove = (loop.add_writer, loop.remove_writer) if write else \
        (loop.add_reader, loop.remove_reader)
    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


def _signal_group(pgid: int, sig: int) -> bool:
    """killpg that tolerates an empty group; True if delivered."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _public_blobs(lines: list[str]) -> set[bytes]:
    """Public key blobs from authorized_keys lines (options prefixes and comments allowed)."""
    blobs: set[bytes] = set()
    for line in "\n".join(lines).splitlines():
        tokens = line.strip().split()
        if not tokens or tokens[0].startswith("#"):
            continue
        for i in range(len(tokens) - 1):
            try:
                blobs.add(asyncssh.import_public_key(" ".join(tokens[i:i + 2])).public_data)
                break
            except (asyncssh.KeyImportError, ValueError):
                continue
    return blobs


def _load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """One ed25519 host key per instance, created on first use (0600)."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key())
    Path(f"{path}.pub").write_bytes(key.export_public_key())
    return key

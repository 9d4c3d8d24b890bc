"""Running scripts and rsync on an instance, with the SSH backoff, and reading rsync's numbers."""
from __future__ import annotations

import re

from vasticlaude.core.retry import ssh_pauses
from vasticlaude.errors import API, FAILED, Error
from vasticlaude.remote import ssh

RSYNC_CONNECTION_CODES = frozenset({10, 12, 30, 35, 255})
RSYNC_VANISHED = 24  # a source file disappeared while sending: not a failure
TRANSFER_TIMEOUT = 24 * 3600.0


def remote(route: ssh.Route, script: str, what: str, timeout: float = 120) -> str:
    """Run a script on the instance (retried on connection failure); its stdout as text."""
    proc = ssh.run(route, script, timeout=timeout, backoff=ssh_pauses())
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise Error("remote_failed", f"{what} failed on instance {route.instance_id}: {err[0]}",
                    "Check the instance with 'vasticlaude status'.", API)
    return proc.stdout.decode("utf-8", "replace")


def rsync(route: ssh.Route, sources: list[str], dest: str, extra: list[str], what: str,
          backoff: tuple[float, ...] | None = None) -> str:
    """rsync with retries (the SSH backoff unless `backoff`) on connection-type failures; its --stats output."""
    proc = ssh.retrying(lambda r: ssh.rsync_argv(r, sources, dest, ["--stats", *extra]), what, route=route,
                        timeout=TRANSFER_TIMEOUT, backoff=ssh_pauses() if backoff is None else backoff,
                        failed=lambda p: p.returncode in RSYNC_CONNECTION_CODES)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode in (0, RSYNC_VANISHED):
        return out
    lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    detail = "; ".join(lines[-3:]) or f"exit {proc.returncode}"
    raise Error("rsync_failed", f"{what} failed (rsync exit {proc.returncode}): {detail}",
                "Fix what rsync says and run the command again: it resumes.", FAILED)


def stat(text: str, label: str) -> int:
    """One number from rsync --stats (digit grouping of any locale removed)."""
    found = re.search(rf"^{re.escape(label)}: ([\d,.']+)", text, re.M)
    return int(re.sub(r"\D", "", found.group(1))) if found else 0


def file_count(text: str) -> int:
    """Files and symlinks in the transfer (rsync counts directories too)."""
    found = re.search(r"^Number of files: [\d,.']+ \(([^)]*)\)", text, re.M)
    if not found:
        return stat(text, "Number of files")
    parts = dict(p.strip().split(": ") for p in found.group(1).split(","))
    return sum(int(re.sub(r"\D", "", v)) for k, v in parts.items() if k != "dir")

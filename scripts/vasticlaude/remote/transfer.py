"""Running scripts and copying files to and from an instance (rsync, else tar over ssh), with the SSH
backoff, and reading rsync's numbers."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vasticlaude.core import money
from vasticlaude.core.retry import ssh_pauses
from vasticlaude.errors import API, FAILED, Error
from vasticlaude.output import progress
from vasticlaude.remote import ssh
from vasticlaude.store import state

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
                        failed=lambda p: p.returncode in RSYNC_CONNECTION_CODES and not missing_rsync(p))
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode in (0, RSYNC_VANISHED):
        count(route, stat(out, "Total bytes sent"), stat(out, "Total bytes received"))
        return out
    if missing_rsync(proc):
        note_no_rsync(route)
        raise Error("no_remote_rsync", f"{what}: instance {route.instance_id} has no rsync",
                    "The copy goes through tar over ssh instead.", FAILED)
    lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    detail = "; ".join(lines[-3:]) or f"exit {proc.returncode}"
    raise Error("rsync_failed", f"{what} failed (rsync exit {proc.returncode}): {detail}",
                "Fix what rsync says and run the command again: it resumes.", FAILED)


def count(route: ssh.Route, moved_in: int, moved_out: int) -> None:
    """Add what a transfer moved (in: to the instance, out: from it) to the instance's record: Vast
    bills bandwidth by the byte (core/money.py). A record that cannot be written costs the count only."""
    if moved_in <= 0 and moved_out <= 0:
        return
    try:
        with state.transaction() as data:
            rec = data["instances"].get(str(route.instance_id))
            if rec is not None:
                money.add_traffic(rec, time.time(), moved_in, moved_out)
    except Exception as err:  # noqa: BLE001 — the copy is done; only its count is lost
        progress(f"vasticlaude: could not count the bytes moved for instance {route.instance_id}: {err}")


def fetch(route: ssh.Route, base: str, names: list[str], dest: Path, extra: list[str], what: str,
          backoff: tuple[float, ...] | None = None) -> int:
    """Copy `names` (relative to ~/base; their relative paths kept) into dest: rsync with `extra`,
    else tar when the instance has no rsync. Bytes received."""
    if not lacks_rsync(route):
        try:
            out = rsync(route, [f"remote:{base}/./{n}" for n in names], f"{dest}/", ["--relative", *extra], what,
                        backoff=backoff)
            return stat(out, "Total bytes received")
        except Error as err:
            if err.code != "no_remote_rsync":
                raise
    there = tree(route, base, names)
    wanted = [n for n, (kind, _, _) in there.items() if kind != "d" and not unchanged(dest / n, there[n])]
    return tar_down(route, base, wanted, dest, what) if wanted else 0


def put(route: ssh.Route, source: Path, folder: str, extra: list[str], what: str) -> int:
    """Copy the files under `source` into ~/folder (nothing there deleted): rsync with `extra`,
    else tar when the instance has no rsync. Bytes sent."""
    if not lacks_rsync(route):
        try:
            return stat(rsync(route, [f"{source}/"], f"remote:{folder}/", extra, what), "Total bytes sent")
        except Error as err:
            if err.code != "no_remote_rsync":
                raise
    return tar_up(route, source, local_list(source, [f for f in extra if f.startswith("--exclude")]), folder,
                  what=what)


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


# ----- without rsync on the instance: tar over ssh ---------------------------------------------
# Images such as pytorch/pytorch may lack rsync (README "Realism": image-minimal) and installing
# it needs root and a package manager. tar is in every image, so the same copies go through
# `tar | ssh | tar`; what rsync gave for free is kept by hand: only changed files are sent (size
# and mtime, which tar keeps), --delete is done from a listing, and a file fetched home is
# renamed into place whole, as rsync does.
NO_RSYNC = re.compile(r"rsync: (command )?not found|rsync: No such file or directory|exec: rsync:")
STAGE = ".tar-partial"  # beside the files being fetched, like rsync's --partial-dir
_WITHOUT_RSYNC: set[int] = set()  # instances seen without rsync by this process
TAR_DOWN = r"""count=$1; stage=$2; shift 2
"$@" | dd bs=65536 2>"$count" | tar -xf - -C "$stage"
s=("${PIPESTATUS[@]}")
[ "${s[0]}" -eq 0 ] || [ "${s[0]}" -eq 1 ] || exit "${s[0]}"
exit "${s[2]}"
"""
TAR_UP = r"""count=$1; root=$2; names=$3; sparse=$4; shift 4
(cd "$root" && tar -b 1 $sparse -cf - --no-recursion --null -T "$names") | dd bs=65536 2>"$count" | "$@"
s=("${PIPESTATUS[@]}")
[ "${s[0]}" -eq 0 ] || exit 70
exit "${s[2]}"
"""
LIST_TREE = r"""cd {folder} 2>/dev/null || exit 0
if find . -maxdepth 0 -printf '' >/dev/null 2>&1; then
  find {starts} -printf '%y %s %T@ %p\0' 2>/dev/null
else
  find {starts} -type d -exec printf 'd 0 0 %s\0' {{}} + 2>/dev/null
  find {starts} ! -type d -exec printf 'f -1 0 %s\0' {{}} + 2>/dev/null
fi
exit 0
"""


def lacks_rsync(route: ssh.Route) -> bool:
    return route.instance_id in _WITHOUT_RSYNC


def note_no_rsync(route: ssh.Route) -> None:
    _WITHOUT_RSYNC.add(route.instance_id)


def missing_rsync(proc) -> bool:
    """Did rsync fail because the instance has no rsync (not a connection to retry)?"""
    return proc.returncode in (12, 14, 127) and bool(NO_RSYNC.search(proc.stderr.decode("utf-8", "replace")))


def tree(route: ssh.Route, folder: str, starts: list[str] | None = None) -> dict[str, tuple[str, int, int]]:
    """One SSH call: every entry under ~/folder (or under `starts` in it) → (type f/d/l, size, mtime);
    size -1 when the image's find cannot say (then it counts as changed)."""
    where = " ".join(shlex.quote(f"./{s}") for s in starts) if starts else "."
    out = remote(route, LIST_TREE.format(folder=shlex.quote(folder), starts=where), "listing the instance's files")
    found = {}
    for entry in out.split("\0"):
        parts = entry.lstrip("\n").split(" ", 3)
        name = parts[3].removeprefix("./") if len(parts) == 4 else ""
        if name and name != ".":
            found[name] = (parts[0], int(parts[1]), int(float(parts[2])))
    return found


def unchanged(local: Path, there: tuple[str, int, int] | None) -> bool:
    """Same size and whole-second mtime (tar and rsync -a both keep the mtime)."""
    try:
        st = local.lstat()
    except OSError:
        return False
    return there is not None and there[1] == st.st_size and there[2] == int(st.st_mtime)


def local_list(source: Path, filters: list[str]) -> list[str]:
    """What rsync would send from `source` (its filters applied): relative paths, folders ending in /."""
    with tempfile.TemporaryDirectory(prefix="vasticlaude-list-") as empty:
        proc = subprocess.run(["rsync", "-a", "--dry-run", "--out-format=%n", *filters, f"{source}/", f"{empty}/"],
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode not in (0, RSYNC_VANISHED):
        raise Error("rsync_failed", f"listing {source} failed: {proc.stderr.decode(errors='replace').strip()[-300:]}",
                    "Check the folder and the ignore rules.", FAILED)
    names = proc.stdout.decode("utf-8", "surrogateescape").splitlines()
    return [n for n in names if n and n != "./"]


def tar_up(route: ssh.Route, root: Path, names: list[str], folder: str, delete: list[str] = (),
           what: str = "sending", sparse: bool = False) -> int:
    """Send `names` (relative to root; folders end in /) into ~/folder through tar; bytes sent.
    `delete` (relative to folder) is removed first: files, then emptied folders. With `sparse`
    (GNU tar on the instance) holes are sent as holes and stay holes there, as rsync --sparse does."""
    files = [n for n in delete if not n.endswith("/")]
    dirs = sorted((n for n in delete if n.endswith("/")), key=len, reverse=True)
    script = f"mkdir -p {shlex.quote(folder)} && cd {shlex.quote(folder)} || exit 71\n"
    if files:
        script += "rm -f -- " + " ".join(shlex.quote(f"./{n}") for n in files) + "\n"
    if dirs:
        script += "rmdir -- " + " ".join(shlex.quote(f"./{n}") for n in dirs) + " 2>/dev/null\n"
    script += "tar -x -o -f -\n"
    with tempfile.TemporaryDirectory(prefix="vasticlaude-tar-") as scratch:
        listed, counted = Path(scratch) / "names", Path(scratch) / "count"
        listed.write_bytes(b"".join(n.rstrip("/").encode("utf-8", "surrogateescape") + b"\0" for n in names))
        proc = ssh.retrying(lambda r: ["bash", "-c", TAR_UP, "tar-up", str(counted), str(root), str(listed), "-S" if sparse else "",
                                       *ssh.ssh_argv(r, script)],
                            what, route=route, timeout=TRANSFER_TIMEOUT, backoff=ssh_pauses())
        sent = _dd_bytes(counted)
    _check_tar(proc, what, route)
    count(route, sent, 0)
    return sent


def tar_down(route: ssh.Route, base: str, names: list[str], dest: Path, what: str = "fetching") -> int:
    """Fetch `names` (relative to ~/base, files or folders) into dest through tar; bytes received.
    Extracted beside dest first and each file then renamed into place, so a local file is always
    whole (a dropped connection leaves the old version, and the next call fetches it again)."""
    stage = dest / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    script = tar_create(base, names)
    try:
        with tempfile.TemporaryDirectory(prefix="vasticlaude-tar-") as scratch:
            counted = Path(scratch) / "count"
            proc = ssh.retrying(lambda r: ["bash", "-c", TAR_DOWN, "tar-down", str(counted), str(stage),
                                           *ssh.ssh_argv(r, script)],
                                what, route=route, timeout=TRANSFER_TIMEOUT, backoff=ssh_pauses())
            received = _dd_bytes(counted)
        _check_tar(proc, what, route)
        count(route, 0, received)
        for path in sorted(stage.rglob("*")):
            if path.is_file() or path.is_symlink():
                target = dest / path.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return received


def tar_create(base: str, names: list[str]) -> str:
    """The instance's side of tar_down: `names` under ~/base as a tar stream on stdout. A file that goes
    while tar reads its folder (the watchdog's heartbeat.tmp, renamed into place) is rsync's exit 24,
    not a failure: GNU tar's --ignore-failed-read makes it a warning (busybox tar has no such flag).
    The verify after a pull compares what is there."""
    return (f"cd {shlex.quote(base)} || exit 71\nopt=; tar --version 2>/dev/null | grep -q 'GNU tar' && "
            "opt=--ignore-failed-read\ntar $opt -b 1 -cf - -- " + " ".join(shlex.quote(f"./{n}") for n in names))


def _dd_bytes(count: Path) -> int:
    found = re.search(r"^(\d+) bytes", count.read_text(errors="replace"), re.M) if count.is_file() else None
    return int(found.group(1)) if found else 0


def _check_tar(proc, what: str, route: ssh.Route) -> None:
    if proc.returncode == 0:
        return
    lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip() and "records" not in ln]
    detail = "; ".join(lines[-3:]) or f"exit {proc.returncode}"
    raise Error("tar_failed", f"{what} (tar over ssh, instance {route.instance_id} has no rsync) failed: {detail}",
                "Run the command again: it sends or fetches only what is still missing.", FAILED)

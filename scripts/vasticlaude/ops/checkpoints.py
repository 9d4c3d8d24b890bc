"""Checkpoint safety: the local copy of an experiment's checkpoints, kept fresh while the job runs.

`watch` calls `sync_home` every `recovery.sync_interval_s` (and `recover` once more before
moving when the instance still answers): an incremental, resumable rsync of the agreed
folders (`recovery.sync`, default `checkpoints`) into the experiment's local runs folder,
`<project>/.vasticlaude/runs/<experiment>/`, the same place `pull` fills. rsync writes each
file under a temporary name and renames it, so every local file is a whole file of some
version; a job that writes its checkpoint the same way (write, then rename) is never seen
half-written. A dead host then costs at most the work since the last sync.

`send` puts that local copy into the new instance's checkpoint folder before the job is
restarted, so the job sees VASTICLAUDE_RESUME=1 and continues. Unlike `pull`, a sync
leaves no `pulled` marker: the watchdog must not take a sync for the end of the run.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

from vasticlaude.ops.results import present, transfer
from vasticlaude.errors import Error
from vasticlaude.output import progress
from vasticlaude.remote import ssh
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.transfer import fetch, put, remote
from vasticlaude.store import config, state

JOB_LOG = "run/job.log"


def local_dir(experiment: str) -> Path:
    """Where the experiment's results and checkpoints live at home (as `pull` puts them)."""
    exp = state.read_experiment(experiment) or {}
    root = (exp.get("push") or {}).get("root")
    return config.runs_dir(experiment, Path(root) if root and Path(root).is_dir() else None)


def summary(dest: Path) -> dict:
    """Files, bytes and the newest modification time of the local checkpoint copy."""
    partial = {".rsync-partial", ".tar-partial"}
    files = [p for p in (dest / "checkpoints").rglob("*") if p.is_file() and not partial & set(p.parts)]
    stats = [p.stat() for p in files]
    return {"files": len(files), "bytes": sum(s.st_size for s in stats),
            "newest": max((s.st_mtime for s in stats), default=None)}


def sync_home(route: ssh.Route, experiment: str, paths: list[str]) -> dict:
    """Pull the agreed folders that exist now, and the job's log; what the local copy holds afterwards."""
    layout, dest = Layout(experiment), local_dir(experiment)
    found, _ = present(route, layout, [*paths, JOB_LOG])
    kept = [p for p, ok in zip(paths, found) if ok]
    dest.mkdir(parents=True, exist_ok=True)
    received = transfer(route, layout, kept, dest) if kept else 0
    if found[-1]:
        received += keep_log(route, layout, dest)
    result = {"at": time.time(), "instance_id": route.instance_id, "local_path": str(dest), "paths": kept,
              "bytes_received": received, **summary(dest)}
    with state.experiment(experiment) as exp:
        exp["checkpoints"] = result
    return result


def keep_log(route: ssh.Route, layout: Layout, dest: Path) -> int:
    """The job log of this instance, kept apart (<runs>/logs/<instance id>/job.log): a report of a run that
    moved to another machine still shows what the first one did."""
    folder = dest / "logs" / str(route.instance_id)
    folder.mkdir(parents=True, exist_ok=True)
    try:  # best effort, one try: the checkpoints matter, this copy only helps the report
        return fetch(route, layout.run, [JOB_LOG.split("/")[-1]], folder, ["-az", "--partial"], "keeping the job log",
                     backoff=())
    except Error as err:
        progress(f"vasticlaude: the job log of instance {route.instance_id} was not kept this time ({err.message[:120]})")
        return 0


def send(route: ssh.Route, experiment: str, source: str | None = None) -> dict:
    """Copy the local checkpoints (of `source`, default the experiment's own: a node gets rank 0's)
    into the instance's checkpoint folder (nothing there is deleted)."""
    layout, dest = Layout(experiment), local_dir(source or experiment)
    have = summary(dest)
    if not have["files"]:
        return {**have, "sent": False}
    remote(route, f"mkdir -p {shlex.quote(layout.checkpoints)}", "making the checkpoint folder")
    put(route, dest / "checkpoints", layout.checkpoints, ["-az", "--exclude=.rsync-partial/", "--exclude=.tar-partial/"],
        "sending the checkpoint")
    return {**have, "sent": True}


def ship(route: ssh.Route, experiment: str) -> str:
    """Have the instance upload its checkpoint to the results store now (its uploader, run/store.py)."""
    run = shlex.quote(Layout(experiment).run)
    return remote(route, f"[ -f {run}/store.py ] && python3 {run}/store.py sync", "shipping the checkpoint to the store")


def local_exit_code(experiment: str) -> int | None:
    try:
        return int((local_dir(experiment) / "run" / "exit_code").read_text().strip())
    except (OSError, ValueError):
        shipped = ended_in_store(experiment)
        code = (shipped or {}).get("exit_code")
        return int(code) if code not in (None, "") else None


def ended_in_store(experiment: str) -> dict | None:
    """The results store's manifest when it holds the end of the experiment's latest run (the watchdog
    destroys the instance once it does), else None. One S3 read; none without a store."""
    exp = state.read_experiment(experiment) or {}
    runs = exp.get("runs") or []
    if not exp.get("store") or not runs:
        return None
    from vasticlaude.ops import bucket
    try:
        target = bucket.resolve(config.load(), sandbox=bool(exp["store"].get("sandbox")))
        shipped = bucket.manifest(target, bucket.path_of(experiment)) if target is not None else None
    except Error as err:
        progress(f"vasticlaude: the results store could not be read ({err.message[:120]})")
        return None
    if shipped is None or float(shipped.get("at") or 0) < float(runs[-1]["at"]) - 5:
        return None
    note_stored(experiment, shipped.get("bytes"))
    return shipped


def note_stored(experiment: str, stored_bytes: object) -> None:
    """Remember what the results store holds for the experiment (cost and report show it)."""
    if not isinstance(stored_bytes, (int, float)):
        return
    with state.experiment(experiment) as exp:
        if (exp.get("store") or {}).get("bytes") != int(stored_bytes):
            exp.setdefault("store", {})["bytes"] = int(stored_bytes)


def ended_home(experiment: str) -> bool:
    """Does the pulled copy (or the results store) hold the exit code of the experiment's latest run?"""
    run_dir = local_dir(experiment) / "run"
    runs = (state.read_experiment(experiment) or {}).get("runs") or []
    try:
        started = float((run_dir / "started_at").read_text().strip())
    except (OSError, ValueError):
        started = None
    if started is not None and (run_dir / "exit_code").is_file() and bool(runs) and started >= float(runs[-1]["at"]) - 5:
        return True
    return ended_in_store(experiment) is not None

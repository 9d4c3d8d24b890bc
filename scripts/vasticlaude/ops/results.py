"""Bring results home from an instance: resumable, verified file by file, and the pulled marker left.

The marker tells the on-instance watchdog that results are safe at home, so it may
destroy rather than stop the instance.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path, PurePosixPath

from vasticlaude.errors import FAILED, USAGE, Error
from vasticlaude.ops import costs
from vasticlaude.ops.binding import Bound
from vasticlaude.output import progress, redact_file, restated
from vasticlaude.remote import ssh
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.transfer import fetch, remote
from vasticlaude.store import config, state

DEFAULT_PATHS = ("outputs", "checkpoints", "run")
PARTIAL_DIR = ".rsync-partial"
ROUNDS = 2  # a file still changing after this many transfers is reported, not failed
SKIP = ("run/pulled",)  # our own marker


def wanted_paths(asked: list[str] | None, cfg: dict) -> tuple[list[str], bool]:
    """The REMOTE_RELs to pull, and whether they were asked for (else defaults, may be absent)."""
    given = asked or cfg.get("pull")
    paths = [str(p) for p in given] if given else list(DEFAULT_PATHS)
    for p in paths:
        parts = PurePosixPath(p).parts
        if not p or p.startswith(("/", "~")) or ".." in parts or "\n" in p:
            raise Error("bad_path", f"pull path {p!r} must be relative to the experiment's folder, without '..'",
                        "For example --path outputs or --path code/results.csv.", USAGE)
    return [str(PurePosixPath(p)) for p in paths], bool(given)


def present(route: ssh.Route, layout: Layout, paths: list[str]) -> tuple[list[bool], float]:
    """One SSH call: which of the paths exist in the experiment's folder, and the instance's clock."""
    checks = " ".join(shlex.quote(p) for p in paths)
    script = (f"cd {shlex.quote(layout.base)} 2>/dev/null || {{ echo @@nobase; exit 0; }}\n"
              f'date +%s; for p in {checks}; do if [ -e "$p" ]; then printf 1; else printf 0; fi; done; echo\n')
    out = remote(route, script, "looking for the files to pull").strip().splitlines()
    if "@@nobase" in out:
        raise Error("nothing_there", f"instance {route.instance_id} has no ~/{layout.base}",
                    "Push and run the experiment first, or check --experiment.", FAILED)
    return [flag == "1" for flag in out[-1]], float(out[-2])


LIST_SCRIPT = r"""cd {base} || exit 97
date +%s; printf '\0'
if find . -maxdepth 0 -printf '' >/dev/null 2>&1; then
  find {paths} -type f -printf '%s %T@ %p\0'
else
  find {paths} -type f -exec sh -c 'for f do printf "%s 0 %s\0" "$(wc -c <"$f" | tr -d " ")" "$f"; done' sh {{}} +
fi
exit 0  # a file deleted while listing is not an error: what is listed is compared
"""


def listing(route: ssh.Route, layout: Layout, paths: list[str]) -> tuple[float, dict[str, tuple[int, float]]]:
    """One SSH call: the remote time, and size and mtime of every file under the paths."""
    script = LIST_SCRIPT.format(base=shlex.quote(layout.base), paths=" ".join(shlex.quote(p) for p in paths))
    out = remote(route, script, "listing the remote files")
    now, *entries = [e for e in out.split("\0") if e.strip()]
    files = {}
    for entry in entries:
        size, mtime, path = entry.lstrip("\n").split(" ", 2)
        if path.startswith("./"):
            path = path[2:]
        if path not in SKIP:
            files[path] = (int(size), float(mtime))
    return float(now.strip()), files


def transfer(route: ssh.Route, layout: Layout, paths: list[str], dest: Path) -> int:
    """rsync the paths into dest (relative paths kept); bytes received."""
    extra = ["-az", "-s", "--sparse", "--partial", f"--partial-dir={PARTIAL_DIR}", "--exclude=/run/pulled"]
    return fetch(route, layout.base, paths, dest, extra, "pulling")


def same_size(local: Path, size: int) -> bool:
    return local.is_file() and local.stat().st_size == size


def compare(files: dict[str, tuple[int, float]], dest: Path, since: float) -> tuple[list[str], list[str]]:
    """Files whose local copy differs in size: (changed since `since` on the instance, the rest)."""
    changing, bad = [], []
    for path, (size, mtime) in sorted(files.items()):
        local = dest / path
        have = local.stat().st_size if local.is_file() else None
        if have != size:
            (changing if mtime >= since - 1 else bad).append(path)
    return changing, bad


def pull_verified(route: ssh.Route, layout: Layout, paths: list[str], dest: Path, started: float) -> dict:
    """Transfer and verify, once more while files are still changing; what was checked.

    `started` is the instance's clock before the transfer: a file modified after it may
    legitimately differ (the job is writing it); one modified before it must match."""
    received = 0
    for round_no in range(1, ROUNDS + 1):
        received += transfer(route, layout, paths, dest)
        now, files = listing(route, layout, paths)
        changing, bad = compare(files, dest, started)
        if bad:
            names = ", ".join(f"{p} (instance {files[p][0]} B, local "
                              f"{(dest / p).stat().st_size if (dest / p).is_file() else 'missing'})" for p in bad[:10])
            raise Error("pull_mismatch", f"after the pull these files differ from the instance: {names}",
                        "Run 'vasticlaude pull' again (it resumes); if it persists, check the local disk.", FAILED)
        if not changing:
            break
        progress(f"vasticlaude pull: {len(changing)} file(s) changed during the transfer (round {round_no}): "
                 + ", ".join(changing[:5]))
        started = now
    return {"files": len(files), "bytes": sum(size for size, _ in files.values()),
            "changing": changing, "bytes_received": received}


def mark_pulled(route: ssh.Route, layout: Layout) -> str | None:
    """Tell the watchdog the results are home; a warning (not a failure) when it cannot.

    A full disk can refuse even this tiny file. The results are home and verified all the
    same; without the marker the watchdog only stops (never destroys) the instance.
    """
    run = shlex.quote(layout.run)
    try:
        remote(route, f"mkdir -p {run} && date +%s > {run}/pulled.tmp && mv -f {run}/pulled.tmp {run}/pulled",
               "leaving the pulled marker")
    except Error as err:
        return (f"could not leave the pulled marker ({err.message[-120:]}): the watchdog will stop the instance "
                "rather than destroy it; run 'vasticlaude down' when done")
    return None




def choose(route: ssh.Route, layout: Layout, paths: list[str], asked: bool) -> tuple[list[str], list[str], float]:
    """The paths that exist (a missing one is an error when asked for, else skipped), and the clock."""
    found, clock = present(route, layout, paths)
    missing = [p for p, ok in zip(paths, found) if not ok]
    if missing and asked:
        raise Error("missing_path", f"not on instance {route.instance_id}: {', '.join(missing)} "
                    f"(looked in ~/{layout.base}/)", "Check the name: paths are relative to the experiment's folder, "
                    "e.g. outputs or code/results.csv.", FAILED)
    kept = [p for p, ok in zip(paths, found) if ok]
    if not kept:
        raise Error("nothing_to_pull", f"none of {', '.join(paths)} exists yet on instance {route.instance_id}",
                    "Run the experiment first, or name what to pull with --path.", FAILED)
    return kept, missing, clock


def pull(bound: Bound, paths: list[str] | None = None, dest: Path | None = None) -> dict:
    """Bring `paths` (default: the config's "pull", else outputs, checkpoints, run) home, verified."""
    start = time.monotonic()
    paths, asked = wanted_paths(paths, config.load())
    route, layout = bound.route(), Layout(bound.experiment)
    kept, skipped, clock = choose(route, layout, paths, asked)
    dest = local_dest(dest, bound.experiment)
    if costs.priced(bound.experiment, bound.record):
        _, files = listing(route, layout, kept)
        todo = sum(size for p, (size, _) in files.items() if not same_size(dest / p, size))
        costs.check_transfer(bound.experiment, bound.record, 0, todo, "this pull")
    restated(f"vasticlaude pull: {', '.join(kept)} from instance {route.instance_id}")  # where: in the result
    result = pull_verified(route, layout, kept, dest, clock)
    redact_run_files(dest)
    marker_warning = mark_pulled(route, layout)
    data = {"experiment": bound.experiment, "instance_id": bound.instance_id, "local_path": str(dest),
            "files": result["files"], "bytes": result["bytes"], "verified": True,
            "seconds": round(time.monotonic() - start, 2), "paths": kept, "skipped": skipped,
            "changing": result["changing"], "bytes_received": result["bytes_received"]}
    if marker_warning:
        data["warnings"] = [marker_warning]
        progress(f"vasticlaude pull: {marker_warning}")
    with state.experiment(bound.experiment) as exp:
        exp["pull"] = {"at": time.time(), "local_path": str(dest), "files": data["files"], "bytes": data["bytes"],
                       "instance_id": bound.instance_id, "paths": kept}
    state.append_event(bound.experiment, "pull", instance_id=bound.instance_id, files=data["files"],
                       bytes=data["bytes"], local_path=str(dest))
    return data




def redact_run_files(dest: Path) -> None:
    """The run's own files (job.log, setup.log, watchdog.log …) with every secret masked: a job that
    prints its environment shows CONTAINER_API_KEY. Same size and mtime, so the next pull's rsync
    and the size check see them unchanged. The user's outputs and checkpoints are left as they are."""
    run = dest / "run"
    if run.is_dir():
        for path in sorted(run.rglob("*")):
            if path.is_file() and not path.is_symlink():
                redact_file(path)


def local_dest(dest: Path | None, experiment: str) -> Path:
    """Where the files go: `dest`, else <project>/.vasticlaude/runs/<experiment>/ (made if needed)."""
    dest = Path(dest).expanduser() if dest else config.runs_dir(experiment)
    dest.mkdir(parents=True, exist_ok=True)
    return dest.resolve()


def stored(experiment: str) -> dict | None:
    """The results store this experiment's last run shipped to (experiment.json "store"), if any."""
    return (state.read_experiment(experiment) or {}).get("store")


def pull_from_store(experiment: str, dest: Path | None = None, why: str = "", gone: int | None = None) -> dict:
    """Bring the store's verified copy home (the instance may be long gone): every file checked by sha256."""
    from vasticlaude.ops import bucket
    start = time.monotonic()
    recorded = stored(experiment) or {}
    target = bucket.resolve(config.load(), sandbox=bool(recorded.get("sandbox")))
    if target is None:
        raise Error("no_store", f"no results store is configured to pull {experiment} from",
                    "Add \"store\" to .vasticlaude/config.json (README \"Results store\").", FAILED)
    dest = local_dest(dest, experiment)
    progress(f"vasticlaude pull: from the results store {target.url}{f' ({why})' if why else ''}")
    got = bucket.download(target, bucket.path_of(experiment), dest)
    data = {"experiment": experiment, "instance_id": got["manifest"].get("instance_id"), "local_path": str(dest),
            "files": got["files"], "bytes": got["bytes"], "verified": True, "source": "store",
            "seconds": round(time.monotonic() - start, 2), "paths": list(DEFAULT_PATHS), "skipped": [],
            "changing": [], "bytes_received": got["bytes"], "stored_bytes": got["stored_bytes"]}
    with state.experiment(experiment) as exp:
        exp["pull"] = {"at": time.time(), "local_path": str(dest), "files": data["files"], "bytes": data["bytes"],
                       "source": "store", "paths": list(DEFAULT_PATHS)}
        if isinstance(got["stored_bytes"], (int, float)):
            exp.setdefault("store", {})["bytes"] = int(got["stored_bytes"])
    state.append_event(experiment, "pull", source="store", files=data["files"], bytes=data["bytes"],
                       local_path=str(dest))
    if gone is not None:
        close_gone(gone, got["manifest"], "destroyed by its watchdog once the results store held a verified copy")
    return data


def close_gone(instance_id: int, shipped: dict, why: str) -> None:
    """The instance the watchdog destroyed is destroyed in the state too (its cost to the ledger), dated
    by the store's manifest (written just before the destroy) when it is that instance's."""
    from vasticlaude.ops.reconcile import close_record, write_final_cost
    closed = None
    with state.transaction() as data:
        rec = data["instances"].get(str(instance_id))
        if rec is not None and rec.get("status") != "destroyed":
            mine = str(shipped.get("instance_id") or "") == str(instance_id) and shipped.get("at")
            close_record(rec, float(shipped["at"]) if mine else time.time(), why)
            closed = dict(rec)
    if closed is not None:
        write_final_cost(closed)

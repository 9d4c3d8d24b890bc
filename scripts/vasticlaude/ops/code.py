"""Send the project's code to an instance: git's ignore rules, a space check, setup, a GPU check.

Checkpoints and outputs live beside code/ on the instance, never inside it: a push
cannot delete them. What `push` reports is built here (commands/push.py renders it).
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vasticlaude.core import disk
from vasticlaude.core.fmt import human_bytes
from vasticlaude.errors import API, FAILED, Error
from vasticlaude.ops import costs
from vasticlaude.ops.binding import Bound
from vasticlaude.output import progress, restated
from vasticlaude.remote import ssh, transfer
from vasticlaude.remote.layout import Layout
from vasticlaude.remote.templates import render
from vasticlaude.remote.transfer import file_count, remote, rsync, stat
from vasticlaude.store import config, state

DEFAULT_EXCLUDES = (".git", ".venv/", "venv/", "__pycache__/", ".mypy_cache/", ".pytest_cache/",
                    ".ipynb_checkpoints/", "node_modules/", "*.pyc", ".DS_Store")
PULLED = "/.vasticlaude/runs/"  # results brought home by pull: never sent back, even with --include-heavy
HEADROOM = 0.10
SETUP_TAIL = 5
EXIT_MARK = "@@vasticlaude-exit="


# ----- what to send ------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """rsync filter arguments that leave out what must not be pushed, and how they were made."""

    args: list[str]
    rules: str  # "git" (the repo), "git-index" (a throwaway index), "rsync" (no git)


def default_excludes(root: Path) -> list[str]:
    """The heavy defaults, plus top-level virtualenvs under any name (env/, myenv/ …)."""
    venvs = [f"/{d.name}/" for d in sorted(root.iterdir()) if d.is_dir() and (d / "pyvenv.cfg").is_file()]
    return [*DEFAULT_EXCLUDES, *venvs]


def literal(path: str) -> str:
    """An rsync pattern matching exactly `path` from the transfer root (wildcards escaped)."""
    if any(c in path for c in "*?["):
        path = re.sub(r"([*?\[\\])", r"\\\1", path)
    return "/" + path


def git_lines(argv: list[str], root: Path) -> list[str]:
    proc = subprocess.run(argv, cwd=root, capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        raise Error("git_failed", f"{shlex.join(argv[:4])}… failed: {proc.stderr.decode(errors='replace').strip()}",
                    "Fix the repository, or push a folder outside it.", FAILED)
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def git_ignored(git: list[str], root: Path, patterns: list[str]) -> list[str]:
    """Paths (relative to root; folders end in /) that git's rules leave out."""
    base = [*git, "ls-files", "-z", "--directory", "-i"]
    ignored = git_lines([*base, "-o", "--exclude-standard"], root)
    extra = [f"--exclude={p}" for p in patterns]
    ignored += git_lines([*base, "-c", "-o", "--exclude-per-directory=.vasticlaudeignore", *extra], root)
    return sorted(set(ignored))


def git_command(root: Path, scratch: Path) -> tuple[list[str], str] | None:
    """git for root's own repo, a throwaway index when root is in none, or None without git."""
    if shutil.which("git") is None:
        return None
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=root, capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    if inside.returncode == 0 and inside.stdout.strip() == b"true":
        return ["git"], "git"
    gitdir = scratch / "index.git"
    subprocess.run(["git", "init", "-q", "--bare", str(gitdir)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=60)
    return ["git", f"--git-dir={gitdir}", f"--work-tree={root}"], "git-index"


def selection(root: Path, cfg: dict, heavy: bool, scratch: Path) -> Selection:
    """The filters for this push; `scratch` is a temp folder that must outlive the rsync calls."""
    patterns = [str(p) for p in cfg.get("ignore") or []]
    args = [f"--exclude={p}" for p in [PULLED, *([] if heavy else default_excludes(root))]]
    found = git_command(root, scratch)
    if found is None:
        args += ["--filter=:- .gitignore", "--filter=:- .vasticlaudeignore", *[f"--exclude={p}" for p in patterns]]
        return Selection(args, "rsync")
    git, rules = found
    rules_file = scratch / "excludes"
    rules_file.write_bytes(b"".join(literal(p).encode("utf-8", "surrogateescape") + b"\0"
                                    for p in git_ignored(git, root, patterns)))
    return Selection([*args, "--from0", f"--exclude-from={rules_file}"], rules)


def expected_push_bytes(root: Path, cfg: dict) -> int:
    """What a push of `root` would send (for the estimates), 0 outside a project: a home folder
    is not measured."""
    if not ((root / ".vasticlaude").is_dir() or (root / ".git").exists()):
        return 0
    with tempfile.TemporaryDirectory(prefix="vasticlaude-size-") as scratch:
        try:
            names = transfer.local_list(root, selection(root, cfg, False, Path(scratch)).args)
        except Error:
            return 0
    return sum((root / n).lstat().st_size for n in names if not n.endswith("/") and (root / n).is_file())


# ----- the remote steps ----------------------------------------------------------------------
def prepare(route: ssh.Route, layout: Layout, rented: int | None = None) -> dict:
    """One SSH call: make the folders, see whether rsync is there, read the free disk (the rented
    size when df shows the host's disk: core/disk.py).

    Without rsync the copy goes through tar over ssh (remote/transfer.py): nothing is installed
    into the user's image (that needs root, a package manager and the network, and takes longer
    than the tar)."""
    script = (f"mkdir -p {shlex.quote(layout.code)} {shlex.quote(layout.run)}\n"
              "command -v rsync >/dev/null 2>&1 && echo rsync=yes || echo rsync=no\n"
              "tar --version 2>/dev/null | grep -q GNU && echo gnutar=yes\n"
              + render("disk.sh.j2", rented_kib=(rented or 0) // 1024))
    lines = remote(route, script, "preparing the instance", timeout=600).strip().splitlines()
    found = disk.reading(lines, rented)
    if found is None:
        raise Error("bad_df", f"could not read the free disk of instance {route.instance_id}: {lines[-1:]!r}",
                    "Check 'df -Pk $HOME' on the instance.", API)
    return {"disk_bytes": found["size"], "free_bytes": found["free"], "rsync": "rsync=yes" in lines,
            "gnutar": "gnutar=yes" in lines}


def check_fits(plan: dict, space: dict, instance_id: int) -> None:
    """Refuse before sending when the changed files would not fit with 10% headroom. Sizes are apparent
    sizes: a sparse file is sent sparse, but the job may fill its holes, so it counts whole."""
    usable = space["free_bytes"] * (1 - HEADROOM)
    if plan["to_send"] > usable:
        raise Error("no_space", f"the push needs {human_bytes(plan['to_send'])} on instance {instance_id} but it has "
                    f"{human_bytes(space['free_bytes'])} free of {human_bytes(space['disk_bytes'])} (10% kept free); "
                    "nothing was sent", "Leave big data out (.vasticlaudeignore or the config's \"ignore\"), or rent a "
                    "bigger --disk.", FAILED)


def measure(route: ssh.Route, source: str, dest: str, filters: list[str]) -> dict:
    """A dry run: how many files, their total size, and how much would change."""
    out = rsync(route, [source], dest, ["-az", "--delete", "--dry-run", *filters], "measuring the push")
    return {"files": file_count(out), "bytes_total": stat(out, "Total file size"),
            "to_send": stat(out, "Total transferred file size")}


def setup_command(root: Path, cfg: dict) -> str | None:
    """The config's setup, else pip for requirements.txt or the project itself, else none."""
    if cfg.get("setup"):
        return str(cfg["setup"])
    pip_args = cfg.get("pip_args") or ""
    pip_args = " " + (pip_args if isinstance(pip_args, str) else shlex.join(map(str, pip_args))) if pip_args else ""
    if (root / "requirements.txt").is_file():
        return f"python3 -m pip install -r requirements.txt{pip_args}"
    if (root / "pyproject.toml").is_file() or (root / "setup.py").is_file():
        return f"python3 -m pip install -e .{pip_args}"
    return None


def run_setup(route: ssh.Route, layout: Layout, cmd: str, timeout: float) -> dict:
    """Run setup in code/ (output in run/setup.log); exit code, seconds and the last lines.

    The time limit is enforced on the instance (`timeout`, exit 124), so a slow setup is
    reported as failed instead of being retried like a dropped connection."""
    script = (f'log="$PWD"/{shlex.quote(layout.run)}/setup.log\n'
              f"cd {shlex.quote(layout.code)} || {{ echo {EXIT_MARK}97; exit 0; }}\n"
              f"limit=; command -v timeout >/dev/null 2>&1 && limit='timeout {int(timeout)}'\n"
              f'$limit bash -c {shlex.quote(cmd)} >"$log" 2>&1 </dev/null\n'
              'code=$?\n'
              f'tail -n {SETUP_TAIL} "$log"\n'
              f'echo "{EXIT_MARK}$code"\n')
    restated(f"vasticlaude push: setup: {cmd}")  # the result's setup.command
    start = time.monotonic()
    out = remote(route, script, "setup", timeout=timeout + 120).rstrip("\n").splitlines()
    seconds = round(time.monotonic() - start, 2)
    code = int(out[-1][len(EXIT_MARK):]) if out and out[-1].startswith(EXIT_MARK) else -1
    return {"command": cmd, "exit_code": code, "seconds": seconds, "tail": out[:-1][-SETUP_TAIL:]}


GPU_SCRIPT = ("command -v nvidia-smi >/dev/null 2>&1 || { echo @@no-nvidia-smi; exit 0; }\n"
              "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits\n"
              "echo @@cuda\n"
              "nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | head -n 1\n")


def norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def same_model(rented: str, reported: str) -> bool:
    """Vast's "RTX 4090" is the driver's "NVIDIA GeForce RTX 4090"; "H100 SXM" is "NVIDIA H100 80GB
    HBM3": the whole name, or else every part of it holding a digit, must appear."""
    if norm(rented) in norm(reported):
        return True
    models = [norm(t) for t in re.split(r"[\s_-]+", rented) if re.search(r"\d", t)]
    return bool(models) and all(m in norm(reported) for m in models)


def check_gpu(route: ssh.Route, rented_name: str, rented_count: int) -> tuple[dict, list[str]]:
    """One SSH call: what nvidia-smi sees, compared with what was rented."""
    out = remote(route, GPU_SCRIPT, "the GPU check")
    if "@@no-nvidia-smi" in out:
        gpu = {"name": None, "count": 0, "memory_mb": None, "cuda": None, "matches": False}
        return gpu, ["nvidia-smi is not on the instance: no GPU driver visible (is this a CUDA image?)"]
    rows_text, _, cuda_text = out.partition("@@cuda")
    rows = [[c.strip() for c in line.split(",")] for line in rows_text.strip().splitlines() if line.strip()]
    names = [r[0] for r in rows]
    memory = next((int(float(r[1])) for r in rows if len(r) > 1 and re.match(r"^[\d.]+$", r[1])), None)
    cuda = re.search(r"([0-9][0-9.]*)", cuda_text)
    matches = len(rows) == rented_count and bool(names) and all(same_model(rented_name, n) for n in names)
    gpu = {"name": names[0] if names else None, "count": len(rows), "memory_mb": memory,
           "cuda": cuda.group(1) if cuda else None, "matches": matches}
    warnings = [] if matches else [f"the instance shows {len(rows)}x {gpu['name']} but {rented_count}x "
                                   f"{rented_name} was rented"]
    return gpu, warnings




def send(route: ssh.Route, layout: Layout, root: Path, sel: Selection, scratch: Path,
         check: Callable[[dict], None], rented: int | None = None) -> tuple[dict, int]:
    """Check space (and `check` the plan: the budget), then mirror root into code/; the plan and the bytes sent."""
    space = prepare(route, layout, rented)
    if not space["rsync"]:
        transfer.note_no_rsync(route)
        return send_by_tar(route, layout, root, sel, space, scratch, check)
    source, dest = f"{root}/", f"remote:{layout.code}/"
    plan = measure(route, source, dest, sel.args)
    check_fits(plan, space, route.instance_id)
    check(plan)
    announce(plan, route)
    # --sparse: a file with holes (a preallocated table, a sparse checkpoint) takes only its data on the
    # instance, as at home; without it rsync writes the zeros. (Not with --inplace, which rsync < 3.1.3 refuses.)
    stats = rsync(route, [source], dest, ["-az", "--sparse", "--delete", *sel.args], "pushing the code")
    return plan, stat(stats, "Total bytes sent")


def announce(plan: dict, route: ssh.Route) -> None:
    say = restated if plan.get("rsync", True) else progress  # tar instead of rsync is news the result leaves out
    say(f"vasticlaude push: sending {plan['files']} files ({human_bytes(plan['bytes_total'])}, "
             f"{human_bytes(plan['to_send'])} changed) to instance {route.instance_id}"
             f"{'' if plan.get('rsync', True) else ' with tar (no rsync there)'}")


def send_by_tar(route: ssh.Route, layout: Layout, root: Path, sel: Selection, space: dict,
                scratch: Path, check: Callable[[dict], None]) -> tuple[dict, int]:
    """The same mirror without rsync on the instance: changed files through tar, and what the
    instance has that the project no longer has deleted (what the filters leave out is kept there,
    as rsync --delete keeps excluded files)."""
    names = transfer.local_list(root, sel.args)
    there = transfer.tree(route, layout.code)
    files = [n for n in names if not n.endswith("/")]
    changed = [n for n in files if not transfer.unchanged(root / n, there.get(n))]
    plan = {"files": len(files), "bytes_total": sum((root / n).lstat().st_size for n in files),
            "to_send": sum((root / n).lstat().st_size for n in changed), "rsync": False}
    check_fits(plan, space, route.instance_id)
    check(plan)
    announce(plan, route)
    keep = {n.rstrip("/") for n in names}
    stale = stale_entries({n: k for n, (k, _, _) in there.items() if n not in keep}, sel, scratch)
    sent = transfer.tar_up(route, root, [n for n in names if n.endswith("/")] + changed, layout.code, stale,
                           "pushing the code", sparse=space.get("gnutar", False))
    return plan, sent


def stale_entries(extra: dict[str, str], sel: Selection, scratch: Path) -> list[str]:
    """Of the instance's entries the project lacks (name → type), those the filters do not protect:
    rsync itself decides, on empty stand-ins of them (folders end in /)."""
    if not extra:
        return []
    shadow = scratch / "shadow"
    for name, kind in extra.items():
        path = shadow / name
        if kind == "d":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    listed = {n.rstrip("/") for n in transfer.local_list(shadow, sel.args)}
    return [n + ("/" if extra[n] == "d" else "") for n in extra if n in listed]


def push(bound: Bound, root: Path, include_heavy: bool = False, setup: bool = True,
         setup_timeout: float = 3600.0) -> dict:
    """Mirror `root` into the instance's code/, run setup there, check the GPU; what `push` reports."""
    start = time.monotonic()
    cfg = config.load()
    route, layout = bound.route(), Layout(bound.experiment)
    with tempfile.TemporaryDirectory(prefix="vasticlaude-push-") as scratch:
        sel = selection(root, cfg, include_heavy, Path(scratch))
        check = lambda plan: costs.check_transfer(bound.experiment, bound.record, plan["to_send"], 0,  # noqa: E731
                                                  "this push")
        plan, sent = send(route, layout, root, sel, Path(scratch), check, disk.rented_bytes(bound.row, bound.record))
    data = {"experiment": bound.experiment, "instance_id": bound.instance_id, "files": plan["files"],
            "bytes_total": plan["bytes_total"], "bytes_sent": sent,
            "ignore_rules": sel.rules, "setup": None, "warnings": []}
    cmd = setup_command(root, cfg) if setup else None
    if cmd:
        data["setup"] = run_setup(route, layout, cmd, setup_timeout)
    row = bound.row or {}
    data["gpu"], data["warnings"] = check_gpu(route, str(bound.record.get("gpu_name") or row.get("gpu_name") or ""),
                                              int(bound.record.get("num_gpus") or row.get("num_gpus") or 1))
    data["seconds"] = round(time.monotonic() - start, 2)
    data["exit_code"] = FAILED if data["setup"] and data["setup"]["exit_code"] != 0 else 0
    record(data, root)
    return data


def record(data: dict, root: Path) -> None:
    setup = data["setup"] and {k: data["setup"][k] for k in ("command", "exit_code", "seconds")}
    entry = {"at": time.time(), "instance_id": data["instance_id"], "root": str(root), "files": data["files"],
             "bytes_sent": data["bytes_sent"], "bytes_total": data["bytes_total"], "seconds": data["seconds"],
             "setup": setup, "gpu": data["gpu"]}
    with state.experiment(data["experiment"]) as exp:
        exp["push"] = entry
    state.append_event(data["experiment"], "push", instance_id=data["instance_id"], files=data["files"],
                       bytes_sent=data["bytes_sent"], setup_exit_code=setup["exit_code"] if setup else None,
                       gpu_matches=data["gpu"]["matches"])



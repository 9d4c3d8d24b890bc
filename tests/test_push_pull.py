"""push and pull, run as Claude runs them: `vasticlaude …` subprocesses in a project folder,
against the real sandbox with real ssh and rsync. Each instance test rents with `vasticlaude up`,
inspects the instance over ssh, and ends with `vasticlaude down --all`; the fixture stops
whatever a failing test left (processes, faults, instances). Nothing reaches the internet:
setup commands are local (`python3 -c …`, pip with --no-index and a wheel in the tree).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from vasticlaude.ops import code as push

VC = str(Path(sys.executable).with_name("vasticlaude"))
MB = 1000 * 1000


class User:
    """Runs vasticlaude in a project folder with a throwaway HOME; remembers what it rented."""

    def __init__(self, sim, home: Path, vchome: Path, project: Path):
        self.sim, self.home, self.vchome, self.project = sim, home, vchome, project
        self.ssh_info: dict = {}

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = self.sim.env(HOME=str(self.home), VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05")
        return subprocess.run([VC, *args], capture_output=True, text=True, env=env, cwd=cwd or self.project,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def json(self, *args: str, rc: int = 0, cwd: Path | None = None) -> tuple[dict, str]:
        """The envelope's data (or error) and stderr; asserts the exit code."""
        proc = self.run(*args, "--json", cwd=cwd)
        assert proc.returncode == rc, f"{' '.join(args)}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        env = json.loads(proc.stdout)
        return (env["data"] if env["data"] is not None else env["error"]), proc.stderr

    def up(self, experiment: str, disk: str = "8") -> dict:
        data, _ = self.json("up", "--experiment", experiment, "--image", "vastai/base:0.0.2", "--disk", disk,
                            "--hours", "1")
        self.ssh_info = {**data["ssh"], "key": str(self.vchome / "ssh" / "id_ed25519")}  # the key `up` made
        return data

    def ssh(self, command: str) -> str:
        s = self.ssh_info
        proc = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", s["key"], "-p",
                               str(s["port"]), f"root@{s['host']}", command],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"ssh {command!r}: {proc.returncode} {proc.stderr}"
        return proc.stdout

    def remote_tree(self, folder: str) -> set[str]:
        """Every file, folder and symlink under ~/<folder> on the instance."""
        out = self.ssh(f"cd {shlex.quote(folder)} && find . -mindepth 1 -print0")
        return {p[2:] for p in out.split("\0") if p}

    def down(self) -> None:
        data, _ = self.json("down", "--all")
        assert not data["failed"]

    def experiment(self, name: str) -> dict:
        return json.loads((self.vchome / "experiments" / name / "experiment.json").read_text())


@pytest.fixture
def user(sim, tmp_path: Path):
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    me = User(sim, home, Path(os.environ["VASTICLAUDE_HOME"]), project)
    try:
        yield me
    finally:
        sim.reset()


# ----- trees -----------------------------------------------------------------------------------
def write(root: Path, rel: str, data: bytes | str = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True, stdin=subprocess.DEVNULL)


def ignore_tree(root: Path, config: dict | None = None) -> None:
    """A project exercising every ignore source, with spaces, odd names and symlinks."""
    write(root, ".gitignore", "*.log\n!keep.log\n/build/\ndata/\na\\*b.txt\n")
    write(root, "sub/.gitignore", "secret*\n")
    write(root, ".vasticlaudeignore", "notes/\nsub/draft.py\n")
    for rel in ("main.py", "keep.log", "sub/keep.log", "sub/ok.py", "my data/file one.txt", "odd [1] *.txt", "aXb.txt",
                # ignored by .gitignore (all levels, a negation), .vasticlaudeignore, the config, the defaults
                "a*b.txt", "run.log", "sub/deep/x.log", "build/out.o", "data/big.bin", "sub/secret.key",
                "sub/deep/secret2", "notes/todo.md", "sub/draft.py", "scratch.tmpdata", ".venv/lib/site.py",
                "env/pyvenv.cfg",
                "__pycache__/m.cpython-311.pyc", "sub/__pycache__/ok.cpython-311.pyc", "stray.pyc",
                ".vasticlaude/runs/old/outputs/r.txt"):
        write(root, rel, rel)
    (root / "link to main.py").symlink_to("main.py")
    (root / "sub link").symlink_to("sub")
    write(root, ".vasticlaude/config.json", json.dumps(config or {"ignore": ["*.tmpdata"]}))


SENT = {".gitignore", ".vasticlaudeignore", "main.py", "keep.log", "sub", "sub/.gitignore", "sub/keep.log",
        "sub/ok.py", "aXb.txt", "my data", "my data/file one.txt", "odd [1] *.txt", "link to main.py", "sub link",
        ".vasticlaude", ".vasticlaude/config.json"}


def wheel(root: Path) -> None:
    """A tiny wheel in the tree, so pip can install offline from requirements.txt."""
    with zipfile.ZipFile(root / "tinypkg-0.1-py3-none-any.whl", "w") as z:
        z.writestr("tinypkg/__init__.py", "X = 1\n")
        z.writestr("tinypkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n")
        z.writestr("tinypkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr("tinypkg-0.1.dist-info/RECORD", "")
    write(root, "requirements.txt", "./tinypkg-0.1-py3-none-any.whl\n")


# ----- ignore rules, locally (no instance) ---------------------------------------------------------
def local_push(root: Path, dest: Path, cfg: dict, tmp: Path, heavy: bool = False) -> set[str]:
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        sel = push.selection(root, cfg, heavy, Path(scratch))
        subprocess.run(["rsync", "-a", "--delete", *sel.args, f"{root}/", f"{dest}/"], check=True)
    return {str(p.relative_to(dest)) for p in dest.rglob("*")}


@pytest.mark.unit
def test_ignore_rules_follow_git_in_a_repo_outside_one_and_without_git(tmp_path, monkeypatch):
    cfg = {"ignore": ["*.tmpdata"]}
    repo = tmp_path / "repo"
    ignore_tree(repo)
    git(repo, "init", "-q")
    write(repo, "data/README.md", "tracked despite data/ being ignored")
    git(repo, "add", "-f", "data/README.md")
    assert local_push(repo, tmp_path / "a", cfg, tmp_path) == SENT | {"data", "data/README.md"}

    plain = tmp_path / "plain"  # not a repository: git's rules through a throwaway index
    ignore_tree(plain)
    assert local_push(plain, tmp_path / "b", cfg, tmp_path) == SENT

    heavy = local_push(plain, tmp_path / "c", cfg, tmp_path, heavy=True)
    assert {".venv/lib/site.py", "env/pyvenv.cfg", "stray.pyc"} <= heavy and not any("runs" in p for p in heavy)

    monkeypatch.setattr(push.shutil, "which", lambda name: None if name == "git" else "/usr/bin/" + name)
    assert push.selection(plain, cfg, False, tmp_path).rules == "rsync"
    # rsync's dir-merge has no !negation: keep.log is the documented difference
    # (and it keeps sub/deep/ as an empty folder where git drops a folder whose files are all ignored)
    assert local_push(plain, tmp_path / "d", cfg, tmp_path) == SENT - {"keep.log", "sub/keep.log"} | {"sub/deep"}


@pytest.mark.unit
def test_tar_without_rsync_takes_a_file_gone_mid_read_as_rsync_takes_it(tmp_path):
    """A file that goes while tar reads (CI saw the watchdog's heartbeat.tmp renamed away: "Cannot
    stat", tar exit 2, the pull failed) is a warning, not a failed pull; the rest still comes. The
    instance's side of tar_down, run by bash and GNU tar here; a name that does not exist stands in
    for the file gone between the folder's listing and its stat."""
    import subprocess
    from vasticlaude.remote import transfer
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "exit_code").write_text("0\n")
    script = transfer.tar_create(str(tmp_path), ["run", "run/heartbeat.tmp"])
    made = subprocess.run(["bash", "-c", f"set -o pipefail; ( {script}\n) | tar -tf -"],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0 and "./run/exit_code" in made.stdout.split(), made.stderr
    assert "Cannot stat" in made.stderr  # said, as rsync says a vanished file


# ----- push ------------------------------------------------------------------------------------
def test_push_honours_ignores_runs_setup_and_checks_the_gpu(user):
    ignore_tree(user.project, {"ignore": ["*.tmpdata"], "setup": "python3 -c 'print(40 + 2)'"})
    git(user.project, "init", "-q")
    up = user.up("push1")
    pushed, said = user.json("push")
    assert said == "" and "seconds" not in pushed and "exit_code" not in pushed  # --json: the result says them
    assert pushed["experiment"] == "push1" and pushed["instance_id"] == up["instance_id"]
    assert pushed["ignore_rules"] == "git" and pushed["files"] == 13  # regular files + symlinks
    assert pushed["setup"]["exit_code"] == 0 and pushed["setup"]["tail"] == ["42"]
    gpu = pushed["gpu"]
    assert gpu["matches"] and "count" not in gpu and up["gpu_name"] in gpu["name"] and gpu["cuda"]
    assert "warnings" not in pushed  # --json leaves out what is empty

    assert user.remote_tree("vasticlaude/push1/code") == SENT  # nothing ignored reached the instance
    assert user.ssh("cd vasticlaude/push1/code && readlink 'link to main.py' && cat 'my data/file one.txt'") == \
        "main.py\nmy data/file one.txt"
    assert user.ssh("cat vasticlaude/push1/run/setup.log") == "42\n"
    rec = user.experiment("push1")["push"]
    assert rec["files"] == 13 and rec["setup"]["command"].startswith("python3") and rec["gpu"]["matches"]
    assert rec["seconds"] > 0

    (user.project / "sub" / "ok.py").unlink()  # --delete mirrors removals
    state_file = user.vchome / "instances.json"  # pretend an H100 was rented: a warning, not a failure
    state = json.loads(state_file.read_text())
    state["instances"][str(up["instance_id"])]["gpu_name"] = "H100 SXM"
    state_file.write_text(json.dumps(state))
    pushed, _ = user.json("push", "--no-setup")
    assert "setup" not in pushed and "sub/ok.py" not in user.remote_tree("vasticlaude/push1/code")
    assert not pushed["gpu"]["matches"] and "H100 SXM" in pushed["warnings"][0]
    user.down()


def test_second_push_of_an_unchanged_tree_sends_deltas_only(user):
    for i in range(10):
        write(user.project, f"weights/part {i}.bin", os.urandom(5 * MB))
    write(user.project, "train.py", "print('hi')\n")
    user.up("delta")
    first, _ = user.json("push", "--no-setup")
    assert first["bytes_total"] >= 50 * MB and first["bytes_sent"] >= 50 * MB  # random bytes do not compress
    second, _ = user.json("push", "--no-setup")
    assert second["bytes_total"] == first["bytes_total"] and second["bytes_sent"] < 0.01 * second["bytes_total"]
    third = user.run("push", "--no-setup")  # a person is told at once what is being sent
    assert third.returncode == 0 and "vasticlaude push: sending 11 files (" in third.stderr, third.stderr
    user.down()


def test_push_that_does_not_fit_is_refused_before_sending(user):
    with open(user.project / "huge.bin", "wb") as f:  # 80 MB, sparse: cheap to make, counts in full
        f.truncate(80 * MB)
    write(user.project, "train.py", "print('hi')\n")
    user.up("tiny", disk="0.05")
    err, _ = user.json("push", rc=1)
    assert err["code"] == "no_space" and "80.0 MB" in err["message"] and "free of" in err["message"]
    assert user.remote_tree("vasticlaude/tiny/code") == set()  # nothing was sent
    user.down()


def test_default_setup_uses_requirements_offline_and_a_failing_setup_exits_1(user):
    wheel(user.project)
    write(user.project, "train.py", "import tinypkg\n")
    write(user.project, ".vasticlaude/config.json",
          json.dumps({"pip_args": "--no-index --disable-pip-version-check --target .deps"}))
    user.up("setup")
    if "pip" not in user.ssh("python3 -m pip --version 2>&1 || true"):
        user.down()
        pytest.skip("the sandbox's python3 has no pip")
    pushed, _ = user.json("push")
    setup = pushed["setup"]
    assert setup["command"] == ("python3 -m pip install -r requirements.txt --no-index "
                                "--disable-pip-version-check --target .deps")
    assert setup["exit_code"] == 0 and any("tinypkg" in line for line in setup["tail"]), setup
    assert "tinypkg" in user.ssh("ls vasticlaude/setup/code/.deps")

    write(user.project, ".vasticlaude/config.json", json.dumps({"setup": "echo boom >&2; exit 3"}))
    failed, _ = user.json("push", rc=1)
    assert failed["setup"]["exit_code"] == 3 and failed["setup"]["tail"] == ["boom"] and failed["files"] == 4

    write(user.project, ".vasticlaude/config.json", json.dumps({"setup": "echo slow; sleep 30"}))
    slow, _ = user.json("push", "--setup-timeout", "1", rc=1)
    assert slow["setup"]["exit_code"] == 124 and slow["setup"]["tail"] == ["slow"] and slow["setup"]["seconds"] < 10
    user.down()


# ----- pull ------------------------------------------------------------------------------------
MAKE_RESULTS = """set -e
cd vasticlaude/{exp}
mkdir -p outputs/'sub dir' checkpoints run code
head -c 3000000 /dev/urandom > outputs/'sub dir/pic 1.png'
echo '{{"acc": 0.93}}' > outputs/metrics.json
head -c 5000000 /dev/urandom > checkpoints/step_100.pt
echo 'epoch 1 done' > run/job.log; echo 0 > run/exit_code
echo 'a,b' > code/results.csv
"""


def same_bytes(user: User, local: Path, remote_rel: str) -> bool:
    digest = user.ssh(f"sha256sum {shlex.quote(remote_rel)}").split()[0]
    return hashlib.sha256(local.read_bytes()).hexdigest() == digest


def test_pull_is_byte_identical_leaves_the_marker_and_names_missing_paths(user):
    write(user.project, "train.py", "print('hi')\n")
    git(user.project, "init", "-q")
    user.up("pull1")
    user.json("push", "--no-setup")
    user.ssh(MAKE_RESULTS.format(exp="pull1"))
    before = time.time()
    pulled, _ = user.json("pull")
    dest = user.project / ".vasticlaude" / "runs" / "pull1"
    assert pulled["local_path"] == str(dest) and pulled["verified"] is True
    assert pulled["paths"] == ["outputs", "checkpoints", "run"] and pulled["files"] == 5
    assert pulled["bytes"] == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    for rel in ("outputs/sub dir/pic 1.png", "outputs/metrics.json", "checkpoints/step_100.pt", "run/job.log"):
        assert same_bytes(user, dest / rel, f"vasticlaude/pull1/{rel}"), rel
    assert before - 2 <= int(user.ssh("cat vasticlaude/pull1/run/pulled")) <= time.time() + 2
    assert not (dest / "run" / "pulled").exists()
    assert user.experiment("pull1")["pull"]["files"] == 5

    other = user.project.parent / "elsewhere"
    picked, _ = user.json("pull", "--path", "code/results.csv", "--dest", str(other))
    assert picked["files"] == 1 and (other / "code" / "results.csv").read_text() == "a,b\n"

    err, _ = user.json("pull", "--path", "outputs/nope.bin", rc=1)
    assert err["code"] == "missing_path" and "outputs/nope.bin" in err["message"]
    user.down()


def test_pull_survives_dropped_connections_and_a_running_job(user, sim):
    write(user.project, "train.py", "print('hi')\n")
    up = user.up("pull2")
    user.json("push", "--no-setup")
    user.ssh(MAKE_RESULTS.format(exp="pull2"))
    sim.fault("ssh-drop", instance=up["instance_id"], refuse=2)
    pulled, stderr = user.json("pull")
    assert pulled["verified"] and pulled["files"] == 5 and "retrying" in stderr
    dest = Path(pulled["local_path"])
    assert same_bytes(user, dest / "checkpoints/step_100.pt", "vasticlaude/pull2/checkpoints/step_100.pt")

    # a job still writing: new checkpoints come incrementally, a growing log is not a failure
    user.ssh("cd vasticlaude/pull2 && setsid nohup sh -c 'for i in $(seq 1 30); do echo step $i >> run/job.log; "
             "head -c 200000 /dev/urandom > checkpoints/step_$i.pt; sleep 0.1; done; echo 0 > run/done' "
             ">/dev/null 2>&1 </dev/null &")
    live, _ = user.json("pull")
    assert live["verified"] and live["files"] >= 6
    deadline = time.time() + 20
    while "done" not in user.ssh("ls vasticlaude/pull2/run") and time.time() < deadline:
        time.sleep(0.2)
    final, _ = user.json("pull")
    assert final["files"] == 5 + 30 + 1 and final["changing"] == []
    for i in (1, 30):
        assert same_bytes(user, dest / f"checkpoints/step_{i}.pt", f"vasticlaude/pull2/checkpoints/step_{i}.pt")
    user.down()

"""Hardening (issue 13), through the real parts: the launcher, the CLI, the sandbox, ssh and rsync.

1. the project's files never shadow vasticlaude's imports (launcher, sandbox start);
2. push refuses a PATH outside the project (after symlinks); symlinks inside stay symlinks;
3. every --experiment is checked like a label (no '/', no '..') before anything is written;
4. numeric flags are positive, finite and bounded (usage error naming the flag);
5. down under a failing API names what may still bill (exit 4, never 3);
6. up's --budget-usd is the budget a later run's watchdog enforces;
7. the watchdog's hard stop lands at the budget even for a job that ignores SIGTERM.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_lifecycle import IMAGE, Cli, charged, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME
from test_plugin import plugin_data  # noqa: F401 — the session's launcher env (built once per run)
from test_watchdog import pricey, rent, run_file, ssh, start, wait_state  # noqa: F401 — `pricey`: a $36/h market

from vasticlaude.core import budget
from vasticlaude.sim.client import kill_containers, python_m, read_info, stop_background
from vasticlaude.store import state

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "scripts" / "vc"
VC = str(Path(sys.executable).with_name("vasticlaude"))
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: refused at once, so nothing can be rented


def envelope(proc: subprocess.CompletedProcess) -> dict:
    found = json.loads(proc.stdout)
    assert found["v"] == 1 and found["ok"] == (proc.returncode == 0), proc.stdout + proc.stderr
    return found


def offline_env(tmp_path: Path, **extra: str) -> dict:
    """A user whose Vast is unreachable: a command that gets past its parser fails there, renting nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "CLAUDE"))}
    env.update(HOME=str(tmp_path / "home"), VASTICLAUDE_HOME=str(tmp_path / "x" / "vchome"), VAST_URL=UNREACHABLE,
               VAST_API_KEY="k" * 64, VASTAI_NO_UPDATE_CHECK="1", VASTICLAUDE_POLL_SCALE="0.01", **extra)
    return env


# ----- 1. the project never shadows vasticlaude's imports ---------------------------------------
HOSTILE = "open({marker!r}, 'a').write(__name__ + '\\n')\nraise SystemExit('imported the project\\'s {name}')\n"


def hostile_project(tmp_path: Path) -> tuple[Path, Path]:
    project, marker = tmp_path / "project", tmp_path / "IMPORTED"
    (project / ".vasticlaude").mkdir(parents=True)
    for name in ("secrets", "json", "state"):
        (project / f"{name}.py").write_text(HOSTILE.format(marker=str(marker), name=name))
    return project, marker


def launcher_data(tmp_path: Path) -> Path:
    """A plugin data folder whose env is this test's interpreter (the launcher's fast path: no build)."""
    data = tmp_path / "plugin-data"
    (data / "venv" / "bin").mkdir(parents=True)
    python = data / "venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (data / "venv" / ".vc-deps").write_text("test\n")
    return data


def test_the_projects_files_never_shadow_vasticlaudes_imports(tmp_path):
    project, marker = hostile_project(tmp_path)
    vchome = tmp_path / "vchome"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "CLAUDE"))}
    env.update(HOME=str(tmp_path), VASTICLAUDE_HOME=str(vchome), CLAUDE_PLUGIN_DATA=str(launcher_data(tmp_path)),
               VASTAI_NO_UPDATE_CHECK="1", VASTICLAUDE_SIM_TIME_SCALE="0")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=project, timeout=120,
                              stdin=subprocess.DEVNULL)
    try:
        cost = run(str(LAUNCHER), "cost", "--json")
        assert cost.returncode == 0 and envelope(cost)["ok"], cost.stdout + cost.stderr
        assert not marker.exists(), f"the launcher imported {marker.read_text().split()}"
        # The sandbox is started by `offers --sandbox` from the project: it must not import it either,
        # whether started through the launcher or the console script.
        for argv in ([str(LAUNCHER), "offers", "--sandbox", "--limit", "2", "--json"],
                     [VC, "offers", "--sandbox", "--limit", "2", "--json"]):
            offers = run(*argv)
            assert offers.returncode == 0 and envelope(offers)["data"]["candidates"], offers.stdout + offers.stderr
            assert not marker.exists(), f"{argv[0]}: imported {marker.read_text().split()}"
            info = read_info(vchome / "sim")
            assert info and Path(f"/proc/{info['pid']}/cwd").resolve() != project
            stop_background(vchome / "sim")
    finally:
        info = read_info(vchome / "sim")
        stop_background(vchome / "sim")
        if info:
            kill_containers(info.get("marker", ""))


# ----- 2. push stays inside the project ---------------------------------------------------------
def test_push_refuses_a_path_outside_the_project_and_keeps_symlinks_inside(cli, sim, tmp_path):
    project = tmp_path / "proj"
    (project / ".vasticlaude").mkdir(parents=True)
    (project / "train.py").write_text("print('hi')\n")
    (project / "etc_link").symlink_to("/etc")  # inside the tree: sent as a symlink, never followed
    (project / "d").symlink_to("/etc")         # as PATH: a folder outside the project
    cli.cwd = project
    iid = cli.json("up", "--experiment", "sy", "--image", IMAGE, "--disk", "8")["instance_id"]
    cli.json("push", "--experiment", "sy", "--no-setup")
    code = sim.state / "instances" / str(iid) / "root" / "vasticlaude" / "sy" / "code"
    assert (code / "train.py").is_file()
    assert (code / "etc_link").is_symlink() and os.readlink(code / "etc_link") == "/etc"

    for path in ("d", "/etc", "..", str(tmp_path)):
        proc = cli.run("push", path, "--experiment", "sy", "--no-setup", "--json")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        error = envelope(proc)["error"]
        assert error["code"] == "outside_project" and "outside the project" in error["message"], error
        assert "\n" not in error["message"] and error["hint"]
    assert (code / "train.py").is_file() and not (code / "shadow").exists() and not (code / "passwd").exists()
    sub = project / "sub"
    sub.mkdir()
    (sub / "x.txt").write_text("x")
    cli.json("push", "sub", "--experiment", "sy", "--no-setup")  # a folder inside the project is fine
    assert (code / "x.txt").is_file()
    cli.json("down", "--experiment", "sy")


# ----- 3. --experiment is a label, never a path -------------------------------------------------
EXPERIMENT_COMMANDS = [("watch",), ("status",), ("logs",), ("pull",), ("push",), ("recover",), ("report",),
                       ("cost",), ("down",), ("up",), ("run", "--", "true")]


@pytest.mark.parametrize("argv", EXPERIMENT_COMMANDS, ids=lambda a: a[0])
def test_every_experiment_flag_refuses_a_path(argv, tmp_path):
    env = offline_env(tmp_path)
    cmd, rest = argv[0], list(argv[1:])
    proc = subprocess.run([VC, cmd, "--json", "--experiment", "../../etc", *rest], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = envelope(proc)["error"]
    assert error["code"] == "usage" and "--experiment" in error["message"] and "'../../etc'" in error["message"]
    outside = [p for p in tmp_path.rglob("*") if "etc" in p.name]
    assert outside == [], f"{cmd} wrote outside the home: {outside}"


# ----- 4. numbers ---------------------------------------------------------------------------------
BAD_NUMBERS = [
    ("up", "--hours", "-5", "--budget-usd", "0.01"), ("up", "--hours", "0"), ("up", "--hours", "1e9"),
    ("up", "--disk", "0"), ("up", "--disk", "-3"), ("up", "--budget-usd", "-1"), ("up", "--deadline", "inf"),
    ("up", "--interruptible", "--bid", "-0.1"), ("up", "--max-attempts", "0"), ("offers", "--max-dph", "0"),
    ("offers", "--disk", "nan"), ("offers", "--min-reliability", "1.5"), ("offers", "--limit", "0"),
    ("offers", "--num-gpus", "-1"), ("run", "--budget-usd", "0", "--", "true"), ("run", "--grace", "-1", "--", "true"),
    ("run", "--kill-grace", "-60", "--", "true"), ("run", "--check", "0", "--", "true"),
    ("run", "--max-hours", "-1", "--", "true"), ("watch", "--interval", "0"), ("watch", "--sync-interval", "-1"),
    ("status", "--interval", "-1"), ("status", "--timeout", "0"), ("logs", "--lines", "-1"),
    ("cost", "--daily-usd", "-1"), ("cost", "--experiment-hours", "0"), ("recover", "--max-bid", "0"),
    ("recover", "--preempt-wait", "-5"), ("recover", "--disk", "0"), ("push", "--setup-timeout", "0"),
    ("down", "-7"),
]


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=" ".join)
def test_a_bad_number_is_a_usage_error_naming_its_flag(argv, tmp_path):
    proc = subprocess.run([VC, *argv[:1], "--json", *argv[1:]], capture_output=True, text=True,
                          env=offline_env(tmp_path), cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = envelope(proc)["error"]
    flag = next((a for a in argv[1:] if a.startswith("--") and a not in ("--interruptible", "--")), "ID")
    assert error["code"] == "usage" and flag in error["message"], error


def test_negative_hours_never_rent_past_the_budget(cli, sim):
    proc = cli.run("up", "--experiment", "neg", "--image", IMAGE, "--disk", "8", "--hours", "-5",
                   "--budget-usd", "0.01", "--json")
    assert proc.returncode == 2 and "--hours" in envelope(proc)["error"]["message"], proc.stdout + proc.stderr
    assert cli.account() == []
    ok = cli.json("offers", "--disk", "0.5", "--hours", "0.25", "--min-reliability", "0")  # small is not zero
    assert ok["candidates"]


# ----- 5. down under a failing API ----------------------------------------------------------------
def test_down_of_recorded_instances_under_a_failing_api_is_exit_4_naming_them(cli, sim):
    iid = cli.json("up", "--experiment", "flaky", "--image", IMAGE, "--disk", "8")["instance_id"]
    sim.fault("http", status=503, count=10_000)
    for argv in (("down", "--experiment", "flaky"), ("down", str(iid))):
        proc = cli.run(*argv, "--json")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        data = envelope(proc)
        assert [f["id"] for f in data["data"]["failed"]] == [iid]
        assert str(iid) in data["error"]["message"] and f"down {iid}" in data["error"]["hint"]
    sim.admin("DELETE", "/sim/faults")
    assert [d["id"] for d in cli.json("down", "--experiment", "flaky")["destroyed"]] == [iid]


# ----- 6. up's budget is the watchdog's -----------------------------------------------------------
def test_ups_budget_is_the_budget_of_a_later_run(cli, sim):
    iid = cli.json("up", "--experiment", "capped", "--image", IMAGE, "--disk", "8", "--budget-usd", "0.75")["instance_id"]
    assert state.read_experiment("capped")["budget_usd"] == 0.75
    data = json.loads(cli.run("run", "--json", "--experiment", "capped", "--workdir", ".", "--", "sleep", "30").stdout)
    assert data["ok"], data
    guard = data["data"]["guard"]
    assert guard["watchdog"] and guard["budget_usd"] == 0.75, guard
    assert "budget=0.750000" in run_file(sim, iid, "capped", "watchdog.log")
    cli.json("down", "--experiment", "capped")


# ----- 7. the budget is a ceiling ---------------------------------------------------------------
IGNORES_SIGTERM = r'''
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(0.1)
'''


def test_a_job_that_ignores_sigterm_is_stopped_at_the_budget(pricey, monkeypatch):
    cli, sim = pricey, pricey.sim
    monkeypatch.setenv("VASTICLAUDE_HOME", str(cli.vchome))
    up = rent(cli, "stubborn")
    iid = up["instance_id"]
    ssh(up, "cat > stubborn.py", IGNORES_SIGTERM).check_returncode()
    cap = round(budget.experiment_spent("stubborn", state.load()) + 0.15, 4)  # ~15 s more at 1 cent a second
    data = start(cli, "stubborn", "--budget-usd", str(cap), "--check", "1", "--kill-grace", "10", "--grace", "60",
                 "--", "python3", "stubborn.py")
    assert data["guard"]["budget_usd"] == cap and state.read_experiment("stubborn")["guard"]["kill_grace_s"] == 10
    wait_state(sim, iid, "stubborn", {"stopped"}, 60)
    time.sleep(1.2)  # the sandbox bills once a second: let the last second land
    actual = charged(sim, iid)
    # Before: SIGTERM at the budget, SIGKILL 10 s ($0.10) later. Now the SIGKILL lands at the budget,
    # give or take one check interval and one billed second.
    assert cap - 0.07 <= actual <= cap + 36.0 * 2 / 3600, (actual, cap)
    log = run_file(sim, iid, "stubborn", "watchdog.log")
    assert "kill grace early" in log and "outlived the 10 s kill grace: SIGKILL" in log and "stop the instance" in log
    again = cli.run("run", "--experiment", "stubborn", "--", "true")  # not even one kill grace is left
    assert again.returncode == 1 and "kill grace" in again.stderr, again.stderr


# ----- 4b. two `up`s at once on one experiment --------------------------------------------------
def test_ups_at_once_on_one_experiment_rent_once(cli, sim):
    """Before: 3 of 5 pairs rented twice, 8 at once gave 2 instances, all exit 0."""
    procs = [cli.spawn("up", "--experiment", "twice", "--image", IMAGE, "--disk", "8", "--json") for _ in range(6)]
    outs = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    assert codes.count(0) == 1 and set(codes) <= {0, 1}, outs
    refused = [json.loads(out)["error"]["code"] for code, out, _ in outs if code == 1]
    assert set(refused) <= {"experiment_busy"}, refused
    assert [r["label"] for r in cli.account()] == ["vasticlaude-twice"]


# ----- 13. an error line is printed as written --------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("message,hint,line", [
    ("cannot read ../x/config.json", "Fix ../x first.", "vc: cannot read ../x/config.json. Fix ../x first."),
    ("waited... then gave up.", "", "vc: waited... then gave up."),
    ("no key", "Run vasticlaude doctor..", "vc: no key. Run vasticlaude doctor."),
])
def test_an_error_line_keeps_its_dots(message, hint, line, capsys, monkeypatch):
    from vasticlaude import output
    from vasticlaude.errors import Error
    monkeypatch.delenv("VASTICLAUDE_LAUNCHER", raising=False)
    assert output.fail(Error("x", message, hint), as_json=False, prog="vc") == 1
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.unit
def test_a_failed_commands_line_under_json_keeps_its_dots(tmp_path):
    proc = subprocess.run([VC, "push", "--json", "../outside", "--experiment", "e"], capture_output=True, text=True,
                          env=offline_env(tmp_path), cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "../outside" in envelope(proc)["error"]["message"], proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # said once, in the envelope
    human = subprocess.run([VC, "push", "../outside", "--experiment", "e"], capture_output=True, text=True,
                           env=offline_env(tmp_path), cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert human.returncode == 2 and "push: ../outside is not a folder. " in human.stderr, human.stderr


# ----- sim's numeric flags ------------------------------------------------------------------------
BAD_SIM_NUMBERS = [
    ("start", "--time-scale", "-1"), ("start", "--time-scale", "nan"), ("serve", "--balance", "inf"),
    ("start", "--balance", "-5"), ("start", "--machines", "0"), ("start", "--port", "-1"), ("start", "--port", "70000"),
    ("start", "--seed", "-3"), ("start", "--idle-exit", "-1"), ("fault", "http", "--count", "-1"),
    ("fault", "http", "--rate", "1.5"), ("fault", "http", "--rate", "nan"), ("fault", "http", "--status", "-429"),
    ("fault", "http", "--retry-after", "-1"), ("fault", "slow", "--delay", "inf"), ("fault", "host-down", "--seconds", "-2"),
    ("fault", "preempt", "--bid", "-0.1"), ("fault", "balance", "--set", "-1"), ("fault", "balance", "--add", "nan"),
    ("fault", "ssh-drop", "--refuse", "-1"), ("fault", "preempt", "--instance", "0"), ("fault", "x", "--offer", "-1"),
]


@pytest.mark.parametrize("argv", BAD_SIM_NUMBERS, ids=" ".join)
def test_a_bad_sim_number_is_a_usage_error_naming_its_flag(argv, tmp_path):
    env = offline_env(tmp_path)
    try:
        proc = subprocess.run([VC, "sim", *argv, "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=60, stdin=subprocess.DEVNULL)
    finally:  # before the fix, `sim start` started a sandbox with the bad value
        stop_background(Path(env["VASTICLAUDE_HOME"]) / "sim")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = envelope(proc)["error"]
    flag = next(a for a in argv if a.startswith("--"))
    assert error["code"] == "usage" and flag in error["message"], error
    assert proc.stderr.strip() == "", proc.stderr  # under --json the error is said once, in the envelope
    assert not (Path(env["VASTICLAUDE_HOME"]) / "sim").exists()  # refused before any sandbox started


# ----- 11. contention is not failure --------------------------------------------------------------
def test_an_offer_that_vanished_is_not_a_failed_machine(cli, sim):
    first = cli.json("offers", "--disk", "8")["candidates"][0]
    sim.fault("offer-vanish", offer=first["offer_id"])
    up = cli.json("up", "--experiment", "vanish", "--image", IMAGE, "--disk", "8")
    failed = up["attempts"][0]
    assert (failed["offer_id"], failed["outcome"]) == (first["offer_id"], "failed") and "not available" in failed["reason"]
    assert cli.state().get("failed_machines", []) == []
    cli.json("down", "--experiment", "vanish")


def test_offers_taken_by_sibling_ups_are_not_failed_machines(cli, sim):
    """Sibling `up`s pick the same best offer; the creates are slowed so all of them search before any rents.
    The losers get 404 no_such_ask and fail over. Before: each loser's machine was skipped for 7 days."""
    sim.fault("slow", delay=1.0, count=None, path="asks", method="PUT")
    try:
        procs = [cli.spawn("up", "--experiment", f"sib{i}", "--image", IMAGE, "--disk", "8", "--json") for i in range(3)]
        outs = [cli.finish(p, timeout=180) for p in procs]
    finally:
        sim.admin("DELETE", "/sim/faults")
    try:
        assert [code for code, _, _ in outs] == [0, 0, 0], outs
        attempts = [a for _, out, _ in outs for a in json.loads(out)["data"].get("attempts", [])]
        taken = [a for a in attempts if a["outcome"] == "failed"]
        assert taken and all("not available" in a["reason"] for a in taken), attempts  # contention happened
        assert cli.state().get("failed_machines", []) == []
    finally:
        cli.json("down", "--all")


# ----- 14. sparse files stay sparse ---------------------------------------------------------------
def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.write(b"head")
        handle.truncate(size)  # a hole: `size` bytes long, a few KB on disk
    return path


@pytest.mark.parametrize("tools", ["rsync", "tar"])
def test_a_sparse_file_stays_sparse_and_counts_whole_against_the_disk(tools, cli, sim, tmp_path):
    project = tmp_path / "proj"
    (project / ".vasticlaude").mkdir(parents=True)
    sparse(project / "table.img", 64 * 2 ** 20)
    cli.cwd = project
    iid = cli.json("up", "--experiment", f"sparse-{tools}", "--image", IMAGE, "--disk", "1")["instance_id"]
    try:
        if tools == "tar":
            sim.fault("image-minimal", instance=iid, tools="rsync")
        pushed = cli.json("push", "--experiment", f"sparse-{tools}", "--no-setup")
        assert pushed["bytes_total"] >= 64 * 2 ** 20 and pushed["bytes_sent"] < 2 ** 20, pushed
        there = sim.state / "instances" / str(iid) / "root" / "vasticlaude" / f"sparse-{tools}" / "code" / "table.img"
        assert there.stat().st_size == 64 * 2 ** 20 and there.stat().st_blocks * 512 < 2 ** 20, there.stat()
        # The disk check counts what the file may grow into (its apparent size): 2 GB on a 1 GB disk is refused.
        sparse(project / "huge.img", 2 * 2 ** 30)
        proc = cli.run("push", "--experiment", f"sparse-{tools}", "--no-setup", "--json")
        assert proc.returncode == 1 and envelope(proc)["error"]["code"] == "no_space", proc.stdout + proc.stderr
        assert not there.with_name("huge.img").exists()
    finally:
        sim.admin("DELETE", "/sim/faults")
        cli.json("down", "--experiment", f"sparse-{tools}")


# ----- 15. the launcher's env runs its own programs -----------------------------------------------
def test_the_launchers_env_runs_its_programs(plugin_data):
    """The env is built where it stays: the scripts in its bin/ (`vastai`, `pip`) run, their `#!` names
    the env's own python, not a temporary folder it was built in and moved from."""
    venv = plugin_data["dir"] / "venv"
    for program in ("vastai", "pip"):
        script = venv / "bin" / program
        first = script.read_text(errors="replace").splitlines()[0]
        assert first.startswith(f"#!{venv}/bin/python") or first.startswith("#!/bin/sh"), first
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "VASTAI_NO_UPDATE_CHECK": "1"}, cwd="/")
        assert proc.returncode == 0 and proc.stdout.strip(), (program, proc.stdout, proc.stderr)
    assert list(plugin_data["dir"].glob("venv.*")) == []  # no temporary, old or lock folder left


def test_a_rebuilt_launcher_env_runs_its_programs(tmp_path):
    """A rebuild (the dependencies changed) also leaves working scripts, and no temporary folder."""
    from test_plugin import fake_root
    root = fake_root(tmp_path, "")
    env = {**os.environ, "CLAUDE_PLUGIN_DATA": str(tmp_path / "data"), "VASTICLAUDE_HOME": str(tmp_path / "h")}
    pip = tmp_path / "data" / "venv" / "bin" / "pip"
    for deps in ("", '    "filelock",\n'):
        text = (root / "pyproject.toml").read_text()
        (root / "pyproject.toml").write_text(text.replace("dependencies = [\n", f"dependencies = [\n{deps}"))
        proc = subprocess.run([str(root / "scripts" / "vc"), "hi"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0 and proc.stdout == "stub hi\n" and "preparing" in proc.stderr, proc.stderr
        ran = subprocess.run([str(pip), "--version"], capture_output=True, text=True, timeout=120, cwd="/")
        assert ran.returncode == 0 and "pip" in ran.stdout, ran.stderr
    assert list((tmp_path / "data").glob("venv.*")) == []


# ----- the hour limit is a ceiling too ------------------------------------------------------------
def test_a_job_that_ignores_sigterm_is_stopped_at_the_hour_limit(pricey, monkeypatch):
    cli, sim = pricey, pricey.sim
    monkeypatch.setenv("VASTICLAUDE_HOME", str(cli.vchome))
    up = rent(cli, "stubborn-h")
    iid = up["instance_id"]
    ssh(up, "cat > stubborn.py", IGNORES_SIGTERM).check_returncode()
    limit_s, kill_grace = 14, 8
    data = start(cli, "stubborn-h", "--max-hours", str(limit_s / 3600), "--check", "1", "--kill-grace", str(kill_grace),
                 "--grace", "60", "--", "python3", "stubborn.py")
    assert data["guard"]["max_hours"] and state.read_experiment("stubborn-h")["guard"]["kill_grace_s"] == kill_grace
    wait_state(sim, iid, "stubborn-h", {"stopped"}, 60)
    log = run_file(sim, iid, "stubborn-h", "watchdog.log")
    at = {line.split(" ", 2)[1].rstrip(":"): float(line.split(" ", 1)[0]) for line in log.splitlines()}
    term = next(line for line in log.splitlines() if "SIGTERM to the job" in line)
    ran = float(term.split("max_hours: ran ", 1)[1].split(" ", 1)[0])
    # Before: SIGTERM at the limit, SIGKILL a kill grace (8 s) after it. Now SIGTERM one kill grace early,
    # so the SIGKILL lands at the limit, give or take one check interval and one second of the kill loop.
    assert "kill grace early" in term and ran < limit_s, term
    assert f"outlived the {kill_grace} s kill grace: SIGKILL" in log and "stop the instance" in log
    killed = next(float(line.split(" ", 1)[0]) for line in log.splitlines() if "SIGKILL" in line)
    assert killed - at["start"] <= limit_s + 2, log


# ----- 12. one sandbox per state folder, a stable address, watchdogs that follow it ---------------
def servers_of(state: Path) -> list[int]:
    import psutil
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and str(state.resolve()) in cmd:
            found.append(proc.pid)
    return found


def test_a_frozen_sandbox_is_reported_never_served_twice(tmp_path):
    env = offline_env(tmp_path, VASTICLAUDE_SIM_TIME_SCALE="0")
    for name in ("VAST_URL", "VAST_API_KEY"):
        env.pop(name)
    state = Path(env["VASTICLAUDE_HOME"]) / "sim"

    def vc(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([VC, *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                              stdin=subprocess.DEVNULL)
    try:
        assert vc("sim", "start", "--time-scale", "0", "--json").returncode == 0
        pid = read_info(state)["pid"]
        os.kill(pid, signal.SIGSTOP)
        proc = vc("offers", "--sandbox", "--limit", "1", "--json")  # a command that needs the sandbox
        assert proc.returncode == 3, proc.stdout + proc.stderr
        error = envelope(proc)["error"]
        assert error["code"] == "sim_unresponsive" and str(pid) in error["message"] and "sim stop" in error["hint"]
        assert servers_of(state) == [pid]
        # `sim serve` itself refuses a folder another server holds, frozen or not.
        second = subprocess.run([*python_m("vasticlaude"), "sim", "serve", "--state", str(state)], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
        assert second.returncode == 3 and f"pid {pid}" in second.stderr, second.stderr
        assert servers_of(state) == [pid]
        stop = vc("sim", "stop", "--json")  # SIGTERM is not seen by a stopped process: SIGKILL after the wait
        assert stop.returncode == 0 and envelope(stop)["data"]["stopped"], stop.stdout + stop.stderr
        assert servers_of(state) == []
    finally:
        for pid in servers_of(state):
            os.kill(pid, signal.SIGCONT)
        stop_background(state)


def test_a_restarted_sandbox_keeps_its_port(fresh_sim):
    first = fresh_sim.start("--time-scale", "0")
    port = int(first.url.rsplit(":", 1)[1])
    first.stop()
    again = fresh_sim.start("--time-scale", "0")
    assert again.url == f"http://127.0.0.1:{port}"
    assert (fresh_sim.state / "url").read_text().strip() == again.url


def test_a_watchdog_stops_its_instance_after_the_sandbox_restarts_on_another_port(pricey, monkeypatch):
    """The sandbox crashes (kill -9: the containers live on) and comes back on another port (its old
    one taken). The watchdog re-reads the sandbox's URL file, so its stop reaches the new address."""
    cli, sim = pricey, pricey.sim
    monkeypatch.setenv("VASTICLAUDE_HOME", str(cli.vchome))
    up = rent(cli, "moved")
    iid = up["instance_id"]
    start(cli, "moved", "--max-hours", str(12 / 3600), "--check", "1", "--kill-grace", "1", "--grace", "60",
          "--", "sleep", "600")
    old_port = int(sim.url.rsplit(":", 1)[1])
    sim.kill9()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen(1)  # someone else's server now: the old address never answers the API
        sim.start("--time-scale", "0", "--market", str(sim.state.parent / "market.json"), "--balance", "50")
        assert int(sim.url.rsplit(":", 1)[1]) != old_port
        wait_state(sim, iid, "moved", {"stopped"}, 90)
    finally:
        squatter.close()
    assert "stop the instance" in run_file(sim, iid, "moved", "watchdog.log")  # it stops its own processes too


# ----- 10. no key is printed or written -----------------------------------------------------------
def test_no_key_is_printed_or_written_by_a_flow_whose_job_prints_its_environment(cli, sim, tmp_path):
    project = tmp_path / "proj"
    (project / ".vasticlaude").mkdir(parents=True)
    (project / "train.py").write_text("print('hi')\n")
    cli.cwd = project
    cli.json("up", "--experiment", "envy", "--image", IMAGE, "--disk", "8")
    cli.json("push", "--experiment", "envy", "--no-setup")
    start(cli, "envy", "--", "sh", "-c", 'env; echo "the key: $CONTAINER_API_KEY"; sleep 2')  # bare, too
    cli.json("status", "--experiment", "envy", "--wait", "--interval", "1", "--timeout", "120", "--lines", "80")
    logs = cli.json("logs", "--experiment", "envy", "--lines", "500")["lines"]
    assert [line[:28] for line in logs if line.startswith("CONTAINER_API_KEY=")] == ["CONTAINER_API_KEY=[redacted]"]
    assert cli.run("logs", "--experiment", "envy", "--follow").returncode == 0  # the job has ended: it returns
    cli.json("status", "--experiment", "envy", "--lines", "80")
    pulled = Path(cli.json("pull", "--experiment", "envy")["local_path"])
    assert "CONTAINER_API_KEY=[redacted]" in (pulled / "run" / "job.log").read_text()
    cli.json("report", "--experiment", "envy")
    cli.json("cost")
    cli.json("down", "--experiment", "envy")
    assert cli.run("pull", "--experiment", "envy").returncode != 0  # an error path too
    files = [p for root in (cli.vchome, project / ".vasticlaude") for p in root.rglob("*") if p.is_file()]
    assert pulled / "run" / "job.log" in files and any(p.name == "report.md" for p in files)
    texts = {**{f"output {i}": t for i, t in enumerate(cli.outputs)},
             **{str(p): p.read_bytes().decode("utf-8", "replace") for p in files}}
    keys = cli.secrets()  # the account's key and every instance key of the sandbox
    leaks = [where for where, text in texts.items() if any(key in text for key in keys)]
    assert leaks == [], leaks


@pytest.mark.unit
def test_the_redactor_masks_known_values_and_secret_looking_assignments(tmp_path, monkeypatch):
    from vasticlaude import output
    monkeypatch.setattr(output, "_SECRETS", set())
    output.secret("acct-0123456789abcdef")
    output.secret("short")  # too short to be worth masking (and would mask too much)
    text = ('{"line":"CONTAINER_API_KEY=9f86d081884c7d65 HF_TOKEN=hf_abc123xyz PATH=/usr/bin"} '
            'key acct-0123456789abcdef; short; tokenizer=bert-base-uncased token_acc=0.9312 --api-key=sk-live-42xyz')
    out = output.redact(text)
    assert "9f86d081884c7d65" not in out and "hf_abc123xyz" not in out and "acct-0123456789abcdef" not in out
    assert "CONTAINER_API_KEY=[redacted]******" in out and "PATH=/usr/bin" in out and "short" in out
    assert "tokenizer=bert-base-uncased token_acc=0.9312" in out and "sk-live-42xyz" not in out  # metrics stay
    assert len(out) == len(text) and output.redact(out) == out  # same size (pull checks sizes), stable
    assert json.loads(out.split("} ")[0] + "}")["line"].startswith("CONTAINER_API_KEY=[redacted]")
    log = tmp_path / "job.log"
    log.write_text(text)
    os.utime(log, (1_000_000, 1_000_000))
    assert output.redact_file(log) and log.read_text() == out and log.stat().st_mtime == 1_000_000
    assert not output.redact_file(log)
    # An instance key a later process never saw: its fingerprint (kept in the record) is enough.
    key = "c0ffee" * 10 + "abcd"
    monkeypatch.setattr(output, "_PRINTS", set())
    output.secret_print(output.fingerprint(key))
    assert output.redact(f"the key: {key}.") == "the key: " + output.mask(key) + "."

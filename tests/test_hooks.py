"""The session hooks, run as Claude Code 2.1.332 runs them: the command line from hooks/hooks.json
with ${CLAUDE_PLUGIN_ROOT} substituted, through `sh -c`, the event JSON on stdin (fields as in
claude-code-plugin.md §6.3). The reap the SessionEnd hook starts runs for real against the
sandbox (real vastai SDK, ssh, rsync, the on-instance watchdog); every detached worker a test
starts is waited for (or killed) by its pid, so no test leaves a process behind.

VASTICLAUDE_HOOK_PYTHON points the hooks at this venv's interpreter, so no test builds the
launcher's environment; a fake launcher checks what the hooks start through it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vasticlaude.ops import reaping as reap_mod

ROOT = Path(__file__).resolve().parents[1]
VC = str(Path(sys.executable).with_name("vasticlaude"))
IMAGE = "vastai/base:0.0.2"
HOOKS = json.loads((ROOT / "hooks" / "hooks.json").read_text())["hooks"]
WORKER_LIMIT_S = 60
TRAIN = r'''
import os, sys, time
out = os.environ["VASTICLAUDE_OUTPUT_DIR"]
for step in range(1, int(sys.argv[1]) + 1):
    print(f"step {step} loss={1.0 / step:.3f}", flush=True)
    time.sleep(0.1)
open(os.path.join(out, "result.txt"), "w").write("done\n")
'''


# ----- running hooks as Claude Code does ------------------------------------------------------------
def command_of(event: str) -> str:
    """The hook's command line from hooks.json, with ${CLAUDE_PLUGIN_ROOT} substituted as text."""
    handler = HOOKS[event][0]["hooks"][0]
    return handler["command"].replace("${CLAUDE_PLUGIN_ROOT}", str(ROOT))


def payload(event: str, session: str, cwd: Path, **extra: object) -> dict:
    """An event as 2.1.332 sends it: the common fields, then the event's own (§6.3)."""
    base = {"session_id": session, "transcript_path": f"/tmp/.claude/projects/p/{session}.jsonl", "cwd": str(cwd),
            "hook_event_name": event}
    per_event = {
        "SessionStart": {"source": "startup", "model": "claude-sonnet-4-5"},
        "SessionEnd": {"prompt_id": str(uuid.uuid4()), "reason": "other"},
        "Stop": {"prompt_id": str(uuid.uuid4()), "permission_mode": "default", "effort": {"level": "medium"},
                 "stop_hook_active": False, "last_assistant_message": "Done.", "background_tasks": [],
                 "session_crons": []},
        "PreToolUse": {"prompt_id": str(uuid.uuid4()), "permission_mode": "default", "effort": {"level": "medium"},
                       "tool_name": "Bash", "tool_use_id": "toolu_01" + uuid.uuid4().hex[:20]},
    }
    return {**base, **per_event[event], **extra}


def hook_env(vchome: Path, project: Path, base: dict | None = None, **extra: str) -> dict:
    env = dict(base or {k: v for k, v in os.environ.items() if not k.startswith("VAST")})
    env.update(CLAUDE_PLUGIN_ROOT=str(ROOT), CLAUDE_PROJECT_DIR=str(project), VASTICLAUDE_HOME=str(vchome),
               VASTICLAUDE_HOOK_PYTHON=sys.executable, VASTICLAUDE_POLL_SCALE="0.05")
    env.update(extra)
    return env


def fire(event: str, data: dict, env: dict, command: str | None = None,
         timeout: float = 10) -> tuple[subprocess.CompletedProcess, float]:
    """Run one hook; returns the process and its wall time. A hook must always exit 0."""
    start = time.perf_counter()
    proc = subprocess.run(["sh", "-c", command or command_of(event)], input=json.dumps(data), capture_output=True,
                          text=True, env=env, timeout=timeout)
    took = time.perf_counter() - start
    assert proc.returncode == 0, f"{event} hook exited {proc.returncode}: {proc.stderr}"
    return proc, took


def worker_pid(out: str) -> int:
    found = re.search(r"\(pid (\d+)", out)
    assert found, f"no worker started: {out!r}"
    return int(found.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def wait_worker(pid: int, timeout: float = WORKER_LIMIT_S) -> float:
    """Wait for a detached worker; kill its whole session and fail if it outlives `timeout`."""
    start = time.monotonic()
    while alive(pid):
        if time.monotonic() - start > timeout:
            kill_session(pid)
            raise AssertionError(f"the reap (pid {pid}) did not finish within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


def kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def last_report(vchome: Path) -> dict:
    return json.loads((vchome / "last-session-end.json").read_text())


# ----- a user with a project, driving vasticlaude as Claude does ------------------------------------
class User:
    def __init__(self, sim, tmp: Path):
        self.sim = sim
        self.home, self.project, self.vchome = tmp / "home", tmp / "project", Path(os.environ["VASTICLAUDE_HOME"])
        self.home.mkdir()
        self.project.mkdir()
        (self.project / "train.py").write_text(TRAIN)
        self.procs: list[subprocess.Popen] = []
        self.workers: list[int] = []

    def env(self) -> dict:
        return self.sim.env(HOME=str(self.home), VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05")

    def hook_env(self, **extra: str) -> dict:
        return hook_env(self.vchome, self.project, self.env(), **extra)

    def run(self, *args: str, rc: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([VC, *args], capture_output=True, text=True, env=self.env(), cwd=self.project,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert rc is None or proc.returncode == rc, f"vasticlaude {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
        return proc

    def json(self, *args: str, rc: int = 0) -> dict:
        return json.loads(self.run(*args, "--json", rc=rc).stdout)["data"]

    def up(self, experiment: str) -> int:
        return self.json("up", "--experiment", experiment, "--image", IMAGE, "--disk", "8")["instance_id"]

    def kill9_during(self, *args: str, after: float = 0.3) -> None:
        """Start a command and kill -9 it (and its ssh/rsync children) mid-way: the controller dies."""
        proc = subprocess.Popen([VC, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env(),
                                cwd=self.project, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        time.sleep(after)
        kill_session(proc.pid)
        proc.wait(timeout=30)

    def session_end(self, session: str = "sess-end", **env: str) -> int:
        # The hook hands the reap to a detached worker and returns (its wall time against Claude Code's
        # 1.5 s SessionEnd budget is bench/hooks_bench.py's: no timed assertion here).
        proc, _ = fire("SessionEnd", payload("SessionEnd", session, self.project), self.hook_env(**env))
        pid = worker_pid(proc.stdout)
        self.workers.append(pid)
        return pid

    def session_start(self, session: str = "sess-start", **env: str) -> str:
        proc, _ = fire("SessionStart", payload("SessionStart", session, self.project), self.hook_env(**env))
        for pid in re.findall(r"pid (\d+)", proc.stdout):
            self.workers.append(int(pid))
        return proc.stdout

    def account(self) -> dict[int, dict]:
        from vastai import VastAI
        sdk = VastAI(api_key=self.sim.api_key, server_url=self.sim.url, retry=10)
        return {r["id"]: r for r in sdk.show_instances()}

    def cleanup(self) -> None:
        for pid in self.workers:
            kill_session(pid)
        for proc in self.procs:
            if proc.poll() is None:
                kill_session(proc.pid)
                proc.kill()  # one that leads no session of its own (a fake Claude) is not in the group
                proc.wait(timeout=10)


@pytest.fixture
def user(sim, tmp_path: Path):
    me = User(sim, tmp_path)
    try:
        yield me
    finally:
        me.cleanup()
        sim.reset()


# ----- wiring and the fast paths ----------------------------------------------------------------------
@pytest.mark.unit
def test_hooks_json_wires_four_events_to_existing_stdlib_scripts():
    assert set(HOOKS) == {"SessionStart", "SessionEnd", "Stop", "PreToolUse"}
    assert HOOKS["PreToolUse"][0]["matcher"] == "Bash"
    for event, groups in HOOKS.items():
        handler = groups[0]["hooks"][0]
        assert handler["type"] == "command" and isinstance(handler["timeout"], int)
        script = re.search(r'"\$\{CLAUDE_PLUGIN_ROOT\}/(hooks/\w+\.py)"', handler["command"])
        assert script and (ROOT / script.group(1)).is_file(), handler["command"]


# The hooks may import only the package's stdlib-only modules (money and its status words, paths, errors).
HEAVY = re.compile(r"\| +(vastai|requests|filelock|jinja2|dotenv|asyncssh|urllib3|"
                   r"vasticlaude\.(?!(?:core|core\.money|core\.lifecycle|core\.fmt|store|store\.paths|store\.records|errors)$)[\w.]+)$", re.M)


def importtime(event: str) -> str:
    return command_of(event).replace("python3 -S", "python3 -S -X importtime")


@pytest.mark.unit
@pytest.mark.parametrize("event", ["SessionEnd", "SessionStart", "Stop", "PreToolUse"])
def test_no_state_fast_path_imports_nothing_heavy(event, tmp_path):
    """No state file: nothing to say, nothing started, and not one non-stdlib import (-X importtime)."""
    env = hook_env(tmp_path / "vchome", tmp_path)
    data = payload(event, "s-fast", tmp_path, **({"tool_input": {"command": "ls -la", "description": "list"}}
                                                  if event == "PreToolUse" else {}))
    proc, took = fire(event, data, env, importtime(event))
    assert proc.stdout == ""
    assert not (tmp_path / "vchome" / "logs").exists()  # nothing was started
    if event in ("SessionEnd", "Stop"):
        assert proc.stderr == ""  # the shell's test in hooks.json: Python does not even start
    else:
        assert not HEAVY.findall(proc.stderr), f"{event} imported {HEAVY.findall(proc.stderr)}"
        assert "| hookio" in proc.stderr or "| hooklib" in proc.stderr  # the measurement saw the hook's imports
    if event == "PreToolUse":  # its fast path: not even json, pathlib or re
        assert not re.findall(r"\| +(hooklib|json|pathlib|re)$", proc.stderr, re.MULTILINE)
    print(f"{event} no-state wall time with -X importtime: {took * 1000:.0f} ms")


@pytest.mark.unit
@pytest.mark.parametrize("event", ["SessionEnd", "SessionStart", "Stop"])
def test_with_live_instances_hooks_still_import_no_vastai(event, tmp_path):
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(1, "running", 0.5, 1), record(2, "stopped", 0.4, 3)])
    env = hook_env(vchome, tmp_path, VASTICLAUDE_HOOK_PYTHON="/bin/true")  # the worker does nothing
    proc, took = fire(event, payload(event, "s-heavy", tmp_path), env, importtime(event))
    assert "| hooklib" in proc.stderr and not HEAVY.findall(proc.stderr), HEAVY.findall(proc.stderr)
    assert proc.stdout  # it did its work: a pid, a summary, a reminder
    print(f"{event} with 2 live instances: {took * 1000:.0f} ms")


@pytest.mark.unit
@pytest.mark.parametrize("setting", [None, "~/vc", "{tmp}/vc"])
def test_the_shell_finds_the_state_where_the_package_does(setting, tmp_path):
    """The SessionEnd command's `[ -e … ]` must agree with vasticlaude.paths.home(), or a session
    would end without its reap."""
    env = hook_env(tmp_path / "unused", tmp_path, HOME=str(tmp_path), VASTICLAUDE_HOOK_PYTHON="/bin/true")
    if setting is None:
        env.pop("VASTICLAUDE_HOME")
    else:
        env["VASTICLAUDE_HOME"] = setting.format(tmp=tmp_path)
    home = json.loads(subprocess.run([sys.executable, "-c", "import json; from vasticlaude.store import paths; "
                                      "print(json.dumps(str(paths.home())))"], env=env, capture_output=True,
                                     text=True, check=True).stdout)
    write_state(Path(home), [record(1, "running", 0.5, 1)])
    proc, _ = fire("SessionEnd", payload("SessionEnd", "s-home", tmp_path), env)
    assert "(pid " in proc.stdout


@pytest.mark.unit
def test_a_stdin_that_is_never_closed_does_not_hang_a_hook(tmp_path):
    env = hook_env(tmp_path / "vchome", tmp_path)
    for sent in (b"", b'{"session_id": "half'):
        proc = subprocess.Popen(["sh", "-c", command_of("SessionEnd")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            proc.stdin.write(sent)
            proc.stdin.flush()
        except BrokenPipeError:  # it exited without reading stdin (no state: the fast path), as it may
            pass
        try:
            assert proc.wait(timeout=5) == 0  # it ends on its own: a hook waiting for EOF would hang here
        finally:
            proc.kill()
            proc.communicate()


@pytest.mark.unit
def test_a_broken_hook_fails_open_with_a_message(tmp_path):
    vchome = tmp_path / "vchome"
    vchome.mkdir()
    (vchome / "instances.json").write_text(json.dumps({"instances": {"1": {"id": 1, "history": "nonsense",
                                                                               "gpu_dph": "x"}}}))
    proc, _ = fire("SessionStart", payload("SessionStart", "s-broken", tmp_path), hook_env(vchome, tmp_path))
    out = json.loads(proc.stdout)  # wrong types are no longer a way to break it (store/records.py)
    assert "hook failed" not in out["systemMessage"] and "2 bad part(s)" in out["systemMessage"]
    shutil.rmtree(vchome / "sessions")
    (vchome / "sessions").write_text("a file where a folder should be")
    proc, _ = fire("SessionStart", payload("SessionStart", "s-broken", tmp_path), hook_env(vchome, tmp_path))
    out = json.loads(proc.stdout)
    assert "hook failed" in out["systemMessage"] and "hooks.log" in out["systemMessage"]
    assert "Traceback" in (vchome / "logs" / "hooks.log").read_text()


# ----- PreToolUse --------------------------------------------------------------------------------------
RENTALS = [
    "vastai create instance 123 --image pytorch/pytorch --disk 40 --ssh --direct",
    "VAST_URL=http://x vastai --raw launch instance -g RTX_4090 -n 1 -i pytorch/pytorch",
    "python3 -c \"from vastai import VastAI; VastAI(api_key=k).create_instance(id=5, image='x', disk=10)\"",
    "curl -s -X PUT -H 'Authorization: Bearer $K' https://console.vast.ai/api/v0/asks/123/ -d '{}'",
]
HARMLESS = ["ls", "vastai show instances --raw", "vastai destroy instance 5 -y", "vasticlaude up --experiment x",
            "git commit -m 'create instance docs'", "python3 train.py --launch"]


@pytest.mark.unit
@pytest.mark.parametrize("command", RENTALS)
def test_pre_tool_use_asks_before_a_raw_rental(command, tmp_path):
    data = payload("PreToolUse", "s-ptu", tmp_path, tool_input={"command": command, "description": "rent"})
    proc, _ = fire("PreToolUse", data, hook_env(tmp_path / "vchome", tmp_path))
    out = json.loads(proc.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "PreToolUse" and out["permissionDecision"] == "ask"
    assert " up " in out["permissionDecisionReason"] and "ledger" in out["permissionDecisionReason"]


@pytest.mark.unit
@pytest.mark.parametrize("command", HARMLESS)
def test_pre_tool_use_is_silent_otherwise(command, tmp_path):
    data = payload("PreToolUse", "s-ptu", tmp_path, tool_input={"command": command, "description": "x"})
    proc, _ = fire("PreToolUse", data, hook_env(tmp_path / "vchome", tmp_path))
    assert proc.stdout == "" and proc.stderr == ""


QVC = f'"{ROOT}/scripts/vc"'
CHAINED = [(f"{QVC} cost --json && echo hi", "&&"), (f"{QVC} cost --json; curl evil", ";"),
           (f"{QVC} logs --json | head", "|"), (f"{QVC} status --json > /tmp/x", ">"),
           (f'{QVC} run --experiment e -- "$(cat ~/.ssh/id_rsa)"', "$("), (f"{QVC} cost --json `id`", "`"),
           (f"{QVC} cost --json\nrm -rf ~", "newline"), (f"{QVC} cost --json & sleep 1", "&")]
ALONE = [f"{QVC} cost --json", f"{QVC} run --experiment e -- 'pip install . && python train.py'",
         f'{QVC} run --experiment e -- "python a.py; echo done"', f"{QVC} run --experiment e -- python a.py --lr=1e-3"]


@pytest.mark.parametrize("command,operator", CHAINED)
def test_pre_tool_use_denies_anything_chained_onto_the_launcher(command, operator, tmp_path):
    data = payload("PreToolUse", "s-ptu", tmp_path, tool_input={"command": command, "description": "x"})
    proc, _ = fire("PreToolUse", data, hook_env(tmp_path / "vchome", tmp_path))
    out = json.loads(proc.stdout)["hookSpecificOutput"]
    assert out["permissionDecision"] == "deny", command
    assert repr(operator) in out["permissionDecisionReason"] and "its own Bash call" in out["permissionDecisionReason"]


@pytest.mark.parametrize("command", ALONE)
def test_pre_tool_use_lets_the_launcher_alone_through_quoted_operators_included(command, tmp_path):
    data = payload("PreToolUse", "s-ptu", tmp_path, tool_input={"command": command, "description": "x"})
    proc, _ = fire("PreToolUse", data, hook_env(tmp_path / "vchome", tmp_path))
    assert proc.stdout == "" and proc.stderr == ""


# ----- state-only hooks: Stop and SessionStart ----------------------------------------------------------
def record(iid: int, status: str, gpu: float, hours_ago: float, experiment: str | None = None, **extra) -> dict:
    at = time.time() - hours_ago * 3600
    exp = experiment or f"exp{iid}"
    return {"id": iid, "label": f"vasticlaude-{exp}", "experiment": exp, "status": status, "gpu_dph": gpu,
            "storage_dph": 0.02, "created_at": at, "history": [{"at": at, "status": status, "why": "test"}], **extra}


def write_state(vchome: Path, recs: list[dict]) -> None:
    vchome.mkdir(parents=True, exist_ok=True)
    (vchome / "instances.json").write_text(json.dumps({"version": 1, "instances": {str(r["id"]): r for r in recs},
                                                       "intents": {}}))


def guard_run(vchome: Path, experiment: str, iid: int, watchdog: bool = True) -> None:
    """experiment.json as `vasticlaude run` leaves it: a run on the instance, its guard alive."""
    folder = vchome / "experiments" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.json").write_text(json.dumps({
        "runs": [{"at": time.time() - 60, "instance_id": iid, "command": "python train.py", "immediate_exit": None}],
        "guard": {"watchdog": watchdog, "alive": watchdog}}))


@pytest.mark.unit
def test_stop_reminds_once_per_session_and_never_loops(tmp_path):
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(1, "running", 0.5, 1), record(2, "running", 0.3, 1), record(3, "stopped", 0.4, 5)])
    guard_run(vchome, "exp2", 2)
    env = hook_env(vchome, tmp_path)
    first, _ = fire("Stop", payload("Stop", "s-stop", tmp_path), env)
    out = json.loads(first.stdout)
    assert out["decision"] == "block"
    assert "1 (exp1, running, $0.520/h)" in out["reason"] and "3 (exp3, stopped, $0.020/h)" in out["reason"]
    assert "2 (" not in out["reason"]  # its job runs under a live guard
    assert "$0.540/h" in out["reason"] and "down --all" in out["reason"]
    for active in (True, False):  # Claude continues because of the hook, then stops again: silence
        again, _ = fire("Stop", payload("Stop", "s-stop", tmp_path, stop_hook_active=active), env)
        assert again.stdout == ""
    other, _ = fire("Stop", payload("Stop", "s-other", tmp_path), env)
    assert json.loads(other.stdout)["decision"] == "block"  # once per session, not once ever

    write_state(vchome, [record(2, "running", 0.3, 1)])  # only the guarded one: nothing to say
    quiet, _ = fire("Stop", payload("Stop", "s-third", tmp_path), env)
    assert quiet.stdout == ""


def fake_plugin(tmp_path: Path) -> tuple[Path, Path]:
    """A plugin root whose launcher `scripts/vc` only records how it was called."""
    root = tmp_path / "plugin"
    (root / "scripts").mkdir(parents=True)
    shutil.copytree(ROOT / "hooks", root / "hooks")
    (root / "scripts" / "vasticlaude").symlink_to(ROOT / "scripts" / "vasticlaude")
    calls = tmp_path / "vc-calls"
    launcher = root / "scripts" / "vc"
    launcher.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n')
    launcher.chmod(0o755)
    return root, calls


@pytest.mark.unit
def test_session_start_with_mixed_states_is_short_and_starts_the_background_work(tmp_path):
    vchome = tmp_path / "vchome"
    recs = [record(100, "running", 0.9, 30, "guarded"), record(101, "running", 1.5, 2, "unguarded"),
            record(102, "stopped", 0.7, 50), record(103, "loading", 0.2, 0.01)]
    recs += [record(200 + i, "running", 0.1 + i / 100, i) for i in range(36)]
    recs += [record(300 + i, "destroyed", 0.5, 10, destroyed_at=time.time() - 3600) for i in range(10)]
    write_state(vchome, recs)
    guard_run(vchome, "guarded", 100)
    guard_run(vchome, "unguarded", 101, watchdog=False)
    (vchome / "last-session-end.json").write_text(json.dumps({
        "reason": "session-end", "finished": True, "started_at": time.time() - 600, "finished_at": time.time() - 590,
        "pid": 1, "summary": "3 destroyed; 1 left guarded", "instances": [{"id": 100, "action": "left-guarded"}],
        "undone": [{"id": 102, "label": "vasticlaude-exp102", "what": "destroy", "why": "still listed after destroy"}],
        "pending": []}))
    root, calls = fake_plugin(tmp_path)
    env = hook_env(vchome, tmp_path, CLAUDE_PLUGIN_ROOT=str(root))
    env.pop("VASTICLAUDE_HOOK_PYTHON")
    env_file = tmp_path / "session-env.sh"
    env["CLAUDE_ENV_FILE"] = str(env_file)
    command = command_of("SessionStart").replace(str(ROOT), str(root))
    proc, took = fire("SessionStart", payload("SessionStart", "s-mixed", tmp_path), env, command)

    assert len(proc.stdout.encode()) <= 1500, proc.stdout
    out = json.loads(proc.stdout)
    text = out["hookSpecificOutput"]["additionalContext"]
    assert out["hookSpecificOutput"]["hookEventName"] == "SessionStart" and out["systemMessage"]
    live = [r for r in recs if r["status"] != "destroyed"]
    dph = sum(r["gpu_dph"] + r["storage_dph"] if r["status"] == "running" else r["storage_dph"] for r in live)
    assert text.startswith(f"vasticlaude: {len(live)} instance(s) still exist and bill ${dph:.2f}/h")
    listed = [line for line in text.splitlines() if re.match(r"- \d+ ", line)]
    more = re.search(r"- \+(\d+) more", text)
    assert more and len(listed) + int(more.group(1)) == len(live)
    assert listed[0].startswith("- 101 unguarded: running since") and "WITHOUT a guard" in listed[0]
    assert "- 100 guarded: running" in text and "left running under its guard" in text
    assert "300" not in text  # destroyed instances are not listed
    assert "Needs a decision: " in text and " 100 " not in text.split("Needs a decision: ")[1].split("(")[0]
    assert "Could not be done: 102 destroy: still listed after destroy" in text
    assert "now runs in the background" in text
    assert (ROOT / "scripts").as_posix() not in text  # paths of the plugin it runs from, not this repo
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(calls.read_text().splitlines() if calls.exists() else []) < 2:
        time.sleep(0.05)
    started = sorted(calls.read_text().splitlines())
    assert started == ["--prepare", "reap --reason session-start --only-orphans --session s-mixed"]
    assert env_file.read_text() == "export VASTICLAUDE_SESSION=s-mixed\n"
    print(f"SessionStart with {len(live)} live instances: {took * 1000:.0f} ms, {len(proc.stdout.encode())} bytes")


@pytest.mark.unit
def test_session_start_while_the_last_reap_still_runs_starts_no_other(tmp_path):
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(1, "running", 0.5, 1)])
    (vchome / "last-session-end.json").write_text(json.dumps({
        "reason": "session-end", "finished": False, "started_at": time.time() - 5, "pid": os.getpid(),
        "report": "/x/r.md", "instances": [], "undone": [], "pending": [1]}))
    env = hook_env(vchome, tmp_path, VASTICLAUDE_HOOK_PYTHON="/bin/true")
    proc, _ = fire("SessionStart", payload("SessionStart", "s-busy", tmp_path), env)
    text = json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]
    assert f"pid {os.getpid()}) is still running" in text and "background" not in text
    assert not (vchome / "logs").exists()  # nothing was started


@pytest.mark.unit
def test_session_start_names_a_recovery_that_did_not_finish(tmp_path):
    """A recovery killed between destroying the old instance and renting the new one leaves no
    instance at all: only experiment.json's `recovering` says the job is not running."""
    from filelock import FileLock
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(1, "destroyed", 0.5, 3, destroyed_at=time.time())])
    for name in ("moved", "busy"):
        (vchome / "experiments" / name).mkdir(parents=True)
        (vchome / "experiments" / name / "experiment.json").write_text(json.dumps(
            {"version": 1, "id": name, "recovering": {"at": time.time() - 60, "kind": "host_offline"}}))
    with FileLock(str(vchome / "experiments" / "busy" / "recover.lock")):
        proc, _ = fire("SessionStart", payload("SessionStart", "s-rec", tmp_path), hook_env(vchome, tmp_path))
    text = json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]
    assert "Experiment moved: a recovery from host_offline" in text and "recover --experiment moved" in text
    assert "Experiment busy: a recovery from host_offline is under way" in text


@pytest.mark.unit
def test_session_start_says_nothing_when_nothing_bills(tmp_path):
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(1, "destroyed", 0.5, 3, destroyed_at=time.time())])
    proc, _ = fire("SessionStart", payload("SessionStart", "s-none", tmp_path), hook_env(vchome, tmp_path))
    assert proc.stdout == ""


def test_corrupt_state_is_said_at_start_and_swept_at_end(user, sim):
    iid = user.up("corrupt")
    (user.vchome / "instances.json").write_text('{"version": 1, "instances": {"12')
    start = user.session_start()
    assert "instances.json is corrupt" in start and "reconcile" in start
    pid = user.session_end()
    wait_worker(pid)
    report = last_report(user.vchome)
    assert report["finished"] and not report["undone"]
    assert [(i["id"], i["action"]) for i in report["instances"]] == [(iid, "destroyed")]
    assert any("bad parts" in note for note in report["notes"])
    assert iid not in user.account()
    assert list(user.vchome.glob("instances.json.bad-*"))


# ----- the reap's decisions -------------------------------------------------------------------------------
def snap(job: str | None, guard: bool | None) -> dict | None:
    if job is None:
        return None
    data = {"job": {"state": job}}
    if guard is not None:
        data["guard"] = {"alive": guard}
    return data


DECISIONS = [  # (instance status, job state, guard alive, policy) -> verb, pull
    ("running", "running", True, {}, "leave", False),
    ("running", "running", True, {"running": "stop"}, "stop", True),
    ("running", "running", True, {"running": "destroy"}, "destroy", True),
    ("running", "running", False, {}, "destroy", True),
    ("running", "running", None, {}, "destroy", True),
    ("running", "stale", True, {}, "leave", False),
    ("running", "exited", True, {}, "destroy", True),
    ("running", "killed", False, {"finished": "stop"}, "stop", True),
    ("running", "not_started", None, {}, "destroy", False),
    ("running", "unreachable", False, {}, "destroy", False),
    ("running", None, None, {}, "destroy", False),
    ("exited", None, None, {}, "destroy", False),
    ("loading", None, None, {}, "destroy", False),
    ("stopped", None, None, {}, "destroy", False),
]


@pytest.mark.unit
@pytest.mark.parametrize("status,job,guard,policy,verb,pull", DECISIONS)
def test_reap_decisions(status, job, guard, policy, verb, pull):
    rec = record(7, status, 0.5, 1)
    decision = reap_mod.decide(rec, {"actual_status": status}, snap(job, guard), {**reap_mod.POLICY, **policy}, {})
    assert (decision.verb, decision.pull) == (verb, pull), decision.why


@pytest.mark.unit
def test_reap_leaves_deliberate_stops_and_rentals_in_flight():
    stopped = record(8, "stopped", 0.5, 1)
    stopped["history"].append({"at": time.time(), "status": "stopped", "why": "down --keep-disk"})
    assert reap_mod.decide(stopped, {"actual_status": "stopped"}, None, reap_mod.POLICY, {}).kind == "left-stopped"
    import socket
    renting = record(9, "loading", 0.5, 0.01, created_by=f"me@{socket.gethostname()} session=- pid={os.getppid()}")
    assert reap_mod.decide(renting, {"actual_status": "loading"}, None, reap_mod.POLICY, {}).kind == "left-busy"


# ----- the fault matrix on the sandbox -------------------------------------------------------------------------
def push(user: User, experiment: str) -> None:
    user.run("push", "--experiment", experiment, "--no-setup")


def start_job(user: User, experiment: str, steps: int) -> dict:
    proc = user.run("run", "--json", "--experiment", experiment, "--", "python3", "train.py", str(steps))
    return json.loads(proc.stdout)["data"]


def wait_job_end(user: User, experiment: str) -> None:
    user.run("status", "--experiment", experiment, "--wait", "--interval", "0.3", "--timeout", "60", rc=None)


def test_controller_killed_at_each_step_then_session_end_leaves_only_guarded_jobs(user, sim):
    """kill -9 of the controller at each step of up → push → run → pull → down, then SessionEnd."""
    ids = {name: user.up(name) for name in ("k-up", "k-push", "k-guarded", "k-ended", "k-pulled")}
    user.kill9_during("push", "--experiment", "k-up", "--no-setup", after=0.2)       # after up, before push
    push(user, "k-push")
    user.kill9_during("run", "--experiment", "k-push", "--", "python3", "train.py", "5", after=0.05)  # before run
    for name in ("k-guarded", "k-ended", "k-pulled"):
        push(user, name)
    started = start_job(user, "k-guarded", 3000)                                      # a job with a live guard
    assert "guard" in started and started["guard"].get("alive"), (
        "`vasticlaude run` reports no live guard: the on-instance watchdog (status/run 'guard' field) is missing")
    user.kill9_during("status", "--experiment", "k-guarded", "--wait", after=1.0)     # while it runs
    for name in ("k-ended", "k-pulled"):
        start_job(user, name, 5)
        wait_job_end(user, name)
    user.kill9_during("pull", "--experiment", "k-ended", after=0.1)                   # after the end, before pull
    user.run("pull", "--experiment", "k-pulled")
    user.kill9_during("down", "--experiment", "k-pulled", after=0.4)                  # after pull, before down

    pid = user.session_end()
    took = wait_worker(pid)
    account = user.account()
    assert set(account) == {ids["k-guarded"]}, f"still on the account: {sorted(account)}"
    status = user.json("status", "--experiment", "k-guarded")
    assert status["job"]["state"] == "running" and status["guard"]["alive"]

    report = last_report(user.vchome)
    assert report["finished"] and not report["undone"] and report["exit_code"] == 0
    actions = {i["id"]: i for i in report["instances"]}
    assert actions[ids["k-guarded"]]["action"] == "left-guarded"
    for name in ("k-up", "k-push", "k-ended"):
        assert actions[ids[name]]["action"] == "destroyed", (name, actions[ids[name]])
    assert actions[ids["k-pulled"]]["action"] in ("destroyed", "already-gone")
    assert actions[ids["k-ended"]]["pull"]["ok"]
    assert (Path(actions[ids["k-ended"]]["pull"]["local_path"]) / "outputs" / "result.txt").read_text() == "done\n"
    assert all(isinstance(i["dph"], float) and i["spent_usd"] is not None for i in report["instances"])
    md = Path(report["report"]).read_text()
    assert str(ids["k-guarded"]) in md and "left-guarded" in md
    assert report["billing_usd_per_hour"] > 0  # the guarded one still bills, and says so
    start = user.session_start()
    assert "job left running under its guard" in start and "Needs a decision" not in start
    for path in [p for p in user.vchome.rglob("*") if p.is_file()]:  # reports and logs never hold the key
        assert sim.api_key.encode() not in path.read_bytes(), path
    print(f"fault matrix: the reap finished in {took:.1f} s")


def test_session_start_asks_the_account_a_job_that_ended_and_a_stopped_instance_are_told_as_they_are(user, sim):
    """SessionStart reads the live status (one API call): no GPU billing for a stopped instance, and a job
    whose end came home is said to have ended, not to be running under its guard."""
    ended, stopped = user.up("ss-ended"), user.up("ss-stopped")
    push(user, "ss-ended")
    user.run("run", "--experiment", "ss-ended", "--no-watchdog", "--", "python3", "train.py", "3")  # stays up
    wait_job_end(user, "ss-ended")
    user.run("pull", "--experiment", "ss-ended")
    from vastai import VastAI
    VastAI(api_key=sim.api_key, server_url=sim.url, retry=10).stop_instance(id=stopped)  # as its watchdog would
    deadline = time.monotonic() + 30
    while user.account()[stopped]["actual_status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    said = json.loads(user.session_start())["hookSpecificOutput"]["additionalContext"]
    line = {iid: next(ln for ln in said.splitlines() if ln.startswith(f"- {iid} ")) for iid in (ended, stopped)}
    assert "its job ended (exit 0)" in line[ended] and "down --experiment ss-ended" in line[ended], said
    assert "under its guard" not in line[ended]
    assert "stopped" in line[stopped] and "storage bills" in line[stopped], said
    storage = user.account()[stopped]["storage_total_cost"]
    assert f"${storage:.3f}/h" in line[stopped], (storage, line[stopped])  # storage only, no GPU
    assert "; now)" in said.splitlines()[0]  # the account answered: these are live figures

    sim_url = sim.url
    state = json.loads((user.vchome / "instances.json").read_text())
    for rec in state["instances"].values():  # an account that does not answer: as last recorded
        rec["target"] = "http://127.0.0.1:9"
    (user.vchome / "instances.json").write_text(json.dumps(state))
    offline = json.loads(user.session_start())["hookSpecificOutput"]["additionalContext"]
    assert "as last recorded" in offline.splitlines()[0] and "did not answer" in offline.splitlines()[0], offline
    assert sim_url not in offline


def test_two_session_ends_at_once_do_the_work_once(user, sim):
    ids = [user.up(f"twin{i}") for i in range(3)]
    pids = [user.session_end(f"twin-session-{i}") for i in range(2)]
    for pid in pids:
        wait_worker(pid)
    assert not set(ids) & set(user.account())
    reports = [json.loads(p.read_text()) for p in sorted((user.vchome / "reports").glob("session-end-*.json"))]
    assert len(reports) == 2 and all(r["finished"] and not r["undone"] for r in reports)
    destroyed = [i["id"] for r in reports for i in r["instances"] if i["action"] == "destroyed"]
    assert sorted(destroyed) == sorted(ids)  # each once, by one of the two
    for i, iid in enumerate(ids):
        ledger = (user.vchome / "experiments" / f"twin{i}" / "ledger.jsonl").read_text().splitlines()
        assert len(ledger) == 1
    assert "waiting" in (user.vchome / "logs" / "reap.log").read_text()


def test_api_down_at_session_end_is_reported_and_repeated_at_the_next_start(user, sim):
    iid = user.up("outage")
    sim.fault("http", status=503, count=None, path="^/api/")
    pid = user.session_end()
    wait_worker(pid)
    report = last_report(user.vchome)
    assert report["finished"] and report["exit_code"] == 4
    assert [u["id"] for u in report["undone"]] == [iid] and "503" in report["undone"][0]["why"]
    assert "Could not be done" in Path(report["report"]).read_text()
    sim.admin("DELETE", "/sim/faults")
    assert iid in user.account()
    start = user.session_start()
    assert f"Could not be done: {iid} check and tear down: could not list the account" in start
    assert "now runs in the background" in start
    follow = [p for p in user.workers if p != pid]
    assert follow, start
    wait_worker(follow[-1])
    again = last_report(user.vchome)
    assert again["reason"] == "session-start" and not again["undone"]
    assert [(i["id"], i["action"]) for i in again["instances"]] == [(iid, "destroyed")]
    assert iid not in user.account()
    assert "Could not be done" not in user.session_start()


def test_a_reap_killed_midway_is_finished_by_the_next_session_start(user, sim):
    ids = [user.up(f"half{i}") for i in range(3)]
    sim.fault("slow", delay=0.4, count=None)
    pid = user.session_end()
    reports = user.vchome / "last-session-end.json"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        data = json.loads(reports.read_text()) if reports.exists() else {}
        if data.get("instances"):
            break
        time.sleep(0.05)
    kill_session(pid)
    wait_worker(pid, 10)
    killed = last_report(user.vchome)
    assert not killed["finished"] and killed["pending"], "the reap finished before it could be killed"
    sim.admin("DELETE", "/sim/faults")
    start = user.session_start()
    assert "did not finish" in start
    wait_worker(user.workers[-1])
    assert not set(ids) & set(user.account())
    assert last_report(user.vchome)["finished"]


def test_dry_run_changes_nothing(user, sim):
    iid = user.up("dry")
    data = user.json("reap", "--dry-run")
    assert [(i["id"], i["action"]) for i in data["instances"]] == [(iid, "would-destroy")]
    assert iid in user.account() and not (user.vchome / "reports").exists()
    assert not (user.vchome / "last-session-end.json").exists()


def test_sandbox_stopped_at_session_end_then_back_at_the_next_start(fresh_sim, tmp_path):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    flags = ("--port", port, "--time-scale", "0", "--seed", "7")
    fresh_sim.start(*flags)
    (tmp_path / "user").mkdir()
    user = User(fresh_sim, tmp_path / "user")
    try:
        iid = user.up("offline")
        fresh_sim.stop()
        pid = user.session_end()
        wait_worker(pid)
        report = last_report(user.vchome)
        assert report["finished"] and [u["id"] for u in report["undone"]] == [iid]
        assert "cannot reach" in report["undone"][0]["why"]

        fresh_sim.start(*flags)
        start = user.session_start()
        assert "Could not be done" in start and "now runs in the background" in start
        wait_worker(user.workers[-1])
        assert last_report(user.vchome)["finished"] and not last_report(user.vchome)["undone"]
        assert iid not in user.account()
    finally:
        user.cleanup()


@pytest.mark.unit
def test_instances_on_an_account_this_configuration_cannot_reach_are_reported_undone(tmp_path):
    vchome = tmp_path / "vchome"
    write_state(vchome, [record(5, "running", 0.5, 1, target="http://127.0.0.1:1")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST", "XDG_"))}
    env.update(HOME=str(tmp_path), VASTICLAUDE_HOME=str(vchome))
    proc = subprocess.run([VC, "reap", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 4, proc.stderr
    data = json.loads(proc.stdout)["data"]
    assert [u["id"] for u in data["undone"]] == [5] and "reconcile --sandbox" in data["undone"][0]["why"]
    assert not (vchome / "sim").exists()  # a reap never starts a sandbox


def test_one_session_ending_leaves_another_open_sessions_idle_instance(user, sim, tmp_path):
    """Two Claude sessions at once: B ends while A's freshly rented instance waits for its job."""
    fake_claude = tmp_path / "claude"
    fake_claude.write_bytes(Path("/bin/sleep").read_bytes())
    fake_claude.chmod(0o755)
    session_a = subprocess.Popen([str(fake_claude), "60"])
    user.procs.append(session_a)
    vchome = user.vchome
    (vchome / "sessions").mkdir(parents=True, exist_ok=True)
    (vchome / "sessions" / "sess-a.json").write_text(json.dumps({"session": "sess-a", "pid": session_a.pid,
                                                                 "at": time.time()}))
    original = user.env

    def env_of_a() -> dict:
        return {**original(), "VASTICLAUDE_SESSION": "sess-a"}
    user.env = env_of_a
    iid = user.up("a-idle")
    user.env = original
    wait_worker(user.session_end("sess-b"))  # its report is written early and complete only at its end
    last = json.loads((vchome / "last-session-end.json").read_text())
    assert iid in user.account(), last
    entry = [i for i in last["instances"] if str(i["id"]) == str(iid)][0]
    assert "still open" in entry["why"]

    session_a.kill()
    session_a.wait()
    (vchome / "last-session-end.json").unlink()
    user.session_end("sess-c")  # A is gone without its SessionEnd: its idle instance is swept
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and iid in user.account():
        time.sleep(0.5)
    assert iid not in user.account()

"""The Claude Code plugin, checked with the pinned Claude Code (2.1.332) itself.

- the manifest, marketplace and skills pass `claude plugin validate --strict`, load with no
  errors, and install from the local folder as a marketplace;
- every skill stays within the portable limits, and every path and every `vc <command>`
  written in a skill or reference exists and accepts the flags shown (`--help`), so the
  skills cannot drift from the scripts;
- the launcher builds its dependency env once, reuses it, rebuilds only when the
  dependencies change, and says clearly when Python is too old;
- end to end: the real `claude -p "/vast-run --sandbox …"` against a local stand-in for the
  Messages API (tests/model_standin.py) runs the whole flow on a sandbox and leaves no
  instance behind.

`./dev test` installs the pinned client into .tools/ with npm and exports its bin folder in
VASTICLAUDE_CLAUDE_BIN; without it, the tests that need it fail with one line saying so.
Nothing here reaches the network: HOME is a throwaway folder and nonessential traffic is off.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from model_standin import Reply, StandIn, VastRunScript, offers_bash, text_of, tool_results

ROOT = Path(__file__).resolve().parents[1]
VC = ROOT / "scripts" / "vc"
SKILLS = ROOT / "skills"
CLAUDE_VERSION = "2.1.332"
USER_ONLY = {"vast-status", "vast-logs", "vast-down", "vast-setup"}
SLASH_COMMANDS = {"vast-run", "vast-sweep", "vast-status", "vast-logs", "vast-down", "vast-cost", "vast-setup"}
GRANT = 'Bash("${CLAUDE_PLUGIN_ROOT}/scripts/vc" *)'


# ----- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def claude() -> str:
    """The pinned client; a clear one-line failure (never a skip) when it is not installed."""
    bindir = Path(os.environ.get("VASTICLAUDE_CLAUDE_BIN") or ROOT / ".tools" / "node_modules" / ".bin")
    exe = bindir / "claude"
    if not exe.exists():
        pytest.fail(f"Claude Code {CLAUDE_VERSION} not found in {bindir}: run ./dev test, which installs it "
                    "with npm (install Node.js/npm first if it says npm is missing)", pytrace=False)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60).stdout
    if not version.startswith(CLAUDE_VERSION):
        pytest.fail(f"{exe} is {version.strip()!r}, not {CLAUDE_VERSION}: rm -rf .tools and run ./dev test",
                    pytrace=False)
    return str(exe)


def claude_env(home: Path, **extra: str) -> dict:
    """A throwaway HOME, no nonessential traffic, nothing of an enclosing Claude session."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLAUDE", "ANTHROPIC", "VAST_", "VASTICLAUDE_")) and k != "AI_AGENT"}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", VASTAI_NO_UPDATE_CHECK="1")
    env.update(extra)
    return env


def run_claude(claude: str, args: list[str], env: dict, cwd: Path = ROOT, timeout: float = 120):
    return subprocess.run([claude, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def plugin_data(tmp_path_factory) -> dict:
    """One launcher env for the session, built the way a user's first call builds it.

    Built once per run, not once per xdist worker: the first worker to need it builds it in the
    run's temp folder under a lock, and the others wait for that build and get its result."""
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # <run>/popen-gwN -> <run>, common to this run's workers only
    data, result = shared / "plugin-data", shared / "plugin-data.json"
    with FileLock(str(shared / "plugin-data.lock")):
        if not result.exists():
            data.mkdir(exist_ok=True)
            env = {**os.environ, "CLAUDE_PLUGIN_DATA": str(data), "VASTICLAUDE_HOME": str(data / "vchome")}
            started = time.monotonic()
            proc = subprocess.run([str(VC), "--prepare"], capture_output=True, text=True, env=env, timeout=600)
            result.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout,
                                          "stderr": proc.stderr, "seconds": time.monotonic() - started}))
        built = json.loads(result.read_text())
    proc = subprocess.CompletedProcess([str(VC), "--prepare"], built["returncode"], built["stdout"], built["stderr"])
    return {"dir": data, "proc": proc, "seconds": built["seconds"]}


def vc(plugin_data: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "CLAUDE_PLUGIN_DATA": str(plugin_data["dir"]),
            "VASTICLAUDE_HOME": str(plugin_data["dir"] / "vchome"), **env}
    return subprocess.run([str(VC), *args], capture_output=True, text=True, env=full, timeout=120,
                          stdin=subprocess.DEVNULL)


# ----- manifest, loading, installing ---------------------------------------------------------

def test_validate_strict(claude, tmp_path):
    env = claude_env(tmp_path / "home")
    for target in (".", ".claude-plugin/plugin.json"):
        proc = run_claude(claude, ["plugin", "validate", target, "--strict"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Validation passed" in proc.stdout


def test_plugin_loads_without_errors(claude, tmp_path):
    proc = run_claude(claude, ["--plugin-dir", str(ROOT), "plugin", "list", "--json"], claude_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    ours = [p for p in json.loads(proc.stdout) if p["id"] == "vasticlaude@inline"]
    assert ours and ours[0]["enabled"] and not ours[0].get("errors"), ours
    details = run_claude(claude, ["--plugin-dir", str(ROOT), "plugin", "details", "vasticlaude"],
                         claude_env(tmp_path / "home"))
    for name in SLASH_COMMANDS | {"vast-gpu", "vast-monitor"}:
        assert name in details.stdout


def test_installs_from_the_local_folder_as_a_marketplace(claude, tmp_path):
    env = claude_env(tmp_path / "home")
    added = run_claude(claude, ["plugin", "marketplace", "add", str(ROOT)], env)
    assert added.returncode == 0 and "vasticlaude-local" in added.stdout, added.stdout + added.stderr
    installed = run_claude(claude, ["plugin", "install", "vasticlaude@vasticlaude-local"], env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = json.loads(run_claude(claude, ["plugin", "list", "--json"], env).stdout)
    ours = [p for p in listed if p["id"] == "vasticlaude@vasticlaude-local"]
    assert ours and ours[0]["enabled"] and not ours[0].get("errors"), listed


# ----- skills: limits, paths, commands -------------------------------------------------------

def frontmatter(path: Path) -> tuple[dict, str]:
    """The `key: value` frontmatter (what our skills use) and the body."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path}: no frontmatter"
    head, body = text[4:].split("\n---\n", 1)
    meta = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        meta[key.strip()] = value.strip().strip('"')
    return meta, body


def skill_files() -> list[Path]:
    return sorted(SKILLS.glob("*/SKILL.md"))


def doc_files() -> list[Path]:
    """Everything Claude may read: skills, their references, commands."""
    return sorted([*SKILLS.rglob("*.md"), *(ROOT / "commands").rglob("*.md")])


@pytest.mark.unit
def test_skill_frontmatter_limits():
    names = set()
    for path in skill_files():
        meta, body = frontmatter(path)
        name, desc = meta.get("name", ""), meta.get("description", "")
        names.add(name)
        assert name == path.parent.name, f"{path}: name {name!r} differs from its folder"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) and len(name) <= 64, name
        assert 0 < len(desc) <= 1024 and "<" not in desc and ">" not in desc, f"{path}: description"
        assert len(body.splitlines()) < 500, f"{path}: body too long"
        assert meta.get("allowed-tools") == GRANT, f"{path}: allowed-tools must be exactly {GRANT}"
        user_only = meta.get("disable-model-invocation") == "true"
        assert user_only == (name in USER_ONLY), f"{path}: disable-model-invocation"
        # $0, $1 … are positional arguments in skill text: "$0.50" would be silently replaced.
        assert not re.search(r"\$\d", body), f"{path}: a $<digit> would be substituted"
    assert SLASH_COMMANDS | {"vast-gpu", "vast-monitor"} == names


@pytest.mark.unit
def test_skill_paths_exist():
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for link in re.findall(r"\]\(([^)#]+)\)", text):
            if not re.match(r"[a-z]+://", link):
                assert (path.parent / link).exists(), f"{path}: link {link} does not exist"
        for rel in re.findall(r"\$\{CLAUDE_PLUGIN_ROOT\}/([\w./-]+)", text):
            assert (ROOT / rel).exists(), f"{path}: {rel} does not exist"
        for rel in re.findall(r"\$\{CLAUDE_SKILL_DIR\}/([\w./-]+)", text):
            assert (path.parent / rel).exists(), f"{path}: {rel} does not exist"
        if path.name == "SKILL.md":
            for ref in (path.parent / "references").glob("*.md"):
                assert ref.name in text, f"{path} never says when to read {ref.name}"


INVOCATION = re.compile(r'(?:scripts/vc"?|(?<![\w/-])vc|(?<![\w/:-])vasticlaude)\s+([a-z][a-z-]*)(.*)')


def invocations() -> list[tuple[Path, str, list[str]]]:
    """Every `vc <command> --flags` written in a code span of a skill, reference or command."""
    found = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for span in re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.S):
            for line in span.strip("`").splitlines():
                match = INVOCATION.search(line)
                if match:
                    flags = re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-n)\b", match.group(2).split(" -- ")[0])
                    found.append((path, match.group(1), flags))
    return found


def test_every_command_in_the_skills_exists_with_its_flags(plugin_data):
    assert plugin_data["proc"].returncode == 0, plugin_data["proc"].stderr
    calls = invocations()
    assert len(calls) >= 30, "the skills should show their commands"
    helps: dict[str, str] = {}
    for path, command, flags in calls:
        if command not in helps:
            proc = vc(plugin_data, command, "--help")
            assert proc.returncode == 0, f"{path.relative_to(ROOT)}: `vc {command} --help` failed: {proc.stderr[-300:]}"
            helps[command] = proc.stdout
        for flag in flags:
            assert flag in helps[command], f"{path.relative_to(ROOT)}: `vc {command}` has no {flag}"
    assert {"offers", "up", "push", "run", "status", "logs", "pull", "down", "cost", "report", "doctor"} <= set(helps)


# ----- the launcher --------------------------------------------------------------------------

def test_launcher_builds_once_then_reuses(plugin_data):
    first = plugin_data["proc"]
    assert first.returncode == 0 and first.stdout == "", first.stderr  # --prepare: silent on stdout
    assert "preparing Python env" in first.stderr
    venv = plugin_data["dir"] / "venv"
    assert (venv / "bin" / "python").exists() and (venv / ".vc-deps").exists()
    assert not (plugin_data["dir"] / "venv.lock").exists()
    # The package itself is never installed: it is imported from the plugin folder.
    probe = [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('vasticlaude'))"]
    assert subprocess.run(probe, capture_output=True, text=True, cwd="/").stdout.strip() == "None"
    second = vc(plugin_data, "--help")
    assert second.returncode == 0 and "preparing" not in second.stderr and "Commands:" in second.stdout
    assert (venv / "bin" / "python").stat().st_ino == (plugin_data["dir"] / "venv" / "bin" / "python").stat().st_ino


def fake_root(tmp_path: Path, deps: str) -> Path:
    """A plugin folder with the real launcher, a given dependency list and a stub package."""
    root = tmp_path / "plugin"
    (root / "scripts" / "vasticlaude").mkdir(parents=True)
    shutil.copy(VC, root / "scripts" / "vc")
    (root / "scripts" / "vasticlaude" / "__init__.py").write_text("")
    (root / "scripts" / "vasticlaude" / "__main__.py").write_text("import sys; print('stub', *sys.argv[1:])\n")
    (root / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "1"\ndependencies = [\n{deps}]\n\n'
                                         '[project.optional-dependencies]\ntest = ["pytest"]\n')
    return root


def test_launcher_rebuilds_only_when_dependencies_change(tmp_path):
    root = fake_root(tmp_path, "")
    env = {**os.environ, "CLAUDE_PLUGIN_DATA": str(tmp_path / "data"), "VASTICLAUDE_HOME": str(tmp_path / "h")}
    run = lambda: subprocess.run([str(root / "scripts" / "vc"), "hello"], capture_output=True, text=True,  # noqa: E731
                                 env=env, timeout=300)
    first = run()
    assert first.returncode == 0 and first.stdout == "stub hello\n" and "preparing" in first.stderr, first.stderr
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(text.replace('version = "1"', 'version = "2"'))  # not a dependency
    again = run()
    assert again.returncode == 0 and "preparing" not in again.stderr
    (root / "pyproject.toml").write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "filelock",  # c\n'))
    rebuilt = run()
    assert rebuilt.returncode == 0 and "preparing" in rebuilt.stderr, rebuilt.stderr
    assert (tmp_path / "data" / "requirements.txt").read_text() == "filelock\n"
    assert list((tmp_path / "data").glob("venv.*")) == []  # no temp, old or lock folder left


def test_two_sessions_never_build_at_once(tmp_path):
    root = fake_root(tmp_path, "")
    env = {**os.environ, "CLAUDE_PLUGIN_DATA": str(tmp_path / "data"), "VASTICLAUDE_HOME": str(tmp_path / "h")}
    procs = [subprocess.Popen([str(root / "scripts" / "vc"), f"s{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(out for out, _ in outs) == ["stub s0\n", "stub s1\n"]
    assert sum(err.count("preparing Python env") for _, err in outs) == 1, outs
    assert not (tmp_path / "data" / "venv.lock").exists()


@pytest.mark.unit
def test_launcher_says_when_python_is_too_old(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("python3", "python3.10", "python3.11", "python3.12", "python3.13"):
        (fake / name).write_text("#!/bin/sh\necho 3.8\n")
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin", "CLAUDE_PLUGIN_DATA": str(tmp_path / "data")}
    env.pop("VASTICLAUDE_PYTHON", None)
    proc = subprocess.run([str(VC), "cost"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python >= 3.10" in lines[0] and "3.8" in lines[0], proc.stderr


# ----- end to end under the real client ------------------------------------------------------

TRAIN = '''import json, os, time
ckpt, out = os.environ["VASTICLAUDE_CHECKPOINT_DIR"], os.environ["VASTICLAUDE_OUTPUT_DIR"]
for step in range(1, 13):
    time.sleep(0.1)
    print(f"epoch 1/1 step {step}/12 loss={1.0 / step:.4f}", flush=True)
    if step % 4 == 0:
        json.dump({"step": step}, open(os.path.join(ckpt, "state.json"), "w"))
open(os.path.join(out, "result.txt"), "w").write("trained\\n")
'''
FLOW = ["doctor", "offers", "up", "push", "run", "watch", "report", "cost"]


class Session:
    """One `claude -p` session in a throwaway HOME and project, on a sandbox of its own."""

    def __init__(self, claude: str, plugin_data: dict, tmp_path: Path):
        self.claude, self.tmp = claude, tmp_path
        self.home, self.vchome, self.project = tmp_path / "home", tmp_path / "vchome", tmp_path / "project"
        self.project.mkdir()
        (self.project / "train.py").write_text(TRAIN)
        self._share_env(plugin_data["dir"] / "venv")
        shims = tmp_path / "shims"  # `python` on the instance is this interpreter (the host's)
        shims.mkdir()
        (shims / "python").symlink_to(sys.executable)
        self.path = f"{shims}:{os.environ['PATH']}"

    def _share_env(self, venv: Path) -> None:
        """Reuse the session's launcher env, where a SessionStart hook would have prepared it."""
        data = self.home / ".claude" / "plugins" / "data" / "vasticlaude-inline"
        data.mkdir(parents=True)
        (data / "venv").symlink_to(venv)
        self.vchome.mkdir()
        (self.vchome / "plugin-data").write_text(f"{data}\n")

    def env(self, **extra: str) -> dict:
        return claude_env(self.home, VASTICLAUDE_HOME=str(self.vchome), VASTICLAUDE_POLL_SCALE="0.05",
                          VASTICLAUDE_SIM_TIME_SCALE="0", PATH=self.path, **extra)

    def vc(self, *args: str) -> dict:
        """A launcher call outside Claude (as the user's shell would make it); its JSON data."""
        cut = args.index("--") if "--" in args else len(args)  # flags before a command's own arguments
        proc = subprocess.run([str(VC), *args[:cut], "--json", *args[cut:]], capture_output=True, text=True, env=self.env(),
                              cwd=self.project, timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)["data"]

    def run(self, prompt: str, script, timeout: float = 300) -> subprocess.CompletedProcess:
        self.standin = StandIn(script, self.tmp / "requests.jsonl").start()
        env = self.env(ANTHROPIC_BASE_URL=self.standin.url, ANTHROPIC_API_KEY="sk-ant-fake")
        args = ["-p", prompt, "--plugin-dir", str(ROOT), "--allowedTools", f"Bash({VC} *)",
                "--debug-file", str(self.tmp / "debug.log")]
        try:
            return run_claude(self.claude, args, env, cwd=self.project, timeout=timeout)
        finally:
            self.standin.stop()

    def sandbox_instances(self) -> list[dict]:
        info = json.loads((self.vchome / "sim" / "sim.json").read_text())
        req = urllib.request.Request(info["url"] + "/api/v0/instances/?owner=me",
                                     headers={"Authorization": f"Bearer {info['api_key']}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read()).get("instances") or []

    def wait_for_reap(self, deadline: float) -> None:
        """Let the SessionEnd worker finish before its sandbox goes (it would retry against it)."""
        report = self.vchome / "last-session-end.json"
        while time.monotonic() < deadline:
            if report.exists() and json.loads(report.read_text() or "{}").get("finished"):
                return
            time.sleep(0.5)

    def stop_sandbox(self) -> None:
        from vasticlaude.sim.client import kill_containers, stop_background
        state = self.vchome / "sim"
        if (state / "sim.json").exists():
            marker = json.loads((state / "sim.json").read_text()).get("marker", "")
            stop_background(state)
            kill_containers(marker)


def envelope(result: dict) -> dict:
    """The scripts' JSON envelope inside a tool_result (stderr progress lines around it)."""
    for line in text_of(result).splitlines():
        if line.startswith('{"data":'):
            return json.loads(line)
    raise AssertionError(f"no JSON envelope in the tool result: {text_of(result)[:500]}")


def test_vast_run_end_to_end_under_claude(claude, plugin_data, tmp_path):
    session = Session(claude, plugin_data, tmp_path)
    script = VastRunScript(FLOW, {"exp": "e2e", "vram_gb": "8", "hours": "1", "disk": "8", "budget": "1",
                                  "max_hours": "1", "image": "vastai/base:0.0.2", "command": "python train.py"})
    try:
        proc = session.run("/vast-run --sandbox python train.py", script)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not session.standin.errors, session.standin.errors
        bodies = [b for b in session.standin.requests() if b.get("tools")]
        first = json.dumps(bodies[0])
        # The skill expanded, with the plugin path substituted, and reached the model.
        assert "<command-name>/vasticlaude:vast-run</command-name>" in first
        assert f"Base directory for this skill: {ROOT}/skills/vast-run" in first
        assert json.dumps(f'"{VC}" offers')[1:-1] in first and "${CLAUDE_PLUGIN_ROOT}" not in first
        assert "--sandbox python train.py" in first
        results = tool_results(bodies[-1])
        assert len(results) == len(FLOW) == len(script.issued), [text_of(r)[:300] for r in results]
        data = {step: envelope(r) for step, r in zip(FLOW, results)}
        assert all(d["ok"] for d in data.values()), {k: v["error"] for k, v in data.items() if not v["ok"]}
        up = data["up"]["data"]
        assert str(up["offer_id"]) in script.issued[FLOW.index("up")]  # the offer came from offers' JSON
        assert all(cmd.startswith(f'"{VC}" ') and cmd.split()[1] == step for cmd, step in zip(script.issued, FLOW))
        doctor = data["doctor"]["data"]  # a fresh home: the key is made and registered by up, a note, not a failure
        assert {c["name"]: c["status"] for c in doctor["checks"]}["ssh_key"] == "note" and "api" in doctor["passed"]
        assert doctor["target"]["kind"] == "sandbox" and "url" not in doctor["target"]  # the embedded one's port says nothing
        assert data["cost"]["data"]["billing_usd_per_hour"] == 0
        assert data["offers"]["data"]["candidates"] and data["push"]["data"]["files"] >= 1
        assert data["run"]["data"]["state"] in ("running", "exited")
        watched = data["watch"]["data"]  # waits, pulls (verified) and destroys
        assert watched["outcome"] == "finished" and watched["job"]["exit_code"] == 0 and watched["pull"]["files"] >= 1
        assert "exit_code" not in watched and "query" not in data["offers"]["data"]  # ok: true says 0; Claude wrote the flags
        assert not {"created_at", "destroyed_at"} & set(data["cost"]["data"]["instances"][0])  # instances.json keeps when
        assert watched["down"]["destroyed"] == [up["instance_id"]] and not watched["down"].get("failed")
        assert Path(data["report"]["data"]["report"]).is_file()
        pulled = session.project / ".vasticlaude" / "runs" / "e2e" / "outputs" / "result.txt"
        assert pulled.read_text() == "trained\n"
        assert session.sandbox_instances() == []
    finally:
        session.stop_sandbox()


def test_hooks_under_claude(claude, plugin_data, tmp_path):
    """With the hooks: SessionStart's text (what still bills) reaches the model, and after the
    session ends the SessionEnd worker leaves no unguarded instance (rented, no job, no guard):
    neither the one rented before the session nor the one rented in it."""
    if not (ROOT / "hooks" / "hooks.json").exists():
        pytest.fail("hooks/hooks.json missing: the SessionStart/SessionEnd assertions cannot run yet", pytrace=False)
    session = Session(claude, plugin_data, tmp_path)
    script = VastRunScript(["offers", "up"], {"exp": "hooked", "vram_gb": "8", "hours": "1", "disk": "8",
                                              "budget": "1", "image": "vastai/base:0.0.2"})
    try:
        before = session.vc("up", "--sandbox", "--experiment", "before", "--image", "vastai/base:0.0.2", "--disk", "8")
        proc = session.run("/vast-run --sandbox python train.py", script)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        first = json.dumps([b for b in session.standin.requests() if b.get("tools")][0])
        assert "SessionStart:startup hook success" in first or "SessionStart hook additional context" in first
        assert str(before["instance_id"]) in first or "vasticlaude-before" in first
        deadline = time.monotonic() + 60
        while session.sandbox_instances() and time.monotonic() < deadline:
            time.sleep(1)
        assert session.sandbox_instances() == [], "the SessionEnd worker left an unguarded instance"
        session.wait_for_reap(deadline)
    finally:
        session.stop_sandbox()


class Scripted:
    """A model that issues the given Bash calls in turn; each may read the results so far."""

    def __init__(self, calls: list):
        self.calls, self.issued = calls, []

    def __call__(self, body: dict) -> Reply:
        if not offers_bash(body):
            return Reply(text="vasticlaude")
        results = tool_results(body)
        if len(results) >= len(self.calls):
            return Reply(text="done")
        call = self.calls[len(results)]
        command = call(results) if callable(call) else call
        self.issued.append(command)
        return Reply(bash=command, description="scripted")


FAILING = "import sys\nprint('loading config', flush=True)\nsys.exit('KeyError: learning_rate missing from config')\n"


def test_a_failing_job_says_why_and_its_hint_runs_under_claude(claude, plugin_data, tmp_path):
    """run exits 1 with error.hint naming the launcher's logs command; following the hint word for word works."""
    session = Session(claude, plugin_data, tmp_path)
    (session.project / "train.py").write_text(FAILING)
    up = session.vc("up", "--sandbox", "--experiment", "bad", "--image", "vastai/base:0.0.2", "--disk", "8")
    session.vc("push", "--sandbox", "--experiment", "bad", "--no-setup")

    def follow_hint(results: list[dict]) -> str:
        hint = envelope(results[-1])["error"]["hint"]
        found = re.search(r'"/[^"]+/scripts/vc" logs[^,]*?--experiment bad', hint)
        assert found, f"the hint names no runnable logs command: {hint}"
        return found.group(0) + " --json"

    script = Scripted([f'"{VC}" run --sandbox --experiment bad --json -- python train.py', follow_hint,
                       f'"{VC}" down --sandbox --experiment bad --json'])
    try:
        proc = session.run("/vast-run --sandbox python train.py", script)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results = tool_results([b for b in session.standin.requests() if b.get("tools")][-1])
        assert len(results) == 3, [text_of(r)[:300] for r in results]
        failed = envelope(results[0])
        assert failed["ok"] is False and failed["error"]["code"] == "command_failed", failed
        assert "exited at once with code 1" in failed["error"]["message"] and "learning_rate" in failed["error"]["message"]
        assert failed["data"]["log_tail"], "the log tail that explains stays in data"
        logs = envelope(results[1])
        assert logs["ok"] and any("learning_rate" in line for line in logs["data"]["lines"]), logs
        assert envelope(results[2])["ok"] and session.sandbox_instances() == []
        assert up["instance_id"]
    finally:
        session.stop_sandbox()


def test_a_command_chained_onto_the_launcher_is_denied_under_claude(claude, plugin_data, tmp_path):
    """The grant is for the launcher alone: `vc cost --json && …` is denied by the PreToolUse hook, with its reason."""
    session = Session(claude, plugin_data, tmp_path)
    marker = tmp_path / "chained-ran"
    script = Scripted([f'"{VC}" cost --json && touch {marker}', f'"{VC}" cost --json'])
    proc = session.run("/vast-cost", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = tool_results([b for b in session.standin.requests() if b.get("tools")][-1])
    assert len(results) == 2, [text_of(r)[:300] for r in results]
    assert "its own Bash call" in text_of(results[0]) and "'&&'" in text_of(results[0]), text_of(results[0])[:500]
    assert not marker.exists(), "the chained command ran"
    assert envelope(results[1])["ok"]  # the launcher alone still runs


def test_session_start_tells_an_ended_job_and_a_stopped_instance_under_claude(claude, plugin_data, tmp_path):
    session = Session(claude, plugin_data, tmp_path)
    try:
        ended = session.vc("up", "--sandbox", "--experiment", "ended", "--image", "vastai/base:0.0.2", "--disk", "8")
        session.vc("push", "--sandbox", "--experiment", "ended", "--no-setup")
        session.vc("run", "--sandbox", "--experiment", "ended", "--no-watchdog", "--", "python", "train.py")
        session.vc("status", "--sandbox", "--experiment", "ended", "--wait", "--interval", "0.5", "--timeout", "60")
        session.vc("pull", "--sandbox", "--experiment", "ended")
        stopped = session.vc("up", "--sandbox", "--experiment", "halted", "--image", "vastai/base:0.0.2", "--disk", "8")
        info = json.loads((session.vchome / "sim" / "sim.json").read_text())
        req = urllib.request.Request(f"{info['url']}/api/v0/instances/{stopped['instance_id']}/", method="PUT",
                                     data=b'{"state": "stopped"}', headers={"Authorization": f"Bearer {info['api_key']}",
                                                                             "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()  # as its watchdog stops it
        time.sleep(1)
        proc = session.run("/vast-status", Scripted([]))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        first = json.dumps([b for b in session.standin.requests() if b.get("tools")][0])
        assert f"{ended['instance_id']} ended: running" in first and "its job ended (exit 0)" in first, first[:3000]
        assert f"{stopped['instance_id']} halted: stopped" in first and "storage bills" in first
    finally:
        session.stop_sandbox()


# ----- the demo ------------------------------------------------------------------------------

@pytest.mark.alone  # the demo's job runs 6 s, and its own commands must fit in them (demo.py)
def test_demo_runs_the_whole_flow_and_stops_everything(tmp_path):
    """`vasticlaude demo` (what ./dev demo runs): every step, a report, nothing left running."""
    import psutil
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "VASTICLAUDE_"))}
    env["TMPDIR"] = str(tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vasticlaude", "demo"], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 120  # 90 before the second, unwatched run (issue 15)
    for step in ("offers", "up", "push", "run", "status", "watch", "pull", "report", "cost"):
        assert f"$ vasticlaude {step} --json" in proc.stdout
    assert "its host went down mid-run" in proc.stdout and "recovered from host_offline" in proc.stdout
    assert "fetched the checkpoint from the results store (1 files" in proc.stdout
    assert "billing now: 0.0 USD/h" in proc.stdout
    assert "the laptop leaves now" in proc.stdout and "shipped the results to the store and destroyed" in proc.stdout
    assert "files from the store into" in proc.stdout
    report = Path(proc.stdout.strip().rsplit("report: ", 1)[1])
    assert report.is_file() and "destroyed" in report.read_text().lower()
    assert (report.parent / "outputs" / "metrics.json").is_file()
    work = report.parents[4]
    assert sorted(p.name for p in work.iterdir()) == ["project"]  # homes removed, results kept
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []

"""Fuzz (issue 13): no content of config.json, instances.json, experiment.json or a hook's stdin
makes a loader raise, the session-end reap always completes, and nothing the account shows is
left unguarded.

Seeded (FUZZ_SEED, default 13) so a failure repeats: each case says its seed and kind. Most cases
run the loaders and the hook handlers in-process on one valid document mutated at random (a value
of a random JSON type at a random place, a truncation, a flipped byte, another encoding, deep
nesting, huge strings and numbers); a few run the real SessionEnd hook and its detached reap
against the sandbox with all three files damaged at once.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from test_hooks import ROOT, User, command_of, last_report, user, wait_worker, worker_pid  # noqa: F401 — `user`

from vasticlaude.store import config, records, state

sys.path.insert(0, str(ROOT / "hooks"))
import hooklib  # noqa: E402
import pre_tool_use  # noqa: E402
import session_end  # noqa: E402
import session_start  # noqa: E402
import stop  # noqa: E402

for _module in (pre_tool_use, session_end, stop):
    _module.hooklib = hooklib  # they import it only when run as scripts (their fast path)

SEED = int(os.environ.get("FUZZ_SEED", "13"))
CASES = int(os.environ.get("FUZZ_CASES", "100"))  # per file kind; the hook events get as many


# ----- valid documents -------------------------------------------------------------------------------
def valid_config() -> dict:
    return {**json.loads(json.dumps(config.DEFAULTS)), "gpu": ["RTX 4090"], "region": ["US"],
            "session_end": {"running": "leave-guarded", "finished": "destroy"}, "store": {"url": "s3://b/p"}}


def valid_instances() -> dict:
    recs = {}
    for n, (status, gone) in enumerate((("running", False), ("stopped", False), ("destroyed", True)), start=101):
        recs[str(n)] = {"id": n, "label": f"vasticlaude-e{n}", "experiment": f"e{n}", "status": status,
                        "created_at": 1000.0, "updated_at": 1100.0, "destroyed_at": 1200.0 if gone else None,
                        "dph_total": 0.3, "storage_dph": 0.01, "gpu_dph": 0.29, "num_gpus": 1, "disk": 8,
                        "target": "http://127.0.0.1:9", "created_by": "u@h session=s pid=1",
                        "history": [{"at": 1000.0, "status": "running", "why": "up"}]}
    return {"version": 1, "instances": recs, "intents": {"vasticlaude-x": {"label": "vasticlaude-x", "at": 5.0}},
            "failed_machines": [{"machine_id": 7, "at": 1.0}]}


def valid_experiment() -> dict:
    return {"version": 1, "id": "e101", "created_at": 1.0, "budget_usd": 2.0,
            "runs": [{"at": 1000.0, "instance_id": 101, "command": "python train.py"}],
            "pull": {"at": 900.0, "local_path": "/nonexistent"}, "guard": {"watchdog": True, "alive": True},
            "recovering": {"at": 1.0, "kind": "gone"}, "recoveries": [{"at": 1.0, "seconds": 3}]}


# ----- random JSON and mutations -----------------------------------------------------------------------
def any_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.choice(["null", "bool", "int", "float", "str", "list", "dict", "huge", "special"]
                      if depth < 4 else ["null", "bool", "int", "str"])
    if kind == "list":
        return [any_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "dict":
        return {rng.choice(["id", "at", "x", "history", "101", "", "\u00e9"]): any_json(rng, depth + 1)
                for _ in range(rng.randint(0, 4))}
    return {"null": None, "bool": rng.random() < 0.5, "int": rng.choice([0, -1, 1, 2 ** 63, -2 ** 70]),
            "float": rng.choice([0.5, -3.25, 1e308, -1e-308]), "str": rng.choice(["", "x", "US", "101", "..", "\x00"]),
            "huge": rng.choice(["x" * 200_000, 10 ** 200, [0] * 20_000]),
            "special": rng.choice([float("nan"), float("inf"), "\ud800", {"": {"": {}}}])}[kind]


def places(doc: object, path: tuple = ()) -> list[tuple]:
    """Every path to a value in `doc`."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += places(value, path + (key,))
    elif isinstance(doc, list):
        for n, value in enumerate(doc):
            out += places(value, path + (n,))
    return out


def set_at(doc: object, path: tuple, value: object) -> object:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def mutate(rng: random.Random, doc: dict) -> tuple[bytes, str]:
    """(bytes for the file, what was done)."""
    how = rng.choice(["value", "value", "value", "values", "truncate", "byte", "encoding", "deep", "garbage"])
    if how in ("value", "values"):
        for _ in range(1 if how == "value" else rng.randint(2, 6)):
            doc = set_at(doc, path := rng.choice(places(doc)), any_json(rng))
        return json.dumps(doc, indent=rng.choice([None, 1])).encode("utf-8", "surrogatepass"), f"{how} {path}"
    raw = json.dumps(doc, indent=1).encode()
    if how == "truncate":
        return raw[:rng.randint(0, len(raw))], how
    if how == "byte":
        at = rng.randrange(len(raw))
        return raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:], how
    if how == "encoding":
        return json.dumps(doc).encode(rng.choice(["utf-16", "utf-32", "latin-1"])) + rng.choice([b"", b"\xff\xfe"]), how
    if how == "deep":
        depth = rng.choice([70, 900, 100_000])
        return (b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"), f"{how} {depth}"
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))), how


# ----- in-process: the loaders and the hook handlers ------------------------------------------------------
@pytest.fixture
def quiet_home(tmp_path, monkeypatch):
    """A home whose detached work is a no-op and whose account cannot be reached (nothing leaves the machine)."""
    for name in ("VAST_API_KEY", "VAST_URL", "CLAUDE_ENV_FILE", "CLAUDE_PROJECT_DIR", "VASTICLAUDE_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VASTICLAUDE_HOOK_PYTHON", "/bin/true")  # a started reap does nothing
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fresh_home(monkeypatch, base: Path, n: int) -> Path:
    home = base / f"h{n}"
    monkeypatch.setenv("VASTICLAUDE_HOME", str(home))
    home.mkdir()
    return home


def run_hooks(event: dict) -> None:
    """Every hook's handler on this home and event: none may raise."""
    for handler in (session_start.handle, stop.handle, pre_tool_use.handle, session_end.handle):
        out = handler(event)
        assert out is None or isinstance(out, str)


@pytest.mark.unit
def test_fuzz_config_files(quiet_home, monkeypatch, capsys):
    rng = random.Random(SEED)
    for n in range(CASES):
        raw, how = mutate(rng, valid_config())
        project = quiet_home / f"p{n}"
        (project / ".vasticlaude").mkdir(parents=True)
        (project / ".vasticlaude" / "config.json").write_bytes(raw)
        cfg, problems = config.check(project)
        clean, left = records.check_config(cfg)
        assert not left and clean == cfg, f"seed {SEED} case {n} ({how}): the loaded config is not clean: {left}"
        assert isinstance(cfg["guard"], dict) and isinstance(cfg["region"], list), f"case {n} ({how})"
    capsys.readouterr()


@pytest.mark.unit
def test_fuzz_instances_files_and_the_hooks_reading_them(quiet_home, monkeypatch, capsys):
    rng = random.Random(SEED + 1)
    for n in range(CASES):
        home = fresh_home(monkeypatch, quiet_home, n)
        raw, how = mutate(rng, valid_instances())
        (home / "instances.json").write_bytes(raw)
        where = f"seed {SEED + 1} case {n} ({how})"
        data = state.load()
        data.pop("damaged", None)
        assert records.check_instances(data)[1] == [], where
        state.live_instances(data)
        run_hooks({"session_id": f"s{n}", "cwd": str(quiet_home)})
        with state.transaction() as locked:  # the write-back of what was readable never fails
            locked["instances"].get("101")
        again = json.loads((home / "instances.json").read_text())
        assert records.check_instances(again)[1] == [], where
        destroyed = {k for k, r in json.loads(json.dumps(valid_instances()))["instances"].items() if r["destroyed_at"]}
        if how == "truncate" and b'"102"' in raw[raw.find(b'"103"'):]:  # the destroyed record was whole
            assert destroyed <= set(again["instances"]), where
    capsys.readouterr()


@pytest.mark.unit
def test_fuzz_experiment_files_and_the_hooks_reading_them(quiet_home, monkeypatch, capsys):
    rng = random.Random(SEED + 2)
    for n in range(CASES):
        home = fresh_home(monkeypatch, quiet_home, n)
        (home / "instances.json").write_text(json.dumps(valid_instances()))
        folder = home / "experiments" / "e101"
        folder.mkdir(parents=True)
        raw, how = mutate(rng, valid_experiment())
        (folder / "experiment.json").write_bytes(raw)
        exp = state.read_experiment("e101") or {}
        assert records.check_experiment(exp)[1] == [], f"seed {SEED + 2} case {n} ({how})"
        rec = state.load()["instances"]["101"]
        hooklib.job_in_flight(rec), hooklib.job_ended(rec), hooklib.guarded(rec, None)
        run_hooks({"session_id": f"s{n}", "cwd": str(quiet_home)})
        with state.experiment("e101") as data:
            data.setdefault("runs", []).append({"at": 1.0})
    capsys.readouterr()


@pytest.mark.unit
def test_fuzz_hook_events(quiet_home, monkeypatch, capsys):
    rng = random.Random(SEED + 3)
    home = fresh_home(monkeypatch, quiet_home, 0)
    (home / "instances.json").write_text(json.dumps(valid_instances()))
    event = {"session_id": "s", "cwd": str(quiet_home), "hook_event_name": "PreToolUse", "reason": "other",
             "stop_hook_active": False, "tool_name": "Bash", "tool_input": {"command": "vastai create instance 1"}}
    for n in range(CASES):
        raw, how = mutate(rng, json.loads(json.dumps(event)))
        run_hooks(hooklib.read_event(raw=raw))
        assert hooklib.main(session_end.handle, "SessionEnd", raw=raw) == 0
        assert "hook failed" not in capsys.readouterr().err, f"seed {SEED + 3} case {n} ({how})"


# ----- through the real hook, reap and sandbox ---------------------------------------------------------
SANDBOX_CASES = int(os.environ.get("FUZZ_SANDBOX_CASES", "3"))


def damage_all(rng: random.Random, user: User, iid: int, experiment: str) -> list[str]:
    """Damage config.json, instances.json and the experiment's file at once; what was done."""
    done = []
    cfg_path = user.project / ".vasticlaude" / "config.json"
    cfg_path.parent.mkdir(exist_ok=True)
    raw, how = mutate(rng, valid_config())
    cfg_path.write_bytes(raw)
    done.append(f"config: {how}")
    raw, how = mutate(rng, json.loads((user.vchome / "instances.json").read_text()))
    (user.vchome / "instances.json").write_bytes(raw)
    done.append(f"instances: {how}")
    raw, how = mutate(rng, {**valid_experiment(), "id": experiment,
                            "runs": [{"at": 1.0, "instance_id": iid}]})
    (user.vchome / "experiments" / experiment / "experiment.json").write_bytes(raw)
    done.append(f"experiment: {how}")
    return done


@pytest.mark.parametrize("case", range(SANDBOX_CASES))
def test_fuzz_session_end_reap_completes_and_leaves_nothing_unguarded(user, case):
    rng = random.Random(SEED * 1000 + case)
    iid = user.up(f"fuzz{case}")
    done = damage_all(rng, user, iid, f"fuzz{case}")
    event, _ = mutate(rng, {"session_id": f"fuzz-{case}", "cwd": str(user.project), "reason": "other"})
    proc = _fire_raw(user, event)
    pid = worker_pid(proc.stdout)
    user.workers.append(pid)
    wait_worker(pid)
    report = last_report(user.vchome)
    assert report["finished"], f"seed {SEED * 1000 + case}: {done}: the reap did not finish"
    guarded = {i["id"] for i in report["instances"] if i["action"] == "left-guarded"}
    left = {i: r for i, r in user.account().items() if i not in guarded}
    assert not left, f"seed {SEED * 1000 + case}: {done}: left on the account unguarded: {sorted(left)}"


def _fire_raw(user: User, raw: bytes):
    """The SessionEnd hook with `raw` bytes on stdin, as hooks.json runs it."""
    proc = subprocess.run(["sh", "-c", command_of("SessionEnd")], input=raw, capture_output=True,
                          env=user.hook_env(), timeout=10)
    assert proc.returncode == 0, proc.stderr
    return subprocess.CompletedProcess(proc.args, 0, proc.stdout.decode(), proc.stderr.decode())

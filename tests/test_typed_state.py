"""Typed loading (issue 13, item 6): no content of config.json, instances.json or experiment.json
stops a guard. Bad parts are left out, the file is copied aside once (`.bad-<time>`), said once,
and the guards fall back to what the account shows; reconcile keeps the ledger a torn file still holds.

Through the real parts: the SessionEnd/SessionStart hooks, the detached reap, status, doctor and
reconcile against the sandbox.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_hooks import User, last_report, user, wait_worker  # noqa: F401 — `user`: a project driving the sandbox

from vasticlaude.store import config, quarantine, records, state


def write_config(project: Path, data: object) -> Path:
    path = project / ".vasticlaude" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def edit_state(vchome: Path, change) -> None:
    path = vchome / "instances.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ----- the loaders ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_config_wrong_types_fall_back_to_defaults_once_and_keep_new_keys(tmp_path, capsys):
    path = write_config(tmp_path, {"guard": "x", "recovery": 5, "region": "US", "gpu": "RTX 4090",
                                   "session_end": {"running": 3}, "budget": {"experiment_usd": 7},
                                   "store": {"url": "s3://bucket/x"}, "later": {"url": "s3://bucket/x"}})
    cfg, problems = config.check(tmp_path)
    assert cfg["guard"] == config.DEFAULTS["guard"] and cfg["recovery"] == config.DEFAULTS["recovery"]
    assert cfg["region"] == ["US"] and cfg["gpu"] == ["RTX 4090"]  # one string is a list of one, not ["U", "S"]
    assert cfg["budget"]["experiment_usd"] == 7 and cfg["later"] == {"url": "s3://bucket/x"}  # unknown key kept
    assert cfg["store"]["url"] == "s3://bucket/x" and cfg["store"]["timeout_s"] == 300  # a declared block, defaults filled
    assert "session_end" not in cfg or "running" not in cfg["session_end"]
    assert sorted(p.split(":")[0] for p in problems) == ["guard", "recovery", "session_end.running"]
    copies = list(path.parent.glob("config.json.bad-*"))
    assert len(copies) == 1 and json.loads(copies[0].read_text())["guard"] == "x"
    said = capsys.readouterr().err
    assert said.count("bad part(s)") == 1 and "guard" in said
    config.check(tmp_path)  # the same content again: no second copy, nothing said
    assert len(list(path.parent.glob("config.json.bad-*"))) == 1 and capsys.readouterr().err == ""
    path.write_text("{not json")
    assert config.load(tmp_path) == config.DEFAULTS and len(list(path.parent.glob("config.json.bad-*"))) == 2


@pytest.mark.unit
def test_bad_records_are_left_out_and_a_torn_file_keeps_what_it_can(tmp_path):
    data, problems = records.check_instances({"instances": {"12": "x", "13": {"id": 13, "history": 5, "status": "running"},
                                                            "../x": {}}, "intents": [], "failed_machines": [{"at": 1}]})
    assert list(data["instances"]) == ["13"] and data["instances"]["13"]["history"] == []
    assert data["intents"] == {} and data["failed_machines"] == [] and len(problems) == 5
    good = {"version": 1, "intents": {}, "instances": {
        "5": {"id": 5, "status": "destroyed", "destroyed_at": 3.0, "history": [{"at": 1.0, "status": "running"}]},
        "6": {"id": 6, "status": "running", "history": [{"at": 2.0, "status": "running"}]}}}
    text = json.dumps(good, indent=1)
    path = state.instances_path()
    path.parent.mkdir(parents=True)
    path.write_text(text[:text.index('"6"') + 30])  # torn inside the second record
    snap = state.load()
    assert list(snap["instances"]) == ["5"] and snap["damaged"]["copy"].endswith(tuple("0123456789"))
    with state.transaction():
        pass
    assert list(json.loads(path.read_text())["instances"]) == ["5"]  # the ledger's record survives
    assert [e["file"] for e in quarantine.recent()] == [str(path)] and state.damaged_recently()


@pytest.mark.unit
def test_experiment_file_wrong_types_are_left_out(tmp_path):
    folder = state.experiment_dir("e1")
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps({"runs": 5, "pull": [], "guard": "x", "budget_usd": 3,
                                                        "recovering": {"at": "x", "kind": "gone"}}))
    exp = state.read_experiment("e1")
    assert exp == {"budget_usd": 3, "recovering": {"kind": "gone"}}
    with state.experiment("e1") as data:
        data.setdefault("runs", []).append({"at": 1.0})
    assert json.loads((folder / "experiment.json").read_text())["runs"] == [{"at": 1.0}]
    assert len(list(folder.glob("experiment.json.bad-*"))) == 1


# ----- the guards, through the hooks and the sandbox ---------------------------------------------------
def reaped(user: User, iid: int) -> dict:
    wait_worker(user.session_end())
    report = last_report(user.vchome)
    assert report["finished"] and not report["undone"], report
    assert iid not in user.account(), f"instance {iid} still on the account after the reap"
    return report


@pytest.mark.parametrize("damage", ["guard", "recovery", "history", "record"])
def test_session_end_reap_survives_wrong_types(user, damage):
    iid = user.up(f"typed-{damage}")
    if damage in ("guard", "recovery"):
        write_config(user.project, {damage: "x" if damage == "guard" else 5})
    elif damage == "history":
        edit_state(user.vchome, lambda d: d["instances"][str(iid)].update(history=5))
    else:  # the record itself is garbage: only the account knows the instance now
        edit_state(user.vchome, lambda d: d["instances"].update({str(iid): "x"}))
    report = reaped(user, iid)
    assert [(i["id"], i["action"]) for i in report["instances"]] == [(iid, "destroyed")]
    assert any("bad part" in note for note in report["notes"]), report["notes"]


def test_a_torn_state_file_status_falls_back_to_the_account_and_reconcile_keeps_the_ledger(user):
    gone = user.up("typed-gone")
    user.run("down", "--experiment", "typed-gone")
    live = user.up("typed-live")
    path = user.vchome / "instances.json"
    text = path.read_text()
    assert text.index(f'"{gone}"') < text.index(f'"{live}"')  # sorted keys: the older id first
    path.write_text(text[:text.index(f'"{live}"')] + '"')  # torn after the destroyed record, losing the live one
    start = user.session_start()
    assert "instances.json is corrupt" in start and str(live) in start  # the account names what the file lost
    snap = user.json("status", "--experiment", "typed-live")
    assert snap["instance_id"] == live and snap["quarantined"][0]["file"] == str(path)
    after = json.loads(path.read_text())["instances"]
    assert after[str(gone)]["destroyed_at"] and not after[str(live)].get("destroyed_at")
    assert len(list(user.vchome.glob("instances.json.bad-*"))) == 1
    doctor = json.loads(user.run("doctor", "--json", rc=None).stdout)["data"]
    files = next(c for c in doctor["checks"] if c["name"] == "files")
    assert files["status"] == "warn" and str(path) in files["detail"]
    user.run("down", "--experiment", "typed-live")


@pytest.mark.unit
def test_a_file_the_store_wrote_is_trusted_and_any_other_change_is_checked(tmp_path, monkeypatch):
    """The store notes the digest of what it writes, so `cost` over months of records skips the
    check; a hand edit after it misses the digest and is checked (and cleaned) in full."""
    monkeypatch.setenv("VASTICLAUDE_HOME", str(tmp_path))
    state.upsert_instance(7, label="vasticlaude-x", experiment="x", status="running", history=[])
    assert state.peek() == (state.load(), [])
    path = state.instances_path()
    data = json.loads(path.read_text())
    data["instances"]["7"]["history"] = 5  # a hand edit: the digest no longer matches
    path.write_text(json.dumps(data))
    loaded, problems = state.peek()
    assert loaded["instances"]["7"]["history"] == [] and problems and "history" in problems[0]

"""`vasticlaude doctor` and `vasticlaude cost`: checks, key sources, exact costs, no secrets.

Commands run as subprocesses exactly as a skill calls them, with a throwaway HOME and
XDG_CONFIG_HOME so no real key or SSH key of this machine is ever read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vasticlaude import cli
from vasticlaude.commands import cost, doctor
from vasticlaude.ops import groups
from vasticlaude.store import state

VC = str(Path(sys.executable).with_name("vasticlaude"))
SECRET = "vk-SECRET-4f1d2c9b8a7e6f5d4c3b2a1908f7e6d5c4b3a291"


def vhome() -> Path:
    return Path(os.environ["VASTICLAUDE_HOME"])


def client_env(tmp_path: Path, **extra: str) -> dict:
    """The test's environment with a throwaway HOME and no Vast variables of this machine."""
    home = tmp_path / "userhome"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "XDG_", "CLAUDE_SESSION"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), VASTAI_NO_UPDATE_CHECK="1")
    env.pop("VASTICLAUDE_TARGET", None)
    env.update(extra)
    return env


def vc(*args: str, env: dict, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([VC, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def data_of(proc: subprocess.CompletedProcess) -> dict:
    envelope = json.loads(proc.stdout)
    assert envelope["v"] == 1 and envelope["ok"] == (proc.returncode == 0), proc.stdout + proc.stderr
    assert envelope["ok"] or {"code", "message", "hint"} <= set(envelope["error"]), envelope  # exit != 0: why
    return envelope["data"]


def checks_of(data: dict) -> dict:
    """Every check by name: --json lists those that passed by name only."""
    return {**{name: {"name": name, "status": "ok"} for name in data["passed"]}, **{c["name"]: c for c in data["checks"]}}


def sim_env(sim, tmp_path: Path, key: str | None = None, **extra: str) -> dict:
    return client_env(tmp_path, VAST_URL=sim.url, VAST_API_KEY=key or sim.api_key, **extra)


# ----- doctor ------------------------------------------------------------------------------------
def test_doctor_all_ok_after_register_ssh_key(sim, tmp_path):
    env = sim_env(sim, tmp_path)
    first = vc("doctor", "--json", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr  # a fresh home: nothing blocks a rental
    checks = checks_of(data_of(first))
    assert checks["ssh_key"]["status"] == "note" and "`up` makes and registers one" in checks["ssh_key"]["detail"]
    assert "ssh_key_registered" not in checks  # one fact, said once: no key, so nothing to compare yet
    assert checks["api"]["status"] == "ok" and "$100.00" in data_of(first)["account"]
    assert data_of(first)["target"]["url"] == sim.url  # a VAST_URL of the user's is said (the embedded sandbox's is not)

    registered = vc("doctor", "--register-ssh-key", "--json", env=env, cwd=tmp_path)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    data = data_of(registered)
    assert data["checks"] == [] and sorted(data["passed"]) == sorted([*checks, "ssh_key_registered"])
    assert data["target"] == {"kind": "sandbox", "url": sim.url, "key_source": "env VAST_API_KEY",
                              "key_ends": "..." + sim.api_key[-4:]}
    public = (vhome() / "ssh" / "id_ed25519.pub").read_text().split()
    assert any(k["public_key"].split()[:2] == public[:2] for k in sim.sdk().show_ssh_keys())

    again = vc("doctor", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "all checks passed" in again.stdout
    assert "registered on the account" in again.stdout


def test_doctor_wrong_key_fails_auth_with_next_step(sim, tmp_path):
    proc = vc("doctor", "--json", env=sim_env(sim, tmp_path, key="wrong-key-for-this-sandbox-9z8y"), cwd=tmp_path)
    assert proc.returncode == 1
    api = checks_of(data_of(proc))["api"]
    assert api["status"] == "fail"
    assert "env VAST_API_KEY" in api["detail"] and "...9z8y" in api["detail"]
    assert "VAST_API_KEY" in api["next"] and "--sandbox" in api["next"]


def test_doctor_without_rsync_fails(sim, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "ssh-keygen"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    proc = vc("doctor", "--json", env=sim_env(sim, tmp_path, PATH=str(bin_dir)), cwd=tmp_path)
    assert proc.returncode == 1
    checks = checks_of(data_of(proc))
    assert checks["rsync"]["status"] == "fail" and "install" in checks["rsync"]["next"].lower()
    assert checks["ssh"]["status"] == "ok" and "OpenSSH" in vc("doctor", env=sim_env(sim, tmp_path, PATH=str(bin_dir)),
                                                               cwd=tmp_path).stdout


def test_doctor_unreachable_api_exits_3(tmp_path):
    proc = vc("doctor", "--json", env=client_env(tmp_path, VAST_URL="http://127.0.0.1:9", VAST_API_KEY=SECRET),
              cwd=tmp_path)
    assert proc.returncode == 3
    data = data_of(proc)
    assert checks_of(data)["api"]["status"] == "fail" and json.loads(proc.stdout)["error"]["code"] == "not_ready"


def test_doctor_corrupt_state_says_reconcile_rebuilds(sim, tmp_path):
    vhome().mkdir(parents=True, exist_ok=True)
    state.instances_path().write_text("{not json")
    proc = vc("doctor", "--json", env=sim_env(sim, tmp_path), cwd=tmp_path)
    check = checks_of(data_of(proc))["state"]
    assert check["status"] == "warn" and "reconcile" in check["next"]
    assert state.instances_path().read_text() == "{not json"  # doctor leaves it for reconcile


def test_key_sources_in_order(sim, tmp_path, monkeypatch, capsys):
    """flag > VAST_API_KEY > .vasticlaude/.env > .env > vastai's key file; only the last 4 shown."""
    home, project = tmp_path / "home", tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".vasticlaude").mkdir()
    (project / ".vasticlaude" / ".env").write_text("VAST_API_KEY=vcenv-key-000000000000-AAA1\n")
    (project / ".env").write_text("OTHER=1\nVAST_API_KEY=dotenv-key-000000000000-BBB2\n")
    (home / ".config" / "vastai").mkdir(parents=True)
    (home / ".config" / "vastai" / "vast_api_key").write_text("file-key-0000000000000-CCC3")
    for name in [n for n in os.environ if n.startswith(("VAST_", "XDG_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", "envvar-key-000000000000-DDD4")
    monkeypatch.chdir(project)

    def source(*flags: str) -> dict:
        assert doctor.main(["--json", *flags]) == 1  # the sandbox rejects every one of these keys
        return data_of(subprocess.CompletedProcess([], 1, capsys.readouterr().out, ""))["target"]

    assert source("--api-key", "flag-key-0000000000000-EEE5")["key_source"] == "flag"
    assert source()["key_ends"] == "...DDD4"
    monkeypatch.delenv("VAST_API_KEY")
    assert source() == {"kind": "vast", "url": sim.url, "key_source": str(project / ".vasticlaude" / ".env"),
                        "key_ends": "...AAA1"}
    (project / ".vasticlaude" / ".env").unlink()
    assert source()["key_source"] == str(project / ".env")
    (project / ".env").unlink()
    found = source()
    assert found["key_source"] == str(home / ".config" / "vastai" / "vast_api_key") and found["key_ends"] == "...CCC3"


# ----- cost from a hand-built history ---------------------------------------------------------------
def known_state() -> tuple[float, dict]:
    """Noon today and three instances with known histories (one began yesterday)."""
    noon = time.mktime(time.localtime()[:3] + (12, 0, 0, 0, 0, -1))
    mid = time.mktime(time.localtime(noon)[:3] + (0, 0, 0, 0, 0, -1))

    def rec(iid, exp, gpu, sto, hist, session, destroyed=None, status=None):
        return {"id": iid, "label": f"vasticlaude-{exp}-{iid}", "experiment": exp, "gpu_dph": gpu, "storage_dph": sto,
                "gpu_name": "RTX 4090", "created_at": hist[0][0], "destroyed_at": destroyed,
                "created_by": f"me@host session={session} pid=1", "status": status or hist[-1][1],
                "history": [{"at": at, "status": s, "why": ""} for at, s in hist]}
    data = {"version": 1, "intents": {}, "instances": {
        "101": rec(101, "exp1", 0.40, 0.02, [(mid - 3600, "created"), (mid - 3000, "running"), (mid + 600, "stopped"),
                                             (mid + 1200, "destroyed")], "s1", destroyed=mid + 1200),
        "102": rec(102, "exp1", 1.20, 0.036, [(noon - 7200, "created"), (noon - 7100, "loading"),
                                              (noon - 7000, "running")], "s1"),
        "103": rec(103, "exp2", 0.30, 0.01, [(noon - 1800, "running"), (noon - 900, "stopped")], "s2")}}
    return noon, data


def write_state(data: dict) -> None:
    vhome().mkdir(parents=True, exist_ok=True)
    state.instances_path().write_text(json.dumps(data))


def run_cost(monkeypatch, now: float, *argv: str) -> dict:
    monkeypatch.setattr(time, "time", lambda: now)
    return cost.run(cost.build_parser().parse_args(list(argv)))


@pytest.mark.unit
def test_cost_exact_figures_and_budgets(tmp_path, monkeypatch):
    noon, data = known_state()
    write_state(data)
    (tmp_path / ".vasticlaude").mkdir()
    (tmp_path / ".vasticlaude" / "config.json").write_text(json.dumps({"budget": {"experiment_usd": 99, "daily_usd": 20}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLAUDE_SESSION_ID", "s1")
    out = run_cost(monkeypatch, noon, "--experiment-usd", "5", "--experiment-hours", "3")

    rows = {r["id"]: r for r in out["instances"]}
    assert [r["id"] for r in out["instances"]] == [101, 102, 103]
    # 101: GPU 3600 s at $0.40/h, storage 4800 s at $0.02/h; destroyed, so it bills nothing now.
    assert (rows[101]["running_s"], rows[101]["exists_s"]) == (3600.0, 4800.0)
    assert (rows[101]["gpu_usd"], rows[101]["storage_usd"], rows[101]["total_usd"], rows[101]["dph_now"]) == \
        (0.4, 0.026667, 0.426667, 0.0)
    # 102: running 7000 s at $1.20/h, existing 7200 s at $0.036/h, still running.
    assert (rows[102]["gpu_usd"], rows[102]["storage_usd"], rows[102]["total_usd"], rows[102]["dph_now"]) == \
        (2.333333, 0.072, 2.405333, 1.236)
    # 103: ran 900 s at $0.30/h, exists 1800 s at $0.01/h, stopped: storage only now.
    assert (rows[103]["total_usd"], rows[103]["dph_now"], rows[103]["status"]) == (0.08, 0.01, "stopped")
    assert out["billing_usd_per_hour"] == 1.246

    exps = {e["experiment"]: e for e in out["experiments"]}
    assert exps["exp1"] | {"running_hours": None} == {
        "experiment": "exp1", "instances": 2, "live": 1, "dph_now": 1.236, "spent_usd": 2.832,
        "running_hours": None, "budget_usd": 5.0, "left_usd": 2.168, "budget_hours": 3.0, "left_hours": 0.0556}
    assert exps["exp1"]["running_hours"] == 2.9444
    assert (exps["exp2"]["spent_usd"], exps["exp2"]["left_usd"]) == (0.08, 4.92)
    assert out["session"] == {"id": "s1", "instances": [101, 102], "live": 1, "dph_now": 1.236, "spent_usd": 2.832}
    # Today: 101's 600 s of GPU and 1200 s of storage after midnight, plus all of 102 and 103.
    assert out["today"] == {"spent_usd": 2.558667, "daily_cap_usd": 20, "left_usd": 17.441333}


@pytest.mark.unit
def test_cost_one_experiment_and_human_table(tmp_path, monkeypatch):
    noon, data = known_state()
    write_state(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLAUDE_SESSION_ID", raising=False)
    monkeypatch.delenv("VASTICLAUDE_SESSION", raising=False)
    out = run_cost(monkeypatch, noon, "--experiment", "exp2", "--daily-usd", "10")
    assert [r["id"] for r in out["instances"]] == [103] and out["session"] is None
    assert [e["experiment"] for e in out["experiments"]] == ["exp2"] and out["experiments"][0]["budget_usd"] is None
    assert out["billing_usd_per_hour"] == 0.01 and out["today"]["left_usd"] == 7.441333
    text = cost.human(out)
    assert "vasticlaude-exp2-103" in text and "15m00s" in text and "$0.0800" in text
    assert "today: $2.56 of daily cap $10.00 (left $7.44)" in text
    empty = run_cost(monkeypatch, noon, "--experiment", "nothing-yet")
    assert empty["instances"] == [] and empty["experiments"][0]["spent_usd"] == 0


@pytest.mark.unit
def test_cost_folds_instances_destroyed_before_today(tmp_path, monkeypatch):
    noon, data = known_state()
    mid = time.mktime(time.localtime(noon)[:3] + (0, 0, 0, 0, 0, -1))
    old = dict(data["instances"]["103"], id=100, experiment="exp1", created_at=mid - 7200, destroyed_at=mid - 3600,
               history=[{"at": mid - 7200, "status": "running"}, {"at": mid - 3600, "status": "destroyed"}])
    data["instances"]["100"] = old  # 3600 s at $0.30 + $0.01 per hour: $0.31, all of it yesterday
    write_state(data)
    monkeypatch.chdir(tmp_path)
    out = run_cost(monkeypatch, noon)
    assert [r["id"] for r in out["instances"]] == [101, 102, 103] and out["not_listed"] == 1
    assert {e["experiment"]: e["spent_usd"] for e in out["experiments"]} == {"exp1": 3.142, "exp2": 0.08}
    assert out["today"]["spent_usd"] == 2.558667
    assert "1 destroyed before today not listed" in cost.human(out)
    every = run_cost(monkeypatch, noon, "--all")
    assert [r["id"] for r in every["instances"]] == [100, 101, 102, 103] and every["not_listed"] == 0
    seen = {r["id"]: r for r in cost.json_view(every)["instances"]}  # what --json prints: nothing said twice
    assert "not_listed" not in cost.json_view(every) and not any("label" in r for r in seen.values())
    assert "dph_now" not in seen[101] and seen[102]["dph_now"] == 1.236 and seen[101]["gpu_usd"] == 0.4
    assert "bandwidth_usd" not in seen[101]  # a part that is 0 is left out; the total stays


def with_a_group(data: dict, noon: float) -> None:
    """`up --nodes 3 --experiment big`: nodes big-n0..n2, big-n1 relaunched after its host died (two
    instances); foo-n0, named like a node but of no group, and big-n7, not one of big's nodes."""
    def rec(iid, exp, start, end=None, gpu=1.0):
        hist = [(start, "running")] + ([(end, "destroyed")] if end else [])
        return {"id": iid, "label": f"vasticlaude-{exp}", "experiment": exp, "gpu_dph": gpu, "storage_dph": 0.05,
                "gpu_name": "H100", "created_at": start, "destroyed_at": end, "created_by": "me@host session=s1 pid=1",
                "status": hist[-1][1], "history": [{"at": at, "status": st, "why": ""} for at, st in hist]}
    for r in [rec(201, "big-n0", noon - 3600), rec(202, "big-n1", noon - 3600, noon - 2400),
              rec(203, "big-n1", noon - 2000), rec(204, "big-n2", noon - 3600, gpu=1.5),
              rec(301, "foo-n0", noon - 600, gpu=0.2), rec(205, "big-n7", noon - 600, gpu=0.1)]:
        data["instances"][str(r["id"])] = r
    with state.experiment("big") as exp:  # what nodes.up writes (README "Several nodes")
        exp.update(budget_usd=12, nodes={"count": 3, "members": ["big-n0", "big-n1", "big-n2"], "cluster_id": 7,
                                         "overlay": "vc-big-abc123", "port": 29500})
    for rank, size in enumerate([100, 200, None]):
        with state.experiment(f"big-n{rank}") as exp:  # each node's own budget (a third) and store
            exp.update(budget_usd=4, **({"store": {"bytes": size}} if size else {}))


def grouped_home(tmp_path, monkeypatch) -> float:
    """The known state with a group written, the project folder entered; noon, the state's "now"."""
    noon, data = known_state()
    with_a_group(data, noon)
    write_state(data)
    monkeypatch.chdir(tmp_path)
    return noon


@pytest.mark.unit
def test_cost_folds_a_multi_node_experiment_into_one_row(tmp_path, monkeypatch):
    noon = grouped_home(tmp_path, monkeypatch)
    monkeypatch.setenv("CLAUDE_SESSION_ID", "s1")
    out = run_cost(monkeypatch, noon)
    exps = {e["experiment"]: e for e in out["experiments"]}
    assert sorted(exps) == ["big", "big-n7", "exp1", "exp2", "foo-n0"]  # the nodes are no rows of their own
    rows = {r["id"]: r for r in out["instances"]}
    group = [rows[i] for i in (201, 202, 203, 204)]
    big = exps["big"]
    assert (big["nodes"], big["instances"], big["live"]) == (3, 4, 3) and "nodes" not in exps["foo-n0"]
    assert (exps["big-n7"]["instances"], exps["foo-n0"]["instances"]) == (1, 1) and "nodes" not in exps["big-n7"]
    assert big["spent_usd"] == pytest.approx(sum(r["total_usd"] for r in group), abs=1e-6)
    assert big["dph_now"] == pytest.approx(sum(r["dph_now"] for r in group), abs=1e-6) == 3.65
    assert big["running_hours"] == pytest.approx(sum(r["running_s"] for r in group) / 3600, abs=1e-4)
    assert (big["budget_usd"], big["left_usd"]) == (12.0, round(12 - big["spent_usd"], 6))  # the group's, not a node's
    assert big["stored_bytes"] == 300                                # what every node shipped
    assert "experiment big (3 nodes): $" in cost.human(out)

    # The same state without the group's record: the nodes are rows again, and no total moves.
    shutil.rmtree(state.experiment_dir("big"))
    apart = run_cost(monkeypatch, noon)
    nodes = {e["experiment"]: e for e in apart["experiments"] if e["experiment"] in ("big-n0", "big-n1", "big-n2")}
    assert len(nodes) == 3 and nodes["big-n1"]["instances"] == 2 and len(apart["experiments"]) == 7
    assert sum(n["spent_usd"] for n in nodes.values()) == pytest.approx(big["spent_usd"], abs=1e-5)
    for key in ("total_usd", "today", "session", "billing_usd_per_hour", "instances", "not_listed"):
        assert apart[key] == out[key], key
    assert out["total_usd"] == pytest.approx(sum(r["total_usd"] for r in out["instances"]), abs=1e-5)


@pytest.mark.unit
def test_cost_reads_a_group_record_only_for_rows_it_lists(tmp_path, monkeypatch):
    noon, data = known_state()
    for g in range(30):  # 30 live groups of 2 nodes: 20 rows are listed, and only their groups are read
        for rank in range(2):
            iid = 1000 + 2 * g + rank
            data["instances"][str(iid)] = dict(data["instances"]["102"], id=iid, experiment=f"g{g}-n{rank}",
                                               created_at=noon - 100 * g)
        with state.experiment(f"g{g}") as exp:
            exp["nodes"] = {"count": 2, "members": [f"g{g}-n0", f"g{g}-n1"]}
    write_state(data)
    monkeypatch.chdir(tmp_path)
    read = []
    real = groups.members
    monkeypatch.setattr(groups, "members", lambda name: read.append(name) or real(name))
    out = run_cost(monkeypatch, noon)
    assert len(out["experiments"]) == 20 and len(read) <= 20
    assert all(e["nodes"] == 2 and e["instances"] == 2 for e in out["experiments"] if e["experiment"].startswith("g"))
    every = run_cost(monkeypatch, noon, "--all")
    assert sorted(e["experiment"] for e in every["experiments"]) == sorted(["exp1", "exp2", *(f"g{g}" for g in range(30))])


@pytest.mark.unit
def test_cost_of_a_group_and_of_one_node(tmp_path, monkeypatch):
    noon = grouped_home(tmp_path, monkeypatch)
    whole = run_cost(monkeypatch, noon, "--experiment", "big")
    assert [r["id"] for r in whole["instances"]] == [201, 202, 204, 203]  # every node's, the relaunched one too
    [row] = whole["experiments"]
    assert (row["experiment"], row["nodes"], row["instances"], row["budget_usd"]) == ("big", 3, 4, 12.0)
    assert whole["total_usd"] == pytest.approx(row["spent_usd"], abs=1e-6)
    assert whole["billing_usd_per_hour"] == 3.65
    one = run_cost(monkeypatch, noon, "--experiment", "big-n1")
    assert [r["id"] for r in one["instances"]] == [202, 203]
    [node] = one["experiments"]
    assert node["experiment"] == "big-n1" and "nodes" not in node and node["budget_usd"] == 4.0
    assert node["spent_usd"] == pytest.approx(sum(r["total_usd"] for r in one["instances"]), abs=1e-6)


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


@pytest.mark.unit
def test_cost_makes_no_api_call_imports_no_vastai_and_writes_nothing(tmp_path):
    _, data = known_state()
    write_state(data)
    before = snapshot(vhome())
    script = ("import sys; from vasticlaude.commands import cost; rc = cost.main(['--json']); "
              "print('VASTAI-LOADED' if 'vastai' in sys.modules else 'VASTAI-ABSENT', rc)")
    env = client_env(tmp_path, VAST_URL="http://127.0.0.1:9", VAST_API_KEY=SECRET)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "VASTAI-ABSENT 0", proc.stdout + proc.stderr
    assert len(json.loads(proc.stdout.splitlines()[0])["data"]["instances"]) == 3
    assert snapshot(vhome()) == before

    state.instances_path().write_text("{torn")
    proc = vc("cost", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "state_corrupt"
    assert "reconcile" in json.loads(proc.stdout)["error"]["hint"] and proc.stderr.strip() == ""  # said once
    assert [p.name for p in vhome().iterdir()] == ["instances.json"]  # not moved aside: cost writes nothing


# ----- cost --actual against the sandbox ------------------------------------------------------------
PINNED = [{"id": 7771001, "machine_id": 9101, "gpu_name": "H100 SXM", "num_gpus": 1, "gpu_ram": 81559,
           "dph_base": 360.0, "storage_cost": 72.0, "min_bid": 100.0, "disk_space": 100, "reliability": 0.99}]


def rent_and_record(sim, experiment: str, seconds: float) -> int:
    """Rent the pinned $360/h offer with the SDK, record it as `up` would, run `seconds`, destroy."""
    sdk = sim.sdk()
    iid = sdk.create_instance(id=PINNED[0]["id"], image="vastai/base:0.0.2", disk=10)["new_contract"]
    state.upsert_instance(iid, label=f"vasticlaude-{experiment}-1", experiment=experiment, offer_id=PINNED[0]["id"],
                          gpu_name="H100 SXM", gpu_dph=360.0, storage_dph=1.0, status="created")
    sim.wait_status(iid, "running", timeout=30)
    state.upsert_instance(iid, status="running")
    time.sleep(seconds)
    sdk.destroy_instance(id=iid)
    state.upsert_instance(iid, status="destroyed", destroyed_at=time.time())
    return iid


@pytest.fixture
def pinned(fresh_sim, tmp_path):
    market = tmp_path / "market.json"
    market.write_text(json.dumps(PINNED))
    return fresh_sim.start("--time-scale", "0", "--market", str(market), "--balance", "1000")


def test_cost_actual_beside_the_estimate(pinned, tmp_path):
    iid = rent_and_record(pinned, "actual", 2.0)
    proc = vc("cost", "--actual", "--json", env=sim_env(pinned, tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = data_of(proc)
    row = out["instances"][0]
    assert row["id"] == iid and row["total_usd"] > 0.19  # $0.10 per second of GPU, 2 s
    assert row["actual_usd"] == pytest.approx(row["total_usd"], abs=0.03)
    assert out["experiments"][0]["actual_usd"] == row["actual_usd"]
    human = vc("cost", "--actual", env=sim_env(pinned, tmp_path), cwd=tmp_path)
    assert "ACTUAL" in human.stdout and "Vast charged" in human.stdout


# ----- every command's --help, and no secret anywhere -----------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, tmp_path):
    proc = vc(name, "--help", env=client_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


@pytest.mark.unit
def test_top_level_help(tmp_path):
    proc = vc("--help", env=client_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "doctor" in proc.stdout and "cost" in proc.stdout


def test_never_prints_or_writes_a_secret(pinned, tmp_path):
    rent_and_record(pinned, "secret", 0.2)
    runs = [vc("doctor", "--register-ssh-key", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("doctor", "--json", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("cost", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("cost", "--json", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("cost", "--actual", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("cost", "--actual", "--json", env=sim_env(pinned, tmp_path), cwd=tmp_path),
            vc("doctor", env=sim_env(pinned, tmp_path, key=SECRET), cwd=tmp_path),
            vc("doctor", "--json", env=sim_env(pinned, tmp_path, key=SECRET), cwd=tmp_path),
            vc("cost", "--actual", "--json", env=sim_env(pinned, tmp_path, key=SECRET), cwd=tmp_path)]
    assert [p.returncode for p in runs] == [0, 0, 0, 0, 0, 0, 1, 1, 3]
    files = b"".join(p.read_bytes() for p in vhome().rglob("*") if p.is_file())
    for secret in (pinned.api_key, SECRET):
        for text in (secret, secret[:12]):
            for proc in runs:
                assert text not in proc.stdout and text not in proc.stderr
            assert text.encode() not in files

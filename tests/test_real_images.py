"""Real images through the product (issue 12, part B): an image without rsync, curl or pkill
(sandbox fault `image-minimal`), and a container whose `df` shows the host's disk (`df-host`).

Through the real vastai package, real ssh and the sandbox: push, pull, sync and the run wrapper
must not need rsync or pkill, and the whole flow ends finished with the results home.
"""
from __future__ import annotations

import json

import pytest
from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME
from test_recovery import events, finished, on_instance, project, result_of, watch  # noqa: F401
from test_vast_realism import flow

from vasticlaude.core import disk


def up(cli, experiment: str, *extra: str, disk: str = "8") -> dict:  # noqa: F811
    return cli.json("up", "--experiment", experiment, "--image", IMAGE, "--disk", disk, "--hours", "1", *extra)


# ----- image-minimal: no rsync, curl, pkill -----------------------------------------------------
def test_whole_flow_without_rsync_curl_or_pkill(cli, sim, project):  # noqa: F811
    sim.fault("image-minimal")
    iid = up(cli, "minimal")["instance_id"]
    pushed = cli.json("push", "--experiment", "minimal", "--no-setup")
    assert pushed["files"] >= 2 and pushed["bytes_sent"] > 0
    code = on_instance(sim, iid, "minimal", "code")
    assert (code / "train.py").read_text() == (project / "train.py").read_text()

    # --delete semantics through tar: a file gone from the project goes from the instance, a file
    # the filters leave out stays there, and an unchanged file is not sent again.
    (project / "old.py").write_text("x = 1\n")
    cli.json("push", "--experiment", "minimal", "--no-setup")
    assert (code / "old.py").is_file()
    (project / "old.py").unlink()
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "kept.pyc").write_bytes(b"\0")
    again = cli.json("push", "--experiment", "minimal", "--no-setup")
    assert not (code / "old.py").exists() and (code / "__pycache__" / "kept.pyc").is_file()
    assert again["bytes_sent"] < pushed["bytes_sent"]

    started = cli.run("run", "--json", "--experiment", "minimal", "--", "python3", "train.py", "20", "0.15")
    assert started.returncode == 0, started.stderr
    followed = cli.run("logs", "--experiment", "minimal", "--follow")  # ends without pkill on the instance
    assert followed.returncode == 0 and "step 20/20" in followed.stdout, followed.stderr
    data = finished(cli, watch(cli, "minimal", "--sync-interval", "1"))
    assert data["outcome"] == "finished", data
    assert result_of(project, "minimal") == (20, 0)
    assert data["down"]["destroyed"] == [iid] and cli.account() == []
    assert not list((project / ".vasticlaude" / "runs" / "minimal").rglob(".tar-partial"))


def test_pull_without_rsync_fetches_only_what_changed(cli, sim, project):  # noqa: F811
    sim.fault("image-minimal", tools="rsync")
    iid = up(cli, "minipull")["instance_id"]
    outputs = on_instance(sim, iid, "minipull", "outputs")
    outputs.mkdir(parents=True)
    (outputs / "a.bin").write_bytes(b"a" * 200_000)
    (outputs / "sub").mkdir()
    (outputs / "sub" / "b.txt").write_text("b\n")
    first = cli.json("pull", "--experiment", "minipull", "--path", "outputs")
    home = project / ".vasticlaude" / "runs" / "minipull" / "outputs"
    assert first["verified"] and (home / "a.bin").stat().st_size == 200_000 and (home / "sub" / "b.txt").is_file()
    assert first["bytes_received"] >= 200_000
    (outputs / "sub" / "b.txt").write_text("bb\n")
    second = cli.json("pull", "--experiment", "minipull", "--path", "outputs")
    assert (home / "sub" / "b.txt").read_text() == "bb\n" and second["bytes_received"] < 100_000
    cli.json("down", "--experiment", "minipull")
    assert cli.account() == []


# ----- df-host: df shows the host's disk, not the rented one -------------------------------------
@pytest.mark.unit
def test_the_rented_size_wins_when_df_shows_another_disk():
    rented = disk.rented_bytes({"disk_space": 0.1}, None)
    own = disk.reading(["/dev/x 102400 51200 51200 50% /root"], rented)
    assert own["source"] == "df" and own["used"] == 51200 * 1024
    host = disk.reading(["overlay 500000000 300000000 200000000 60% /", "du=92160"], rented)
    assert host == {"size": rented, "used": 92160 * 1024, "free": rented - 92160 * 1024, "source": "rented"}
    assert disk.reading(["overlay 500000000 300000000 200000000 60% /"], rented, api_used_gb=0.05)["used"] == int(0.05 * 2**30)
    assert disk.reading(["overlay 500000000 300000000 200000000 60% /"], rented)["source"] == "df"  # nothing else known
    assert disk.reading(["df: no such file"], rented) is None


def test_push_refuses_what_cannot_fit_in_the_rented_disk(cli, sim, project):  # noqa: F811
    sim.fault("df-host")
    iid = up(cli, "hostdf", disk="0.1")["instance_id"]
    with open(project / "big.bin", "wb") as f:
        f.truncate(150 * 10**6)  # 150 MB (apparent size, which the check counts) for a 0.1 GB disk
    proc = cli.run("push", "--experiment", "hostdf", "--no-setup", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "no_space" and "nothing was sent" in error["message"], error
    assert not on_instance(sim, iid, "hostdf", "code/big.bin").exists()
    (project / "big.bin").unlink()
    cli.json("push", "--experiment", "hostdf", "--no-setup")
    snap = cli.json("status", "--experiment", "hostdf")
    assert snap["disk"]["size_gb"] == pytest.approx(0.1, abs=0.01), snap["disk"]
    cli.json("down", "--experiment", "hostdf")
    assert cli.account() == []


def test_full_disk_is_found_and_recovered_when_df_shows_the_host(cli, sim, project):  # noqa: F811
    sim.fault("df-host")
    first = up(cli, "hostfull", disk="0.1")["instance_id"]
    cli.json("push", "--experiment", "hostfull", "--no-setup")
    started = cli.run("run", "--json", "--experiment", "hostfull", "--", "python3", "train.py", "20", "0.05",
                      str(8 * 10**6))  # 160 MB of outputs on a 100 MB disk
    assert started.returncode == 0, started.stderr
    data = finished(cli, watch(cli, "hostfull"))
    [rec] = data["recoveries"]
    assert rec["kind"] == "disk_full" and rec["to_instance"] != first
    start = next(e for e in events(cli, "hostfull") if e["event"] == "recover_start")
    assert any(ev.startswith("disk ") and "% full" in ev for ev in start["evidence"]), start["evidence"]
    outputs = project / ".vasticlaude" / "runs" / "hostfull" / "outputs"
    assert len(list(outputs.glob("chunk_*.bin"))) == 20 and result_of(project, "hostfull")[1] > 0
    assert cli.account() == []


# ----- the whole flow (test_vast_realism's) under this part's other behaviours ----------------------
@pytest.mark.parametrize("kind", ["df-host", "bandwidth-billing"])
def test_whole_flow_under_each_fault(cli, sim, project, kind):  # noqa: F811
    sim.fault(kind)
    flow(cli, kind.replace("-", ""))

"""Real images through the product (issue 12, part B): an image without rsync, curl or pkill
(sandbox fault `image-minimal`), and a container whose `df` shows the host's disk (`df-host`).

Through the real vastai package, real ssh and the sandbox: push, pull, sync and the run wrapper
must not need rsync or pkill, and the whole flow ends finished with the results home.
"""
from __future__ import annotations

import json
from pathlib import Path

from test_lifecycle import IMAGE, cli  # noqa: F401 — the `cli` fixture: a user with an empty HOME
from test_recovery import finished, on_instance, project, result_of, watch  # noqa: F401


def up(cli, experiment: str, *extra: str) -> dict:  # noqa: F811
    return cli.json("up", "--experiment", experiment, "--image", IMAGE, "--disk", "8", "--hours", "1", *extra)


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

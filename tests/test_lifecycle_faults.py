"""The lifecycle commands under crashes and a flaky API: kill -9 of `up` at each step, then
`reconcile`, must leave nothing billing that the state does not know; 30 % 429/5xx answers
(and a create that fails but happens) must not stop offers/up/down nor rent a duplicate.
"""
from __future__ import annotations

import json
import time

import pytest
from test_lifecycle import Cli, cli, first_candidate, up_args  # noqa: F401 — `cli` is the fixture

LABEL = "vasticlaude-{}"


def wait_for(check, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def state_or_empty(cli: Cli) -> dict:
    try:
        return cli.state()
    except (FileNotFoundError, ValueError):
        return {"instances": {}, "intents": {}}


def on_account(cli: Cli, label: str) -> list[dict]:
    return [r for r in cli.account() if r.get("label") == label]


def assert_state_knows_every_instance(cli: Cli) -> None:
    live = {int(r["id"]) for r in cli.state()["instances"].values() if not r.get("destroyed_at")}
    assert {int(r["id"]) for r in cli.account()} <= live


# ----- kill -9 of `up` at each step, then reconcile -------------------------------------------
def in_sandbox(sim, label: str) -> list[dict]:
    """Live instances with this label, read from the sandbox's own records (no API request)."""
    world = json.loads((sim.state / "world.json").read_text())
    return [r for r in world["instances"].values() if r.get("label") == label and not r.get("destroyed_at")]


def kill_while_creating(cli: Cli, sim, exp: str) -> None:
    """The create is in flight (a slow sandbox) when up dies: in the sandbox it never lands."""
    sim.fault("slow", delay=2.0, path="asks", count=1)
    proc = cli.spawn(*up_args(exp))
    wait_for(lambda: LABEL.format(exp) in state_or_empty(cli)["intents"], what="the intent")
    time.sleep(0.3)
    cli.kill9(proc)


def kill_after_create(cli: Cli, sim, exp: str) -> None:
    """The create landed but answered 502; up dies while looking for its label (slow list)."""
    sim.fault("http", status=502, count=1, path="asks", ghost=True)
    sim.fault("slow", delay=1.5, path="v1/instances", method="GET", count=2)
    proc = cli.spawn(*up_args(exp))
    wait_for(lambda: in_sandbox(sim, LABEL.format(exp)), what="the instance")
    cli.kill9(proc)


def kill_while_waiting(cli: Cli, sim, exp: str) -> None:
    sim.fault("stuck-loading", offer=first_candidate(cli)["offer_id"])
    proc = cli.spawn(*up_args(exp, "--deadline", "60"))
    wait_for(lambda: any(r.get("status") == "loading" for r in state_or_empty(cli)["instances"].values()),
             what="the loading status")
    cli.kill9(proc)


def age_intents(cli: Cli, seconds: float) -> None:
    """Pretend the pending intents were written `seconds` ago (reconcile waits 10 min for them)."""
    data = cli.state()
    for intent in data["intents"].values():
        intent["at"] -= seconds
    (cli.vchome / "instances.json").write_text(json.dumps(data))


@pytest.mark.parametrize("kill", [kill_while_creating, kill_after_create, kill_while_waiting],
                         ids=["while-creating", "after-create", "while-waiting"])
def test_kill9_of_up_then_reconcile_leaves_nothing_unknown(cli, sim, kill):
    exp = kill.__name__.replace("_", "-")
    label = LABEL.format(exp)
    kill(cli, sim, exp)
    landed = on_account(cli, label)
    assert len(landed) == (0 if kill is kill_while_creating else 1)
    report = cli.json("reconcile")
    assert_state_knows_every_instance(cli)
    if kill is kill_after_create:
        assert [(a["id"], a["from_intent"]) for a in report["adopted"]] == [(landed[0]["id"], True)]
    if kill is kill_while_creating:
        assert list(cli.state()["intents"]) == [label]  # too young to call abandoned
        age_intents(cli, 601)
        assert cli.json("reconcile")["abandoned_intents"] == [label]
    assert not cli.state()["intents"]
    down = cli.json("down", "--all")
    assert len(down["destroyed"]) == len(landed) and not down["failed"]
    assert cli.account() == []
    final = cli.json("reconcile")
    assert final["billing_usd_per_hour"] == 0 and not final["adopted"] and not final["marked_gone"]


def test_reconcile_marks_gone_records_and_recovers_a_corrupt_state(cli, sim):
    up = cli.json(*up_args("gone", "--no-wait"))
    sim.sdk().destroy_instance(id=up["instance_id"])  # behind vasticlaude's back
    report = cli.json("reconcile")
    assert report["marked_gone"] == [up["instance_id"]]
    rec = cli.state()["instances"][str(up["instance_id"])]
    assert rec["status"] == "destroyed" and rec["destroy_reason"] == "gone from the account"

    again = cli.json(*up_args("orphan", "--no-wait"))
    (cli.vchome / "instances.json").write_text("{ torn")
    report = cli.json("reconcile")
    assert report["recovered_from"] and ".bad-" in report["recovered_from"]
    assert [a["id"] for a in report["adopted"]] == [again["instance_id"]]
    assert "recovered_from" not in cli.state()
    cli.json("down", "--all")
    assert cli.account() == []


def test_a_destroy_that_cannot_be_confirmed_exits_4_and_names_the_instance(cli, sim):
    first = first_candidate(cli)
    sim.fault("fail-start", offer=first["offer_id"])
    sim.fault("http", status=500, count=None, path=r"instances/\d+", method="DELETE")
    err = cli.json(*up_args("undead"), rc=4)
    [row] = on_account(cli, "vasticlaude-undead")
    assert err["code"] == "not_destroyed" and f"vasticlaude down {row['id']}" in err["hint"]
    assert [f["machine_id"] for f in cli.state()["failed_machines"]] == [first["machine_id"]]
    proc = cli.run("down", "--all")
    assert proc.returncode == 4 and f"Re-run 'vasticlaude down {row['id']}'" in proc.stderr
    sim.admin("DELETE", "/sim/faults")
    assert [d["id"] for d in cli.json("down", "--all")["destroyed"]] == [row["id"]]
    assert cli.account() == []


# ----- a flaky API ------------------------------------------------------------------------------
def test_thirty_percent_api_errors_and_a_ghost_create(cli, sim):
    sim.fault("http", status=502, count=1, path="asks", ghost=True)  # the create fails but happens
    sim.fault("http", status=503, rate=0.2, count=None, path="^/api/")
    sim.fault("http", status=429, rate=0.125, count=None, path="^/api/")  # ≈ 30 % in all
    assert cli.json("offers", "--disk", "10")["candidates"]
    up = cli.json(*up_args("flaky"))
    assert "attempts" not in up  # the first offer worked
    assert [r["id"] for r in on_account(cli, "vasticlaude-flaky")] == [up["instance_id"]]
    up2 = cli.json(*up_args("flaky2"))
    assert len(on_account(cli, "vasticlaude-flaky2")) == 1
    down = cli.json("down", "--all")
    assert sorted(d["id"] for d in down["destroyed"]) == sorted([up["instance_id"], up2["instance_id"]])
    sim.admin("DELETE", "/sim/faults")
    assert cli.account() == []
    assert all(r["status"] == "destroyed" for r in cli.state()["instances"].values())

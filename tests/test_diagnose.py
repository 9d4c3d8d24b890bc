"""diagnose(): a `status` snapshot → the fault (kind, evidence, action, confirm_s, plan) or None.

Pure and fast: no sandbox, no subprocess. Snapshots are built with `snap()`, shaped like
`status.observe()` builds them (instance {status, intended, msg}, job {state, exit_code, signal,
heartbeat_age_s, why}, disk {used_gb, size_gb, pct}, cost {spent_usd, budget_usd}).

The order diagnose() checks things in, as these tests pin it down:
  1. instance gone            → gone/relaunch (None when the run's end is already home)
  2. budget signal or spend   → budget/none   (beats preemption, host faults, job faults)
  3. stopped + meant to run + bid → preempted/wait_bid
  4. offline / exited         → host_offline / container_exited, relaunch
  5. any other non-running instance → None
  6. the job (running instance): unreachable → disk_full → stale → job_lost → job_failed
"""
from __future__ import annotations

import pytest

from vasticlaude.core.faults import BUDGET_PLAN, FAILED_PLAN, PLANS, blames_machine, diagnose

pytestmark = pytest.mark.unit  # pure: no sandbox, SSH or Claude Code

POLICY = {"stale_after_s": 611, "unreachable_after_s": 307}  # not the defaults: proves they are read
BID = {"is_bid": True, "bid_price": 0.25}
ON_DEMAND = {"is_bid": False}
ENOSPC = "OSError: [Errno 28] No space left on device"
EFBIG = "OSError: [Errno 27] File too large: '/workspace/checkpoints/step_900.pt'"

_INSTANCE = ("intended", "msg")
_JOB = ("exit_code", "signal", "heartbeat_age_s", "why")
_DISK = {"pct": "pct", "used_gb": "used_gb", "size_gb": "size_gb"}
_COST = {"spent": "spent_usd", "budget": "budget_usd"}


def snap(status: str = "running", job: str = "running", **overrides) -> dict:
    """A snapshot: `status` is the instance's, `job` the job's state; overrides go where they belong
    (intended/msg → instance; exit_code/signal/heartbeat_age_s/why → job; pct/used_gb/size_gb →
    disk; spent/budget → cost)."""
    inst = {"status": status, "intended": "running", "msg": ""}
    j = {"state": job, "exit_code": None, "heartbeat_age_s": 4.0}
    if job == "unreachable":
        j.update(heartbeat_age_s=None, why="ssh: Connection refused")
    disk = {"used_gb": 12.0, "size_gb": 40, "pct": 30}
    cost = {"spent_usd": 1.0, "budget_usd": 10.0}
    for key, value in overrides.items():
        if key in _INSTANCE:
            inst[key] = value
        elif key in _JOB:
            j[key] = value
        elif key in _DISK:
            disk[_DISK[key]] = value
        elif key in _COST:
            cost[_COST[key]] = value
        else:
            raise TypeError(f"snap(): unknown override {key!r}")
    return {"instance": inst, "job": j, "disk": disk, "cost": cost}


def run(s: dict, record: dict | None = None, log: list[str] | None = None, ended_home: bool = False):
    return diagnose(s, ON_DEMAND if record is None else record, log or [], POLICY, ended_home)


# --------------------------------------------------------------------------------------------
# Faults: (test id, snapshot, record, log, ended_home, kind, action, confirm_s)
FAULTS = [
    ("preempted_bid_stopped_meant_running", snap("stopped", "unreachable"), BID, [], False,
     "preempted", "wait_bid", 0.0),
    ("preempted_intended_absent_defaults_to_running",
     {**snap("stopped", "unreachable"), "instance": {"status": "stopped", "msg": ""}}, BID, [], False,
     "preempted", "wait_bid", 0.0),
    ("host_offline", snap("offline", "unreachable", msg="host heartbeat lost"), ON_DEMAND, [], False,
     "host_offline", "relaunch", 0.0),
    ("host_offline_bid_too", snap("offline", "unreachable"), BID, [], False,
     "host_offline", "relaunch", 0.0),
    ("container_exited", snap("exited", "unreachable", msg="OCI runtime error"), ON_DEMAND, [], False,
     "container_exited", "relaunch", 0.0),
    ("gone", snap("gone", "unreachable"), ON_DEMAND, [], False, "gone", "relaunch", 0.0),
    ("ssh_unreachable_waits_unreachable_after_s", snap("running", "unreachable"), ON_DEMAND, [], False,
     "ssh_unreachable", "relaunch", 307.0),
    ("stale_waits_stale_after_s", snap("running", "stale", heartbeat_age_s=900.0), ON_DEMAND, [], False,
     "stale", "relaunch", 611.0),
    ("disk_full_enospc_exited_nonzero", snap(job="exited", exit_code=1), ON_DEMAND,
     ["step 900", ENOSPC, "Traceback ends"], False, "disk_full", "bigger_disk", 0.0),
    ("disk_full_enospc_vanished", snap(job="vanished"), ON_DEMAND, [ENOSPC], False,
     "disk_full", "bigger_disk", 0.0),
    ("disk_full_efbig_exited_nonzero", snap(job="exited", exit_code=1), ON_DEMAND, [EFBIG], False,
     "disk_full", "bigger_disk", 0.0),
    ("disk_full_pct99_vanished_no_log_line", snap(job="vanished", pct=99, used_gb=39.6), ON_DEMAND,
     ["step 900 loss 0.1"], False, "disk_full", "bigger_disk", 0.0),
    ("disk_full_pct98_threshold_exited_nonzero", snap(job="exited", exit_code=2, pct=98), ON_DEMAND, [], False,
     "disk_full", "bigger_disk", 0.0),
    ("disk_full_beats_job_failed", snap(job="exited", exit_code=3), ON_DEMAND, [ENOSPC], False,
     "disk_full", "bigger_disk", 0.0),
    ("job_lost_vanished_without_disk_evidence", snap(job="vanished"), ON_DEMAND, ["step 5"], False,
     "job_lost", "restart", 0.0),
    ("job_lost_killed_by_term", snap(job="killed", exit_code=143, signal="TERM"), ON_DEMAND, [], False,
     "job_lost", "restart", 0.0),
    ("job_failed_exit_3", snap(job="exited", exit_code=3), ON_DEMAND, ["ValueError: bad"], False,
     "job_failed", "none", 0.0),
    ("budget_killed_by_budget_signal", snap(job="killed", exit_code=143, signal="budget"), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    ("budget_killed_by_max_hours_signal", snap(job="killed", exit_code=143, signal="max_hours"), ON_DEMAND, [],
     False, "budget", "none", 0.0),
    ("budget_spent_equals_budget_running_job", snap(spent=10.0, budget=10.0), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    # Order: budget is checked before everything but `gone`.
    ("order_budget_beats_preempted", snap("stopped", "unreachable", spent=12.0), BID, [], False,
     "budget", "none", 0.0),
    ("order_budget_beats_host_offline", snap("offline", "unreachable", spent=12.0), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    ("order_budget_beats_container_exited", snap("exited", "unreachable", spent=12.0), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    ("order_budget_beats_ssh_unreachable", snap("running", "unreachable", spent=12.0), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    ("order_budget_beats_disk_full", snap(job="exited", exit_code=1, spent=12.0), ON_DEMAND, [ENOSPC], False,
     "budget", "none", 0.0),
    ("order_budget_beats_job_failed", snap(job="exited", exit_code=3, spent=12.0), ON_DEMAND, [], False,
     "budget", "none", 0.0),
    ("order_budget_on_stopped_on_purpose_instance", snap("stopped", "unreachable", intended="stopped",
                                                         spent=12.0), ON_DEMAND, [], False, "budget", "none", 0.0),
    ("order_gone_beats_budget", snap("gone", "unreachable", spent=12.0), ON_DEMAND, [], False,
     "gone", "relaunch", 0.0),
    # Order within the job: unreachable is checked before the disk; disk before stale.
    ("order_ssh_unreachable_beats_disk_pct", snap("running", "unreachable", pct=99), ON_DEMAND, [ENOSPC], False,
     "ssh_unreachable", "relaunch", 307.0),
    ("order_disk_full_beats_job_lost_killed_term", snap(job="killed", exit_code=143, signal="TERM"), ON_DEMAND,
     [ENOSPC], False, "disk_full", "bigger_disk", 0.0),
    ("order_stale_ignores_disk_evidence_while_alive", snap(job="stale", pct=99), ON_DEMAND, [ENOSPC], False,
     "stale", "relaunch", 611.0),
]


@pytest.mark.parametrize(("s", "record", "log", "ended_home", "kind", "action", "confirm_s"),
                         [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault(s, record, log, ended_home, kind, action, confirm_s):
    fault = run(s, record, log, ended_home)
    assert fault is not None, "expected a fault"
    assert (fault["kind"], fault["action"], fault["confirm_s"]) == (kind, action, confirm_s)
    assert set(fault) == {"kind", "evidence", "action", "confirm_s", "plan"}
    assert isinstance(fault["evidence"], list) and fault["evidence"]
    assert all(isinstance(e, str) and e.strip() for e in fault["evidence"])
    assert isinstance(fault["plan"], str) and fault["plan"].strip()
    if kind == "job_failed":  # a code failure names the commands that go on, not the budget
        assert fault["plan"] == FAILED_PLAN and "logs" in fault["plan"] and "budget" not in fault["plan"]
    elif kind == "budget":
        assert fault["plan"] == BUDGET_PLAN and "vasticlaude down" in fault["plan"]
    else:
        assert fault["plan"] == PLANS[action]


# --------------------------------------------------------------------------------------------
# Not faults: (test id, snapshot, record, log, ended_home)
NON_FAULTS = [
    ("running_healthy", snap(), ON_DEMAND, ["step 10 loss 0.5"], False),
    ("running_healthy_bid", snap(), BID, [], False),
    ("not_started", snap(job="not_started"), ON_DEMAND, [], False),
    ("instance_loading", snap("loading", "unreachable"), ON_DEMAND, [], False),
    ("instance_created", snap("created", "unreachable"), BID, [], False),
    ("stopped_on_demand_is_not_preemption", snap("stopped", "unreachable"), ON_DEMAND, [], False),
    ("stopped_record_without_is_bid", snap("stopped", "unreachable"), {}, [], False),
    ("stopped_by_down_keep_disk_bid", snap("stopped", "unreachable", intended="stopped"),
     {**BID, "status": "stopped", "history": [{"at": 1, "status": "stopped", "why": "down --keep-disk"}]}, [], False),
    ("stopped_on_purpose_on_demand", snap("stopped", "unreachable", intended="stopped"), ON_DEMAND, [], False),
    ("gone_but_ended_home", snap("gone", "unreachable"), ON_DEMAND, [], True),
    ("gone_ended_home_even_over_budget", snap("gone", "unreachable", spent=12.0), ON_DEMAND, [], True),
    ("exited_0", snap(job="exited", exit_code=0), ON_DEMAND, ["done"], False),
    ("exited_0_full_disk_success_is_success", snap(job="exited", exit_code=0, pct=99), ON_DEMAND, [ENOSPC], False),
    ("running_with_enospc_in_log_not_ended", snap(pct=99), ON_DEMAND, [ENOSPC], False),
    ("no_budget_set_never_over", snap(spent=1e6, budget=None), ON_DEMAND, [], False),
    ("spent_just_under_budget", snap(spent=9.99, budget=10.0), ON_DEMAND, [], False),
]


@pytest.mark.parametrize(("s", "record", "log", "ended_home"), [f[1:] for f in NON_FAULTS],
                         ids=[f[0] for f in NON_FAULTS])
def test_no_fault(s, record, log, ended_home):
    assert run(s, record, log, ended_home) is None


def test_a_bid_instance_stopped_by_intent_but_not_by_us_is_taken_for_preempted():
    """Vast's fields after an outbid are undocumented: dstack sees intended "stopped" too. Unless
    vasticlaude stopped it (`down --keep-disk`), a stopped interruptible instance was outbid."""
    fault = run(snap("stopped", "unreachable", intended="stopped"), BID, [], False)
    assert fault["kind"] == "preempted" and fault["action"] == "wait_bid" and "not by vasticlaude" in fault["evidence"][0]


def test_exited_0_over_budget_is_success_not_a_budget_fault():
    """A job that ended with 0 ended by plan (the module docstring: None when the job "ended by
    plan"), whatever was spent: `watch` must pull and tear down, not stop at "needs you".
    diagnose() checks the budget before the job, so this returns budget/none today (bug)."""
    assert run(snap(job="exited", exit_code=0, spent=10.5, budget=10.0)) is None


def test_disk_pct_below_threshold_is_not_disk_evidence():
    fault = run(snap(job="vanished", pct=97))
    assert fault["kind"] == "job_lost" and fault["action"] == "restart"


# --------------------------------------------------------------------------------------------
# Evidence


def test_disk_full_evidence_quotes_the_log_line():
    fault = run(snap(job="exited", exit_code=1), log=["epoch 3", "  " + ENOSPC + "  ", "exiting"])
    assert fault["evidence"] == [f"the log says: {ENOSPC}"]


def test_disk_full_evidence_quotes_efbig_line():
    fault = run(snap(job="exited", exit_code=1), log=[EFBIG])
    assert any(EFBIG in e for e in fault["evidence"])


def test_disk_full_evidence_quotes_the_latest_matching_line_and_the_pct():
    older, newer = "ENOSPC while writing a.pt", "OSError: [Errno 28] No space left on device: 'b.pt'"
    fault = run(snap(job="vanished", pct=99, used_gb=39.6, size_gb=40), log=[older, "x", newer, "y"])
    assert fault["evidence"][0] == f"the log says: {newer}"
    assert fault["evidence"][1] == "disk 99% full (39.6/40 GB)"


def test_disk_full_evidence_line_is_cut_to_160_chars():
    fault = run(snap(job="vanished"), log=[ENOSPC + " " + "x" * 500])
    assert fault["evidence"][0] == "the log says: " + (ENOSPC + " " + "x" * 500)[:160]


def test_preempted_evidence_names_the_bid():
    fault = run(snap("stopped", "unreachable"), record={"is_bid": True, "bid_price": "0.3"})
    assert "$0.300/h" in fault["evidence"][0]


def test_host_and_container_evidence_carry_the_message():
    assert "host heartbeat lost" in run(snap("offline", "unreachable", msg="host heartbeat lost"))["evidence"][0]
    assert "no heartbeat" in run(snap("offline", "unreachable", msg=""))["evidence"][0]
    assert "OCI runtime error" in run(snap("exited", "unreachable", msg="OCI runtime error"))["evidence"][0]


def test_ssh_unreachable_evidence_says_why():
    assert "Connection refused" in run(snap("running", "unreachable"))["evidence"][0]


def test_stale_evidence_gives_heartbeat_age():
    assert "900.0 s" in run(snap(job="stale", heartbeat_age_s=900.0))["evidence"][0]


def test_job_lost_evidence_names_the_signal():
    assert "TERM" in run(snap(job="killed", exit_code=143, signal="TERM"))["evidence"][0]


def test_job_failed_evidence_gives_exit_code():
    assert "code 3" in run(snap(job="exited", exit_code=3))["evidence"][0]


def test_budget_evidence_names_the_limit():
    assert "max_hours" in run(snap(job="killed", signal="max_hours"))["evidence"][0]
    assert "budget" in run(snap(spent=10.0))["evidence"][0]


def test_confirm_s_defaults_to_zero_without_policy():
    assert diagnose(snap(job="stale"), {}, [], {})["confirm_s"] == 0.0
    assert diagnose(snap("running", "unreachable"), {}, [], {})["confirm_s"] == 0.0


def test_missing_disk_block_is_no_disk_evidence():
    s = snap(job="vanished")
    s["disk"] = None
    assert run(s)["kind"] == "job_lost"
    assert run(s, log=[ENOSPC])["kind"] == "disk_full"


# --------------------------------------------------------------------------------------------
# blames_machine: which faults retire the machine for a while

@pytest.mark.parametrize("kind", ["host_offline", "container_exited", "gone", "stale", "ssh_unreachable"])
def test_blames_machine(kind):
    assert blames_machine(kind) is True


@pytest.mark.parametrize("kind", ["preempted", "disk_full", "job_lost", "job_failed", "budget"])
def test_does_not_blame_machine(kind):
    assert blames_machine(kind) is False


def test_every_fault_kind_is_covered_by_the_table():
    kinds = {f[5] for f in FAULTS}
    assert kinds == {"preempted", "host_offline", "container_exited", "gone", "disk_full", "stale",
                     "ssh_unreachable", "job_lost", "job_failed", "budget"}

"""The pure rules under core/: ranking, the one budget, cost from history, status words, backoff, formats.

No sandbox, no process: `./dev test -m unit` runs these in well under a second.
"""
from __future__ import annotations

import pytest

from vasticlaude.core import budget, fmt, market, money, retry
from vasticlaude.core.lifecycle import record_status
from vasticlaude.errors import Error

pytestmark = pytest.mark.unit


def offer(oid: int, machine: int, dph: float, storage: float = 0.01, reliability: float = 0.99, **extra) -> dict:
    return {"id": oid, "machine_id": machine, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564,
            "dph_base": dph, "storage_total_cost": storage, "reliability": reliability, "dlperf": 60.0,
            "geolocation": "US", "verification": "verified", **extra}


# ----- market -------------------------------------------------------------------------------------
def test_rank_is_by_the_estimated_total_then_reliability_and_skips_failed_machines():
    w = market.Wanted(hours=10, limit=3)
    offers = [offer(1, 10, 0.40), offer(2, 20, 0.30, storage=0.2), offer(3, 30, 0.35), offer(4, 40, 0.35, reliability=0.999)]
    ranked = market.rank(offers, w, excluded={30})
    assert [c.offer_id for c in ranked] == [4, 1, 2]  # 0.36×10, 0.41×10, 0.50×10; machine 30 skipped
    assert ranked[0].est_total_usd == pytest.approx(3.6)


def test_interruptible_prices_at_the_minimum_bid():
    c = market.candidate(offer(1, 10, 0.40, min_bid=0.12), market.Wanted(interruptible=True))
    assert (c.gpu_dph, c.interruptible) == (0.12, True)


def test_the_query_names_every_term_and_drops_one_to_relax():
    w = market.Wanted(gpus=("RTX 4090",), min_vram_gb=16, regions=("US", "CA"), max_dph=2)
    assert market.query_of(w) == ("num_gpus=1 gpu_name in [RTX_4090] gpu_ram>=16 disk_space>=40 dph<=2 "
                                  "geolocation in [US,CA] verified=true rentable=true")
    assert "geolocation" not in market.query_of(w, dropped="region")
    assert [t.name for t in market.terms(w)][:2] == ["region", "verified"]  # cheapest to give up first


def test_gpu_names_resolve_loosely_and_unknown_ones_name_the_nearest():
    assert market.resolve_gpus(("rtx4090", "RTX_3090"), ["RTX 4090", "RTX 3090", "A100 SXM4"]) == ("RTX 4090", "RTX 3090")
    with pytest.raises(Error, match="RTX 4090"):
        market.resolve_gpus(("RTX 4099",), ["RTX 4090", "A100 SXM4"])


# ----- budget -------------------------------------------------------------------------------------
def test_one_budget_flag_then_the_experiments_then_the_configs():
    cfg = {"budget": {"experiment_usd": 50}}
    assert budget.experiment_budget(3, {"budget_usd": 7}, cfg) == 3
    assert budget.experiment_budget(None, {"budget_usd": 7}, cfg) == 7
    assert budget.experiment_budget(None, {"rental": {"budget_usd": 9}}, cfg) == 9   # set by `up`
    assert budget.experiment_budget(None, {"guard": {"budget_usd": 8}, "rental": {"budget_usd": 9}}, cfg) == 8
    assert budget.experiment_budget(None, {}, cfg) == 50
    assert budget.experiment_budget(None, None, {}) is None


def test_planned_hours_come_from_the_rental():
    assert budget.planned_hours({"rental": {"wanted": {"hours": 2.5}}}, {}) == 2.5
    assert budget.planned_hours({}, {}) is None


def record(iid: int, experiment: str, dph: float, start: float, end: float | None = None) -> dict:
    history = [{"at": start, "status": "running"}] + ([{"at": end, "status": "destroyed"}] if end else [])
    return {"id": iid, "experiment": experiment, "gpu_dph": dph, "storage_dph": 0.0, "created_at": start,
            "destroyed_at": end, "history": history, "status": "destroyed" if end else "running"}


def test_check_before_rent_counts_what_was_spent_and_refuses_what_breaks_a_limit():
    now = 1_000_000.0
    data = {"instances": {"1": record(1, "e", 1.0, now - 7200, now - 3600)}}  # one hour at $1/h: $1 spent
    figures = budget.check_before_rent(budget.Limits(experiment_usd=3), "e", 1.0, 1.5, data)
    assert figures["experiment_spent_usd"] == pytest.approx(1.0) and figures["estimate_usd"] == 1.5
    with pytest.raises(Error, match="experiment budget"):
        budget.check_before_rent(budget.Limits(experiment_usd=2), "e", 1.0, 1.5, data)
    with pytest.raises(Error, match="limit of 2 h"):
        budget.check_before_rent(budget.Limits(experiment_hours=2), "e", 1.0, 1.5, data)


# ----- money and status words ---------------------------------------------------------------------
def test_cost_integrates_the_history_gpu_only_while_running():
    rec = {"gpu_dph": 3.6, "storage_dph": 0.36, "history": [
        {"at": 0, "status": "creating"}, {"at": 100, "status": "running"}, {"at": 1100, "status": "stopped"},
        {"at": 2100, "status": "destroyed"}], "destroyed_at": 2100}
    cost = money.instance_cost(rec, now=5000)
    assert (cost["running_s"], cost["exists_s"]) == (1000, 2100)
    assert cost["gpu_usd"] == pytest.approx(1.0) and cost["storage_usd"] == pytest.approx(0.21)
    assert money.billing_now(rec) == 0.0


def test_the_totals_and_a_rows_figures_agree_bandwidth_included(monkeypatch):
    """One formula: cost's experiment sum, its total, the session and today are sums of the rows
    (money.instance_cost), bandwidth included; today counts only the bytes moved since midnight."""
    import json
    import time

    from vasticlaude.ops import costs
    from vasticlaude.store import state
    noon = time.mktime(time.localtime()[:3] + (12, 0, 0, 0, 0, -1))
    midnight = budget.midnight(noon)
    gb = 1 << 30
    rec = {"id": 7, "label": "vasticlaude-e-7", "experiment": "e", "gpu_dph": 0.5, "storage_dph": 0.05,
           "created_at": midnight - 3600, "created_by": "me@host session=s1 pid=1", "status": "running",
           "inet_down_cost": 0.02, "inet_up_cost": 0.05,
           "traffic": [[midnight - 1800, 3 * gb, 0], [noon - 600, gb, 2 * gb]],  # $0.06 yesterday, $0.12 today
           "history": [{"at": midnight - 3600, "status": "running", "why": ""}]}
    state.instances_path().parent.mkdir(parents=True, exist_ok=True)
    state.instances_path().write_text(json.dumps({"version": 1, "intents": {}, "instances": {"7": rec}}))
    monkeypatch.setattr(time, "time", lambda: noon)
    monkeypatch.setenv("CLAUDE_SESSION_ID", "s1")
    out = costs.summary(budget.Limits(daily_usd=100))
    row = money.instance_cost(rec, noon)
    assert row["bandwidth_usd"] == pytest.approx(0.18) and out["instances"][0]["total_usd"] == row["total_usd"]
    assert out["total_usd"] == out["experiments"][0]["spent_usd"] == out["session"]["spent_usd"] == \
        pytest.approx(row["total_usd"], abs=1e-6)
    assert money.total_usd(rec, noon)[1] == pytest.approx(row["total_usd"], abs=1e-6)
    today = row["total_usd"] - money.instance_cost(rec, midnight)["total_usd"]  # 12 h of $0.55/h and $0.12 of bytes
    assert out["today"]["spent_usd"] == pytest.approx(today, abs=1e-6) == pytest.approx(12 * 0.55 + 0.12)
    assert budget.spent_today(state.load(), noon) == pytest.approx(today, abs=1e-6)
    assert budget.experiment_spent("e", state.load(), noon) == pytest.approx(row["total_usd"], abs=1e-6)


@pytest.mark.parametrize("actual,expected", [(None, "creating"), ("created", "creating"), ("loading", "loading"),
                                             ("running", "running"), ("frozen", "running"), ("stopped", "stopped"),
                                             ("exited", "exited"), ("offline", "offline"), ("unknown", "offline"),
                                             ("something new", "loading")])
def test_one_status_normaliser(actual, expected):
    assert record_status({"actual_status": actual}) == expected


def test_no_row_is_destroyed():
    assert record_status(None) == "destroyed"


# ----- backoff and formats ------------------------------------------------------------------------
def test_the_backoffs_are_the_promised_ones_and_scale(monkeypatch):
    monkeypatch.delenv("VASTICLAUDE_POLL_SCALE", raising=False)
    assert retry.ssh_pauses() == (2.0, 4.0, 8.0, 16.0)
    assert retry.api_pauses() == (0.5, 1.0, 2.0, 4.0, 8.0)
    assert retry.api_pauses(patient=True)[-3:] == (8.0, 8.0, 8.0)
    monkeypatch.setenv("VASTICLAUDE_POLL_SCALE", "0.5")
    assert retry.ssh_pauses() == (1.0, 2.0, 4.0, 8.0)
    monkeypatch.setenv("VASTICLAUDE_POLL_SCALE", "nonsense")
    assert retry.poll_scale() == 1.0


def test_formats():
    assert (fmt.usd(None), fmt.usd(0.0761), fmt.usd(12.5), fmt.usd(0.0761, small=3)) == ("-", "$0.0761", "$12.50", "$0.076")
    assert fmt.usd(12.5, cents_from=100) == "$12.5000"
    assert (fmt.duration(59), fmt.duration(3725), fmt.duration(90000)) == ("59s", "1h02m", "1d01h")
    assert (fmt.duration(8.4, exact=True), fmt.duration(3725, exact=True)) == ("8s", "1h 02m 05s")
    assert (fmt.human_bytes(999), fmt.human_bytes(1500), fmt.human_bytes(2.5e9)) == ("999 B", "1.5 KB", "2.5 GB")

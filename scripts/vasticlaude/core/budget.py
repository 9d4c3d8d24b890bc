"""Hard budgets: per-experiment dollars and hours, and a daily cap across experiments.

Checked before renting (the estimate must fit what is left) and reported by `cost`.
Limits come from flags or the project config's `budget` block; None means no limit.
Pure: the state (instances.json's data) and the experiment record are passed in.

One budget per experiment: `experiment_budget` is the only place that decides which
dollar cap applies (the flag, else the one set for the experiment by `up` or `run`,
else the config's budget.experiment_usd), and every reader (run's watchdog, status,
cost, recover, report) asks it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from vasticlaude.core import money
from vasticlaude.errors import FAILED, Error


@dataclass(frozen=True)
class Limits:
    experiment_usd: float | None = None
    experiment_hours: float | None = None
    daily_usd: float | None = None

    @classmethod
    def from_config(cls, cfg: dict, **overrides: float | None) -> "Limits":
        budget = {**cfg.get("budget", {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(budget.get("experiment_usd"), budget.get("experiment_hours"), budget.get("daily_usd"))


def experiment_spent(experiment: str, data: dict, now: float | None = None) -> float:
    """Dollars the experiment's instances have cost (the ledger's estimate); `data` is instances.json."""
    return sum(money.instance_cost(r, now)["total_usd"] for r in data["instances"].values()
               if r.get("experiment") == experiment)


def experiment_hours_used(experiment: str, data: dict, now: float | None = None) -> float:
    """Hours the experiment's instances have run (GPU-billed), for the per-experiment hours cap."""
    return sum(money.instance_cost(r, now)["running_s"] for r in data["instances"].values()
               if r.get("experiment") == experiment) / 3600


def midnight(now: float) -> float:
    """Local midnight before `now`: where "today" starts for the daily cap and `cost`."""
    return time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))


def spent_today(data: dict, now: float | None = None) -> float:
    """Dollars billed since local midnight by every instance in the state (GPU, storage, bandwidth)."""
    now = now or time.time()
    since = midnight(now)
    return sum(share_since(rec, money.total_usd(rec, now)[1], since) for rec in data["instances"].values()
               if not gone_before(rec, since))


def gone_before(rec: dict, when: float) -> bool:
    return bool(rec.get("destroyed_at")) and float(rec["destroyed_at"]) < when


def share_since(rec: dict, total: float, since: float) -> float:
    """The part of `total` (the record's dollars up to now, money.total_usd) billed after `since`;
    `cost` passes the totals it already has, so today is the same formula as every other figure."""
    if gone_before(rec, since):
        return 0.0  # gone before it: nothing of it is today's
    return total - _cost_until(rec, since)


def _cost_until(rec: dict, when: float) -> float:
    if (rec.get("created_at") or 0) >= when:
        return 0.0
    return money.total_usd(rec, min(when, rec.get("destroyed_at") or when))[1]


def check_before_rent(limits: Limits, experiment: str, dph: float, hours: float, data: dict,
                      transfer_usd: float = 0.0) -> dict:
    """Refuse (exit 1) when renting at `dph` for `hours` (plus the expected transfer's $) would break
    a limit; else the figures."""
    estimate = dph * hours + transfer_usd
    spent = experiment_spent(experiment, data)
    today = spent_today(data)
    used = experiment_hours_used(experiment, data)
    figures = {"estimate_usd": round(estimate, 4), "experiment_spent_usd": round(spent, 4),
               "today_spent_usd": round(today, 4), "hours": hours, "dph": dph, "hours_used": round(used, 4)}
    if limits.experiment_hours is not None and used + hours > limits.experiment_hours:
        raise Error("over_budget", f"{hours:g} h on top of {used:.2f} h run exceeds the experiment's limit of "
                    f"{limits.experiment_hours:g} h", "Lower --hours or raise budget.experiment_hours.", FAILED)
    if limits.experiment_usd is not None and spent + estimate > limits.experiment_usd:
        raise Error("over_budget", f"estimated ${estimate:.2f} on top of ${spent:.2f} spent exceeds the "
                    f"experiment budget of ${limits.experiment_usd:.2f}",
                    "Pick a cheaper offer, fewer hours, or raise budget.experiment_usd.", FAILED)
    if limits.daily_usd is not None and today + estimate > limits.daily_usd:
        raise Error("over_budget", f"estimated ${estimate:.2f} on top of ${today:.2f} today exceeds the "
                    f"daily cap of ${limits.daily_usd:.2f}", "Wait until tomorrow or raise budget.daily_usd.", FAILED)
    return figures


def experiment_budget(flag: float | None, exp: dict | None, cfg: dict) -> float | None:
    """The experiment's dollar cap: the flag, else the one set for it (up/run), else the config's."""
    exp = exp or {}
    for value in (flag, exp.get("budget_usd"), (exp.get("guard") or {}).get("budget_usd"),
                  (exp.get("rental") or {}).get("budget_usd"), (cfg.get("budget") or {}).get("experiment_usd")):
        if value is not None:
            return float(value)
    return None


def planned_hours(exp: dict | None, cfg: dict) -> float | None:
    """The hours the experiment was rented for (up's --hours), for the projected total."""
    wanted = ((exp or {}).get("rental") or {}).get("wanted") or {}
    hours = wanted.get("hours")
    return float(hours) if hours is not None else None

"""Hard budgets: per-experiment dollars and hours, and a daily cap across experiments.

Checked before renting (the estimate must fit what is left) and reported by `cost`.
Limits come from flags or the project config's `budget` block; None means no limit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import costing, state
from .errors import FAILED, Error


@dataclass(frozen=True)
class Limits:
    experiment_usd: float | None = None
    experiment_hours: float | None = None
    daily_usd: float | None = None

    @classmethod
    def from_config(cls, cfg: dict, **overrides: float | None) -> "Limits":
        budget = {**cfg.get("budget", {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(budget.get("experiment_usd"), budget.get("experiment_hours"), budget.get("daily_usd"))


def experiment_spent(experiment: str, data: dict | None = None, now: float | None = None) -> float:
    data = data if data is not None else state.load()
    return sum(costing.instance_cost(r, now)["total_usd"] for r in data["instances"].values()
               if r.get("experiment") == experiment)


def experiment_hours_used(experiment: str, data: dict | None = None, now: float | None = None) -> float:
    """Hours the experiment's instances have run (GPU-billed), for the per-experiment hours cap."""
    data = data if data is not None else state.load()
    return sum(costing.instance_cost(r, now)["running_s"] for r in data["instances"].values()
               if r.get("experiment") == experiment) / 3600


def spent_today(data: dict | None = None, now: float | None = None) -> float:
    """Dollars billed since local midnight by every instance in the state."""
    now = now or time.time()
    midnight = time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))
    data = data if data is not None else state.load()
    total = 0.0
    for rec in data["instances"].values():
        total += costing.instance_cost(rec, now)["total_usd"] - _cost_until(rec, midnight)
    return total


def _cost_until(rec: dict, when: float) -> float:
    if (rec.get("created_at") or 0) >= when:
        return 0.0
    return costing.instance_cost(rec, min(when, rec.get("destroyed_at") or when))["total_usd"]


def check_before_rent(limits: Limits, experiment: str, dph: float, hours: float) -> dict:
    """Refuse (exit 1) when renting at `dph` for `hours` would break a limit; else the figures."""
    estimate = dph * hours
    spent = experiment_spent(experiment)
    today = spent_today()
    used = experiment_hours_used(experiment)
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

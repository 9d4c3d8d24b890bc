"""Find the instance an experiment runs on, verified against the API, and how to reach it.

State says which instance belongs to an experiment; the API says whether it is still
there and where its SSH is now (ports can change on restart). Never assume: a
command that acts on an instance always re-reads it. The route tried first is the one the
record remembers having answered (`ssh_route`: direct or proxy), the other its fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

from vasticlaude.errors import FAILED, Error
from vasticlaude.remote.ssh import Route, route_for, ssh_key
from vasticlaude.ops import reconcile
from vasticlaude.store import state
from vasticlaude.vast.gateway import Vast


@dataclass
class Bound:
    """An experiment's instance: the state record, the live API row and the SSH route."""

    experiment: str
    record: dict
    row: dict | None
    vast: Vast

    def route(self) -> Route:
        if self.row is None:
            raise Error("instance_gone", f"instance {self.record['id']} of {self.experiment} is gone from the account",
                        "Rent a new one with 'vasticlaude up' (recovery resumes from checkpoints).", FAILED)
        return route_for(self.row, ssh_key().private, prefer=self.record.get("ssh_route"))

    @property
    def instance_id(self) -> int:
        return int(self.record["id"])


def find_record(experiment: str | None, instance_id: int | None) -> dict:
    """The live state record for an experiment (or instance id); the newest if several."""
    live = state.live_instances()
    if instance_id is not None:
        found = [r for r in live if int(r["id"]) == instance_id]
    elif experiment:
        found = [r for r in live if r.get("experiment") == experiment]
    else:
        found = live
    if not found:
        what = f"experiment {experiment}" if experiment else f"instance {instance_id}" if instance_id else "any experiment"
        raise Error("no_instance", f"no live instance for {what} in vasticlaude's state",
                    "Rent one with 'vasticlaude up', or 'vasticlaude reconcile' if it was made elsewhere.", FAILED)
    if len(found) > 1 and not (experiment or instance_id):
        names = ", ".join(sorted({str(r.get('experiment')) for r in found}))
        raise Error("ambiguous", f"several experiments are live ({names})", "Name one with --experiment.", FAILED)
    return max(found, key=lambda r: r.get("created_at", 0))


def bind(vast: Vast, experiment: str | None = None, instance_id: int | None = None) -> Bound:
    """The experiment's (or instance's) live record, re-read from the API through `vast`.

    When instances.json was damaged lately and has no such record, the account decides: it is
    reconciled (unrecorded vasticlaude instances adopted) and the record looked for again."""
    try:
        rec = find_record(experiment, instance_id)
    except Error as err:
        if err.code != "no_instance" or not state.damaged_recently():
            raise
        reconcile.reconcile(vast)
        rec = find_record(experiment, instance_id)
    return attach(vast, rec)


def attach(vast: Vast, rec: dict) -> Bound:
    """A found record with its live row, read through `vast`."""
    return Bound(str(rec.get("experiment")), rec, vast.instance(int(rec["id"])), vast)

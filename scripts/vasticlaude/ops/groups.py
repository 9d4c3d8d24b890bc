"""Which experiments are the nodes of a multi-node one (`up --nodes N`): node i of group G is the
experiment `G-n<i>`, and G's experiment.json holds the group's record ("nodes": count, members,
cluster, overlay …). Light on purpose: `cost` and `report` ask it without loading ssh or the
gateway; ops/nodes.py rents, runs and watches the groups.
"""
from __future__ import annotations

import re

from vasticlaude.store import state

NODE = re.compile(r"(.+)-n\d+")  # a node's experiment name: the group's name is group(1)


def member(group: str, rank: int) -> str:
    return f"{group}-n{rank}"


def group_of(experiment: str | None) -> dict | None:
    """The group record when `experiment` is a multi-node experiment, else None."""
    if not experiment:
        return None
    return (state.read_experiment(experiment) or {}).get("nodes")


def members(experiment: str | None) -> list[str] | None:
    """The node experiments of a multi-node experiment, else None (no file read when it has no folder)."""
    if not experiment or not state.experiment_dir(experiment).is_dir():
        return None
    found = group_of(experiment)
    names = found.get("members") if isinstance(found, dict) else None
    return [str(m) for m in names] if isinstance(names, list) and names else None

"""Read progress and metrics out of a training log, whatever prints them.

Recognises tqdm bars (`45%|████▌ | 450/1000 [00:10<00:12, 44.5it/s]`), step and
epoch counters (`step 120/1000`, `Epoch [3/10]`, `epoch=3`), and metrics written as
`loss=0.12`, `loss: 0.12`, `'loss': 0.12` or JSON lines. `progress()` gives the latest
state for `status`; `series()` gives every metric over steps for the report's chart.
"""
from __future__ import annotations

import json
import re

TQDM = re.compile(r"(\d{1,3})%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([0-9:]+)<([0-9:?]+)")
COUNTER = re.compile(r"\b(step|iter(?:ation)?|epoch)s?\b['\"]?\s*[:=#]?\s*\[?\s*(\d+)\s*(?:/|of)\s*(\d+)", re.I)
BARE_COUNTER = re.compile(r"\b(step|iter(?:ation)?|epoch)s?\b['\"]?\s*[:=]?\s*(\d+)\b", re.I)
METRIC = re.compile(r"['\"]?\b([A-Za-z][\w./-]{0,40}?)['\"]?\s*[:=]\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])")
METRIC_WORDS = re.compile(r"loss|acc|accuracy|ppl|perplexity|lr|reward|score|f1|bleu|auc|mse|mae|error|val|train", re.I)
NOT_METRICS = {"step", "steps", "epoch", "epochs", "iter", "iteration", "exit", "pid", "resume"}


def progress(lines: list[str]) -> dict:
    """The latest progress seen in `lines` (newest wins): bar, step/epoch counters, metrics."""
    found: dict = {}
    for line in reversed(lines[-400:]):
        for part in reversed(line.split("\r")):
            _take_progress(part, found)
        if {"percent", "epoch", "metrics"} <= found.keys() or len(found.get("metrics", {})) >= 4 and "percent" in found:
            break
    return found


def _take_progress(line: str, found: dict) -> None:
    bar = TQDM.search(line)
    if bar and "percent" not in found:
        found.update(percent=int(bar.group(1)), done=int(bar.group(2)), total=int(bar.group(3)), eta=bar.group(5))
    for kind, done, total in COUNTER.findall(line):
        key = "epoch" if kind.lower().startswith("epoch") else "step"
        found.setdefault(key, f"{done}/{total}")
        if "percent" not in found and key == "step" and int(total):
            found["percent"] = int(100 * int(done) / int(total))
    metrics = found.setdefault("metrics", {})
    for name, value in metrics_in(line).items():
        metrics.setdefault(name, value)
    if not metrics:
        found.pop("metrics")


def metrics_in(line: str) -> dict[str, float]:
    """Named numeric values on one line that look like training metrics."""
    text = line.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            data = json.loads(text)
            return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and _is_metric(k)}
        except ValueError:
            pass
    return {name: float(value) for name, value in METRIC.findall(line) if _is_metric(name)}


def _is_metric(name: str) -> bool:
    return name.lower() not in NOT_METRICS and bool(METRIC_WORDS.search(name))


def step_of(line: str) -> int | None:
    """The step a line reports: a step/iteration counter first, then a tqdm bar, then an epoch."""
    counters = [m for p in (COUNTER, BARE_COUNTER) for m in p.finditer(line)]
    for match in counters:
        if not match.group(1).lower().startswith("epoch"):
            return int(match.group(2))
    bar = TQDM.search(line)
    if bar:
        return int(bar.group(2))
    return int(counters[0].group(2)) if counters else None


def series(lines: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Every metric as (step, value) points; lines without a step count as the next index."""
    out: dict[str, list[tuple[float, float]]] = {}
    index = 0
    for line in lines:
        for part in line.split("\r"):
            values = metrics_in(part)
            if not values:
                continue
            index += 1
            step = step_of(part)
            for name, value in values.items():
                out.setdefault(name, []).append((float(step if step is not None else index), value))
    return out

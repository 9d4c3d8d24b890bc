"""What a sweep runs, and how its one budget is split: pure rules, no I/O.

A sweep is a grid (`--param lr=1e-3,3e-4 --param bs=32,64`: every combination), a list of
commands (one a line in a file; Markdown list markers and backticks are dropped), or both
(every command with every combination). A run's values reach its command as `{lr}`
placeholders and its environment as VASTICLAUDE_PARAM_LR.

The budget: one total across the sweep, split into per-instance caps whose sum never
exceeds it. A slot's cap grows only by what no other slot holds (`grow`): the part retired
slots did not spend, or what was never handed out.
"""
from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass

from vasticlaude.errors import USAGE, Error

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
LIST_MARK = re.compile(r"^(?:[-*+]|\d+[.)])\s+")
MAX_RUNS = 1000


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its id, its values, the command with them filled in, its environment."""

    id: str
    params: dict
    command: str
    env: dict


def parse_param(text: str) -> tuple[str, list[str]]:
    """`lr=1e-3,3e-4` → ("lr", ["1e-3", "3e-4"]); a usage error names what is wrong."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not NAME.match(name):
        raise Error("bad_param", f"--param {text!r} is not NAME=V1,V2,…", "For example --param lr=1e-3,3e-4.", USAGE)
    found = [v.strip() for v in values.split(",")]
    if not all(found):
        raise Error("bad_param", f"--param {text!r} has an empty value", "Separate values with commas, none empty.",
                    USAGE)
    return name, list(dict.fromkeys(found))


def read_commands(text: str) -> list[str]:
    """The commands of a file: one a line; blank lines, `#` comments and code fences skipped."""
    out = []
    for raw in text.splitlines():
        line = LIST_MARK.sub("", raw.strip()).strip()
        if not line or line.startswith("#") or line.startswith("```"):
            continue
        if len(line) > 1 and line[0] == line[-1] == "`":
            line = line[1:-1].strip()
        if line:
            out.append(line)
    return out


def fill(template: str | list[str], values: dict) -> str:
    """The command with each `{name}` of `values` replaced. An argv list is filled token by token
    and joined quoted; a one-string command is a shell line, so each value goes in quoted."""
    if isinstance(template, list) and len(template) == 1:
        template = template[0]
    if isinstance(template, list):
        tokens = [PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), t) for t in template]
        return shlex.join(tokens)
    return PLACEHOLDER.sub(lambda m: shlex.quote(str(values[m.group(1)])) if m.group(1) in values else m.group(0),
                           template)


def unknown_placeholders(template: str | list[str], names: set[str]) -> list[str]:
    """`{x}` placeholders that no --param defines (a typo would run every command unfilled)."""
    text = " ".join(template) if isinstance(template, list) else template
    return sorted({m for m in PLACEHOLDER.findall(text) if m not in names and not m.isupper()})


def env_of(values: dict) -> dict:
    return {f"VASTICLAUDE_PARAM_{name.upper()}": str(value) for name, value in values.items()}


def expand(templates: list, params: list[tuple[str, list[str]]]) -> list[RunSpec]:
    """Every command template with every combination of the params, in order; ids r01, r02…"""
    if not templates:
        raise Error("no_command", "a sweep needs a command (after --) or --commands FILE",
                    "For example: vasticlaude sweep --param lr=1e-3,3e-4 -- python train.py --lr {lr}", USAGE)
    names = [n for n, _ in params]
    if len(set(names)) != len(names):
        raise Error("bad_param", "a --param is given twice", "Give each name once, its values comma-separated.", USAGE)
    for template in templates:
        missing = unknown_placeholders(template, set(names))
        if missing:
            raise Error("bad_param", f"the command uses {', '.join('{' + m + '}' for m in missing)} but no --param "
                        "defines it", "Add --param NAME=V1,V2 or fix the placeholder.", USAGE)
    combos = [dict(zip(names, c)) for c in itertools.product(*[v for _, v in params])] or [{}]
    total = len(templates) * len(combos)
    if total > MAX_RUNS:
        raise Error("too_many_runs", f"the sweep has {total} runs (at most {MAX_RUNS})", "Use fewer values.", USAGE)
    width = max(2, len(str(total)))
    runs = []
    for template in templates:
        for values in combos:
            rid = f"r{len(runs) + 1:0{width}d}"
            runs.append(RunSpec(rid, values, fill(template, values), env_of(values)))
    return runs


# ----- the budget split ----------------------------------------------------------------------------
def first_caps(total: float, slots: int) -> list[float]:
    """Equal shares, rounded down to the cent's hundredth so their sum never exceeds the total."""
    share = int(total / slots * 1e6) / 1e6
    return [share] * slots


def free(total: float, caps: dict[str, float], final: dict[str, float]) -> float:
    """What no slot holds: the total less the caps of live slots and what retired slots spent."""
    held = sum(c for name, c in caps.items() if name not in final) + sum(final.values())
    return max(0.0, int((total - held) * 1e6) / 1e6)


def grow(total: float, caps: dict[str, float], final: dict[str, float], slot: str) -> float:
    """The slot's cap with every free dollar added: the invariant sum(caps) + sum(final) <= total holds."""
    return round(caps[slot] + free(total, caps, final), 6)

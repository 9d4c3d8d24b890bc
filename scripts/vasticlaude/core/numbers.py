"""The one rule for numeric flags, shared by the product's parsers (console.number) and the sandbox's (sim.cli)."""
from __future__ import annotations

import math


def bounded(text: str, most: float, least: float = 0.0, *, zero: bool = False, whole: bool = False) -> float:
    """`text` as a number: finite, above `least` (or equal to it with zero=True), at most `most`.

    Raises ValueError with a message for the reader (the parser adds the flag's name), so no
    negative, zero, NaN or absurd value reaches a budget check, a default (`or 40`) or an API."""
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a {'whole number' if whole else 'number'}") from None
    if not math.isfinite(value) or value < least or (value == least and not zero) or value > most:
        low = f"at least {least:g}" if zero else f"more than {least:g}"
        raise ValueError(f"{text} is out of range (must be {low} and at most {most:g})")
    return value

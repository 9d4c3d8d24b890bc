"""How numbers read to a person: money, durations, sizes. One formatter each, used everywhere."""
from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def usd(value: float | None, small: int = 4, cents_from: float = 1.0) -> str:
    """Dollars: cents from `cents_from` up, else `small` decimals (sandbox runs cost fractions of a cent)."""
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= cents_from else f"${value:.{small}f}"


def duration(seconds: float, exact: bool = False) -> str:
    """Tables: two units at most ("2h05m", "1d03h"). `exact` (a report's run length): "1h 02m 03s"."""
    s = int(round(max(0.0, float(seconds)))) if exact else int(seconds)
    if exact:
        hours, rest = divmod(s, 3600)
        minutes, secs = divmod(rest, 60)
        return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

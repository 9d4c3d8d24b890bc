"""The instance's disk as the job meets it: `df`, unless `df` shows another disk than the one rented.

`df` inside a container often reports the host's filesystem rather than the container's
(moby/moby #22677; the sandbox's `df-host`), so a disk-full check on it may never fire and a
space check may let through what cannot fit. The rented size is known from the API row
(`disk_space`, GB = 2**30 as the sandbox's quota) or the instance's record (`disk`). When df's
size is within 10 % of it, df is the container's and is used as it is; otherwise the size is
the rented one and the use what `du` measured under the instance's home (the probe runs du only
then), or Vast's own `disk_usage` when that is larger (it counts the image's other folders, but
lags). Pure: the shell lines come in (templates/disk.sh.j2 prints them), the figures go out.
"""
from __future__ import annotations

GIB = float(1 << 30)
AGREE = 1.10


def rented_bytes(row: dict | None, record: dict | None) -> int | None:
    """The disk rented for the instance (the API row's disk_space, else the record's disk), in bytes."""
    for value in ((row or {}).get("disk_space"), (record or {}).get("disk")):
        try:
            if value is not None and float(value) > 0:
                return int(float(value) * GIB)
        except (TypeError, ValueError):
            continue
    return None


def rented_kib(row: dict | None, record: dict | None) -> int:
    """The same in KiB for templates/disk.sh.j2 (0: unknown, never run du)."""
    return (rented_bytes(row, record) or 0) // 1024


def reading(lines: list[str], rented: int | None, api_used_gb: float | None = None) -> dict | None:
    """{size, used, free (bytes), source: "df" | "rented"} from the lines of templates/disk.sh.j2:
    df -Pk's last line and, when df showed a bigger disk than rented, `du=<KiB>`; None without df."""
    df = next((ln.split() for ln in reversed(lines) if len(ln.split()) >= 4 and ln.split()[1].isdigit()), None)
    if df is None:
        return None
    size, used, free = (int(x) * 1024 for x in df[1:4])
    if rented is None or size <= rented * AGREE:
        return {"size": size, "used": used, "free": free, "source": "df"}
    du = next((int(ln[3:]) * 1024 for ln in lines if ln.startswith("du=") and ln[3:].strip().isdigit()), None)
    if du is None and not api_used_gb:  # nothing measured the container itself: df is all there is
        return {"size": size, "used": used, "free": free, "source": "df"}
    used = max(du or 0, int(float(api_used_gb or 0) * GIB))
    return {"size": rented, "used": used, "free": max(0, rented - used), "source": "rented"}

"""Project config: `.vasticlaude/config.json` in the user's repo (all keys optional).

  {"target": "vast" | "sandbox",
   "gpu": ["RTX 4090", "RTX 3090"], "num_gpus": 1, "min_vram_gb": 16, "min_reliability": 0.95,
   "cuda": 12.1, "region": ["US", "CA"], "verified": true, "max_dph": 2.0,
   "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "disk_gb": 40, "interruptible": false,
   "hours": 2.0,
   "budget": {"experiment_usd": 10, "experiment_hours": 12, "daily_usd": 30},
   "ignore": ["data/raw/"], "setup": "pip install -r requirements.txt"}

Flags beat the file; the file beats the defaults below. The project root is the
nearest folder upwards holding `.vasticlaude/` or `.git`, else the current folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import Error

DEFAULTS = {
    "target": None, "gpu": [], "num_gpus": 1, "min_vram_gb": None, "min_reliability": 0.95,
    "cuda": None, "region": [], "verified": True, "max_dph": None,
    "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "disk_gb": 40, "interruptible": False,
    "hours": 1.0, "budget": {"experiment_usd": None, "experiment_hours": None, "daily_usd": None},
    "ignore": [], "setup": None,
}


def project_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".vasticlaude").is_dir() or (folder / ".git").exists():
            return folder
    return here


def load(root: Path | None = None) -> dict:
    """Defaults overlaid with the project's config file."""
    path = (root or project_root()) / ".vasticlaude" / "config.json"
    merged = json.loads(json.dumps(DEFAULTS))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return merged
    except ValueError as err:
        raise Error("bad_config", f"{path} is not valid JSON ({err})", "Fix or delete the file.") from None
    if not isinstance(data, dict):
        raise Error("bad_config", f"{path} must hold a JSON object", "Fix or delete the file.")
    budget = {**merged["budget"], **(data.get("budget") or {})}
    merged.update(data)
    merged["budget"] = budget
    return merged

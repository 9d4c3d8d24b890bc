"""Project config: `.vasticlaude/config.json` in the user's repo (all keys optional).

  {"target": "vast" | "sandbox",
   "gpu": ["RTX 4090", "RTX 3090"], "num_gpus": 1, "min_vram_gb": 16, "min_reliability": 0.95,
   "cuda": 12.1, "region": ["US", "CA"], "verified": true, "max_dph": 2.0,
   "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "disk_gb": 40, "interruptible": false,
   "hours": 2.0,
   "budget": {"experiment_usd": 10, "experiment_hours": 12, "daily_usd": 30},
   "guard": {"grace_s": 600, "on_end": "destroy-if-pulled", "check_s": 15, "kill_grace_s": 60},
   "ignore": ["data/raw/"], "setup": "pip install -r requirements.txt"}

`guard` sets the on-instance watchdog that `run` starts (README "Guards"): how long after
the job ends it waits for `pull` (grace_s), what it does then (on_end: "destroy-if-pulled",
"destroy" or "stop"), how often it checks (check_s) and how long a job gets between SIGTERM
and SIGKILL when a budget is hit (kill_grace_s).

"torchrun" (read by `run --torchrun` on several nodes): the launcher that gets torchrun's flags,
default "torchrun"; "python -m torch.distributed.run" is the same program where the script is
not on PATH.

"session_end" (read by `vasticlaude reap`, which the SessionEnd hook starts): what happens
to instances when a Claude session ends. Everything not covered below (idle, never set up,
unreachable, a job running without a live on-instance guard) is always destroyed.
  {"session_end": {"running": "leave-guarded" | "stop" | "destroy",   (default leave-guarded)
                   "finished": "destroy" | "stop"}}                   (default destroy)
  running: a job still running under a live guard — leave it (the guard ends it), or pull
           and stop (the disk stays and bills storage) or pull and destroy;
  finished: a job that ended — after a best-effort pull, destroy, or stop to keep the disk.

"recovery" (read by `vasticlaude watch` and `vasticlaude recover`, README "Recovery"):
  {"recovery": {"auto": true,              watch recovers on its own (false: it reports and stops)
                "max_attempts": 3,         recoveries per experiment, then it asks you
                "sync_interval_s": 300,    checkpoints pulled home at least this often while the job runs
                "sync": ["checkpoints"],   what those pulls bring (relative to the experiment's folder)
                "preempt_wait_s": 600,     how long a preempted interruptible instance may take to come back
                "bid_step": 1.25,          each bid raise multiplies the bid by this
                "max_bid_dph": null,       highest GPU bid (default: the on-demand price, within the budget)
                "disk_growth": 2.0,        a full disk is re-rented this many times larger
                "stale_after_s": 600,      a job without heartbeat this long is moved
                "unreachable_after_s": 300,   SSH failing this long while Vast says running: moved
                "confirm_s": 180}}         offline / unknown / exited must last this long (× VASTICLAUDE_POLL_SCALE)
                                           before the instance is given up: on the real Vast they can pass

"deadlines" (walls: no retry or SSH probe carries a command past them by more than one poll):
  {"deadlines": {"up_s": null,       `up`'s boot wait (null: by the image, 600 s small … 2700 s huge)
                 "up_cap_s": 3600,   the most any boot wait may be (--deadline too)
                 "push_s": null,     `push` (null: none beyond each step's own limits)
                 "down_s": 600}}     `down`: what is not confirmed gone by then is named (exit 4)

"store" (README "Results store"): where the instance ships checkpoints and results, so the
watchdog can destroy the instance the moment they are safe, laptop or not.
  {"store": {"url": "s3://bucket/prefix",      S3, R2, B2, MinIO (null: no store)
             "endpoint_url": null,             e.g. https://<account>.r2.cloudflarestorage.com (null: AWS,
                                               or the sandbox's own store on the sandbox)
             "region": null,                   the bucket's region (null: us-east-1, R2 "auto")
             "sync_interval_s": null,          checkpoints uploaded this often (null: recovery.sync_interval_s)
             "timeout_s": 300}}                the end-of-job upload may take this long before the fallback
  Credentials are never in this file: VASTICLAUDE_STORE_ACCESS_KEY_ID / _SECRET_ACCESS_KEY (or
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN) in the environment or in
  .vasticlaude/.env.

"transfer" (read by `offers` and `up`): the bandwidth a run is expected to move, priced at each
offer's $/GB (Vast bills bytes both ways) and added to its estimated total:
  {"transfer": {"push_gb": null,      code sent to the instance (null: measured, as push would send it)
                "results_gb": 1.0}}   results brought home

Flags beat the file; the file beats the defaults below. A value of the wrong type is left
out (its default used), said once and the file kept as config.json.bad-<time>; unknown keys
are kept (a new key is declared with its type in store/records.py CONFIG). The project root is the
nearest folder upwards holding `.vasticlaude/` or `.git`, else the current folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from vasticlaude.store import quarantine, records

DEFAULTS = {
    "target": None, "gpu": [], "num_gpus": 1, "min_vram_gb": None, "min_reliability": 0.95,
    "cuda": None, "region": [], "verified": True, "max_dph": None,
    "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "disk_gb": 40, "interruptible": False,
    "hours": 1.0, "budget": {"experiment_usd": None, "experiment_hours": None, "daily_usd": None},
    "guard": {"grace_s": 600, "on_end": "destroy-if-pulled", "check_s": 15, "kill_grace_s": 60},
    "ignore": [], "setup": None, "torchrun": "torchrun",
    "recovery": {"auto": True, "max_attempts": 3, "sync_interval_s": 300, "sync": ["checkpoints"],
                 "preempt_wait_s": 600, "bid_step": 1.25, "max_bid_dph": None, "disk_growth": 2.0,
                 "stale_after_s": 600, "unreachable_after_s": 300, "confirm_s": 180},
    "store": {"url": None, "endpoint_url": None, "region": None, "sync_interval_s": None, "timeout_s": 300},
    "transfer": {"push_gb": None, "results_gb": 1.0},
    "deadlines": {"up_s": None, "up_cap_s": 3600, "push_s": None, "down_s": 600},
}


def project_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".vasticlaude").is_dir() or (folder / ".git").exists():
            return folder
    return here


def runs_dir(experiment: str, start: Path | None = None) -> Path:
    """Where an experiment's results come home: <project>/.vasticlaude/runs/<experiment>/."""
    return project_root(start) / ".vasticlaude" / "runs" / experiment


def load(root: Path | None = None) -> dict:
    """Defaults overlaid with the project's config file (never raises on its content: see check)."""
    return check(root)[0]


def check(root: Path | None = None) -> tuple[dict, list[str]]:
    """(defaults overlaid with the usable part of the config file, what was wrong in it).

    A value of the wrong type (or a file that is not JSON) is left out and the default used;
    the file as it was is copied to config.json.bad-<time> once and said once on stderr
    (store/quarantine.py). Keys not in records.CONFIG are kept as they are.
    """
    path = (root or project_root()) / ".vasticlaude" / "config.json"
    merged = json.loads(json.dumps(DEFAULTS))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return merged, []
    except OSError as err:
        return merged, [f"{path} is unreadable ({err})"]
    found, why = records.parse(raw)
    data, problems = records.check_config(found) if not why else ({}, [f"the file is {why}"])
    if problems:
        quarantine.keep(path, raw, problems)
    nested = {key: {**merged[key], **data.get(key, {})} for key in ("budget", "guard", "recovery", "store", "transfer", "deadlines")}
    merged.update(data)
    merged.update(nested)
    return merged, problems

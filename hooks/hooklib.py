"""What vasticlaude's hook scripts share: stdlib only, fast, and never in the user's way.

Why stdlib only: Claude Code runs a hook with whatever `python3` is on PATH, before the
plugin's own environment exists (or while it is being built), and SessionEnd gets 1.5 s
shared by every plugin (claude-code-plugin.md §6.5). Importing `vastai` alone takes about a
second, so anything that talks to Vast runs in a detached `vasticlaude reap` instead.
From the package only `vasticlaude.store.paths`, `.store.records` (the typed reading of the state
files, so a hook reads them exactly as the commands do) and `vasticlaude.core.money` are imported: all are
stdlib-only (checked by tests/test_hooks.py with `python -X importtime`).

Contract of every hook here: read the event from stdin with a deadline (hookio: a stdin
that is never closed must not hang the hook), answer on stdout, exit 0 — also on its own
errors, which are logged to <vasticlaude home>/logs/hooks.log and reported in one line, so
a broken hook never blocks the user. `VASTICLAUDE_HOOKS=off` turns them all off.
`VASTICLAUDE_HOOK_PYTHON=/path/to/python` runs background work with that interpreter
(`-m vasticlaude`) instead of the plugin's launcher `scripts/vc`, and skips preparing the
launcher's environment (the tests use it; so can a developer with a ready venv).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Import paths come from this file's own location, never from the plugin folder's name:
# installed plugins live in version-named cache folders (claude-code-plugin.md §13.11).
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(1, str(ROOT / "scripts"))

import hookio  # noqa: E402
from vasticlaude.core import fmt  # noqa: E402
from vasticlaude.core import money as costing  # noqa: E402 — stdlib-only modules of the package
from vasticlaude.store import paths, records  # noqa: E402

LAST_REPORT = "last-session-end.json"


# ----- the event ----------------------------------------------------------------------------------
def read_event(wait: float = 1.0, raw: bytes | None = None) -> dict:
    """The event JSON on stdin (read with a deadline by hookio.read_raw), or {}."""
    raw = hookio.read_raw(wait) if raw is None else raw
    event, _ = records.parse(raw.decode("utf-8", "replace").encode("utf-8", "replace") or b"{}")
    return event if isinstance(event, dict) else {}


def main(handler, event_name: str, wait: float = 1.0, raw: bytes | None = None) -> int:
    """Run `handler(event) -> str | None` and print what it returns; exit 0 whatever happens.
    `raw`: the event's bytes when the caller already read them (its own fast path)."""
    if hookio.disabled():
        return 0
    try:
        out = handler(read_event(wait, raw))
    except Exception as err:  # noqa: BLE001 — a broken hook must never block the user
        where = log_error(event_name)
        message = f"vasticlaude {event_name} hook failed ({type(err).__name__}); ignored. Details: {where}"
        print(message, file=sys.stderr)
        out = json.dumps({"systemMessage": message})
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


def log_error(event_name: str) -> str:
    import traceback
    try:
        path = paths.ensure_private_dir(paths.home() / "logs") / "hooks.log"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {event_name}\n{traceback.format_exc()}")
        return str(path)
    except OSError:
        return "(the log could not be written)"


# ----- state, read-only ----------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    """The file's JSON object; None when it does not exist. Raises ValueError when unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(str(err)) from None
    data, why = records.parse(raw)
    if why:
        raise ValueError(why)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def load_state() -> tuple[dict | None, list[str]]:
    """(instances.json as store/records.py reads it, what was wrong with it): (None, []) when there is none.

    Bad parts are left out and what can be salvaged from a truncated file is kept; the hook only
    reads (the reap it starts keeps the copy aside and reports it)."""
    path = paths.home() / "instances.json"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, []
    except OSError as err:
        return records.check_instances({})[0], [f"unreadable: {err}"]
    found, why = records.parse(raw)
    if why:
        found = records.salvage_instances(raw.decode("utf-8", "replace"))
    data, problems = records.check_instances(found)
    return data, ([f"the file is {why}"] if why else []) + problems


def damage_line(problems: list[str]) -> str:
    """What SessionStart and SessionEnd say about a damaged instances.json."""
    if problems and problems[0].startswith("the file is ") or problems and problems[0].startswith("unreadable"):
        return f"instances.json is corrupt ({problems[0][:120]})"
    return f"instances.json has {len(problems)} bad part(s) ({problems[0][:120]})"


def quarantined(within: float = 86400.0) -> list[dict]:
    """Files kept aside for bad content in the last `within` seconds (<home>/quarantine.json, newest first)."""
    try:
        data = read_json(paths.home() / "quarantine.json") or {}
    except ValueError:
        return []
    entries = data.get("entries") if isinstance(data.get("entries"), list) else []
    now = time.time()
    return [e for e in reversed(entries) if isinstance(e, dict) and isinstance(e.get("at"), (int, float))
            and now - e["at"] <= within]


def live(data: dict | None) -> list[dict]:
    """Records not destroyed, oldest first."""
    if not data:
        return []
    recs = [r for r in data["instances"].values() if not r.get("destroyed_at")]
    return sorted(recs, key=lambda r: (r.get("created_at") or 0, str(r.get("id"))))


def last_report() -> dict | None:
    try:
        return read_json(paths.home() / LAST_REPORT)
    except ValueError:
        return None


def experiment(name: str | None) -> dict:
    """The experiment's file as store/records.py reads it (bad parts left out), {} when none or unreadable."""
    if not name or not paths.EXPERIMENT_RE.match(str(name)):
        return {}
    try:
        return records.check_experiment(read_json(paths.home() / "experiments" / name / "experiment.json") or {})[0]
    except ValueError:
        return {}


def job_in_flight(rec: dict) -> dict | None:
    """State-only guess that a job runs on this instance: its last `run` started and nothing
    was pulled after it (the job's end is only known on the instance; `status` asks there).
    Returns the run's guard as `run` recorded it ({} when none), or None when no job runs."""
    exp = experiment(rec.get("experiment"))
    runs = [r for r in exp.get("runs") or [] if str(r.get("instance_id")) == str(rec.get("id"))]
    if not runs or runs[-1].get("immediate_exit") is not None:
        return None
    pulled_at = (exp.get("pull") or {}).get("at") or 0
    if float(pulled_at) >= float(runs[-1].get("at") or 0):
        return None
    guard = exp.get("guard")
    return guard if isinstance(guard, dict) else {}


def guarded(rec: dict, report: dict | None) -> bool:
    """A job runs under an on-instance watchdog: the last reap left it so, or `run` started one."""
    if str(rec.get("id")) in left_guarded(report):
        return True
    guard = job_in_flight(rec)
    return bool(guard and guard.get("watchdog") and guard.get("alive"))


def left_guarded(report: dict | None) -> dict[str, float]:
    """Instances the last reap left running because an on-instance guard watches them, and when."""
    at = float((report or {}).get("finished_at") or (report or {}).get("started_at") or 0)
    return {str(i.get("id")): at for i in (report or {}).get("instances") or [] if i.get("action") == "left-guarded"}


# ----- the account, asked once ---------------------------------------------------------------------
LIVE_TIMEOUT = 2.0   # one API call at session start; the hook's own limit is 10 s
REAL_URL = "https://console.vast.ai"


def account_rows(recs: list[dict]) -> tuple[dict[int, dict] | None, str]:
    """The account's instance rows by id, from one `GET /api/v1/instances/` to the URL the live records
    were rented on (the sandbox's key for the sandbox, else VAST_API_KEY or vastai's key file);
    (None, why) when it cannot be asked or does not answer within LIVE_TIMEOUT."""
    import urllib.request
    urls = [str(r.get("target") or "") for r in recs if r.get("target")]
    url = max(set(urls), key=urls.count) if urls else (os.environ.get("VAST_URL") or REAL_URL)
    key = account_key(url)
    if not key:
        return None, ""  # nothing to ask with: the local record is all there is
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/instances/?limit=100",
                                     headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=LIVE_TIMEOUT) as reply:
            rows = json.loads(reply.read().decode("utf-8")).get("instances") or []
        return {int(r["id"]): r for r in rows if isinstance(r, dict) and "id" in r}, ""
    except Exception as err:  # noqa: BLE001 — any failure means "as last seen"
        return None, f"{url} did not answer ({type(err).__name__})"


def account_key(url: str) -> str | None:
    """The key for `url`: the local sandbox's own when it is that sandbox, else the user's Vast key."""
    try:
        sim = read_json(paths.sim_dir() / "sim.json") or {}
    except ValueError:
        sim = {}
    if sim.get("url") and sim["url"].rstrip("/") == url.rstrip("/"):
        return sim.get("api_key")
    if os.environ.get("VAST_API_KEY"):
        return os.environ["VAST_API_KEY"].strip()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for path in (Path(config) / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
        try:
            return path.read_text().strip() or None
        except OSError:
            continue
    return None


def job_ended(rec: dict) -> int | None:
    """The exit code of the instance's last run when its end is known at home (pulled or synced), else None."""
    exp = experiment(rec.get("experiment"))
    runs = [r for r in exp.get("runs") or [] if str(r.get("instance_id")) == str(rec.get("id"))]
    if not runs:
        return None
    if runs[-1].get("immediate_exit") is not None:
        return int(runs[-1]["immediate_exit"])
    pulled = exp.get("pull") or {}
    if float(pulled.get("at") or 0) < float(runs[-1].get("at") or 0):
        return None
    try:
        return int((Path(pulled.get("local_path") or "") / "run" / "exit_code").read_text().strip())
    except (OSError, ValueError):
        return None


def since(rec: dict) -> float:
    """When the record reached its current status."""
    history = rec.get("history") or []
    return float(history[-1].get("at") or 0) if history else float(rec.get("created_at") or 0)


def stamp(at: float) -> str:
    return time.strftime("%b %d %H:%M", time.localtime(at)) if at else "?"


def money(value: float) -> str:
    return fmt.usd(value, small=3)


def pid_alive(pid: object) -> bool:
    """True when the process exists and is not a zombie (containers may not reap orphans)."""
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:  # type: ignore[arg-type]
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


# ----- the launcher and detached work ---------------------------------------------------------------
def launcher() -> Path | None:
    """The plugin's launcher `scripts/vc`, unless an interpreter is pinned."""
    if os.environ.get("VASTICLAUDE_HOOK_PYTHON"):
        return None
    vc = ROOT / "scripts" / "vc"
    return vc if vc.is_file() and os.access(vc, os.X_OK) else None


def vc_command() -> str:
    """How Claude should call vasticlaude from this plugin (for messages)."""
    vc = ROOT / "scripts" / "vc"
    return f'"{vc}"' if vc.is_file() else "vasticlaude"


def worker(args: list[str]) -> tuple[list[str], dict]:
    """The command and environment that run `vasticlaude ARGS` outside the hook."""
    env = dict(os.environ)
    vc = launcher()
    if vc is not None:
        return [str(vc), *args], env
    python = os.environ.get("VASTICLAUDE_HOOK_PYTHON") or sys.executable or "python3"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "scripts"), env.get("PYTHONPATH")) if p)
    # `-m` would put the working directory (the project) first on sys.path: drop it before importing.
    boot = ('import sys; sys.path[:] = [p for p in sys.path if p not in ("", ".")]\n'
            'import runpy; runpy.run_module("vasticlaude", run_name="__main__", alter_sys=True)')
    return [python, "-c", boot, *args], env


def spawn(argv: list[str], env: dict, log_name: str, cwd: str | None = None) -> int:
    """Start `argv` detached (own session, stdio to a log) and return its pid at once.

    Claude Code kills a SessionEnd hook after 1.5 s; a child in its own session with no
    pipe back to the hook survives that (claude-code-plugin.md §6.5).
    """
    import subprocess
    logs = paths.ensure_private_dir(paths.home() / "logs")
    extra: dict = {"start_new_session": True}
    if os.name == "nt":  # pragma: no cover
        extra = {"creationflags": 0x00000008 | 0x00000200}  # DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP
    with open(logs / log_name, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv[-6:])}\n".encode("utf-8", "replace"))
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd if cwd and os.path.isdir(cwd) else None, env=env, close_fds=True, **extra)
    return proc.pid


def safe_text(value: object, limit: int) -> str:
    """`value` as printable text of at most `limit` characters (an event's fields may hold anything)."""
    text = str(value)[:limit].encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "?" for c in text)


def project_dir(event: dict) -> str | None:
    cwd = event.get("cwd")
    return cwd if isinstance(cwd, str) and cwd and "\0" not in cwd else os.environ.get("CLAUDE_PROJECT_DIR")


def session_id(event: dict) -> str:
    """The session id, made safe for a file name."""
    raw = str(event.get("session_id") or os.environ.get("CLAUDE_SESSION_ID") or "unknown")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:120] or "unknown"


def reap_running(report: dict | None) -> bool:
    return bool(report) and not report.get("finished") and pid_alive(report.get("pid"))


def total_dph(recs: list[dict]) -> float:
    return sum(costing.billing_now(r) for r in recs)


def claude_pid() -> int:
    """The Claude Code process that runs this hook (its parent, or the shell's parent).

    Hooks run under `sh -c`, which may or may not exec python; walk up a little on Linux
    to find the process whose command line names claude, else take the parent.
    """
    pid = os.getppid()
    for _ in range(3):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"claude" in handle.read():
                    return pid
            with open(f"/proc/{pid}/stat", "rb") as handle:
                pid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return os.getppid()


def mark_session(event: dict, open_: bool) -> None:
    """sessions/<id>.json while a session is open: a reap leaves that session's instances alone."""
    folder = paths.home() / "sessions"
    path = folder / f"{session_id(event)}.json"
    if not open_:
        try:
            path.unlink()
        except OSError:
            pass
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"session": session_id(event), "pid": claude_pid(), "at": time.time()}))
    os.replace(tmp, path)


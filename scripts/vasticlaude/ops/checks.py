"""Is this machine ready: config, API key, target, balance, SSH key (registered), ssh/rsync, home, state.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from vasticlaude.core.retry import schedule
from vasticlaude.errors import API, FAILED, OK, Error
from vasticlaude.ops.connect import endpoint
from vasticlaude.output import progress
from vasticlaude.store import config, paths, quarantine, state
from vasticlaude.vast import account as credentials
from vasticlaude.vast.account import Account, Endpoint

BILLING_URL = "https://cloud.vast.ai/billing/"
KEYS_URL = "https://cloud.vast.ai/manage-keys/"
UNREACHABLE = {"unreachable", "server", "rate_limited"}


def check(name: str, status: str, detail: str, next_step: str = "") -> dict:
    return {"name": name, "status": status, "detail": detail, "next": next_step}


def key_ends(key: str | None) -> str | None:
    """The last 4 characters, as vastai's own 401 hint shows them; never more."""
    return f"...{key[-4:]}" if key and len(key) >= 12 else ("..." if key else None)


# ----- key, target, API ----------------------------------------------------------------------
def _config_check() -> tuple[dict, dict]:
    cfg, problems = config.check()
    if problems:
        return check("config", "warn", f"project {config.project_root()}: {len(problems)} bad part(s) of "
                     f".vasticlaude/config.json left out, defaults used ({'; '.join(problems)[:200]})",
                     "Fix the file (the values named are of the wrong type); a copy is kept as config.json.bad-<time>."), cfg
    return check("config", "ok", f"project {config.project_root()}"), cfg


def _key_check(key: str | None, source: str, target: Endpoint | None) -> dict:
    if key:
        return check("api_key", "ok", f"Vast API key from {source}, ends in {key_ends(key)}")
    if target is not None and target.sandbox:
        return check("api_key", "ok", "none needed: the sandbox has its own key",
                     "To rent real GPUs: set VAST_API_KEY or put it in .vasticlaude/.env.")
    return check("api_key", "warn", "no Vast API key found (flag, VAST_API_KEY, .vasticlaude/.env, .env, vastai key file)",
                 f"Create one at {KEYS_URL} and set VAST_API_KEY; until then commands use the local sandbox.")


def _resolve(account: Account, cfg: dict) -> tuple[Endpoint | None, dict, bool]:
    """The target, its check, and whether it failed for want of an API (exit 3)."""
    try:
        target = endpoint(account, cfg.get("target"))
    except Error as err:
        return None, check("target", "fail", err.message, err.hint), err.exit_code == API and err.code != "no_api_key"
    return target, check("target", "ok", f"{'the local sandbox' if target.sandbox else 'Vast'} at {target.url}"), False


def _api_check(client, target: Endpoint) -> tuple[dict, dict | None, bool]:
    """The `api` check, the user record (None on failure) and whether the API was unreachable."""
    from vasticlaude.vast.gateway import VastError
    try:
        user = client.user()
    except VastError as err:
        if err.code == "auth":
            return check("api", "fail", f"the API key from {target.key_source} (ends in {key_ends(target.api_key)}) "
                         f"was rejected by {target.url}",
                         f"Create a key at {KEYS_URL} and set VAST_API_KEY (or add --sandbox to rehearse)."
                         ), None, False
        return check("api", "fail", err.message, err.hint), None, err.code in UNREACHABLE
    return _balance_check(user, target), user, False


def _balance_check(user: dict, target: Endpoint) -> dict:
    balance, credit = float(user.get("balance") or 0), float(user.get("credit") or 0)
    who = user.get("username") or user.get("id") or "?"
    detail = f"account {who}; balance ${balance:.2f}" + (f", credit ${credit:.2f}" if credit else "")
    if max(balance, credit) > 0:
        return check("api", "ok", detail)
    fix = "vasticlaude sim fault balance --add 100" if _is_sandbox(target, user) else f"add credit at {BILLING_URL}"
    return check("api", "warn", detail + " (instances stop at zero)", f"Top up: {fix}.")


def _is_sandbox(target: Endpoint, user: dict | None) -> bool:
    return target.sandbox or bool(user and user.get("is_sandbox"))


def target_view(target: Endpoint | None, user: dict | None) -> dict:
    if target is None:
        return {"kind": None, "url": None, "key_source": None, "key_ends": None}
    return {"kind": "sandbox" if _is_sandbox(target, user) else "vast", "url": target.url,
            "key_source": target.key_source, "key_ends": key_ends(target.api_key)}


# ----- SSH key ---------------------------------------------------------------------------------
def generated_key() -> Path:
    return paths.home() / "ssh" / "id_ed25519"


def local_public_keys() -> list[Path]:
    """Public keys ssh can use, in order of preference."""
    ssh = Path.home() / ".ssh"
    candidates = [ssh / "id_ed25519.pub", ssh / "id_rsa.pub", generated_key().with_suffix(".pub")]
    return [p for p in candidates if p.is_file()]


NO_KEY_YET = "none yet: `up` makes and registers one (nothing to do)"


def _ssh_key_check() -> dict:
    keys = local_public_keys()
    if not keys:
        return check("ssh_key", "note", NO_KEY_YET)
    kind = keys[0].read_text(encoding="utf-8", errors="replace").split()[:1] or ["?"]
    return check("ssh_key", "ok", f"{keys[0]} ({kind[0]})")


def _create_key() -> None:
    """Make vasticlaude's own key the one way `up` does (once, under a lock)."""
    from vasticlaude.remote.ssh import ssh_key
    progress(f"vasticlaude doctor: creating {generated_key()} with ssh-keygen")
    ssh_key()


def _registered_check(client, register: bool) -> dict | None:
    from vasticlaude.vast.gateway import VastError
    try:
        if register and not local_public_keys():
            _create_key()
        keys = local_public_keys()
        if not keys:
            return None  # nothing to compare: the ssh_key note says `up` makes and registers one
        return _compare_keys(client, keys, register)
    except VastError as err:
        return check("ssh_key_registered", "fail", err.message, err.hint)
    except (OSError, subprocess.SubprocessError) as err:
        return check("ssh_key_registered", "fail", f"cannot create an SSH key ({type(err).__name__})",
                     "Install OpenSSH (ssh-keygen) or create ~/.ssh/id_ed25519 yourself.")


def _compare_keys(client, keys: list[Path], register: bool) -> dict:
    rows = client.ssh_keys()
    for path in keys:
        if credentials.is_registered(path.read_text(encoding="utf-8", errors="replace"), rows):
            return check("ssh_key_registered", "ok", f"{path} is registered on the account")
    if not register:
        return check("ssh_key_registered", "note", f"{keys[0]} is not on the account yet: `up` registers it itself")
    client.add_ssh_key(keys[0].read_text(encoding="utf-8").strip())
    progress(f"vasticlaude doctor: registered {keys[0]} on the account")
    return check("ssh_key_registered", "ok", f"{keys[0]} registered now (instances created from now on accept it)")


# ----- local machine ----------------------------------------------------------------------------
def _binary_check(name: str, version_args: list[str], install: str) -> dict:
    path = shutil.which(name)
    if not path:
        return check(name, "fail", f"{name} not found on PATH", f"Install it ({install}).")
    try:
        proc = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        version = " ".join(lines[0].split()) if lines else "version unknown"
    except (OSError, subprocess.SubprocessError):
        version = "version unknown"
    return check(name, "ok", f"{path}: {version}")


def _home_check() -> dict:
    home = paths.home()
    try:
        paths.ensure_private_dir(home)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as err:
        return check("home", "fail", f"{home} is not writable ({err.strerror or type(err).__name__})",
                     "Fix its permissions or point VASTICLAUDE_HOME at a writable folder.")
    return check("home", "ok", f"{home} is writable")


def _state_check() -> dict:
    path = state.instances_path()
    if not path.exists():
        return check("state", "ok", f"{path}: no instances recorded yet")
    data = state.load()
    records = data["instances"]
    live = len(state.live_instances(data))
    if data.get("damaged"):
        return check("state", "warn", f"{path} has bad parts, left out ({data['damaged']['problems'][0][:120]}); "
                     f"{len(records)} instances readable, {live} not destroyed",
                     "'vasticlaude reconcile' rebuilds it from the API (a copy of the old file is kept).")
    hint = "See what they cost: vasticlaude cost." if live else ""
    return check("state", "ok", f"{path}: {len(records)} instances recorded, {live} not destroyed", hint)


def _quarantine_check() -> dict:
    """Files whose bad parts were left out this week (store/quarantine.py): said until a week has passed."""
    kept = quarantine.recent()
    if not kept:
        return check("files", "ok", "no bad content found in config or state files this week")
    listed = "; ".join(f"{e['file']} -> {e['copy']}" for e in kept[:3])
    return check("files", "warn", f"{len(kept)} file(s) had bad parts left out this week: {listed}",
                 "Compare each copy with its file; delete the copy once you have what you need.")


# ----- command -----------------------------------------------------------------------------------


def doctor(account: Account, register: bool = False) -> dict:
    """Every check, the target and the exit code (3 when the API could not be reached)."""
    config_check, cfg = _config_check()
    key, source = credentials.find_key(account.api_key, config.project_root())
    target, target_check, unreachable = _resolve(account, cfg)
    checks = [config_check, _key_check(key, source, target), target_check]
    user = None
    if target is None:
        checks += [check("api", "warn", "not checked: no target"), _ssh_key_check(),
                   check("ssh_key_registered", "warn", "not checked: no target")]
    else:
        remote, user, api_down = _remote_checks(target, register)
        checks += remote
        unreachable = unreachable or api_down
    checks += [_binary_check("ssh", ["-V"], "apt-get install openssh-client"),
               _binary_check("rsync", ["--version"], "apt-get install rsync"), _home_check(), _state_check(), _quarantine_check()]
    if (cfg.get("store") or {}).get("url"):
        checks.append(_store_check(cfg, target))
    view = target_view(target, user)
    if view["kind"] == "sandbox":
        target_check["detail"] = f"the local sandbox at {view['url']}"
    failed = any(c["status"] == "fail" for c in checks)
    code = API if unreachable else FAILED if failed else OK
    return {"ok": not failed, "exit_code": code, "target": view, "checks": checks}


def _store_check(cfg: dict, target: Endpoint | None) -> dict:
    """The results store (README "Results store"): keys found, and a probe object put and deleted from here."""
    from vasticlaude.ops import bucket
    try:
        store = bucket.resolve(cfg, sandbox=bool(target and target.sandbox))
        if store is None:
            return check("store", "ok", "no results store configured")
        client = store.client()
        probe = store.key("doctor", ".vasticlaude-probe")
        client.put_object(Bucket=store.bucket, Key=probe, Body=b"vasticlaude doctor\n")
        client.delete_object(Bucket=store.bucket, Key=probe)
    except Error as err:
        return check("store", "fail", err.message, err.hint)
    except Exception as err:  # noqa: BLE001 — boto3's errors, said in one line without a key
        if store is None:
            return check("store", "fail", f"the results store could not be set up ({type(err).__name__})")
        said = bucket.describe(err, store)
        return check("store", "fail", said.message, said.hint)
    return check("store", "ok", f"results store {store.url}: keys from {store.key_source} (key id ends in "
                 f"{key_ends(store.key_id)}); a probe object was written and deleted")


def _remote_checks(target: Endpoint, register: bool) -> tuple[list[dict], dict | None, bool]:
    """[api, ssh_key, ssh_key_registered (absent while there is no key)], the user record and whether
    the API was unreachable."""
    from vasticlaude.vast.gateway import Vast
    client = Vast(target, backoff=tuple(schedule(0.5, 1.0, 2)))  # a check, not a rental: answer soon
    api, user, unreachable = _api_check(client, target)
    if user is None:
        registered = check("ssh_key_registered", "warn", "not checked: the API did not answer")
    else:
        registered = _registered_check(client, register)  # may create the key: check ssh_key after it
    return [c for c in (api, _ssh_key_check(), registered) if c is not None], user, unreachable



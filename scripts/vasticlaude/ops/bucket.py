"""The results store from the laptop's side: which bucket, which keys, and reading results back.

The config's `store` block names an S3-compatible bucket (AWS S3, Cloudflare R2, Backblaze B2,
MinIO; README "Results store"). Keys are found like the Vast API key and never printed:
`VASTICLAUDE_STORE_ACCESS_KEY_ID` / `VASTICLAUDE_STORE_SECRET_ACCESS_KEY`, then
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), in the environment, then
in `.vasticlaude/.env` or `.env`. On the sandbox a store without an `endpoint_url` is the
sandbox's own (its endpoint and keys from `sim.json`; only the VASTICLAUDE_STORE_* names override
them, so AWS keys meant for the real thing never reach it).

Objects of an experiment live under `<prefix>/<experiment>/` (a sweep's run under
`<prefix>/<sweep>/<run>/`: `path_of`) with the instance's layout
(`checkpoints/…`, `outputs/…`, `run/…`) and `manifest.json` (every file with its size and
sha256), which the instance writes last: a manifest whose files all verify is a complete copy.
The instance side is templates/store.py.j2; both agree on this layout and on `sha256` metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vasticlaude.errors import API, FAILED, Error
from vasticlaude.output import secret as keep_secret
from vasticlaude.store import config, paths, state

MANIFEST = "manifest.json"
KEY_NAMES = (("VASTICLAUDE_STORE_ACCESS_KEY_ID", "VASTICLAUDE_STORE_SECRET_ACCESS_KEY", "VASTICLAUDE_STORE_SESSION_TOKEN"),
             ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
# S3 error codes that mean "these keys may not do this": the user must fix the keys or the policy.
DENIED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
          "403", "Forbidden", "AllAccessDisabled"}


@dataclass(frozen=True)
class Target:
    """One results store: where and with which keys. `repr` never shows a secret."""

    url: str
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    key_id: str = field(repr=False)
    secret: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    key_source: str = "none"
    sandbox: bool = False
    timeout_s: float = 300.0
    sync_interval_s: float = 300.0

    def __post_init__(self) -> None:
        keep_secret(self.secret)  # masked in everything this process prints or writes (output.redact)
        keep_secret(self.token)

    def key(self, experiment: str, rel: str = "") -> str:
        base = "/".join(p for p in (self.prefix.strip("/"), experiment) if p)
        return f"{base}/{rel}" if rel else base

    def secrets(self) -> list[str]:
        return [s for s in (self.secret, self.token, self.key_id) if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets():
            text = text.replace(secret, "[redacted]")
        return text

    def public(self) -> dict:
        """What may be shown and recorded (state, JSON): no key, only where the key came from."""
        return {"url": self.url, "endpoint_url": self.endpoint_url, "region": self.region,
                "key_source": self.key_source, "sandbox": self.sandbox}

    def instance_config(self, experiment: str) -> dict:
        """What the instance's uploader is told (no secret): written to run/store.json."""
        return {"bucket": self.bucket, "prefix": self.key(experiment), "endpoint_url": self.endpoint_url,
                "region": self.region, "timeout_s": self.timeout_s}

    def instance_credentials(self) -> dict:
        """The keys for the uploader: sent on stdin into a 0600 file, never in argv or output."""
        return {"aws_access_key_id": self.key_id, "aws_secret_access_key": self.secret,
                "aws_session_token": self.token}

    def client(self) -> Any:
        import boto3  # ~0.3 s: only commands that touch the store pay it
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                            aws_session_token=self.token,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=60,
                                          retries={"max_attempts": 4, "mode": "standard"}))


def resolve(cfg: dict | None = None, sandbox: bool = False, project: Path | None = None) -> Target | None:
    """The configured store with its keys, or None when the config names none."""
    scfg = (cfg if cfg is not None else config.load()).get("store") or {}
    url = scfg.get("url")
    if not url:
        return None
    bucket, prefix = _split(str(url))
    recovery = (cfg or {}).get("recovery") or {}
    times = {"timeout_s": float(scfg.get("timeout_s") or 300),
             "sync_interval_s": float(scfg.get("sync_interval_s") or recovery.get("sync_interval_s") or 300)}
    endpoint, region = scfg.get("endpoint_url"), scfg.get("region")
    if sandbox and not endpoint:
        return _sandbox_target(str(url), bucket, prefix, region, project, times)
    found = find_keys(project, KEY_NAMES)
    if found is None:
        raise Error("store_no_keys", f"the results store {url} is configured but no keys were found",
                    "Set VASTICLAUDE_STORE_ACCESS_KEY_ID and VASTICLAUDE_STORE_SECRET_ACCESS_KEY (or the AWS_* names) "
                    "in the environment or .vasticlaude/.env, or remove \"store\" from .vasticlaude/config.json.", FAILED)
    key_id, secret, token, source = found
    return Target(str(url), bucket, prefix, endpoint, region or "us-east-1", key_id, secret, token, source, False, **times)


def _sandbox_target(url: str, bucket: str, prefix: str, region: str | None, project: Path | None,
                    times: dict) -> Target:
    from vasticlaude.sim.client import running_info
    info = running_info(paths.sim_dir()) or {}
    store = info.get("store")
    if not store:
        raise Error("store_unreachable", "the sandbox is not running, so its results store cannot be reached",
                    "Start it with 'vasticlaude sim start'.", API)
    found = find_keys(project, KEY_NAMES[:1])
    key_id, secret, token, source = found or (store["access_key_id"], store["secret_access_key"], None, "sandbox")
    return Target(url, bucket, prefix, store["endpoint_url"], region or store.get("region") or "us-east-1",
                  key_id, secret, token, source, True, **times)


def _split(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise Error("bad_config", f"store.url {url!r} must look like s3://bucket/prefix",
                    "Fix \"store\" in .vasticlaude/config.json.", FAILED)
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def path_of(experiment: str) -> str:
    """Where under the prefix the experiment's latest run shipped: experiment.json's store.path (a
    sweep's slot: `<sweep>/<run>`), else the experiment's own name."""
    recorded = ((state.read_experiment(experiment) or {}).get("store") or {}).get("path")
    return str(recorded) if recorded else experiment


def find_keys(project: Path | None, names: tuple) -> tuple[str, str, str | None, str] | None:
    """(key id, secret, session token, where from) from the environment, then the project's .env files."""
    for id_name, secret_name, token_name in names:
        if os.environ.get(id_name) and os.environ.get(secret_name):
            return (os.environ[id_name].strip(), os.environ[secret_name].strip(),
                    (os.environ.get(token_name) or "").strip() or None, f"env {id_name}")
    root = project or config.project_root()
    for env_file in (root / ".vasticlaude" / ".env", root / ".env"):
        if not env_file.is_file():
            continue
        from dotenv import dotenv_values
        values = dotenv_values(env_file)
        for id_name, secret_name, token_name in names:
            if values.get(id_name) and values.get(secret_name):
                return (str(values[id_name]).strip(), str(values[secret_name]).strip(),
                        (values.get(token_name) or "").strip() or None, str(env_file))
    return None


# ----- reading back ------------------------------------------------------------------------------
def describe(err: Exception, target: Target) -> Error:
    """An S3 failure as one line saying what to do (never a key)."""
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "") if hasattr(err, "response") else ""
    text = target.redact(str(err))[:200]
    if code in DENIED:
        return Error("store_denied", f"the results store refused these keys ({code}: {text})",
                     "Check the store keys (VASTICLAUDE_STORE_ACCESS_KEY_ID / _SECRET_ACCESS_KEY) and the bucket's "
                     "permissions (put, get, list, delete under the prefix).", FAILED)
    if code in ("NoSuchBucket", "404") and "manifest" not in text:
        return Error("store_no_bucket", f"the bucket {target.bucket} does not exist ({text})",
                     "Create it, or fix store.url in .vasticlaude/config.json.", FAILED)
    return Error("store_unreachable", f"the results store did not answer well ({text})",
                 "Try again; check store.endpoint_url and the network.", API)


def manifest(target: Target, experiment: str, client: Any = None) -> dict | None:
    """The experiment's manifest in the store, or None when there is none (yet)."""
    client = client or target.client()
    try:
        body = client.get_object(Bucket=target.bucket, Key=target.key(experiment, MANIFEST))["Body"].read()
    except Exception as err:  # noqa: BLE001 — boto3's errors are many; a missing key is the common one
        if getattr(err, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise describe(err, target) from None
    return json.loads(body)


def download(target: Target, experiment: str, dest: Path, parts: tuple[str, ...] = ("checkpoints", "outputs", "run"),
             ) -> dict:
    """Bring the manifest's files under `parts` home into `dest`, each verified by size and sha256."""
    client = target.client()
    found = manifest(target, experiment, client)
    if found is None:
        raise Error("store_empty", f"the results store holds no finished copy of {experiment}",
                    "The instance ships it when the job ends; see 'vasticlaude status' for the store's state.", FAILED)
    files = [f for f in found["files"] if f["path"].split("/", 1)[0] in parts]
    got, bad = 0, []
    for item in files:
        path = dest / item["path"]
        if not _same(path, item):
            _fetch(client, target, experiment, item, path)
        if _same(path, item):
            got += item["size"]
        else:
            bad.append(item["path"])
    if bad:
        raise Error("store_mismatch", f"{len(bad)} file(s) from the store do not match the manifest: {', '.join(bad[:5])}",
                    "Pull again; if it persists the store copy is damaged.", FAILED)
    return {"files": len(files), "bytes": got, "manifest": {k: found.get(k) for k in ("at", "exit_code", "instance_id")},
            "stored_bytes": found.get("bytes")}


def _fetch(client: Any, target: Target, experiment: str, item: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.store-part")
    try:
        client.download_file(target.bucket, target.key(experiment, item["path"]), str(tmp))
    except Exception as err:  # noqa: BLE001
        raise describe(err, target) from None
    os.replace(tmp, path)


def _same(path: Path, item: dict) -> bool:
    return path.is_file() and path.stat().st_size == item["size"] and sha256(path) == item["sha256"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----- the instance's side ---------------------------------------------------------------------
# One SSH call: write the uploader, its settings and (0600) its keys from stdin, split at a random
# marker line (nothing secret in argv), then let the uploader prove it can write to the store.
INSTALL = ("umask 077; mkdir -p {run} || exit 1; "
           "awk -v a={run}/store.py -v b={run}/store.json -v c={run}/.store_credentials "
           "'$0 == \"{split}\" {{ n++; next }} {{ print > (n == 0 ? a : n == 1 ? b : c) }}' || exit 1; "
           "command -v python3 >/dev/null 2>&1 || {{ echo '@@nopython'; exit 0; }}; "
           "python3 {run}/store.py {action} | tail -n 1")


def install(route: Any, run_dir: str, experiment: str, target: Target, action: str = "check",
            path: str | None = None) -> dict:
    """Put the uploader on the instance and run `check` (or `fetch`); an Error when the store refuses.
    It ships the experiment's folders to `path` under the prefix (default the experiment's name)."""
    import secrets as _secrets
    import shlex

    from vasticlaude.remote.ssh import run as ssh_run
    from vasticlaude.remote.templates import render
    split = "#@@vasticlaude-store-" + _secrets.token_hex(8)
    script = render("store.py.j2", experiment=experiment, base=f"vasticlaude/{experiment}")
    payload = "\n".join([script.rstrip("\n"), split, json.dumps(target.instance_config(path or experiment)), split,
                         json.dumps(target.instance_credentials())])
    proc = ssh_run(route, INSTALL.format(run=shlex.quote(run_dir), split=split, action=action),
                   input_bytes=payload.encode(), timeout=max(120.0, target.timeout_s))
    out = target.redact(proc.stdout.decode("utf-8", "replace")).strip().splitlines()
    if out[-1:] == ["@@nopython"]:
        raise Error("store_no_python", "the results store needs python3 on the instance, and it has none",
                    "Use an image with python3 (vastai/base, pytorch/pytorch), or remove \"store\" from the config.", FAILED)
    try:
        answer = json.loads(out[-1])
    except (IndexError, ValueError):
        err = target.redact(proc.stderr.decode("utf-8", "replace")).strip().splitlines()[-1:] or ["no answer"]
        raise Error("store_unreachable", f"the store uploader failed on instance {route.instance_id}: {err[0][:200]}",
                    "Check the instance with 'vasticlaude status'.", API) from None
    if not answer.get("ok"):
        raise _refusal(answer, target)
    return answer


def _refusal(answer: dict, target: Target) -> Error:
    code, message = str(answer.get("code") or ""), str(answer.get("message") or "")
    if code in DENIED:
        return Error("store_denied", f"the results store {target.url} refused the store keys ({message})",
                     "Fix VASTICLAUDE_STORE_ACCESS_KEY_ID / _SECRET_ACCESS_KEY (or the bucket's permissions) and run "
                     "again; nothing was started.", FAILED)
    if code == "NoSuchBucket":
        return Error("store_no_bucket", f"the bucket {target.bucket} does not exist ({message})",
                     "Create it, or fix store.url in .vasticlaude/config.json; nothing was started.", FAILED)
    return Error("store_unreachable", f"the instance could not reach the results store {target.url} ({message})",
                 "Check store.endpoint_url and retry; nothing was started.", API)

"""Vast's cloud connections and cloud copy, on the sandbox's own object store.

Shapes from vastai 1.9.1 (`api/storage.py`, `cli/commands/storage.py`, `cli/display.py`):
`GET /api/v0/users/cloud_integrations/` lists the account's connections (rows with `id`, `name`,
`cloud_type`: what `vastai show connections` prints); `POST /api/v0/commands/rclone/` with
`{src, dst, instance_id, selected, transfer, flags}` starts a copy between an instance and a
connection (`transfer` "Instance to Cloud" or "Cloud to Instance", case-insensitive) and answers at
once; the CLI then says progress shows in the instance's status bar, ending with "Cloud Copy
Operation Finished". The sandbox has one connection, `sandbox-s3` (type `s3`), on its object store;
cloud paths are `bucket/key-prefix`; instance paths are relative to the home, which stands in for
`/root` (`/root/x` is `<home>/x`; another absolute path such as `/workspace/x` is `<home>/workspace/x`,
the sandbox having no root filesystem of its own). Only the
account key may call these (an instance key may only start, stop or destroy its instance), which
is why the product's on-instance uploader cannot use cloud copy (README "Results store").
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import bad_request, not_found

if TYPE_CHECKING:
    from .app import Sandbox

log = logging.getLogger("vasticlaude.sim")
CONNECTION = {"id": 9001, "name": "sandbox-s3", "cloud_type": "s3"}
FINISHED = "Cloud Copy Operation Finished"
TRANSFERS = ("instance to cloud", "cloud to instance")


def connections() -> list[dict]:
    return [dict(CONNECTION)]


async def start(sandbox: "Sandbox", body: dict) -> dict:
    """Check the request as Vast would, then copy in the background (progress in status_msg)."""
    transfer = str(body.get("transfer") or "").strip().lower()
    if transfer not in TRANSFERS:
        raise bad_request(f"transfer must be one of: Instance to Cloud, Cloud to Instance (got {body.get('transfer')!r})")
    if str(body.get("selected")) != str(CONNECTION["id"]):
        raise not_found(f"No cloud connection {body.get('selected')} on this account.")
    if not body.get("src") or not body.get("dst"):
        raise bad_request("src and dst are required.")
    try:
        rec = sandbox.world.instance(int(body.get("instance_id")))
    except (TypeError, ValueError):
        raise bad_request("instance_id must be an instance id.") from None
    if rec.get("actual_status") != "running":
        raise bad_request(f"Instance {rec['id']} is not running.")
    home = sandbox.engine.instance_dir(rec["id"]) / "root"
    rec["status_msg"] = "Cloud Copy Operation Started"
    task = asyncio.create_task(_copy(sandbox, rec, home, transfer, str(body["src"]), str(body["dst"])))
    sandbox.copies.add(task)  # a reference, so the task is not collected mid-copy
    task.add_done_callback(sandbox.copies.discard)
    return {"success": True, "msg": "Cloud Copy Started"}


async def _copy(sandbox: "Sandbox", rec: dict, home: Path, transfer: str, src: str, dst: str) -> None:
    try:
        count = await asyncio.to_thread(_run, sandbox, home, transfer, src, dst)
        rec["status_msg"] = f"{FINISHED} ({count} files)"
    except Exception as err:  # noqa: BLE001 — a failed copy is shown where Vast shows it, not raised
        log.warning("cloud copy failed: %s", err)
        rec["status_msg"] = f"Cloud Copy Operation Failed: {str(err)[:160]}"
    sandbox.changed()


def _run(sandbox: "Sandbox", home: Path, transfer: str, src: str, dst: str) -> int:
    client, count = _client(sandbox), 0
    if transfer == "instance to cloud":
        bucket, prefix = _cloud(dst)
        base = _local(home, src)
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            rel = path.name if path == base else path.relative_to(base).as_posix()
            client.upload_file(str(path), bucket, "/".join(p for p in (prefix, rel) if p))
            count += 1
        return count
    bucket, prefix = _cloud(src)
    target = _local(home, dst)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/") or PurePosixPath(obj["Key"]).name
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))
            count += 1
    return count


def _client(sandbox: "Sandbox"):
    import boto3
    from botocore.config import Config
    info = sandbox.store.info()
    return boto3.client("s3", endpoint_url=info["endpoint_url"], region_name=info["region"],
                        aws_access_key_id=info["access_key_id"], aws_secret_access_key=info["secret_access_key"],
                        config=Config(s3={"addressing_style": "path"}))


def _cloud(path: str) -> tuple[str, str]:
    bucket, _, prefix = path.strip("/").partition("/")
    return bucket, prefix.strip("/")


def _local(home: Path, path: str) -> Path:
    """An instance path inside its home (the sandbox's stand-in for the container's root)."""
    parts = PurePosixPath(path).parts
    if parts[:2] == ("/", "root"):
        parts = parts[2:]
    elif parts[:1] == ("/",):
        parts = parts[1:]
    if ".." in parts:
        raise ValueError("paths may not contain '..'")
    return home.joinpath(*parts)

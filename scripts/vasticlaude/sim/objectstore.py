"""The sandbox's S3-compatible object store: moto's server mode behind a fault and key gate.

`sim start` runs it inside the sandbox process (a werkzeug server on its own thread and
port), so the results store of issue 15 rehearses offline: the product and the instances'
uploader talk to it with boto3 exactly as they would to AWS S3, Cloudflare R2, Backblaze B2 or
MinIO (path-style addressing, SigV4). The sandbox's keys (`store` in `sim.json`) open it and a
bucket (`vasticlaude-results`) exists from the start.

Why moto: it is the well-kept S3 emulation on PyPI (moto 5.x, getmoto/moto), the same S3
semantics boto3's own tests lean on; its server mode is a plain WSGI app, so the gate below can
wrap it. moto is imported on the first request (0.8 s), so a sandbox that never stores pays only
for the listening socket.

The gate, before moto sees a request:
- **keys**: a request signed with another access key id gets 403 `InvalidAccessKeyId`, an
  unsigned one 403 `AccessDenied`, as S3 answers. Honest limit: the secret is not checked (moto
  verifies SigV4 signatures only with its IAM emulation on), so a wrong secret with the right key
  id passes here and fails on the real service.
- **faults** (`sim fault store-slow|store-5xx|store-denied`, cleared by `sim fault clear`):
  slow answers (`--delay`), 5xx (`--status`, default 503 `SlowDown`, S3's throttling answer) for
  the next `--count` requests or until cleared, and 403 `AccessDenied` on every request.

A bucket keeps its objects (S3's whole point): moto holds them in memory, so the store saves
every object (bytes, content type, user metadata) under the sandbox's state folder
(`objectstore/`, swapped in whole) a few seconds after a write and when the sandbox stops, and
a restarted sandbox (`sim stop`/`start`, the idle stop of `--idle-exit`) loads them back. It
listens on the port it had last time when that port is free (`objectstore/port`), as the API
does, so a configured `endpoint_url` stays right. Honest limit: a write in the last
`SAVE_EVERY_S` before a kill -9 of the sandbox is lost (a real store would have it).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("vasticlaude.sim")

BUCKET = "vasticlaude-results"
SAVE_EVERY_S = 2.0  # how soon after a write the objects are on disk
WRITES = ("PUT", "POST", "DELETE")
KINDS = ("store-slow", "store-5xx", "store-denied")
_ERRORS = {
    403: ("AccessDenied", "Access Denied"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass
class StoreFault:
    """One active fault of the object store (`count` None: until cleared)."""

    kind: str
    delay: float = 0.0
    status: int = 503
    count: int | None = None
    fired: int = field(default=0)


class ObjectStore:
    """The S3 endpoint of one sandbox (see the module docstring)."""

    def __init__(self, host: str, access_key_id: str | None = None, secret_access_key: str | None = None,
                 folder: Path | None = None) -> None:
        self.host, self.folder = host, folder
        self.access_key_id = access_key_id or "VCSIM" + secrets.token_hex(8).upper()
        self.secret_access_key = secret_access_key or secrets.token_urlsafe(30)
        self.faults: list[StoreFault] = []
        self._lock = threading.Lock()
        self._app: Callable | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._dirty = threading.Event()  # a write reached moto since the last save
        self._save_lock = threading.Lock()
        self._saving = False  # only once what was saved before is loaded: never save over it with less
        self._keeper = secrets.token_hex(16)  # marks the save's and load's own requests (no fault takes them)
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def info(self) -> dict:
        """What `sim.json` publishes: where the store is and the keys that open it."""
        return {"endpoint_url": self.url, "bucket": BUCKET, "region": "us-east-1",
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    # ----------------------------------------------------------------- serving
    def start(self) -> None:
        """Listen now (so the port is known; last time's when free); serve from a daemon thread; load
        what the last run saved; save after writes from another."""
        from werkzeug.serving import make_server
        sock = self._listen()
        self.port = sock.getsockname()[1]
        self._server = make_server(self.host, self.port, self._wsgi, threaded=True, fd=sock.fileno())
        self._sock = sock
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-s3", daemon=True)
        self._thread.start()
        log.info("object store listening on %s (bucket %s)", self.url, BUCKET)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "port").write_text(f"{self.port}\n")
            try:
                self._load()
            except Exception:  # noqa: BLE001 — served empty, and the saved objects are left as they are
                log.exception("object store: loading the saved objects failed; they stay in %s", self.folder)
                return
            self._saving = True
            threading.Thread(target=self._saver, name="sim-s3-save", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._save_if_written()  # while it still serves: the save reads through S3 itself
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _listen(self) -> socket.socket:
        last = _number(self.folder / "port") if self.folder is not None else None
        for port in ([last] if last else []) + [0]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
            except OSError:  # last time's port is taken now: any free one
                sock.close()
                continue
            sock.listen(128)
            return sock
        raise OSError("no port for the object store")

    # ----------------------------------------------------------------- keeping the objects
    def _client(self) -> Any:
        import boto3
        from botocore.config import Config
        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=self.access_key_id,
                              aws_secret_access_key=self.secret_access_key,
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

        def mark(request: Any, **_: Any) -> None:
            request.headers["X-Vcsim-Keeper"] = self._keeper
        client.meta.events.register("before-sign.s3", mark)
        return client

    def _saver(self) -> None:
        while not self._stopping.wait(SAVE_EVERY_S):
            self._save_if_written()

    def _save_if_written(self) -> None:
        with self._save_lock:
            if not self._saving or not self._dirty.is_set():
                return
            self._dirty.clear()  # a write during the save sets it again: the next round saves that too
            try:
                self._save()
            except Exception:  # noqa: BLE001 — a failed save is retried; the objects are still served
                self._dirty.set()
                log.exception("object store: saving the objects failed")

    def _save(self) -> None:
        """Every object into a new folder, then swapped in whole (a crash mid-save keeps the old one)."""
        assert self.folder is not None
        client, new = self._client(), self.folder / "objects.new"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        manifest = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for i, entry in enumerate(page.get("Contents", []), start=len(manifest)):
                got = client.get_object(Bucket=BUCKET, Key=entry["Key"])
                (new / str(i)).write_bytes(got["Body"].read())
                manifest.append({"key": entry["Key"], "file": str(i), "content_type": got.get("ContentType"),
                                 "metadata": got.get("Metadata") or {}})
        (new / "manifest.json").write_text(json.dumps(manifest))
        old, kept = self.folder / "objects", self.folder / "objects.old"
        shutil.rmtree(kept, ignore_errors=True)
        if old.exists():
            os.replace(old, kept)
        os.replace(new, old)
        shutil.rmtree(kept, ignore_errors=True)
        log.info("object store: %d object(s) saved", len(manifest))

    def _load(self) -> None:
        """What the last run saved (or, after a crash between the swap's two renames, the one before)."""
        assert self.folder is not None
        for saved in (self.folder / "objects", self.folder / "objects.old"):
            if (saved / "manifest.json").is_file():
                break
        else:
            return
        client = self._client()
        manifest = json.loads((saved / "manifest.json").read_text())
        for entry in manifest:
            extra = {"ContentType": entry["content_type"]} if entry.get("content_type") else {}
            client.put_object(Bucket=BUCKET, Key=entry["key"], Body=(saved / entry["file"]).read_bytes(),
                              Metadata=entry.get("metadata") or {}, **extra)
        self._dirty.clear()  # loading is no new write
        log.info("object store: %d object(s) loaded from %s", len(manifest), saved)

    def _moto(self) -> Callable:
        with self._lock:
            if self._app is None:
                from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
                self._app = DomainDispatcherApplication(create_backend_app)
                self._create_bucket()
            return self._app

    def _create_bucket(self) -> None:
        from moto.s3.models import s3_backends
        backend = s3_backends["123456789012"]["global"]
        if BUCKET not in backend.buckets:
            backend.create_bucket(BUCKET, "us-east-1")

    # ----------------------------------------------------------------- the gate
    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        if secrets.compare_digest(environ.get("HTTP_X_VCSIM_KEEPER", ""), self._keeper):
            return self._moto()(environ, start_response)  # the store's own save and load: no fault, no write
        fault = self._pick()
        if fault is not None and fault.kind == "store-slow":
            time.sleep(fault.delay)
        elif fault is not None:
            return _error(start_response, 403 if fault.kind == "store-denied" else fault.status)
        refused = self._check_key(environ)
        if refused:
            return _error(start_response, 403, *refused)
        answer = self._moto()(environ, start_response)
        if environ.get("REQUEST_METHOD") in WRITES:
            self._dirty.set()  # after moto has it: a save that starts now sees this write
        return answer

    def _check_key(self, environ: dict) -> tuple[str, str] | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if "Credential=" in auth:
            key_id = auth.split("Credential=", 1)[1].split("/", 1)[0]
        else:  # presigned: the credential is in the query string
            query = environ.get("QUERY_STRING", "")
            key_id = next((p.split("=", 1)[1].split("%2F")[0].split("/")[0] for p in query.split("&")
                           if p.startswith("X-Amz-Credential=")), "")
        if not key_id:
            return "AccessDenied", "Anonymous access is not allowed."
        if not secrets.compare_digest(key_id, self.access_key_id):
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        return None

    # ----------------------------------------------------------------- faults
    def add_fault(self, spec: dict) -> dict:
        kind = spec["kind"]
        fault = StoreFault(kind=kind, delay=float(spec.get("delay") or 1.0),
                           status=int(spec.get("status") or 503), count=spec.get("count"))
        if kind == "store-5xx" and not 500 <= fault.status < 600:
            raise ValueError("store-5xx needs a 5xx --status")
        with self._lock:
            self.faults.append(fault)
        return asdict(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def describe(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self.faults]

    def _pick(self) -> StoreFault | None:
        with self._lock:
            self.faults = [f for f in self.faults if f.count is None or f.fired < f.count]
            for fault in self.faults:
                fault.fired += 1
                return fault
        return None


def _number(path: Path) -> int | None:
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def _error(start_response: Callable, status: int, code: str | None = None, message: str | None = None) -> list[bytes]:
    """An S3 error document, as S3 (and R2, B2, MinIO) answer."""
    default = _ERRORS.get(status, ("InternalError", f"HTTP {status}"))
    code, message = code or default[0], message or default[1]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>").encode()
    reason = {403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]

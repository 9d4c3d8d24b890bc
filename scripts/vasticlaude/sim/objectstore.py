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

Honest limit: moto keeps objects in memory, so a restarted sandbox starts with an empty store.
"""
from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

log = logging.getLogger("vasticlaude.sim")

BUCKET = "vasticlaude-results"
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

    def __init__(self, host: str, access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        self.host = host
        self.access_key_id = access_key_id or "VCSIM" + secrets.token_hex(8).upper()
        self.secret_access_key = secret_access_key or secrets.token_urlsafe(30)
        self.faults: list[StoreFault] = []
        self._lock = threading.Lock()
        self._app: Callable | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def info(self) -> dict:
        """What `sim.json` publishes: where the store is and the keys that open it."""
        return {"endpoint_url": self.url, "bucket": BUCKET, "region": "us-east-1",
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    # ----------------------------------------------------------------- serving
    def start(self) -> None:
        """Listen now (so the port is known); serve from a daemon thread."""
        from werkzeug.serving import make_server
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._server = make_server(self.host, self.port, self._wsgi, threaded=True, fd=sock.fileno())
        self._sock = sock
        self._thread = threading.Thread(target=self._server.serve_forever, name="sim-s3", daemon=True)
        self._thread.start()
        log.info("object store listening on %s (bucket %s)", self.url, BUCKET)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

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
        fault = self._pick()
        if fault is not None and fault.kind == "store-slow":
            time.sleep(fault.delay)
        elif fault is not None:
            return _error(start_response, 403 if fault.kind == "store-denied" else fault.status)
        refused = self._check_key(environ)
        if refused:
            return _error(start_response, 403, *refused)
        return self._moto()(environ, start_response)

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


def _error(start_response: Callable, status: int, code: str | None = None, message: str | None = None) -> list[bytes]:
    """An S3 error document, as S3 (and R2, B2, MinIO) answer."""
    default = _ERRORS.get(status, ("InternalError", f"HTTP {status}"))
    code, message = code or default[0], message or default[1]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>").encode()
    reason = {403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    start_response(f"{status} {reason}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]

"""The one gateway to Vast: every call goes through the official `vastai` SDK here.

Why the SDK in-process rather than the CLI: the CLI exits 0 on HTTP errors, prompts
on destroy and costs 1.3–1.7 s per call (vast-api.md §15); the SDK raises
`requests.HTTPError`, never prompts, and pays its ~1 s import once per process. The
SDK's own retry is set to one attempt so that this module alone decides:

- reads (and idempotent changes: stop, start, destroy, label) are retried with backoff,
  honouring `Retry-After`, on 429, 5xx and connection errors;
- a create is never retried: after an ambiguous failure the caller looks for the
  instance by its label (`find_by_label`) before trying again;
- inside a command's deadline (`core.retry.wall`) each pause is cut to the time left and no
  retry starts past it.

Every row a read returns has passed through `vast/rows.py` (whitespace, numbers given as
strings, nulls, wrapped lists), so nothing else reads raw rows; an instance whose single GET
answers 404 (`no_such_instance`), or whose row says destroyed/terminated, reads as gone (None).

Every failure becomes a `VastError` (an `Error` with exit code 3) whose message never
contains the API key. `vastai` is imported on first use only, so commands that need
no API call stay fast.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from vasticlaude.core.lifecycle import is_gone
from vasticlaude.core import retry
from vasticlaude.core.retry import api_pauses
from vasticlaude.errors import API, Error
from vasticlaude.output import progress, secret
from vasticlaude.vast import rows
from vasticlaude.vast.account import Endpoint

T = TypeVar("T")
RETRY_STATUSES = {429, 500, 502, 503, 504}


class VastError(Error):
    """Vast answered with an error, or could not be reached."""

    def __init__(self, code: str, message: str, hint: str, status: int | None = None):
        super().__init__(code, message, hint, API)
        self.status = status


@dataclass(frozen=True)
class Created:
    instance_id: int
    instance_api_key: str


class Vast:
    """Typed, retried calls over one `VastAI` client."""

    def __init__(self, target: Endpoint, backoff: tuple[float, ...] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.target = target
        self.backoff = api_pauses() if backoff is None else backoff  # then give up: the caller tells the user
        self.sleep = sleep
        self._sdk: Any = None

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            from vastai import VastAI  # ~1 s: only commands that talk to Vast pay it
            self._sdk = VastAI(api_key=self.target.api_key, server_url=self.target.url, retry=1)
        return self._sdk

    # ----- reads -----------------------------------------------------------------------------
    def search_offers(self, query: str, order: str, limit: int, interruptible: bool, storage_gb: float) -> list[dict]:
        return rows.offers(self._read("search offers", lambda: self.sdk.search_offers(
            query=query, order=order, limit=limit, type="bid" if interruptible else "on-demand", storage=storage_gb)))

    def instance(self, instance_id: int) -> dict | None:
        """The instance's row, or None when it is gone (404 `no_such_instance`, or a destroyed row).

        Read raw (the SDK's `show_instance` does arithmetic on `start_date`, which can be null)."""
        def call() -> Any:
            reply = self.sdk.client.get(f"/instances/{instance_id}/", query_args={"owner": "me"})
            reply.raise_for_status()
            return reply.json()
        try:
            row = rows.instance(self._read("show instance", call))
        except VastError as err:
            if err.status == 404:
                return None
            raise
        return None if row is None or is_gone(row) else row

    def instances(self) -> list[dict]:
        """Every instance on the account (all pages of `/api/v1/instances/`), gone ones left out."""
        found: list[dict] = []
        params: dict = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
        while True:
            page = self._read("show instances", lambda: self.sdk.show_instances_v1(dict(params)))
            found += [r for r in rows.instances(page) if not is_gone(r)]
            token = page.get("next_token") if isinstance(page, dict) else None
            if not token:
                return found
            params["after_token"] = token

    def find_by_label(self, label: str) -> list[dict]:
        return [row for row in self.instances() if row.get("label") == label]

    def user(self) -> dict:
        return rows.user(self._read("show user", self.sdk.show_user))

    def ssh_keys(self) -> list[dict]:
        """The account's SSH keys, whether Vast answers a bare list or `{"ssh_keys": [...]}`."""
        return rows.ssh_keys(self._read("show ssh-keys", self.sdk.show_ssh_keys))

    def gpu_names(self) -> list[str]:
        """The market's GPU names (`GET gpu_names/unique`, what the CLI checks -g against; no SDK method)."""
        def call() -> list[str]:
            reply = self.sdk.client.get("/gpu_names/unique/")
            reply.raise_for_status()
            return list(reply.json().get("gpu_names") or [])
        return self._read("gpu names", call)

    def charges(self, since: float | None = None) -> list[dict]:
        """Charge rows (`source` "instance-<id>", `amount`) since `since` (default: 7 days), every page."""
        window = {"start_date": int(since), "end_date": int(time.time()) + 86400} if since else {}
        found: list[dict] = []
        token = None
        while True:
            kw = {"charges": True, "limit": 100, **window, **({"next_token": token} if token else {})}
            page = self._read("show charges", lambda: self.sdk.show_invoices_v1(**kw))
            found += [rows.row(r) for r in page.get("results") or []]
            token = page.get("next_token")
            if not token:
                return found

    def raw(self, kind: str, instance_id: int | None = None) -> Any:
        """A read's body as the SDK gives it, before vast/rows.py: only for `./dev live-check`, which
        compares it with what the normaliser expects (vast/shapes.py). Read-only."""
        calls: dict[str, Callable[[], Any]] = {
            "user": self.sdk.show_user,
            "offers": lambda: self.sdk.search_offers(query="rentable=true num_gpus=1", order="dph", limit=5,
                                                     type="on-demand", storage=10),
            "instances": lambda: self.sdk.show_instances_v1({"select_filters": {}, "limit": 25,
                                                              "order_by": [{"col": "id", "dir": "asc"}]}),
            "ssh_keys": self.sdk.show_ssh_keys,
            "instance": lambda: self._get(f"/instances/{instance_id}/", {"owner": "me"}),
        }
        return self._read(f"show {kind} (raw)", calls[kind])

    def _get(self, path: str, query: dict | None = None) -> Any:
        reply = self.sdk.client.get(path, query_args=query or {})
        reply.raise_for_status()
        return reply.json()

    # ----- changes -----------------------------------------------------------------------------
    def create(self, offer_id: int, **spec: Any) -> Created:
        """Rent an offer. Never retried here: see the module docstring."""
        try:
            reply = self.sdk.create_instance(id=offer_id, **spec)
        except Exception as err:  # noqa: BLE001 — every failure is mapped, none escapes raw
            raise self._error("create instance", err) from None
        if not reply.get("success") or not reply.get("new_contract"):
            raise VastError("create_refused", f"Vast refused the rental: {reply.get('msg', 'no reason given')}",
                            "Try another offer.")
        key = str(reply.get("instance_api_key", "")).strip()
        secret(key)  # the instance's key: masked wherever this process prints or writes it
        return Created(int(reply["new_contract"]), key)

    def destroy(self, instance_id: int) -> None:
        """Destroy; an instance that is already gone counts as destroyed."""
        try:
            self._read("destroy instance", lambda: self.sdk.destroy_instance(id=instance_id))
        except VastError as err:
            if err.status != 404:
                raise

    def stop(self, instance_id: int) -> None:
        self._read("stop instance", lambda: self.sdk.stop_instance(id=instance_id))

    def start(self, instance_id: int) -> None:
        self._read("start instance", lambda: self.sdk.start_instance(id=instance_id))

    def label(self, instance_id: int, label: str) -> None:
        self._read("label instance", lambda: self.sdk.label_instance(id=instance_id, label=label))

    def change_bid(self, instance_id: int, price: float) -> None:
        self._read("change bid", lambda: self.sdk.change_bid(id=instance_id, price=price))

    def add_ssh_key(self, public_key: str) -> None:
        self._read("create ssh-key", lambda: self.sdk.create_ssh_key(ssh_key=public_key))

    def attach_ssh(self, instance_id: int, public_key: str) -> None:
        self._read("attach ssh", lambda: self.sdk.attach_ssh(instance_id=instance_id, ssh_key=public_key))

    # ----- overlay networks (multi-node; vastai 1.9.1 api/clusters.py) ------------------------------
    def overlays(self) -> list[dict]:
        return rows.overlays(self._read("show overlays", self.sdk.show_overlays))

    def create_overlay(self, cluster_id: int, name: str) -> None:
        """Not retried blindly: after an ambiguous failure the caller looks for the name first."""
        try:
            self.sdk.create_overlay(cluster_id=cluster_id, name=name)
        except Exception as err:  # noqa: BLE001
            raise self._error("create overlay", err) from None

    def join_overlay(self, name: str, instance_id: int) -> None:
        self._read("join overlay", lambda: self.sdk.join_overlay(name=name, instance_id=instance_id))

    def delete_overlay(self, name: str) -> None:
        """Delete by name; one already gone counts as deleted."""
        try:
            self._read("delete overlay", lambda: self.sdk.delete_overlay(overlay_identifier=name))
        except VastError as err:
            if err.status != 404:
                raise

    # ----- retry and error mapping ---------------------------------------------------------------
    def _read(self, what: str, call: Callable[[], T]) -> T:
        for attempt, pause in enumerate((*self.backoff, None)):
            try:
                return call()
            except Exception as err:  # noqa: BLE001
                mapped = self._error(what, err)
                if pause is None or not _retryable(mapped):
                    raise mapped from None
                wait = _retry_after(err) or pause
                if retry.passed():  # the command's deadline is a wall: no retry past it
                    raise VastError(mapped.code, f"{mapped.message} (no retry: the deadline passed)", mapped.hint,
                                    mapped.status) from None
                progress(f"vasticlaude: {mapped.message}; retrying in {min(wait, retry.left()):g} s "
                         f"({attempt + 1}/{len(self.backoff)})")
                retry.pause(wait, self.sleep)
        raise AssertionError("unreachable")

    def _error(self, what: str, err: Exception) -> VastError:
        status = _status(err)
        detail = self.target.redact(_detail(err))
        where = "the sandbox" if self.target.sandbox else "Vast"
        if status == 401:
            return VastError("auth", f"{what}: {where} rejected the API key (from {self.target.key_source})",
                             "Check the key with 'vasticlaude doctor'.", status)
        if status == 429:
            return VastError("rate_limited", f"{what}: rate limited by {where}", "Wait a minute and retry.", status)
        if status is not None and status >= 500:
            return VastError("server", f"{what}: {where} answered {status}", "Retry later; Vast may be having trouble.", status)
        if status is not None:
            return VastError("refused", f"{what}: {where} answered {status}: {detail}", "", status)
        return VastError("unreachable", f"{what}: cannot reach {where} at {self.target.url} ({detail})",
                         "Check the network (or 'vasticlaude sim status' for the sandbox).")


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _detail(err: Exception) -> str:
    response = getattr(err, "response", None)
    if response is not None:
        try:
            body = response.json()
            return str(body.get("msg") or body.get("detail") or body.get("error") or response.status_code)
        except ValueError:
            return (response.text or str(response.status_code))[:200]
    return type(err).__name__ + (f": {str(err)[:160]}" if str(err) else "")


def _retryable(err: VastError) -> bool:
    return err.status in RETRY_STATUSES or err.code == "unreachable"


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    try:
        value = float(response.headers.get("Retry-After")) if response is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and 0 < value <= 60 else None

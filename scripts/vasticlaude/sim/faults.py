"""API faults on demand: 429 bursts (with or without Retry-After), 5xx, slow answers.

A rule matches requests by method and path regex and fires for its next `count`
matches, or at random with probability `rate` (seeded, so a test run repeats).
`ghost` makes a failing create still rent the instance, the ambiguous create that
Vast clients must reconcile by label before trying again (vast-api.md §7).
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

from .errors import ApiError, bad_request

_BODIES = {
    429: ("rate_limit_exceeded", "API requests too frequent endpoint threshold=2.0"),
    500: ("server_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("service_unavailable", "Service temporarily unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}


@dataclass
class HttpFault:
    """One rule: answer `status` (0 = only delay) instead of serving the request."""

    status: int = 429
    count: int | None = 1
    rate: float | None = None
    retry_after: float | None = None
    delay: float = 0.0
    path: str = ""
    method: str = ""
    ghost: bool = False
    fired: int = field(default=0)

    def matches(self, method: str, path: str, rng: random.Random) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path and not re.search(self.path, path):
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        return self.rate is None or rng.random() < self.rate

    def error(self) -> ApiError | None:
        if not self.status:
            return None
        code, msg = _BODIES.get(self.status, ("error", f"HTTP {self.status}"))
        headers = {"Retry-After": _fmt(self.retry_after)} if self.retry_after is not None else {}
        return ApiError(self.status, code, msg, headers)


class FaultBook:
    """The active API fault rules of a sandbox."""

    def __init__(self, seed: int):
        self.rules: list[HttpFault] = []
        self.rng = random.Random(seed)

    def add(self, spec: dict) -> HttpFault:
        try:
            rule = HttpFault(**{k: v for k, v in spec.items() if k in HttpFault.__dataclass_fields__ and k != "fired"})
            re.compile(rule.path)
        except (TypeError, re.error) as err:
            raise bad_request(f"bad fault rule: {err}") from err
        if rule.status and rule.status not in _BODIES and not 400 <= rule.status < 600:
            raise bad_request("status must be an HTTP error status (or 0 for a delay only)")
        self.rules.append(rule)
        return rule

    def pick(self, method: str, path: str) -> HttpFault | None:
        for rule in self.rules:
            if rule.matches(method, path, self.rng):
                rule.fired += 1
                return rule
        self.rules = [r for r in self.rules if r.count is None or r.fired < r.count]
        return None

    def clear(self) -> None:
        self.rules.clear()

    def describe(self) -> list[dict]:
        return [asdict(r) for r in self.rules]


def _fmt(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)

"""The error bodies the real Vast API sends, as one exception the HTTP layer renders."""
from __future__ import annotations


class ApiError(Exception):
    """An HTTP error with Vast's body shape `{"success": false, "error": …, "msg": …}`."""

    def __init__(self, status: int, error: str, msg: str, headers: dict[str, str] | None = None,
                 extra: dict | None = None):
        super().__init__(msg)
        self.status = status
        self.error = error
        self.msg = msg
        self.headers = headers or {}
        self.extra = extra or {}  # more body fields, e.g. the `new_contract` of a lost bid

    def body(self) -> dict:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


def bad_request(msg: str, error: str = "invalid_args") -> ApiError:
    return ApiError(400, error, msg)


def not_found(msg: str, error: str = "not_found") -> ApiError:
    return ApiError(404, error, msg)


def unauthorized() -> ApiError:
    return ApiError(401, "auth_error", "Invalid user key")


def forbidden(msg: str) -> ApiError:
    return ApiError(403, "forbidden", msg)

"""One error type for every vasticlaude command, mapped to documented exit codes."""
from __future__ import annotations

OK = 0
FAILED = 1        # refused or failed; nothing left running because of it
USAGE = 2         # bad flags or arguments (argparse's own code)
API = 3           # Vast (or the sandbox) could not be reached or answered with an error
BILLING_RISK = 4  # something may still be billing: run the hint's command


class Error(Exception):
    """A failure with a stable `code`, a one-line message and what to do next."""

    def __init__(self, code: str, message: str, hint: str = "", exit_code: int = FAILED):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}

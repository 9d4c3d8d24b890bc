"""Which Vast to talk to, and with which key — found without ever printing the key.

Key order: `--api-key` flag, `$VAST_API_KEY`, the project's `.vasticlaude/.env` or
`.env` (python-dotenv), then the vastai CLI's key file
(`$XDG_CONFIG_HOME/vastai/vast_api_key`, legacy `~/.vast_api_key`).
Target: `--sandbox`, `VASTICLAUDE_TARGET=sandbox` or `target: sandbox` in the
project config use the local sandbox; a `VAST_URL` is honoured as is. With no key
anywhere, the sandbox is the default, so a first run rehearses for free instead of
failing. This module only decides; `ops.connect` starts the sandbox when it is chosen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vasticlaude.errors import API, Error
from vasticlaude.output import secret

REAL_URL = "https://console.vast.ai"


@dataclass(frozen=True)
class Account:
    """Which Vast the user asked for (the --sandbox and --api-key flags), before any key is looked up."""

    api_key: str | None = None
    sandbox: bool = False

    def __repr__(self) -> str:
        return f"Account(sandbox={self.sandbox}, api_key={'[given]' if self.api_key else None})"


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and how they are signed. `repr` never shows the key."""

    url: str
    api_key: str
    key_source: str
    sandbox: bool

    def __repr__(self) -> str:
        return f"Endpoint(url={self.url!r}, key_source={self.key_source!r}, sandbox={self.sandbox})"

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]") if self.api_key else text


def key_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vastai" / "vast_api_key"


def find_key(flag: str | None = None, project: Path | None = None) -> tuple[str | None, str]:
    """The API key and a label of where it came from ("flag", "env", ".env", "key file", "none").
    Whatever is found is masked in everything this process prints or writes (output.secret)."""
    key, source = _find_key(flag, project)
    secret(key)
    return key, source


def _find_key(flag: str | None, project: Path | None) -> tuple[str | None, str]:
    if flag:
        return flag.strip(), "flag"
    if os.environ.get("VAST_API_KEY"):
        return os.environ["VAST_API_KEY"].strip(), "env VAST_API_KEY"
    for env_file in _env_files(project):
        value = _dotenv_key(env_file)
        if value:
            return value, str(env_file)
    for path in (key_file(), Path.home() / ".vast_api_key"):
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value:
            return value, str(path)
    return None, "none"


def _env_files(project: Path | None) -> list[Path]:
    root = project or Path.cwd()
    return [p for p in (root / ".vasticlaude" / ".env", root / ".env") if p.is_file()]


def _dotenv_key(path: Path) -> str | None:
    from dotenv import dotenv_values  # small, and only when an .env exists
    return (dotenv_values(path).get("VAST_API_KEY") or "").strip() or None


def wants_sandbox(account: Account, config_target: str | None = None) -> bool:
    """Is the sandbox the target: asked for, or the default because no key exists anywhere?"""
    if account.sandbox or os.environ.get("VASTICLAUDE_TARGET") == "sandbox" or config_target == "sandbox":
        return True
    return find_key(account.api_key)[0] is None and not os.environ.get("VAST_URL")


def sandbox_by_default(account: Account, config_target: str | None = None) -> bool:
    """The sandbox chosen only because no key was found (the user is told so)."""
    explicit = account.sandbox or os.environ.get("VASTICLAUDE_TARGET") == "sandbox" or config_target == "sandbox"
    return not explicit and wants_sandbox(account, config_target)


def real_endpoint(account: Account, project: Path | None = None) -> Endpoint:
    """Vast itself (or `VAST_URL`) with the key found for this account; an Error when there is none."""
    key, source = find_key(account.api_key, project)
    if key is None:
        raise Error("no_api_key", "no Vast API key found",
                    "Set VAST_API_KEY, put it in .vasticlaude/.env, or run 'vastai set api-key KEY'; "
                    "or add --sandbox to rehearse locally.", API)
    return Endpoint(url=os.environ.get("VAST_URL") or REAL_URL, api_key=key, key_source=source, sandbox=False)


def same_key(a: str | None, b: str | None) -> bool:
    """Do two public SSH keys match (type and body; the comment may differ)?"""
    return bool(a and b) and str(a).split()[:2] == str(b).split()[:2]


def is_registered(public_key: str, rows: list[dict]) -> bool:
    """Is this public key among the account's SSH-key rows (whichever field the row names it in)?"""
    return any(same_key(public_key, str(r.get("public_key") or r.get("ssh_key") or r.get("key") or "")) for r in rows)

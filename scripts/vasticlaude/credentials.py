"""Which Vast to talk to, and with which key — found without ever printing the key.

Key order: `--api-key` flag, `$VAST_API_KEY`, the project's `.vasticlaude/.env` or
`.env` (python-dotenv), then the vastai CLI's key file
(`$XDG_CONFIG_HOME/vastai/vast_api_key`, legacy `~/.vast_api_key`).
Target: `--sandbox`, `VASTICLAUDE_TARGET=sandbox` or `target: sandbox` in the
project config use the local sandbox (started on demand); a `VAST_URL` is honoured
as is. With no key anywhere, the sandbox is the default, so a first run rehearses
for free instead of failing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import API, Error

REAL_URL = "https://console.vast.ai"


@dataclass(frozen=True)
class Target:
    """Where requests go and how they are signed. `repr` never shows the key."""

    url: str
    api_key: str
    key_source: str
    sandbox: bool

    def __repr__(self) -> str:
        return f"Target(url={self.url!r}, key_source={self.key_source!r}, sandbox={self.sandbox})"

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "[redacted]") if self.api_key else text


def key_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vastai" / "vast_api_key"


def find_key(flag: str | None = None, project: Path | None = None) -> tuple[str | None, str]:
    """The API key and a label of where it came from ("flag", "env", ".env", "key file", "none")."""
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


def resolve(flag_key: str | None = None, sandbox: bool | None = None, project: Path | None = None,
            config_target: str | None = None) -> Target:
    """The target for this command; starts the sandbox when that is the target."""
    wants_sandbox = sandbox or os.environ.get("VASTICLAUDE_TARGET") == "sandbox" or config_target == "sandbox"
    key, source = (None, "none") if wants_sandbox else find_key(flag_key, project)
    if wants_sandbox:
        return sandbox_target()
    if key is None and not os.environ.get("VAST_URL"):
        target = sandbox_target()
        from .output import progress
        progress(f"vasticlaude: no Vast API key found, so this runs on the local sandbox at {target.url} "
                 "(a rehearsal: nothing real is rented). Set VAST_API_KEY to use Vast.")
        return target
    if key is None:
        raise Error("no_api_key", "no Vast API key found",
                    "Set VAST_API_KEY, put it in .vasticlaude/.env, or run 'vastai set api-key KEY'; "
                    "or add --sandbox to rehearse locally.", API)
    return Target(url=os.environ.get("VAST_URL") or REAL_URL, api_key=key, key_source=source, sandbox=False)


def sandbox_target() -> Target:
    """The local sandbox of this vasticlaude home, started in the background if needed."""
    from . import paths
    from .sim.cli import running_info, start_background
    state = paths.sim_dir()
    info = running_info(state) or start_background(state, ["--time-scale", os.environ.get("VASTICLAUDE_SIM_TIME_SCALE", "0.1")])
    return Target(url=info["url"], api_key=info["api_key"], key_source="sandbox", sandbox=True)

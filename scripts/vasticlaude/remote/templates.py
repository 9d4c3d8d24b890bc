"""Render the project's Jinja2 templates (`templates/*.j2`): the run wrapper, the report.

Templates are files next to the plugin, never strings in code, so they can be read and
changed without touching Python. The folder is found from this package's own location
(`scripts/vasticlaude/../../templates` in the repository and in an editable install),
else by walking up to a folder that holds `templates/` (an installed plugin copy),
else from `$CLAUDE_PLUGIN_ROOT`; `$VASTICLAUDE_TEMPLATES` overrides all of them.
StrictUndefined makes a missing variable an error rather than a silently empty string
in a shell script; autoescape is off (the output is shell and Markdown, not HTML);
`q` is shlex.quote, for every value that reaches a shell.
"""
from __future__ import annotations

import os
import shlex
from functools import lru_cache
from pathlib import Path

import jinja2

from vasticlaude.errors import Error


def templates_dir() -> Path:
    """The first candidate folder that exists (see the module docstring for the order)."""
    for folder in _candidates():
        if folder.is_dir() and any(folder.glob("*.j2")):
            return folder
    raise Error("no_templates", "vasticlaude's templates folder was not found",
                "Reinstall the plugin, or point VASTICLAUDE_TEMPLATES at its templates/ folder.")


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found = [Path(os.environ["VASTICLAUDE_TEMPLATES"])] if os.environ.get("VASTICLAUDE_TEMPLATES") else []
    found += [here.parent.parent / "templates", here / "templates"]
    found += [parent / "templates" for parent in here.parents]
    if os.environ.get("CLAUDE_PLUGIN_ROOT"):
        found.append(Path(os.environ["CLAUDE_PLUGIN_ROOT"]) / "templates")
    return found


@lru_cache(maxsize=4)
def environment(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render(name: str, **ctx: object) -> str:
    """Render `templates/<name>` with `ctx`; a missing variable raises (StrictUndefined)."""
    return environment(str(templates_dir())).get_template(name).render(**ctx)

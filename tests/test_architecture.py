"""The layers hold: commands on top, workflows below, pure rules at the bottom (README "Architecture").

Walks every module's imports with `ast` (no import is executed) and checks who may
import whom, that no command imports another, and that no code rebuilds a command's
argv or an argparse.Namespace to run another command through its parser.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[1] / "scripts" / "vasticlaude"

# What each layer may import from the package (besides itself). The base modules
# (errors, output) are open to all; sim is the sandbox and only its client is product-facing.
BASE = {"errors", "output"}
ALLOWED = {
    "core": BASE,
    "store": BASE,
    "vast": BASE | {"core", "store"},
    "remote": BASE | {"core", "store"},
    "ops": BASE | {"core", "store", "vast", "remote", "sim.client"},
    "console": BASE | {"core", "store", "vast", "ops"},
    "commands": BASE | {"core", "store", "vast", "remote", "ops", "console", "sim.client"},
    "cli": set(),
}


def layer_of(module: str) -> str:
    """'vasticlaude.ops.launch' → 'ops'; 'vasticlaude.sim.client' → 'sim.client'."""
    parts = module.split(".")[1:]
    if parts[:2] == ["sim", "client"]:
        return "sim.client"
    return parts[0] if parts else ""


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out[name] = path
    return out


def imports_of(name: str, path: Path) -> list[str]:
    """Every vasticlaude module `name` imports (absolute or relative, at any depth in the file)."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("vasticlaude")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("vasticlaude"):
                continue
            for alias in node.names:  # `from vasticlaude.ops import launch` imports the module ops.launch
                sub = f"{base}.{alias.name}"
                found.append(sub if sub in MODULES else base)
    return found


MODULES = modules()
GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_the_walk_sees_the_package():
    assert {"vasticlaude.commands.up", "vasticlaude.ops.launch", "vasticlaude.core.market"} <= set(MODULES)
    assert "vasticlaude.ops.launch" in GRAPH["vasticlaude.commands.up"]


def test_no_command_imports_another_and_nothing_below_imports_a_command():
    bad = []
    for name, deps in GRAPH.items():
        for dep in deps:
            if not dep.startswith("vasticlaude.commands.") or dep == "vasticlaude.commands":
                continue
            if name != "vasticlaude.cli":
                bad.append(f"{name} imports {dep}")
    assert not bad, "\n".join(bad)


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for name, deps in GRAPH.items():
        layer = layer_of(name)
        if layer in ("sim", "sim.client", "", "__main__") or layer in BASE:
            continue
        allowed = ALLOWED.get(layer)
        assert allowed is not None, f"{name}: module outside the known layers ({layer})"
        for dep in deps:
            dep_layer = layer_of(dep)
            if dep_layer != layer and dep_layer not in allowed:
                bad.append(f"{name} ({layer}) imports {dep} ({dep_layer})")
    assert not bad, "\n".join(bad)


def test_the_base_modules_import_only_the_store_paths():
    for base in BASE:
        deps = set(GRAPH[f"vasticlaude.{base}"]) - {f"vasticlaude.{b}" for b in BASE}
        assert deps <= {"vasticlaude.store.paths", "vasticlaude.store"}, f"{base}: {deps}"


ARGV_REENTRY = [
    re.compile(r"argparse\.Namespace\("),          # a Namespace built by hand for another command
    re.compile(r"build_parser\(\)\.parse_args\("),  # another command's parser fed an argv
    re.compile(r"target_argv"),                      # flags written back into an argv
]


def test_no_code_rebuilds_argv_or_a_namespace_for_another_command():
    bad = []
    for name, path in MODULES.items():
        if name.startswith("vasticlaude.sim") or name == "vasticlaude.console":  # console parses each command's own argv
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(rule.search(line) for rule in ARGV_REENTRY):
                bad.append(f"{path.relative_to(PKG)}:{number}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_workflows_take_records_not_a_namespace():
    bad = [f"{name}" for name, path in MODULES.items()
           if layer_of(name) in ("ops", "core", "store", "vast", "remote")
           and re.search(r"argparse\.Namespace|^import argparse", path.read_text(encoding="utf-8"), re.M)]
    assert not bad, f"argparse below the commands: {bad}"

"""Every answer names a next step Claude can actually run.

Walks every string the product can print (constants and f-strings, with `X` where a value
goes) and checks each suggested `vasticlaude VERB --flag …`: the verb exists and so does each
flag. Under the plugin the launcher path replaces `vasticlaude` (output.spell), and only the
launcher is permitted, so no message may suggest the raw `vastai` CLI to Claude. Also the
envelope rule: exit != 0 ⇔ ok: false with an error {code, message, hint}.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vasticlaude import cli, output

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[1] / "scripts" / "vasticlaude"
# A verb, or a word that would read as one (a command that does not exist must not be suggested).
VERBISH = sorted(set(cli.COMMANDS) | {"start", "stop", "destroy", "create", "sync", "setup", "init", "login", "show",
                                      "rent", "kill", "restart", "resume", "attach", "ssh", "rsync"})
SUGGESTED = re.compile(r"\bvasticlaude (%s)\b((?: +(?:--[a-z][a-z-]*|[^\s'`\"),;]+))*)" % "|".join(VERBISH))
RAW_CLI = re.compile(r"\bvastai (?:create|destroy|start|stop|show|search|launch|reboot|label|copy|execute)\b")


def texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant and f-string, docstrings left out (they document, not suggest)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and id(node) not in inner:
            out.append((node.lineno, node.value))
    return out


def product_files() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if "sim" not in p.relative_to(PKG).parts[:1]]


def flags_of(verb: str) -> set[str]:
    module = __import__(cli.COMMANDS[verb], fromlist=["build_parser"])
    parser = module.build_parser()
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_suggested_command_exists_with_its_flags():
    bad, seen = [], 0
    for path in product_files():
        for line, text in texts(path):
            for verb, rest in SUGGESTED.findall(text):
                if text[text.find("vasticlaude " + verb) + len("vasticlaude " + verb):][:1] == ":":
                    continue  # a progress line's prefix ("vasticlaude up: renting …"), not a suggestion
                seen += 1
                where = f"{path.relative_to(PKG)}:{line}"
                if verb not in cli.COMMANDS:
                    bad.append(f"{where}: no command {verb!r} in {text!r}")
                    continue
                if verb == "sim":
                    continue
                unknown = [f for f in re.findall(r"--[a-z][a-z-]*", rest) if f not in flags_of(verb)]
                if unknown:
                    bad.append(f"{where}: {verb} has no {unknown} ({text!r})")
    assert seen > 40, f"the walk found only {seen} suggestions: is it still reading the product?"
    assert not bad, "\n".join(bad)


def test_no_message_suggests_the_raw_vastai_cli():
    bad = [f"{p.relative_to(PKG)}:{line}: {text!r}" for p in product_files() for line, text in texts(p)
           if RAW_CLI.search(text)]
    assert not bad, "\n".join(bad)


def test_suggestions_are_spelled_with_the_launcher_under_the_plugin(monkeypatch):
    text = "vasticlaude up: renting; then run vasticlaude down --experiment e (label vasticlaude-e)"
    monkeypatch.delenv("VASTICLAUDE_LAUNCHER", raising=False)
    assert output.spell(text) == text
    monkeypatch.setenv("VASTICLAUDE_LAUNCHER", "/plugins/cache/vasticlaude/0.1.0/scripts/vc")
    assert output.spell(text) == ('vasticlaude up: renting; then run "/plugins/cache/vasticlaude/0.1.0/scripts/vc" '
                                  "down --experiment e (label vasticlaude-e)")
    assert output.spelled({"next": ["vasticlaude pull --experiment e"]}) == \
        {"next": ['"/plugins/cache/vasticlaude/0.1.0/scripts/vc" pull --experiment e']}


def run_json(*args: str, home: Path) -> tuple[int, dict]:
    env = {**os.environ, "VASTICLAUDE_HOME": str(home), "VASTAI_NO_UPDATE_CHECK": "1", "HOME": str(home),
           "VASTICLAUDE_LAUNCHER": "/p/scripts/vc"}
    env.pop("VAST_API_KEY", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "vasticlaude", *args, "--json"], capture_output=True, text=True,
                              env=env, cwd=home, timeout=60)
    finally:  # a command that needed the account started the home's sandbox: stop it with the test
        subprocess.run([sys.executable, "-m", "vasticlaude", "sim", "stop"], capture_output=True, env=env, timeout=60)
    return proc.returncode, json.loads(proc.stdout)


# Failure paths that need no sandbox: usage errors, missing records, bad input.
LOCAL_FAILURES = [("run",), ("run", "--bogus"), ("down",), ("status", "--experiment", "nope"),
                  ("pull", "--experiment", "nope"), ("logs", "--experiment", "nope"), ("report", "--experiment", "nope"),
                  ("recover", "--experiment", "nope"), ("watch", "--interval", "0", "--experiment", "nope"),
                  ("push", "/definitely/not/here"), ("up", "--experiment", "../x"), ("cost", "--bogus")]


@pytest.mark.parametrize("argv", LOCAL_FAILURES, ids=" ".join)
def test_a_failing_command_says_ok_false_with_an_error_and_a_runnable_hint(argv, tmp_path):
    code, envelope = run_json(*argv, home=tmp_path)
    assert code != 0
    assert envelope["ok"] is False and {"code", "message", "hint"} <= set(envelope["error"]), envelope
    assert "vasticlaude " not in json.dumps(envelope).replace("vasticlaude-", "").replace(".vasticlaude", "") \
        .replace("vasticlaude/", ""), f"a suggestion not spelled with the launcher: {envelope}"


def test_a_line_the_result_restates_is_said_once_under_json(capsys):
    """--json: `up`'s renting line, `push`'s sending line, `pull`'s line are left to the result unless
    something follows them (a slow boot's status, a failed offer, an error); a person sees them at once."""
    from vasticlaude.errors import Error
    try:
        output.hold(False)
        output.restated("vasticlaude up: renting offer 1")
        assert capsys.readouterr().err == "vasticlaude up: renting offer 1\n"  # no --json: at once

        output.hold(True)
        output.restated("vasticlaude up: renting offer 1")
        assert capsys.readouterr().err == ""
        output.emit({"instance_id": 5}, True, str)
        assert capsys.readouterr().err == ""  # a clean result says it: dropped

        output.restated("vasticlaude up: renting offer 1")
        output.progress("vasticlaude up: offer 1 failed: it never started")
        output.restated("vasticlaude up: renting offer 2")
        output.emit({"instance_id": 6}, True, str, Error("x", "no", "retry", 1))
        assert capsys.readouterr().err.splitlines() == [  # in order, before what follows; kept for an error
            "vasticlaude up: renting offer 1", "vasticlaude up: offer 1 failed: it never started",
            "vasticlaude up: renting offer 2"]

        output.restated("vasticlaude pull: outputs from instance 6")
        output.fail(Error("ssh", "the connection dropped", "retry"), True)
        assert capsys.readouterr().err == "vasticlaude pull: outputs from instance 6\n"
    finally:
        output.hold(False)

"""Shared fixtures: a real sandbox per test module, stopped even when tests fail."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from simkit import Sim  # noqa: E402

# Nothing in the suite may reach a real account or the internet.
for _name in ("VAST_API_KEY", "VAST_URL"):
    os.environ.pop(_name, None)
os.environ["VASTAI_NO_UPDATE_CHECK"] = "1"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTICLAUDE_HOME", str(tmp_path / "vchome"))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    """A sandbox at time scale 0 (no artificial delays) for one test module."""
    base = tmp_path_factory.mktemp("sim")
    sandbox = Sim(state=base / "state", home=base / "home")
    sandbox.home.mkdir()
    try:
        yield sandbox.start("--time-scale", "0", "--seed", "7")
    finally:
        sandbox.stop()


@pytest.fixture
def fresh_sim(tmp_path: Path):
    """A sandbox of its own for a test that changes global things (balance, faults, restarts)."""
    sandbox = Sim(state=tmp_path / "state", home=tmp_path / "home")
    sandbox.home.mkdir()
    try:
        yield sandbox
    finally:
        sandbox.stop()

"""Shared fixtures: a real sandbox per test module, stopped even when tests fail.

The suite runs on pytest-xdist workers (`-n auto --dist worksteal`, pyproject.toml). Each
worker is a separate process with its own temp folder (pytest's basetemp/popen-gwN), HOME,
VASTICLAUDE_HOME per test, and sandboxes of its own on ports the OS picks, so no two workers
share state; a module's tests may run on several workers, each with its own `sim`. `-n 0`
runs everything in one process, as before.
"""
from __future__ import annotations

import fcntl
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

# Fixtures whose tests start a sandbox, an SSH endpoint or Claude Code: never `unit` tests.
PROCESS_FIXTURES = {"sim", "fresh_sim", "claude", "plugin_data", "loop_thread"}


# ----- parallel runs ---------------------------------------------------------------------------
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many workers `-n auto` starts: PYTEST_XDIST_AUTO_NUM_WORKERS if set; none for
    `-m unit` (it takes seconds; starting workers would take longer); else two per CPU this
    process may use, 2 to 8. The tests mostly wait (sandboxes, ssh, polls), so two per CPU keeps
    the CPUs busy; more only slows the CPU-bound parts (vastai/vasticlaude process starts) and
    squeezes the real-time windows some tests observe a running job in."""
    wanted = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if wanted:
        return int(wanted)
    if (config.option.markexpr or "").strip() == "unit":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(8, max(2, 2 * cpus))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A `unit` test may not use a fixture that starts a sandbox, SSH endpoint or Claude Code."""
    for item in items:
        uses = PROCESS_FIXTURES & set(item.fixturenames)
        if item.get_closest_marker("unit") and uses:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but starts processes ({', '.join(sorted(uses))})")


@pytest.fixture(autouse=True)
def _alone_or_together(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """On xdist workers, a test marked `alone` runs while no other test runs on any worker: it
    closes a gate no test can start through, waits for the running ones to end, and opens the
    gate when it is done. Every other test passes the gate and runs beside the others."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    run_dir = tmp_path_factory.getbasetemp().parent  # <run>/popen-gwN -> <run>, shared by its workers
    with open(run_dir / "gate.lock", "a") as gate, open(run_dir / "tests.lock", "a") as running:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(running, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(running, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


# ----- isolation -------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _worker_home(tmp_path_factory: pytest.TempPathFactory):
    """A HOME of this worker's own, so no test reads or writes the real one (~/.ssh, caches…).
    pip's user config (an index or proxy it may need) stays where pip finds it."""
    saved = {name: os.environ.get(name) for name in ("HOME", "PIP_CONFIG_FILE")}
    real_home = Path(saved["HOME"] or Path.home())
    pip_conf = Path(os.environ.get("XDG_CONFIG_HOME") or real_home / ".config") / "pip" / "pip.conf"
    if saved["PIP_CONFIG_FILE"] is None and pip_conf.is_file():
        os.environ["PIP_CONFIG_FILE"] = str(pip_conf)
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTICLAUDE_HOME", str(tmp_path / "vchome"))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    """A sandbox at time scale 0 (no artificial delays) for one test module (on each worker
    that runs tests of the module)."""
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

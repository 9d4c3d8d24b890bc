"""`vasticlaude report` and the matplotlib charts it draws: fast, no sandbox, no network.

PNGs are checked by opening them with Pillow (what any viewer does: signature, size,
pixels) and the chart's texts by reading the matplotlib Figure they come from; reports
are built from hand-made state exactly as the other commands write it
(state.upsert_instance, state.append_event, state.experiment).
"""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from vasticlaude import cli
from vasticlaude.commands import report as cli_report
from vasticlaude.core import chart
from vasticlaude.core import money as costing
from vasticlaude.ops import reporting as report
from vasticlaude.store import state

pytestmark = pytest.mark.unit  # pure: no sandbox, SSH or Claude Code

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HUES = [c for c in chart.PALETTE if len(set(c)) > 1]  # the grey one is also in antialiased black text


def open_png(data: bytes) -> Image.Image:
    """The PNG as a viewer sees it: signature, then fully decoded (CRCs and zlib checked by Pillow)."""
    assert data[:8] == PNG_SIGNATURE, "PNG signature"
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.convert("RGB")


def pixels_of(image: Image.Image, colour: tuple[int, int, int]) -> int:
    """How many pixels are exactly `colour` (a line's core is; its antialiased edges are not)."""
    return sum(count for count, rgb in image.getcolors(image.width * image.height) if rgb == colour)


def texts(figure) -> set[str]:
    """Every text on the chart: title, axis labels, legend entries, marks, "no data"."""
    axes = figure.axes[0]
    found = {axes.get_title(), axes.get_xlabel(), axes.get_ylabel(), *(t.get_text() for t in axes.texts)}
    legend = axes.get_legend()
    return found | ({t.get_text() for t in legend.get_texts()} if legend else set())


# ----- charts ------------------------------------------------------------------------------------
def test_chart_is_a_png_with_one_colour_per_series_and_real_text():
    series = {"loss": [(i, 2 * math.exp(-i / 50)) for i in range(200)],
              "val_loss": [(i, 2.2 * math.exp(-i / 60) + 0.1) for i in range(0, 200, 20)],
              "acc": [(i, 1 - math.exp(-i / 40)) for i in range(200)]}
    image = open_png(chart.line_chart(series, "Metrics: exp1", "step", "value"))
    assert image.size == (960, 540)
    for colour in chart.PALETTE[:3]:
        assert pixels_of(image, colour) > 100, colour
    assert pixels_of(image, chart.PALETTE[3]) == 0  # exactly one colour per series
    figure = chart.draw(series, "Metrics: exp1", "step", "value")
    assert {"Metrics: exp1", "step", "value", "loss", "val_loss", "acc"} <= texts(figure)  # lower case kept


def test_png_says_it_comes_from_matplotlib():
    data = chart.line_chart({"a": [(0, 1), (1, 3)]}, "T", "x", "y")
    assert b"matplotlib" in data[:400]  # the tEXt "Software" chunk


def test_chart_size_is_honoured():
    assert open_png(chart.line_chart({"a": [(0, 0), (1, 1)]}, "t", "x", "y", width=300, height=200)).size == (300, 200)


@pytest.mark.parametrize("series", [
    {}, {"a": []}, {"a": [(float("nan"), 1), (1, float("inf"))]}, {"a": [("x", None)]},
], ids=["no-series", "empty-series", "non-finite", "non-numeric"])
def test_chart_without_data_says_so(series):
    image = open_png(chart.line_chart(series, "Cost", "minutes", "USD"))
    assert image.getextrema() != ((255, 255), (255, 255), (255, 255)), "title, frame and text are drawn"
    assert not any(pixels_of(image, colour) for colour in HUES)
    assert "no data" in texts(chart.draw(series, "Cost", "minutes", "USD"))


@pytest.mark.parametrize("series", [
    {"one": [(5, 3)]},
    {"flat": [(0, 2.5), (1, 2.5), (2, 2.5)]},
    {"zero": [(0, 0), (10, 0)]},
    {"neg": [(0, -5), (1, -3), (2, -9.5)]},
    {"huge": [(0, 1e-3), (1, 1e12), (2, -3e11)], "small": [(0, 0), (2, 1)]},
    {"tiny": [(0, 1e-9), (1, 3e-9)]},
    {"extreme": [(0, -1e308), (1, 1e308)]},
    {"many": [(i, math.sin(i / 100)) for i in range(100_000)]},
    {"unsorted": [(3, 1), (1, 2), (2, 0)]},
], ids=["one-point", "constant", "all-zero", "negative", "huge-range", "tiny", "float-extremes", "many", "unsorted"])
def test_chart_edge_cases_draw_every_series(series):
    image = open_png(chart.line_chart(series, "Edge case", "x", "y"))
    for n in range(len(series)):
        assert pixels_of(image, chart.PALETTE[n]) > 0


def test_more_series_than_colours_still_renders():
    series = {f"s{n}": [(0, n), (1, n + 1)] for n in range(14)}
    image = open_png(chart.line_chart(series, "Many", "x", "y"))
    assert all(pixels_of(image, colour) for colour in chart.PALETTE)
    styles = [line.get_linestyle() for line in chart.draw(series, "Many", "x", "y").axes[0].get_lines()]
    assert styles[0] != styles[10]  # the eleventh series repeats a colour, not a look


def test_marks_are_labelled_vertical_lines_within_the_data():
    figure = chart.draw({"loss": [(1, 2.0), (80, 0.5)]}, "T", "step", "loss",
                        marks=[(41, "resumed on instance 202"), (500, "off the chart")])
    assert "resumed on instance 202" in texts(figure) and "off the chart" not in texts(figure)
    vertical = [line for line in figure.axes[0].get_lines() if list(line.get_xdata()) == [41, 41]]
    assert len(vertical) == 1


def test_write_chart_creates_folders(tmp_path):
    path = chart.write_chart(tmp_path / "a" / "b" / "c.png", {"s": [(0, 1), (1, 2)]}, "T", "x", "y")
    assert open_png(path.read_bytes()).size == (960, 540)


def test_importing_vasticlaude_does_not_load_matplotlib():
    """Only `report` pays for matplotlib: it loads when a chart is drawn, not on import."""
    code = ("import sys, vasticlaude.cli, vasticlaude.core.chart, vasticlaude.ops.reporting, "
            "vasticlaude.commands.report; print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ----- report ------------------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    (root / ".vasticlaude").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def add_instance(iid: int, experiment: str, start: float, *, running_for: float, destroyed: bool = True,
                 gpu_dph: float = 0.4, storage_dph: float = 0.02) -> dict:
    """A record whose history is fixed in the past, so its cost does not move while the test runs."""
    history = [{"at": start, "status": "creating", "why": "rented"}, {"at": start + 60, "status": "running", "why": ""}]
    fields = {}
    if destroyed:
        history.append({"at": start + 60 + running_for, "status": "destroyed", "why": "down"})
        fields["destroyed_at"] = start + 60 + running_for
    return state.upsert_instance(iid, status=history[-1]["status"], experiment=experiment, label=f"vasticlaude-{experiment}",
                                 gpu_name="RTX 4090", num_gpus=1, gpu_dph=gpu_dph, storage_dph=storage_dph,
                                 history=history, target="http://127.0.0.1:9", **fields)


def pulled_log(project: Path, experiment: str, lines: int = 120, exit_code: int = 0, start: float = 0) -> Path:
    run_dir = project / ".vasticlaude" / "runs" / experiment / "run"
    run_dir.mkdir(parents=True)
    text = "".join(f"step {i}/{lines} loss={2 * math.exp(-i / 30):.4f} lr=0.001\n" for i in range(lines))
    (run_dir / "job.log").write_text("vasticlaude: run started\n" + text + f"LAST LINE exit={exit_code}\n")
    (run_dir / "exit_code").write_text(f"{exit_code}\n")
    (run_dir / "started_at").write_text(f"{int(start)}\n")
    (run_dir / "ended_at").write_text(f"{int(start) + 3723}\n")
    return run_dir


def run_report(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["report", *args, "--json"])
    envelope = json.loads(capsys.readouterr().out)
    return code, envelope


@pytest.fixture
def finished(project: Path) -> dict:
    """exp1: two destroyed instances, events, experiment.json, and a pulled run folder."""
    start = time.time() - 7200
    recs = [add_instance(11, "exp1", start, running_for=3600),
            add_instance(12, "exp1", start + 600, running_for=1200, gpu_dph=0.25, storage_dph=0.01)]
    add_instance(99, "other", start, running_for=60)
    for event, fields in [("created", {"instance_id": 11, "offer_id": 5}), ("status", {"status": "loading"}),
                          ("status", {"status": "loading"}), ("ready", {"instance_id": 11}),
                          ("run_started", {"command": "python train.py"}), ("finished", {"exit_code": 0})]:
        state.append_event("exp1", event, **fields)
    with state.experiment("exp1") as exp:
        exp.update(command="python train.py --epochs 3 | tee out.txt", budget_usd=5,
                   pull={"local_path": str(project / "results" / "exp1"), "files": 3, "bytes": 12345, "at": start})
    pulled_log(project, "exp1", start=start + 60)
    return {"records": recs, "start": start}


def test_report_from_local_state(project, finished, capsys):
    code, envelope = run_report(capsys, "--experiment", "exp1")
    assert code == 0 and envelope["ok"]
    data = envelope["data"]
    out_dir = project / ".vasticlaude" / "runs" / "exp1"
    assert data["report"] == str(out_dir / "report.md")
    assert data["charts"] == [str(out_dir / "cost.png"), str(out_dir / "metrics.png")]
    assert data["exit_code"] == 0 and data["experiment"] == "exp1"

    records = [r for r in state.load()["instances"].values() if r["experiment"] == "exp1"]
    costs = [costing.instance_cost(r) for r in records]
    total = sum(c["total_usd"] for c in costs)
    assert data["total_usd"] == pytest.approx(total)
    text = Path(data["report"]).read_text()
    assert "python train.py --epochs 3 \\| tee out.txt" in text   # in the summary table, pipe escaped
    assert "```sh\npython train.py --epochs 3 | tee out.txt\n```" in text
    assert report.usd(total) in text
    assert report.usd(sum(c["gpu_usd"] for c in costs)) in text
    assert report.usd(sum(c["storage_usd"] for c in costs)) in text
    for c in costs:
        assert report.usd(c["total_usd"]) in text
    assert "$5.0000" in text and report.usd(5 - total) in text          # the budget and what is left
    assert "0 (success)" in text and "1h 02m 03s" in text
    assert "LAST LINE exit=0" in text and "step 119/120" in text
    assert "step 95/120" not in text                                     # only the last 20 lines
    assert "(×2)" in text and "| finished | exit_code=0 |" in text       # the timeline, repeats folded
    assert "RTX 4090" in text and "| 11 |" in text and "| 99 |" not in text
    assert str(project / "results" / "exp1") + "` (3 files, 12,345 bytes" in text and "destroyed" in text
    assert "](cost.png)" in text and "](metrics.png)" in text
    for path in data["charts"]:
        image = open_png(Path(path).read_bytes())
        assert image.size == (960, 540) and pixels_of(image, chart.PALETTE[0])


def test_failed_job_is_still_a_successful_report(project, capsys):
    add_instance(21, "bad", time.time() - 600, running_for=120)
    pulled_log(project, "bad", lines=5, exit_code=2, start=time.time() - 500)
    code, envelope = run_report(capsys, "--experiment", "bad")
    assert code == 0 and envelope["data"]["exit_code"] == 2
    assert "2 (failed)" in Path(envelope["data"]["report"]).read_text()


def test_report_with_nothing_but_a_record(project, capsys, monkeypatch):
    """No events, no experiment.json, no log, instance gone: still a report, and no SSH is tried."""
    monkeypatch.setattr(report, "_ssh_tail", lambda *a: pytest.fail("no SSH for a destroyed instance"))
    add_instance(31, "bare", time.time() - 900, running_for=300)
    code, envelope = run_report(capsys)                 # the only experiment is the default
    data = envelope["data"]
    assert code == 0 and data["experiment"] == "bare" and data["exit_code"] is None
    assert data["charts"] == [str(project / ".vasticlaude" / "runs" / "bare" / "cost.png")]
    text = Path(data["report"]).read_text()
    assert "Not available (no pulled job.log; no running instance)" in text
    assert "not recorded" in text and "No events recorded." in text and "metrics.png" not in text


def test_report_of_an_experiment_without_instances(project, capsys):
    state.append_event("planned", "note", text="nothing rented yet")
    code, envelope = run_report(capsys, "--experiment", "planned")
    assert code == 0 and envelope["data"]["total_usd"] == 0
    image = open_png(Path(envelope["data"]["charts"][0]).read_bytes())
    assert not any(pixels_of(image, colour) for colour in HUES)   # the "no data" chart


def test_out_folder_and_stale_metrics_removed(project, finished, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    code, envelope = run_report(capsys, "--experiment", "exp1", "--out", str(out))
    assert code == 0 and (out / "report.md").is_file() and (out / "metrics.png").is_file()
    (project / ".vasticlaude" / "runs" / "exp1" / "run" / "job.log").write_text("no metrics here\n")
    code, envelope = run_report(capsys, "--experiment", "exp1", "--out", str(out))
    assert not (out / "metrics.png").exists() and envelope["data"]["charts"] == [str(out / "cost.png")]


def test_unknown_experiment_exits_1(project, finished, capsys):
    code, envelope = run_report(capsys, "--experiment", "nope")
    assert code == 1 and not envelope["ok"] and envelope["error"]["code"] == "unknown_experiment"
    assert "exp1" in envelope["error"]["hint"]


def test_no_experiment_at_all_exits_1(project, capsys):
    code, envelope = run_report(capsys)
    assert code == 1 and envelope["error"]["code"] == "no_experiment"


def live(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_instance(41, "live", time.time() - 300, running_for=0, destroyed=False)
    monkeypatch.setattr(report, "target_ready", lambda: True)


def test_log_tail_over_ssh_when_nothing_was_pulled(project, monkeypatch, capsys):
    live(project, monkeypatch)
    monkeypatch.setattr(report, "_ssh_tail", lambda exp: ([f"epoch 1 loss={v}" for v in (0.9, 0.5)] + [""], {"exit_code": "4\n", "started_at": "1000",
                                                                                    "ended_at": "1090"}))
    code, envelope = run_report(capsys, "--experiment", "live")
    text = Path(envelope["data"]["report"]).read_text()
    assert code == 0 and "over SSH" in text and "epoch 1 loss=0.5" in text
    assert "still rented" in text and envelope["data"]["exit_code"] == 4 and "1m 30s" in text
    assert (project / ".vasticlaude" / "runs" / "live" / "metrics.png").is_file()


@pytest.mark.parametrize("behaviour", ["raises", "hangs"])
def test_ssh_failure_never_fails_the_report(project, monkeypatch, capsys, behaviour):
    live(project, monkeypatch)

    def broken(exp):
        if behaviour == "hangs":
            time.sleep(5)
        raise OSError("no route to host")

    monkeypatch.setattr(report, "_ssh_tail", broken)
    monkeypatch.setattr(report, "REMOTE_TIMEOUT", 0.3)
    began = time.monotonic()
    code, envelope = run_report(capsys, "--experiment", "live")
    assert code == 0 and time.monotonic() - began < 3
    assert "did not answer over SSH" in Path(envelope["data"]["report"]).read_text()


def test_offline_never_tries_ssh(project, monkeypatch, capsys):
    live(project, monkeypatch)
    monkeypatch.setattr(report, "_ssh_tail", lambda *a: pytest.fail("--offline must not use SSH"))
    code, envelope = run_report(capsys, "--experiment", "live", "--offline")
    assert code == 0 and "--offline" in Path(envelope["data"]["report"]).read_text()


def test_cost_series_is_the_integrated_history():
    start = 1_000_000.0
    rec = {"id": 1, "gpu_dph": 3.6, "storage_dph": 0.36, "destroyed_at": start + 300,
           "history": [{"at": start, "status": "loading"}, {"at": start + 60, "status": "running"},
                       {"at": start + 300, "status": "destroyed"}]}
    series, x_label = report.cost_series([rec], now=start + 10_000)
    points = series["instance 1"]
    assert x_label == "minutes since first rental"
    assert points[0] == (0.0, 0.0) and points[-1][0] == 5.0
    assert points[1][1] == pytest.approx(60 * 0.36 / 3600)
    assert points[-1][1] == pytest.approx(costing.instance_cost(rec, start + 10_000)["total_usd"])


def test_help_documents_json_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["report", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert '"total_usd"' in out and "Exit codes" in out and "--out" in out


# ----- templates -----------------------------------------------------------------------------------
def test_templates_render_strictly_and_quote_for_the_shell(tmp_path, monkeypatch):
    from jinja2 import UndefinedError

    from vasticlaude.remote import templates
    (tmp_path / "t.sh.j2").write_text("echo {{ arg | q }}\n")
    monkeypatch.setenv("VASTICLAUDE_TEMPLATES", str(tmp_path))
    assert templates.render("t.sh.j2", arg="it's $HOME; rm -rf /") == "echo 'it'\"'\"'s $HOME; rm -rf /'\n"
    with pytest.raises(UndefinedError):
        templates.render("t.sh.j2")
    monkeypatch.delenv("VASTICLAUDE_TEMPLATES")
    assert (templates.templates_dir() / "report.md.j2").is_file()


def test_pull_to_another_folder_and_exit_code_from_events(project, tmp_path, capsys):
    """`pull --dest` records where it went; a newer run event without an exit code means: unknown."""
    add_instance(51, "moved", time.time() - 600, running_for=100)
    dest = tmp_path / "results"
    run_dir = dest / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "job.log").write_text("from the dest folder loss=0.5\n")
    with state.experiment("moved") as exp:
        exp["pull"] = {"local_path": str(dest), "files": 1, "bytes": 30, "at": time.time()}
    state.append_event("moved", "run", exit_code=127)
    state.append_event("moved", "run", exit_code=None)
    code, envelope = run_report(capsys, "--experiment", "moved")
    text = Path(envelope["data"]["report"]).read_text()
    assert code == 0 and envelope["data"]["exit_code"] is None
    assert "from the dest folder" in text and f"`{run_dir / 'job.log'}`" in text


# ----- a run that a recovery moved to another instance -----------------------------------------------
def job_log(first: int, last: int, head: str = "") -> str:
    """What the demo's train.py prints: a step counter and two metrics per line."""
    lines = [f"epoch {1 + (s - 1) // 40}/2 step {s}/80 loss={2.0 / (1 + s / 4):.4f} acc={min(0.99, 0.5 + s / 120):.3f}"
             for s in range(first, last + 1)]
    return "".join(f"{line}\n" for line in ([head] if head else []) + lines)


def put_run_files(project: Path, experiment: str, log: str, started: float, ended: float | None = None,
                  exit_code: int | None = None) -> Path:
    """run/ at home as `pull` leaves it: the instance's job.log and the wrapper's files, replacing the last ones."""
    run_dir = project / ".vasticlaude" / "runs" / experiment / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.log").write_text(log)
    (run_dir / "started_at").write_text(f"{int(started)}\n")
    for name, value in (("ended_at", ended), ("exit_code", exit_code)):
        if value is None:
            (run_dir / name).unlink(missing_ok=True)
        else:
            (run_dir / name).write_text(f"{int(value)}\n")
    return run_dir


@pytest.fixture
def recovered(project: Path) -> dict:
    """exp2: run on 201 (steps 1-43, checkpoint at 40), host down, recovered onto 202 (steps 41-80).

    The state is what `up`, `run`, `recover` and `pull` write: two records, experiment.json
    "runs" (one per instance) and "recoveries", and the recover_* events between the runs."""
    t0 = time.time() - 3600
    add_instance(201, "exp2", t0, running_for=400)           # running t0+60 .. t0+460
    add_instance(202, "exp2", t0 + 500, running_for=600)     # running t0+560 .. t0+1160
    state.append_event("exp2", "run", instance_id=201, command="python train.py", state="running", exit_code=None)
    with state.experiment("exp2") as exp:
        exp.update(command="python train.py", runs=[
            {"at": t0 + 70, "instance_id": 201, "command": "python train.py"},
            {"at": t0 + 580, "instance_id": 202, "command": "python train.py"}],
            recoveries=[{"at": t0 + 585, "kind": "host_offline", "action": "relaunch", "from_instance": 201,
                         "to_instance": 202, "ok": True, "seconds": 120.0}])
    return {"t0": t0}


def finish_on_202(project: Path, t0: float) -> None:
    """The end: `pull` from 202 replaces run/ at home with 202's files."""
    put_run_files(project, "exp2", job_log(41, 80, "resuming from step 40"), started=t0 + 578, ended=t0 + 1100,
                  exit_code=0)
    with state.experiment("exp2") as exp:
        exp["pull"] = {"at": t0 + 1110, "local_path": str(project / ".vasticlaude" / "runs" / "exp2"),
                       "files": 4, "bytes": 999, "instance_id": 202, "paths": ["run"]}


def charted(monkeypatch) -> dict:
    """Capture what the report hands to the chart (and still draw it)."""
    seen: dict = {}
    real = report.chart.write_chart

    def spy(path, series, title, x_label, y_label, **kw):
        seen[Path(path).name] = {"series": series, "x_label": x_label, "marks": list(kw.get("marks") or ())}
        return real(path, series, title, x_label, y_label, **kw)

    monkeypatch.setattr(report.chart, "write_chart", spy)
    return seen


def test_report_after_a_recovery_joins_both_instances(project, recovered, monkeypatch, capsys):
    t0 = recovered["t0"]
    # Mid-run, 201's files came home (a pull, or a sync of run/) and a report was made: it keeps a copy.
    put_run_files(project, "exp2", job_log(1, 43), started=t0 + 69)
    code, _ = run_report(capsys, "--experiment", "exp2", "--offline")
    kept = project / ".vasticlaude" / "runs" / "exp2" / "logs" / "201"
    assert code == 0 and (kept / "job.log").read_text() == job_log(1, 43)
    assert (kept / "started_at").read_text() == f"{int(t0 + 69)}\n"

    finish_on_202(project, t0)            # 202's job.log now replaces 201's at home
    seen = charted(monkeypatch)
    code, envelope = run_report(capsys, "--experiment", "exp2", "--offline")
    assert code == 0 and envelope["data"]["exit_code"] == 0
    metrics = seen["metrics.png"]
    steps = [x for x, _ in metrics["series"]["loss"]]
    assert steps == [float(s) for s in range(1, 81)]              # 1-40 from 201, 41-80 from 202, no step twice
    assert dict(metrics["series"]["loss"])[42.0] == pytest.approx(2.0 / (1 + 42 / 4), abs=1e-4)
    assert metrics["x_label"] == "step" and metrics["marks"] == [(41.0, "resumed on instance 202")]

    text = Path(envelope["data"]["report"]).read_text()
    whole = int(t0 + 1100) - int(t0 + 69)                           # 201's start to 202's end: 17m 11s
    assert f"Duration: {report.duration(whole)} (the whole run, on 2 instances" in text
    assert report.duration(whole) == "17m 11s" and report.when(t0 + 69) in text
    assert "| 201 |" in text and "step 1–43" in text and "| 202 |" in text and "step 41–80" in text
    assert "never came home" not in text
    assert "step 80/80" in text                                      # the last lines are the last instance's
    assert (project / ".vasticlaude" / "runs" / "exp2" / "logs" / "202" / "job.log").is_file()


def test_report_after_a_recovery_without_the_first_log_says_so(project, recovered, monkeypatch, capsys):
    """The demo's case: the host died before anything of 201 came home. The chart shows what
    is there, the report says what is missing, and the duration is still the whole run's."""
    t0 = recovered["t0"]
    finish_on_202(project, t0)
    seen = charted(monkeypatch)
    code, envelope = run_report(capsys, "--experiment", "exp2", "--offline")
    assert code == 0
    assert [x for x, _ in seen["metrics.png"]["series"]["loss"]][0] == 41.0
    text = Path(envelope["data"]["report"]).read_text()
    assert "Instance 201 ran part of this run, but its job.log never came home" in text
    assert "the steps before 41 are missing here" in text
    assert f"Duration: {report.duration(int(t0 + 1100) - (t0 + 70))} (the whole run" in text  # from 201's run record


def started_line(experiment: str, at: float) -> str:
    """The wrapper's first line in job.log (templates/run.sh.j2)."""
    return f"vasticlaude: run {experiment} started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(at))} resume=0"


def test_an_earlier_run_without_a_recovery_in_between_is_not_joined(project, monkeypatch, capsys):
    """A second `run` after the first ended is a new run: its report is its own, also where the
    instance's job.log still holds the first run's output."""
    t0 = time.time() - 3600
    add_instance(301, "exp3", t0, running_for=1000)
    with state.experiment("exp3") as exp:
        exp["runs"] = [{"at": t0 + 70, "instance_id": 301, "command": "python a.py"},
                       {"at": t0 + 700, "instance_id": 301, "command": "python b.py"}]
    first = started_line("exp3", t0 + 69) + "\n" + "".join(f"step {s} loss=9.0\n" for s in range(1, 30))
    put_run_files(project, "exp3", first + started_line("exp3", t0 + 699) + "\n" + job_log(1, 10),
                  started=t0 + 699, ended=t0 + 760, exit_code=0)
    seen = charted(monkeypatch)
    code, envelope = run_report(capsys, "--experiment", "exp3", "--offline")
    text = Path(envelope["data"]["report"]).read_text()
    assert code == 0 and "Duration: 1m 01s\n" in text and "the whole run" not in text
    loss = seen["metrics.png"]["series"]["loss"]
    assert [x for x, _ in loss] == [float(s) for s in range(1, 11)] and 9.0 not in [y for _, y in loss]


def test_ssh_tail_of_the_new_instance_joins_the_kept_log_of_the_old(project, recovered, monkeypatch, capsys):
    """202 still runs and nothing of it was pulled: its tail comes over SSH, 201's from the kept copy."""
    t0 = recovered["t0"]
    put_run_files(project, "exp2", job_log(1, 43), started=t0 + 69)
    run_report(capsys, "--experiment", "exp2", "--offline")          # keeps 201's copy
    (project / ".vasticlaude" / "runs" / "exp2" / "run" / "job.log").unlink()
    state.upsert_instance(202, status="running", destroyed_at=None)
    monkeypatch.setattr(report, "target_ready", lambda: True)
    monkeypatch.setattr(report, "_ssh_tail", lambda exp: (job_log(55, 60).splitlines(), {"started_at": str(int(t0 + 578))}))
    seen = charted(monkeypatch)
    code, envelope = run_report(capsys, "--experiment", "exp2")
    steps = [x for x, _ in seen["metrics.png"]["series"]["loss"]]
    assert code == 0 and steps == [float(s) for s in range(1, 44)] + [float(s) for s in range(55, 61)]
    text = Path(envelope["data"]["report"]).read_text()
    assert "over SSH" in text and "step 60/80" in text and "unknown (no end recorded)" in text
    kept = project / ".vasticlaude" / "runs" / "exp2" / "logs" / "202" / "job.log"
    assert kept.read_text() == job_log(55, 60).rstrip("\n")         # what SSH showed is kept too


# ----- several nodes (up --nodes N) ------------------------------------------------------------------
@pytest.fixture
def group(project: Path) -> dict:
    """`up --nodes 3 --experiment big` run to its end: node 1's host died and it was relaunched
    (instance 42 → 43, the group restarted), node 2's job failed; every node's run files came home."""
    t0 = time.time() - 7200
    add_instance(41, "big-n0", t0, running_for=3000)
    add_instance(42, "big-n1", t0, running_for=1000, gpu_dph=0.5)
    add_instance(43, "big-n1", t0 + 1200, running_for=1800, gpu_dph=0.6)
    add_instance(44, "big-n2", t0, running_for=3000, gpu_dph=0.3)
    add_instance(99, "other", t0, running_for=60)
    with state.experiment("big") as exp:
        exp.update(command="python train.py --epochs 3", budget_usd=9, runs=[{"at": t0 + 100, "command": "python train.py"}],
                   nodes={"count": 3, "members": ["big-n0", "big-n1", "big-n2"], "cluster_id": 7, "port": 29500,
                          "overlay": "vc-big-abc123"},
                   recoveries=[{"at": t0 + 1300, "node": 1, "kind": "host_offline", "from_instance": 42,
                                "to_instance": 43, "seconds": 95.0}])
    state.append_event("big", "nodes", count=3, cluster_id=7, overlay="vc-big-abc123")
    state.append_event("big", "group_restart", node=1, kind="host_offline", from_instance=42, to_instance=43)
    with state.experiment("big-n1") as exp:
        exp["recoveries"] = [{"at": t0 + 1250, "kind": "host_offline", "action": "relaunch", "from_instance": 42,
                              "to_instance": 43, "ok": True, "seconds": 80.0}]
    state.append_event("big-n1", "created", instance_id=43, offer_id=7)
    for rank, code in enumerate([0, 0, 1]):
        pulled_log(project, f"big-n{rank}", exit_code=code, start=t0 + 100)
    return {"t0": t0}


def test_report_of_several_nodes_is_one_report(project, group, capsys):
    code, envelope = run_report(capsys, "--experiment", "big", "--offline")
    data = envelope["data"]
    assert code == 0 and data["experiment"] == "big" and data["report"].endswith("/runs/big/report.md")
    records = [r for r in state.load()["instances"].values() if r["experiment"].startswith("big-")]
    costs = {r["id"]: costing.instance_cost(r) for r in records}
    total = sum(c["total_usd"] for c in costs.values())
    assert len(costs) == 4 and data["total_usd"] == pytest.approx(total)
    assert data["exit_code"] == 0 and data["failed_nodes"] == ["big-n2"]        # rank 0's exit, and who failed
    assert [(n["experiment"], n["exit_code"], n["instances"]) for n in data["nodes"]] == \
        [("big-n0", 0, [41]), ("big-n1", 0, [42, 43]), ("big-n2", 1, [44])]
    text = Path(data["report"]).read_text()
    assert "| Nodes | 3 (`up --nodes`): big-n0, big-n1, big-n2 |" in text
    for iid, node in [(41, "big-n0"), (42, "big-n1"), (43, "big-n1"), (44, "big-n2")]:
        assert f"| {node} | {iid} | RTX 4090 |" in text                            # the instances table
        assert f"| {node} | {iid} | " in text.split("## Cost")[1] and report.usd(costs[iid]["total_usd"]) in text
    assert "| 99 |" not in text
    assert f"| Total | {report.usd(total)} |" in text and "$9.0000" in text and report.usd(9 - total) in text
    assert "0 (success) on rank 0; failed: big-n2 (exit 1)" in text
    assert "| big-n2 | 2 | 44 | 1 (failed) |" in text and "| big-n1 | 1 | 42, 43 | 0 (success) |" in text
    assert "big-n1: host_offline | relaunch, then the group restarted | 42 → 43" in text   # once, from the node
    assert text.count("42 → 43") == 1
    assert report.usd(costs[42]["total_usd"]) + " (" in text                    # what the dead host cost
    assert "| group_restart |" in text and "node=big-n1, instance_id=43" in text  # the group's and the nodes' events
    for rank in range(3):
        assert f"- big-n{rank}: Run files (job.log, exit_code, started_at, ended_at) in `" in text
    assert "LAST LINE exit=0" in text and "](metrics.png)" in text               # rank 0's log and metrics
    human = cli_report.human(data)
    assert "job exit code 0 (rank 0 of 3 nodes) · failed: big-n2 (1)" in human


def test_one_node_is_still_reported_alone_and_a_node_is_reported_as_its_group(project, group, capsys):
    code, envelope = run_report(capsys, "--experiment", "big-n1", "--offline")
    data = envelope["data"]
    records = [r for r in state.load()["instances"].values() if r["experiment"] == "big-n1"]
    assert code == 0 and data["experiment"] == "big-n1" and "nodes" not in data
    assert data["total_usd"] == pytest.approx(sum(costing.instance_cost(r)["total_usd"] for r in records))
    text = Path(data["report"]).read_text()
    assert "| 42 | RTX 4090 |" in text and "| 43 | RTX 4090 |" in text and "| 41 |" not in text and "Node |" not in text
    state.append_event("big-n2", "note", text="the newest activity is a node's")
    code, envelope = run_report(capsys, "--offline")
    assert code == 0 and envelope["data"]["experiment"] == "big"

"""`vasticlaude report` and the pure-Python PNG charts it draws: fast, no sandbox, no network.

PNGs are checked by decoding them here (signature, CRCs, IHDR, IDAT pixels), not by
trusting the encoder; reports are built from hand-made state exactly as the other
commands write it (state.upsert_instance, state.append_event, state.experiment).
"""
from __future__ import annotations

import json
import math
import struct
import time
import zlib
from pathlib import Path

import pytest

from vasticlaude import chart, cli, costing, report, state

pytestmark = pytest.mark.unit  # pure: no sandbox, SSH or Claude Code

WHITE = (255, 255, 255)


# ----- a small PNG decoder (only what chart.py writes: 8-bit RGB, filter 0) ------------------
def decode_png(data: bytes) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"CRC of {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, ctype, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * 3 + 1
    assert len(raw) == stride * height
    rows = []
    for y in range(height):
        line = raw[y * stride:(y + 1) * stride]
        assert line[0] == 0, "filter type 0"
        rows.append([tuple(line[1 + 3 * x:4 + 3 * x]) for x in range(width)])
    return width, height, rows


def colours_in(rows, box: tuple[int, int, int, int] | None = None) -> set:
    left, top, right, bottom = box or (0, 0, len(rows[0]) - 1, len(rows) - 1)
    return {rows[y][x] for y in range(top, bottom + 1) for x in range(left, right + 1)}


# ----- charts ------------------------------------------------------------------------------------
def test_chart_is_a_valid_png_with_one_colour_per_series():
    series = {"loss": [(i, 2 * math.exp(-i / 50)) for i in range(200)],
              "val_loss": [(i, 2.2 * math.exp(-i / 60) + 0.1) for i in range(0, 200, 20)],
              "acc": [(i, 1 - math.exp(-i / 40)) for i in range(200)]}
    width, height, rows = decode_png(chart.line_chart(series, "Metrics", "step", "value"))
    assert (width, height) == (640, 360)
    plot_area = colours_in(rows, (width // 5, height // 4, width * 3 // 5, height * 3 // 4))
    assert plot_area - {WHITE}, "something is drawn inside the plot area"
    everywhere = colours_in(rows)
    for colour in chart.PALETTE[:3]:
        assert colour in everywhere
    assert chart.PALETTE[3] not in everywhere  # exactly one colour per series


def test_chart_size_is_honoured():
    width, height, _ = decode_png(chart.line_chart({"a": [(0, 0), (1, 1)]}, "t", "x", "y", width=300, height=200))
    assert (width, height) == (300, 200)


@pytest.mark.parametrize("series", [
    {}, {"a": []}, {"a": [(float("nan"), 1), (1, float("inf"))]}, {"a": [("x", None)]},
], ids=["no-series", "empty-series", "non-finite", "non-numeric"])
def test_chart_without_data_says_so(series):
    _, _, rows = decode_png(chart.line_chart(series, "Cost", "minutes", "USD"))
    seen = colours_in(rows)
    assert seen - {WHITE}, "title, frame and the NO DATA text are drawn"
    assert not seen & set(chart.PALETTE)


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
    _, _, rows = decode_png(chart.line_chart(series, "Edge case", "x", "y"))
    seen = colours_in(rows)
    for n in range(len(series)):
        assert chart.PALETTE[n] in seen


def test_more_series_than_colours_still_renders():
    series = {f"s{n}": [(0, n), (1, n + 1)] for n in range(14)}
    _, _, rows = decode_png(chart.line_chart(series, "Many", "x", "y"))
    assert set(chart.PALETTE) <= colours_in(rows)


def test_axis_covers_the_data_with_few_round_ticks():
    for lo, hi in [(0, 1), (-0.12, 2.5), (3, 3), (1e-3, 1e12), (-7, -2), (0.001, 0.0013)]:
        axis = chart.nice_axis(lo, hi)
        assert axis.lo <= min(lo, hi) and axis.hi >= max(lo, hi)
        assert 2 <= len(axis.ticks) <= 8
        labels = [chart.tick_label(t, axis.step) for t in axis.ticks]
        assert len(set(labels)) == len(labels), labels
        assert all(len(label) <= 9 for label in labels)
    assert chart.tick_label(-0.0, 0.5) == "0"


def test_font_has_the_glyphs_a_report_needs():
    needed = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_:/$%() "
    assert set(needed) <= set(chart.GLYPHS)
    assert all(len(rows) == 7 and all(0 <= r < 32 for r in rows) for rows in chart.GLYPHS.values())


def test_write_chart_creates_folders(tmp_path):
    path = chart.write_chart(tmp_path / "a" / "b" / "c.png", {"s": [(0, 1), (1, 2)]}, "T", "x", "y")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pillow_reads_the_png_too():
    """A second opinion when Pillow happens to be installed (it comes with vastai)."""
    image_module = pytest.importorskip("PIL.Image")
    import io
    image = image_module.open(io.BytesIO(chart.line_chart({"a": [(0, 1), (1, 3)]}, "T", "x", "y")))
    image.load()
    assert image.size == (640, 360) and image.mode == "RGB"


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
        width, _, rows = decode_png(Path(path).read_bytes())
        assert width == 640 and chart.PALETTE[0] in colours_in(rows)


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
    _, _, rows = decode_png(Path(envelope["data"]["charts"][0]).read_bytes())
    assert not colours_in(rows) & set(chart.PALETTE)   # the "no data" chart


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

    from vasticlaude import templates
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

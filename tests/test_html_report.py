"""The pipeline's HTML page: every section, embedded pictures only, escaped user strings, the
fallbacks (epochs.jsonl, ultralytics' results.csv, a drawn chart), and headless Chromium."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from toolkit.report.html_report import SECTION_IDS, render_pipeline_report, write_pipeline_report
from toolkit.report.html_text import NOT_RUN

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
EVIL = '<script>alert("x")</script> & "quotes"'


def png_bytes(width: int = 8, height: int = 6, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid RGB PNG, made by hand (no imaging library)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class Page(HTMLParser):
    """What a browser would see: ids of sections, pictures, links, scripts and the text of each section."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []
        self.svg_shapes: dict[str, dict[str, int]] = {}
        self._current: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self._current = attrs.get("id")
            self.sections[self._current] = ""
            self.svg_shapes[self._current] = {}
        if self._current and tag in ("polyline", "rect", "circle", "img", "svg"):
            shapes = self.svg_shapes[self._current]
            shapes[tag] = shapes.get(tag, 0) + 1
        for name, value in attrs.items():
            if name == "src":
                self.srcs.append(value or "")
            if name == "href":
                self.hrefs.append(value or "")

    def handle_endtag(self, tag):
        if tag == "section":
            self._current = None

    def handle_data(self, data):
        if self._current:
            self.sections[self._current] += data


def full_data(tmp_path: Path) -> dict:
    (tmp_path / "analyze_weekly.png").write_bytes(png_bytes(rgb=(230, 159, 0)))
    chart = tmp_path / "compare_chart.png"
    chart.write_bytes(png_bytes(rgb=(0, 114, 178)))
    extra = tmp_path / "analyzer weeks.png"
    extra.write_bytes(png_bytes(rgb=(0, 158, 115)))
    per_class = lambda base: {c: {"ap50": round(base + 0.05 * i, 3), "ap50_95": round(base / 2 + 0.03 * i, 3)}  # noqa: E731
                                 for i, c in enumerate(CLASSES)}
    return {
        "title": "Retraining run 20260301-020000",
        "generated_at": "2026-03-01T02:14:00Z",
        "root": tmp_path / "plant & line <3>",  # a Path, as a careless caller might pass
        "decision": "promoted",
        "reasons": ["candidate mAP50 0.786 beats production 0.696 by +0.090", EVIL],
        "production": {"version": "1.1", "path": str(tmp_path / "yolov8_model.pt"), "sha256": "ab" * 32},
        "previous_version": "1.0",
        "dry_run": False,
        "timings": {"analyze": 1.2, "prepare": 14.0, "train": 252.4, "compare": 31.0, "promote": 0.4},
        "stages": {
            "analyze": {"records": 1200, "skipped_records": 3, "exported": 40, "report": "r/analyze.json",
                        "priorities": [{"class": "crazing", "score": 0.81, "images_needed": 120,
                                        "reasons": ["recall 0.41 on reviewed images", EVIL]},
                                       {"class": "patches", "score": 0.44, "images_needed": 30,
                                        "reasons": ["many false positives"]}],
                        "classes": {"crazing": {"recall": 0.41, "false_positives": 3, "drift": None},
                                    "patches": {"recall": 0.9, "false_positives": 92, "drift": {"weeks": 3}}},
                        "plots": [str(tmp_path / "analyze_weekly.png")]},
            "prepare": {"dataset_version": 3, "images": {"train": 1440, "val": 180, "test": 180},
                        "boxes_per_class": {c: 400 + i for i, c in enumerate(CLASSES)}, "added": 120,
                        "duplicates": 4, "report": "r/prepare.json",
                        "rejected": [{"path": "D:/batch/<bad>&name.jpg", "reason": "corrupt JPEG"}]
                        + [{"path": f"D:/batch/x{i}.jpg", "reason": "unknown class"} for i in range(60)]},
            "train": {"run_dir": str(tmp_path / "run"), "best": str(tmp_path / "run/weights/best.pt"),
                      "epochs_completed": 3, "epochs_planned": 3, "seconds": 252.4, "stop_reason": "completed",
                      "metrics": {"map50": 0.786, "map50_95": 0.453, "precision": 0.74, "recall": 0.71},
                      "epochs": [{"epoch": e, "map50": 0.5 + 0.1 * e, "map50_95": 0.3 + 0.05 * e,
                                  "precision": 0.6 + 0.05 * e, "recall": 0.55 + 0.05 * e,
                                  "box_loss": 2.0 - 0.3 * e, "cls_loss": 3.0 - 0.5 * e} for e in (1, 2, 3)]},
            "compare": {"split": "test", "images": 180, "winner": str(tmp_path / "run/weights/best.pt"),
                        "chart": str(chart), "report": "r/compare.json",
                        "models": [{"path": str(tmp_path / "yolov8_model.pt"), "role": "production",
                                    "map50": 0.696, "map50_95": 0.376, "precision": 0.66, "recall": 0.64,
                                    "per_class": per_class(0.5), "ms_per_image": 41.5},
                                   {"path": str(tmp_path / "run/weights/best.pt"), "role": "candidate",
                                    "map50": 0.786, "map50_95": 0.453, "precision": 0.74, "recall": 0.71,
                                    "per_class": per_class(0.6), "ms_per_image": 40.9,
                                    "gain": 0.09, "ci95": [0.05, 0.13]}],
                        "decision": {"promote": True, "reasons": ["gain above 0.01 with 95% confidence"],
                                     "gain": 0.09, "ci95": [0.05, 0.13], "metric": "map50"}},
            "promote": {"version": "1.1", "file": "yolov8_v1.1.pt", "sha256": "ab" * 32, "parent": "1.0"},
        },
        "images": {"Detections per week <from the analyzer>": str(extra)},
        "history": [{"version": "1.0", "sha256": "cd" * 32, "promoted_at": "2026-02-01T02:00:00Z",
                     "metrics": {"map50": 0.696, "map50_95": 0.376}, "dataset_version": 1,
                     "reasons": ["first production model"]},
                    {"version": "1.1", "sha256": "ab" * 32, "promoted_at": "2026-03-01T02:14:00Z",
                     "metrics": {"map50": 0.786, "map50_95": 0.453}, "dataset_version": 3, "reasons": [EVIL]}],
    }


def assert_self_contained(text: str, page: Page) -> None:
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert all(src.startswith("data:image/") for src in page.srcs), page.srcs
    for ref in page.srcs + page.hrefs:
        assert not ref.lower().startswith(("http://", "https://", "//", "file:")), ref
    assert "url(" not in text  # no CSS fetches (fonts, backgrounds)


def test_full_report_has_every_section_embeds_its_pictures_and_escapes_user_strings(tmp_path):
    data = full_data(tmp_path)
    text = render_pipeline_report(data)
    page = Page(text)
    assert set(SECTION_IDS) <= set(page.sections)
    assert "images" in page.sections
    assert_self_contained(text, page)
    chart_uri = "data:image/png;base64," + base64.b64encode(Path(data["stages"]["compare"]["chart"]).read_bytes()).decode()
    extra_uri = "data:image/png;base64," + base64.b64encode(Path(data["images"]["Detections per week <from the analyzer>"]).read_bytes()).decode()
    assert page.srcs.count(chart_uri) == 1 and page.srcs.count(extra_uri) == 1
    weekly_uri = "data:image/png;base64," + base64.b64encode((tmp_path / "analyze_weekly.png").read_bytes()).decode()
    assert page.srcs.count(weekly_uri) == 1 and page.svg_shapes["priorities"]["img"] == 1
    assert "false positives" in page.sections["priorities"] and "drift" not in page.sections["priorities"]
    # escaped: the browser shows the user's text as text, and no tag of it exists
    assert "<script>" not in text and "&lt;script&gt;" in text
    # the run's reasons are listed once, in the summary (issue 18: they were shown four times)
    assert EVIL in page.sections["summary"] and EVIL not in page.sections["decision"]
    assert EVIL in page.sections["priorities"] and EVIL in page.sections["versions"]
    assert "D:/batch/<bad>&name.jpg" in page.sections["dataset"]
    assert "plant & line <3>" in text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    for sid in ("priorities", "dataset", "training", "comparison", "chart"):
        assert NOT_RUN not in page.sections[sid]
    # the figures themselves
    assert "PROMOTED" in page.sections["summary"] and "1.1" in page.sections["summary"]
    assert "0.786" in page.sections["training"] and "0.696" in page.sections["comparison"]
    assert "+0.090" in page.sections["comparison"] and "[+0.050, +0.130]" in page.sections["decision"]
    assert all(c in page.sections["comparison"] for c in CLASSES)
    assert "and 36 more" in page.sections["dataset"]  # 61 rejected, 25 shown
    assert page.svg_shapes["training"]["polyline"] == 6  # 4 metrics + 2 losses, one line each
    assert page.svg_shapes["chart"].get("img") == 1 and "svg" not in page.svg_shapes["chart"]
    assert "yolov8_v1.1.pt" in page.sections["decision"]


def test_minimal_report_says_which_stages_did_not_run(tmp_path):
    text = render_pipeline_report({"decision": "skipped", "reasons": ["no new batch since the last run"]})
    page = Page(text)
    assert set(SECTION_IDS) <= set(page.sections)
    assert_self_contained(text, page)
    for sid in ("priorities", "dataset", "training", "comparison", "chart"):
        assert NOT_RUN in page.sections[sid], sid
    assert NOT_RUN in page.sections["decision"]  # promote did not run either
    assert "SKIPPED" in page.sections["summary"] and "no new batch" in page.sections["summary"]
    assert "no versions recorded yet" in page.sections["versions"]
    assert Page(render_pipeline_report({})).sections.keys() >= set(SECTION_IDS)


def test_a_skipped_stage_shows_why(tmp_path):
    data = {"decision": "kept", "stages": {"promote": {"skipped": "the comparator did not approve the candidate"},
                                           "analyze": {"skipped": "no memory bank"}}}
    page = Page(render_pipeline_report(data))
    assert "the comparator did not approve the candidate" in page.sections["decision"]
    assert "no memory bank" in page.sections["priorities"]


def test_training_curves_come_from_epochs_jsonl_when_the_result_has_none(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [{"epoch": e, "epochs": 4, "losses": {"box_loss": 2 - 0.2 * e, "cls_loss": 3 - 0.4 * e, "dfl_loss": 1.5},
                "map50": 0.2 * e, "map50_95": 0.1 * e, "precision": None, "recall": 0.15 * e} for e in (1, 2, 3, 4)]
    (run_dir / "epochs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + '\n{"epoch": 5, "map')
    train = {"run_dir": str(run_dir), "epochs_completed": 4, "metrics": {"map50": 0.8}}
    page = Page(render_pipeline_report({"stages": {"train": train}}))
    shapes = page.svg_shapes["training"]
    assert shapes["svg"] == 2 and shapes["polyline"] == 3 + 3  # precision is all None: no line
    assert shapes["circle"] == 4 * 3 + 4 * 3
    assert "no per-epoch records" not in page.sections["training"]
    page = Page(render_pipeline_report({"stages": {"train": {"run_dir": str(tmp_path / "gone")}}}))
    assert "no per-epoch records" in page.sections["training"]


def test_training_curves_from_a_real_ultralytics_results_csv(tiny_model):
    from toolkit.report.html_report import epoch_records

    run_dir = tiny_model.parent.parent
    assert (run_dir / "results.csv").is_file() and not (run_dir / "epochs.jsonl").exists()
    records = epoch_records({"run_dir": str(run_dir)})
    assert [r["epoch"] for r in records] == [1.0]
    assert all(isinstance(records[0][k], float) for k in ("map50", "map50_95", "precision", "recall", "box_loss"))
    page = Page(render_pipeline_report({"stages": {"train": {"run_dir": str(run_dir)}}}))
    assert page.svg_shapes["training"]["svg"] == 2 and page.svg_shapes["training"]["circle"] == 4 + 3


def test_per_class_chart_is_drawn_when_the_comparators_png_is_missing(tmp_path):
    data = full_data(tmp_path)
    data["stages"]["compare"]["chart"] = str(tmp_path / "deleted.png")
    page = Page(render_pipeline_report(data))
    shapes = page.svg_shapes["chart"]
    assert "img" not in shapes and shapes["svg"] == 1
    assert shapes["rect"] == len(CLASSES) * 2 + 2 + 1  # bars, legend swatches, frame
    assert all(c in page.sections["chart"] for c in CLASSES)


def test_one_malformed_stage_costs_only_its_own_section(tmp_path):
    data = full_data(tmp_path)
    data["stages"]["compare"]["models"][0]["per_class"] = {"crazing": 0.5}  # not {ap50, ap50_95}
    page = Page(render_pipeline_report(data))
    assert "could not be drawn" in page.sections["comparison"]
    assert "could not be drawn" not in page.sections["training"] and "0.786" in page.sections["training"]


def test_write_pipeline_report_writes_the_page(tmp_path):
    dest = tmp_path / "reports" / "pipeline_x.html"
    assert write_pipeline_report(dest, full_data(tmp_path)) == dest
    text = dest.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and set(SECTION_IDS) <= set(Page(text).sections)
    assert [p.name for p in dest.parent.iterdir()] == ["pipeline_x.html"]  # no temp file left


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_headless_chromium_shows_every_section(tmp_path):
    page_path = write_pipeline_report(tmp_path / "report dir" / "pipeline.html", full_data(tmp_path))
    shot = tmp_path / "shot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000"]
    dom = subprocess.run(flags + ["--dump-dom", page_path.as_uri()], capture_output=True, timeout=120)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    rendered = Page(dom.stdout.decode("utf-8", "replace"))
    assert set(SECTION_IDS) <= set(rendered.sections)
    assert EVIL in rendered.sections["summary"] and "script" not in rendered.tags
    assert rendered.svg_shapes["training"]["polyline"] == 6 and rendered.svg_shapes["chart"]["img"] == 1
    done = subprocess.run(flags + [f"--screenshot={shot}", page_path.as_uri()], capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    import cv2

    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (3000, 1200)
    assert picture.std() > 10  # drawn on, not a blank page


def test_promotion_and_verdict_tables_show_rounded_figures_not_raw_json(tmp_path):
    data = full_data(tmp_path)
    data["stages"]["promote"] = {"version": "1.1", "sha256": "ab" * 32,
                                 "metrics": {"map50": 0.7864123456789012, "map50_95": 0.45312345678901234}}
    section = Page(render_pipeline_report(data)).sections["decision"]
    assert "0.786" in section and "0.453" in section
    assert "0.7864123" not in section and "0.4531234" not in section
    assert "{" not in section and '"map50"' not in section


def test_history_says_which_split_each_versions_figures_come_from(tmp_path):
    data = full_data(tmp_path)
    data["history"][0]["metrics"]["split"] = "val"
    data["history"][1]["metrics"].update(split="test", imgsz=96)
    section = Page(render_pipeline_report(data)).sections["versions"]
    assert "scored on" in section
    assert "val split" in section and "test split, 96 px" in section
    assert "not comparable" in section  # two different splits in one table get a caveat
    data["history"][0]["metrics"]["split"] = "test"
    data["history"][0]["metrics"]["imgsz"] = 96
    # the same split name at the same size, but dataset versions 1 and 3: each import grew the test split
    assert "not comparable" in Page(render_pipeline_report(data)).sections["versions"]
    data["history"][0]["dataset_version"] = 3
    assert "not comparable" not in Page(render_pipeline_report(data)).sections["versions"]


def test_reasons_appear_once_and_the_promotion_table_speaks_words(tmp_path):
    data = full_data(tmp_path)
    data["reasons"] = ["mAP50-95 rose +0.020 (0.446 -> 0.466), at least the required 0.005"]
    data["history"][1]["reasons"] = list(data["reasons"])
    data["stages"]["compare"]["decision"]["reasons"] = list(data["reasons"])
    data["stages"]["promote"] = {"version": "1.1", "registered_at": "2026-03-01T02:14:00Z", "run_dir": "/r/run",
                                 "metrics": {"map50": 0.786, "map50_95": 0.453}, "reasons": list(data["reasons"])}
    page = Page(render_pipeline_report(data))
    text = "".join(page.sections.values())
    assert text.count("rose +0.020") == 1, text
    decision = page.sections["decision"]
    for raw in ("registered_at", "run_dir", "map50_95", "2026-03-01T02:14:00Z"):
        assert raw not in decision, raw
    assert "registered" in decision and "2026-03-01 02:14 UTC" in decision and "mAP50-95 0.453" in decision
    assert "2026-02-01 02:00 UTC" in page.sections["versions"]


def test_priorities_say_they_come_from_before_this_runs_import(tmp_path):
    section = Page(render_pipeline_report(full_data(tmp_path))).sections["priorities"]
    assert "before this run's import" in section


def test_no_production_model_reads_no_model_promoted(tmp_path):
    data = full_data(tmp_path)
    data.update(decision="kept", production={"version": None, "path": str(tmp_path / "yolov8_model.pt"),
                                             "sha256": None}, previous_version=None)
    summary = Page(render_pipeline_report(data)).sections["summary"]
    assert "NO MODEL PROMOTED" in summary and "KEPT" not in summary and "none yet" in summary


def test_markdown_of_reasons_reads_as_plain_text_and_still_escapes_what_could_render():
    from toolkit.core.reports import md

    reason = "mAP50-95 rose +0.020 (0.446 -> 0.466); its 95% bootstrap interval [+0.004, +0.037] lies above zero"
    assert md(reason) == reason
    assert md("[x](http://e)") == "[x\\](http://e)" and md("<b>") == "&lt;b&gt;" and md("> q") == "\\> q"


def test_analyzer_charts_get_captions_that_say_what_they_show(tmp_path):
    data = full_data(tmp_path)
    text = render_pipeline_report(data)
    assert "Week by week: mean confidence" in Page(text).sections["priorities"]
    assert "analyze weekly" not in text  # the file stem is no caption


def test_the_comparators_chart_legend_covers_no_bar():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from model_comparator import chart_figure

    entries = [{"role": role, "path": f"/m/{role}.pt", "map50": 0.9,
                "per_class": {c: {"ap50": 1.0} for c in CLASSES}} for role in ("production", "candidate")]
    fig = chart_figure(entries, tuple(CLASSES), "test")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (ax,) = fig.axes
    legend_box = fig.legends[0].get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 2 * len(CLASSES)
    assert not any(legend_box.overlaps(bar) for bar in bars)
    assert not legend_box.overlaps(ax.get_window_extent(renderer))


# ---------------------------------------------------------------------------------------------- issue 27
def _epochs(run_dir: Path, n: int, base: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "epochs.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "map50": base + 0.1 * e, "map50_95": base / 2 + 0.05 * e, "precision": 0.5, "recall": 0.5,
         "losses": {"box_loss": 2.41 - 0.3 * e, "cls_loss": 1.6 - 0.1 * e}}) + "\n" for e in range(1, n + 1)))


def both_routes_data(tmp_path: Path) -> dict:
    data = full_data(tmp_path)
    runs = tmp_path / "training" / "runs"
    fine, scratch = runs / "20261206-0100-pipeline-finetune", runs / "20261206-0100-pipeline-scratch"
    _epochs(fine, 3, 0.3)
    _epochs(scratch, 4, 0.1)
    train = data["stages"]["train"]
    train.pop("epochs")
    train.update(run_dir=str(fine), best=str(fine / "weights" / "best.pt"), seconds=57.0)
    train["strategy"] = {
        "requested": "auto", "strategy": "both", "chosen": "finetune", "metric": "map50_95",
        "reason": "auto: both routes fit a night (8h00m; no training.time_limit set): about 2m00s one after the "
                  "other (measured on this machine ...); training both", "evidence": {"production": True},
        "candidates": [
            {"route": "finetune", "path": str(fine / "weights" / "best.pt"), "run_dir": str(fine), "epochs": 3,
             "seconds": 57.0, "val": {"map50_95": 0.453}, "chosen_on_val": True,
             "test": {"map50": 0.786, "map50_95": 0.453}, "passes": True, "promoted": True},
            {"route": "scratch", "path": str(scratch / "weights" / "best.pt"), "run_dir": str(scratch), "epochs": 4,
             "seconds": 64.0, "val": {"map50_95": 0.301}, "chosen_on_val": False, "test": None, "passes": None,
             "promoted": False}]}
    data["timings"]["train"] = 121.0
    return data


def test_both_routes_are_shown_with_their_times_curves_and_a_plain_reason(tmp_path):
    page = Page(render_pipeline_report(both_routes_data(tmp_path)))
    training = page.sections["training"]
    assert "fine-tune" in training and "from scratch" in training
    assert "57.0s" in training and "1m04s" in training and "2m01s" in training  # each route and both together
    assert "Curves of the fine-tune model" in training and "Curves of the from scratch model" in training
    assert page.svg_shapes["training"]["svg"] == 4  # metrics and losses of each route
    # the reason in a plant engineer's words first, the toolkit's own reasoning kept as a detail
    assert "Two models were trained, because both fitted in the time available" in training
    assert "scored better on the validation images (mAP50-95 0.453 against 0.301)" in training
    assert training.index("Two models were trained") < training.index("The toolkit's reasoning: auto:")


def test_axis_ticks_are_round_numbers(tmp_path):
    from toolkit.report.svg_charts import line_chart_svg, nice_ticks

    assert nice_ticks(0.0, 2.41) == ([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], 1)
    assert nice_ticks(0.0, 1.0) == ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1)
    svg = line_chart_svg({"box_loss": [(1, 2.41), (2, 0.8)]}, "losses", "loss")
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)  # the y axis
    assert labels == ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"], labels


def test_paths_wrap_only_between_folders_and_counts_read_as_words(tmp_path):
    data = full_data(tmp_path)
    data["history"] = data["history"][:1]
    text = render_pipeline_report(data)
    page = Page(text)
    assert "word-break:break-all" not in text.split(".hash")[0]  # paths: never inside a name
    assert "yolov8_model.pt</span>" in text and "/<wbr>yolov8_model.pt" in text
    assert "History (1 version)" in page.sections["versions"] and "1 versions" not in text
    assert "Rejected files (61 files)" in page.sections["dataset"]


def test_a_next_steps_section_gives_complete_commands(tmp_path):
    data = full_data(tmp_path)
    data["next_steps"] = [f"Next: versions and past runs: python /opt/toolkit/training_pipeline.py --root "
                          f"{tmp_path} --status; back to version 1.0: python /opt/toolkit/training_pipeline.py "
                          f"--root {tmp_path} --rollback 1.0"]
    text = render_pipeline_report(data)
    steps = Page(text).sections["next"]
    assert "versions and past runs: python /opt/toolkit/training_pipeline.py --root" in steps
    assert steps.count("python ") == 2 and "Next:" not in steps and "--rollback 1.0" in steps
    assert text.count('<code class="cmd">') == 2
    # a hint made where `python` on PATH is not the toolkit's interpreter starts with that one's path
    data["next_steps"] = [f"Next: versions: /srv/venv/bin/python3.11 /opt/toolkit/training_pipeline.py --root {tmp_path} "
                          f'--status; back: "C:\\Program Files\\Python311\\python.exe" C:\\toolkit\\training_pipeline.py '
                          f"--root C:\\ws --rollback 1.0"]
    text = render_pipeline_report(data)
    steps = Page(text).sections["next"].replace("\u200b", "")
    assert text.count('<code class="cmd">') == 2 and '<code class="cmd">/<wbr>srv' in text
    assert "versions: /srv/venv/bin/python3.11 /opt" in steps and "back: " in steps and "--rollback 1.0" in steps
    # a page made without them still says where to look next, as a complete command
    bare = Page(render_pipeline_report({"decision": "kept", "root": str(tmp_path)})).sections["next"]
    assert f"--root {tmp_path} --status" in bare.replace("\u200b", "")


def test_a_forced_first_model_is_not_shown_as_an_approval(tmp_path):
    """Issue 27 (with issue 24's amber badge): --force is not the green PROMOTED of an approval."""
    data = full_data(tmp_path)
    data["forced"] = True
    text = render_pipeline_report(data)
    summary = Page(text).sections["summary"]
    assert "PROMOTED (FORCED)" in summary and "--force overrode a promotion rule" in summary
    assert 'class="decision promoted"' not in text.split('id="decision"')[0]
    approved = render_pipeline_report(full_data(tmp_path))
    assert 'class="decision promoted"' in approved and "FORCED" not in approved

"""Safe model loading (no code from a .pt runs), file modes that honour the umask, escaped markdown."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.core.errors import UserError

REPO = Path(__file__).resolve().parent.parent


class _RunsCode:
    """A pickle payload: unpickling it calls ``os.system`` (what a hostile .pt would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _hostile_models(folder: Path) -> list[tuple[Path, Path]]:
    """(model, marker) pairs: a torch zip checkpoint and a legacy plain pickle, both with the payload."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    zipped, legacy = folder / "evil_zip.pt", folder / "evil_legacy.pt"
    torch.save({"model": _RunsCode(folder / "marker_zip")}, zipped)
    with open(legacy, "wb") as fh:
        pickle.dump({"model": _RunsCode(folder / "marker_legacy")}, fh)
    assert not list(folder.glob("marker_*"))
    return [(zipped, folder / "marker_zip"), (legacy, folder / "marker_legacy")]


def test_hostile_checkpoint_is_refused_before_its_code_runs(tmp_path, ultralytics_config_dir):
    from toolkit.core.offline import load_checkpoint, load_yolo

    for model, marker in _hostile_models(tmp_path):
        for load in (load_yolo, load_checkpoint):
            with pytest.raises(UserError, match="refused to load") as info:
                load(model, ultralytics_config_dir)
            assert "\n" not in str(info.value)
            assert not marker.exists(), f"{load.__name__} ran code from {model.name}"
    # the payload is real: plain unpickling does run it (so the test above can fail)
    with open(tmp_path / "evil_legacy.pt", "rb") as fh:
        pickle.load(fh)
    assert (tmp_path / "marker_legacy").exists()


def test_safe_loading_still_loads_real_and_fresh_models(shared_models, tiny_model, ultralytics_config_dir):
    from toolkit.core.offline import load_checkpoint, load_yolo, model_class_names

    for name in ("neu_v1.0_half.pt", "neu_v1.1_full.pt"):
        assert model_class_names(shared_models / name, ultralytics_config_dir)[0] == "crazing"
        assert load_checkpoint(shared_models / name, ultralytics_config_dir)["train_args"]["imgsz"] == 640
    fresh = load_yolo(tiny_model, ultralytics_config_dir)  # trained in this session by ultralytics 8.4
    assert len(fresh.names) == 6
    import ultralytics.nn.tasks as tasks

    assert tasks.SAFE_LOAD is True and os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"


def _one_error_line(stderr: str) -> str:
    """The error line; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert sum("refused" in line for line in lines) == 1, stderr
    return lines[-1]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_refuses_hostile_production_and_scan_model_in_one_line(tmp_path):
    (model, marker), (legacy, legacy_marker) = _hostile_models(tmp_path / "evil")
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(model, root / "yolov8_model.pt")
    # setup reads the production model's classes: the file is refused, its code never runs
    setup = _cli(str(REPO / "setup_training.py"), "--root", str(root))
    assert setup.returncode == 1, setup.stderr
    assert _one_error_line(setup.stderr).startswith("error: refused to load")
    images = tmp_path / "images"
    images.mkdir()
    import numpy as np
    import cv2

    cv2.imwrite(str(images / "a.jpg"), np.full((64, 64, 3), 128, np.uint8))
    scan = _cli(str(REPO / "training_analyzer.py"), "--root", str(root), "--scan", str(images),
                "--scan-model", str(legacy))
    assert scan.returncode == 1, scan.stderr
    assert "refused to load" in _one_error_line(scan.stderr)
    assert not marker.exists() and not legacy_marker.exists()


def test_pipeline_refuses_hostile_candidate(tmp_path, tiny_model):
    """The issue's case: ``--candidate evil.pt`` ran the command before the error."""
    import setup_training
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    (model, marker), (legacy, legacy_marker) = _hostile_models(tmp_path / "evil")
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(tiny_model, root / "yolov8_model.pt")
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_batch(root / "training" / "incoming" / "batch_001", 20, size=64, seed=5)
    before = (root / "yolov8_model.pt").read_bytes()
    run = _cli(str(REPO / "training_pipeline.py"), "--root", str(root), "--candidate", str(model),
               "--no-analyze", "--compare-subset", "4", "--imgsz", "64")
    assert run.returncode == 1, run.stderr[-2000:]
    last = _one_error_line(run.stderr)
    assert "refused to load" in last and "evil_zip.pt" in last
    assert not marker.exists()
    assert (root / "yolov8_model.pt").read_bytes() == before
    # the pipeline imported the batch before comparing: training can start, but not from a hostile --from
    train = _cli(str(REPO / "train_yolov8.py"), "--root", str(root), "--from", str(legacy), "--epochs", "1",
                 "--imgsz", "64")
    assert train.returncode == 1, train.stderr[-2000:]
    assert "refused to load" in _one_error_line(train.stderr) and not legacy_marker.exists()


# --- permissions ---------------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_written_files_honour_the_umask(tmp_path, shared_models, umask_022):
    from toolkit.core.files import atomic_copy, atomic_write_json
    from toolkit.core.layout import Workspace
    from toolkit.promotion.registry import Registry
    from toolkit.core.reports import write_report

    ws = Workspace.at(tmp_path / "ws")
    ws.root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", ws.production_model)
    registry = Registry.load(ws)
    registry.register_existing_production()
    registry.promote(shared_models / "neu_v1.1_full.pt")
    report = write_report(ws.reports / "x.json", {"a": 1}, "# x\n")
    written = [ws.production_model, ws.production_sidecar, ws.registry, ws.models / "yolov8_v1.0.pt",
               ws.models / "yolov8_v1.1.pt", report, report.with_suffix(".md")]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: "0o644" for p in written}
    os.umask(0o027)  # a stricter site policy is honoured too, not a fixed 0644
    atomic_write_json(tmp_path / "strict.json", {})
    atomic_copy(shared_models / "neu_v1.0_half.pt", tmp_path / "strict.pt")
    assert _mode(tmp_path / "strict.json") == 0o640 and _mode(tmp_path / "strict.pt") == 0o640


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_setup_configs_honour_the_umask(tmp_path, umask_022):
    import setup_training

    result = setup_training.run(setup_training.SetupConfig(root=tmp_path, classes=("a", "b")))
    for path in (result.dataset_yaml, result.training_yaml):
        assert _mode(Path(path)) == 0o644, path


# --- markdown ------------------------------------------------------------------------------------

def _cells(row: str) -> list[str]:
    """Split a markdown table row at the pipes that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_markdown_escapes_user_strings():
    from toolkit.core.reports import markdown_table, md, md_code

    hostile = "a|b `c` <script>alert(1)</script> *x* [l](http://e) ![i](x.png) _y_ #h\nnext"
    text = md(hostile)
    assert "<script>" not in text and "&lt;script&gt;" in text and "\n" not in text
    for raw in ("*x*", "[l]", "`c`", "_y_"):
        assert raw not in text
    assert md("rolled-in_scale") == "rolled-in_scale"  # intraword underscores render as they are
    table = markdown_table(["class", "n"], [[hostile, 3], ["pitted_surface", 1.5]])
    rows = table.splitlines()
    assert [len(_cells(r)) for r in rows[2:]] == [2, 2]
    assert _cells(rows[3]) == ["pitted_surface", "1.500"]
    span = md_code("D:/a`b``c/x|y.jpg")
    assert span.startswith("```") and span.endswith("```") and "\n" not in span
    assert md_code("p|q", table=True) == "`p\\|q`"


def test_reports_escape_class_names_and_paths():
    import training_pipeline
    from toolkit.model.training import report_markdown

    classes = ["ok", "pipe|name", "<img src=x onerror=alert(1)>", "`tick`"]
    summary = {"run_dir": "/r/20260101-x", "start_from": "D:/models/a|b`c.pt", "start_mode": "path",
               "data": "/d/<data>.yaml", "classes": classes, "epochs_completed": 1, "epochs_planned": 1,
               "best": "/r/best.pt", "metrics": {}, "notes": ["new classes: <b>x</b>"]}
    text = report_markdown(summary, [], None)
    assert "<img" not in text and "<b>" not in text
    assert "`/d/<data>.yaml`" in text  # paths go in code spans, where markdown shows HTML as text
    assert "``D:/models/a|b`c.pt``" in text
    assert "pipe\\|name" in text and "\\`tick\\`" in text
    data = {"title": "Retraining run x", "decision": "kept", "production": {"version": "1.0"},
            "reasons": ["AP50 of <script>x</script> fell", "class a|b dropped"], "timings": {"train": 1.0}}
    md = training_pipeline._markdown(data)
    assert "<script>" not in md and "a\\|b" in md


def test_every_model_load_goes_through_load_yolo():
    """One door: no module but toolkit/core/offline.py unpickles a model itself (YOLO(), torch.load, ...)."""
    import ast

    loaders = {"YOLO", "load", "torch_load", "torch_safe_load", "attempt_load_one_weight", "attempt_load_weights"}
    offenders = []
    for path in sorted([*REPO.glob("*.py"), *(REPO / "toolkit").rglob("*.py")]):
        if path.relative_to(REPO).as_posix() == "toolkit/core/offline.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            owner = getattr(func.value, "id", None) if isinstance(func, ast.Attribute) else None
            if name in loaders and (name != "load" or owner in ("torch", "pickle")):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {name}()")
    assert offenders == [], f"load models through toolkit.core.offline.load_yolo instead: {offenders}"

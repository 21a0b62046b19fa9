"""The README's first command: ``training_pipeline.py --demo`` runs the whole loop on synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import training_pipeline
from toolkit.core.layout import Workspace
from toolkit.promotion.registry import Registry


@pytest.mark.slow  # the whole demo: two trainings and a comparison, about 115 CPU-s
def test_demo_runs_the_whole_loop_and_says_where_things_are(tmp_path, capsys):
    root = tmp_path / "demo"
    assert training_pipeline.main(["--demo", "--root", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ws = Workspace.at(root)
    assert result["decision"] in ("promoted", "kept")
    assert ws.production_model.is_file()
    assert Path(result["html_report"]).is_file()
    assert set(result["stages"]) == {"analyze", "setup", "prepare", "train", "compare", "promote"}
    assert result["stages"]["analyze"]["records"] == 600
    assert result["stages"]["prepare"]["added"] == 300
    versions = [v["version"] for v in Registry.load(ws).versions]
    assert versions[0] == "1.0"
    # the first model, trained from scratch on generated images, learned them (0.66 measured; 1 epoch: 0.0)
    assert Registry.load(ws).entry("1.0")["metrics"]["map50"] > 0.3
    assert result["production"]["version"] == ("1.1" if result["decision"] == "promoted" else "1.0")
    logs = sorted(ws.logs.glob("pipeline_*.log"))  # the demo keeps a log like any run
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "demo: first run" in text and "[5/6] compare" in text


def test_demo_refuses_a_root_with_a_production_model_it_did_not_make(tmp_path, capsys):
    (tmp_path / "yolov8_model.pt").write_bytes(b"the user's real model")
    assert training_pipeline.main(["--demo", "--root", str(tmp_path)]) == 1
    assert "did not make" in capsys.readouterr().err
    assert (tmp_path / "yolov8_model.pt").read_bytes() == b"the user's real model"


def test_demo_help_states_its_real_default_and_speaks_to_the_user(capsys):
    import pipeline_demo

    with pytest.raises(SystemExit):
        pipeline_demo.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: ./demo, the folder demo in the current folder)" in text and "toolkit's own folder" not in text
    assert "top level" not in text and "prepare_demo" not in text and "``" not in text


def test_the_demo_default_is_where_its_help_says(tmp_path, monkeypatch):
    """Issue 27: the help names ./demo, and ./demo is where the demo writes - the current folder's demo/."""
    from toolkit.workflow.demo import demo_root

    monkeypatch.chdir(tmp_path)
    assert demo_root() == (tmp_path / "demo").resolve()
    assert demo_root(tmp_path / "elsewhere") == (tmp_path / "elsewhere").resolve()

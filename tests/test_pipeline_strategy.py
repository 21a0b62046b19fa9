"""Issue 11 in the pipeline: --strategy both trains two candidates and the comparator picks; auto
records what it chose and why; --dry-run says what will run and about how long.

Real trainings (imgsz 64, one epoch, generated images) and real comparisons; nothing is mocked.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import dataset_preparer
import training_pipeline
from toolkit import training as tr
from toolkit.layout import Workspace
from toolkit.registry import Registry, read_history
from toolkit.synthetic import NEU_CLASSES, write_batch

FAST = dict(epochs=1, imgsz=64, batch=8, device="cpu", compare_subset=8, analyze=False)


def _lax_promotion(root: Path) -> None:
    """Rules every candidate passes, so that the choice between candidates is the metric alone."""
    path = Workspace.at(root).training_yaml
    settings = yaml.safe_load(path.read_text())
    settings["promotion"].update({"min_gain": -1.0, "require_significance": False, "max_class_drop": 1.0,
                                  "max_slowdown": 1000.0})
    path.write_text(yaml.safe_dump(settings, sort_keys=False))


@pytest.fixture
def workspace(synthetic_workspace):
    """Production = a tiny real model; one synthetic batch waiting in training/incoming (conftest)."""
    return synthetic_workspace


def test_both_trains_two_candidates_and_promotes_the_better_passing_one(workspace):
    _lax_promotion(workspace)
    result = training_pipeline.run(training_pipeline.PipelineConfig(root=workspace, strategy="both", **FAST))
    strategy = result.stages["train"]["strategy"]
    assert strategy["requested"] == "both" and strategy["strategy"] == "both"
    cands = strategy["candidates"]
    assert [c["route"] for c in cands] == ["finetune", "scratch"]
    assert Path(cands[0]["run_dir"]).name.endswith("-pipeline-finetune") and cands[0]["start_from"].endswith("yolov8_model.pt")
    assert Path(cands[1]["run_dir"]).name.endswith("-pipeline-scratch") and cands[1]["start_from"] == "yolov8n.yaml"
    assert all(c["passes"] and c["test"]["map50_95"] is not None for c in cands)
    # the comparator ranked both; the promoted one has the best test mAP50-95 (ties: the first listed)
    assert result.decision == "promoted" and sum(c["promoted"] for c in cands) == 1
    promoted = next(c for c in cands if c["promoted"])
    assert promoted["test"]["map50_95"] == max(c["test"]["map50_95"] for c in cands)
    ws = Workspace.at(workspace)
    assert ws.production_model.read_bytes() == Path(promoted["path"]).read_bytes()
    assert Registry.load(ws).production_entry()["run_dir"] == promoted["run_dir"]
    assert result.stages["train"]["run_dir"] == promoted["run_dir"]
    assert any(r.startswith("candidate finetune (") for r in result.reasons)
    assert any(r.startswith("candidate scratch (") for r in result.reasons)
    report = json.loads(Path(result.report).read_text())
    assert [c["route"] for c in report["stages"]["train"]["strategy"]["candidates"]] == ["finetune", "scratch"]
    assert read_history(ws, last=1)[0]["strategy"] == "both"


def test_auto_records_its_choice_and_reason_from_the_data_growth(workspace):
    """Production was trained on dataset v1; v2 adds a few images: auto fine-tunes and says why."""
    ws = Workspace.at(workspace)
    model = workspace.parent / "v1.pt"
    shutil.move(ws.production_model, model)
    first = dataset_preparer.run(dataset_preparer.PrepareConfig(root=workspace, incoming=True))
    # production as trained on dataset v1 (what a promotion by the pipeline records)
    Registry.load(ws).promote(model, dataset_version=first.dataset_version, classes=list(NEU_CLASSES))
    assert Registry.load(ws).production_entry()["dataset_version"] == first.dataset_version
    write_batch(ws.incoming / "batch_002", 6, size=64, seed=33, prefix="more")

    result = training_pipeline.run(training_pipeline.PipelineConfig(root=workspace, **FAST))
    strategy = result.stages["train"]["strategy"]
    assert strategy["requested"] == "auto" and strategy["strategy"] == "finetune"
    before = strategy["evidence"]["train_images_at_production"]
    assert before == first.images["train"] and strategy["evidence"]["train_images"] > before
    assert f"{before} -> {strategy['evidence']['train_images']} images" in strategy["reason"]
    assert "below 1.5x" in strategy["reason"]
    assert [c["route"] for c in strategy["candidates"]] == ["finetune"]
    assert any(r.startswith("training: auto:") for r in result.reasons)


def test_dry_run_says_the_strategy_and_about_how_long(workspace, capsys):
    before = sorted(str(p) for p in workspace.rglob("*"))
    assert training_pipeline.main(["--root", str(workspace), "--dry-run", "--json", "--epochs", "3",
                                   "--imgsz", "64", "--device", "cpu"]) == 0
    step = json.loads(capsys.readouterr().out)["stages"]["plan"]["steps"]["train"]
    # production found but no registry entry: the growth is unknown -> both, each about this long
    assert step.startswith("strategy auto -> both: train finetune (about ") and "scratch (about " in step
    assert "on cpu, workers 0, batch 16" in step and "not recorded" in step
    assert sorted(str(p) for p in workspace.rglob("*")) == before


def test_from_overrides_the_strategy(workspace):
    ws = Workspace.at(workspace)
    config, settings = training_pipeline.load_settings(
        training_pipeline.PipelineConfig(root=workspace, start_from="scratch", strategy="both"), ws)
    plan = training_pipeline._training_plan(config, settings, ws)
    assert plan.choice.routes == ("scratch",) and plan.starts == {"scratch": "scratch"}
    assert "--from scratch given" in plan.choice.reason


def test_time_limit_keeps_auto_off_routes_that_do_not_fit(workspace):
    ts = {"epochs": 100, "imgsz": 640, "arch": "yolov8n.yaml", "time_limit": 0.001, "device": "cpu",
          "workers": 0, "batch": 16}
    plan = tr.plan_training(Workspace.at(workspace), ts, machine=tr.Machine(cores=2), read_only=True)
    assert plan.choice.strategy == "finetune" and "time budget" in plan.choice.reason

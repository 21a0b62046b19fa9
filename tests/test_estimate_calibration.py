"""Issue 17: after one real training in a workspace, the estimate of a run with the same settings
comes from this machine's measurement and lands within 30% of the rerun's measured time.

Real trainings (imgsz 64, generated images, CPU); the rerun is timed here, no figure is written in.
"""
from __future__ import annotations

import pytest

import train_yolov8
import training_pipeline
from toolkit.core.config import Settings
from toolkit.core.layout import Workspace
from toolkit.model.planning import plan_training
from toolkit.core.run_history import read_history

SAME = dict(epochs=6, imgsz=64, batch=8, device="cpu")


def test_estimate_of_a_same_settings_rerun_is_within_30_percent(synthetic_workspace):
    root = synthetic_workspace
    ws = Workspace.at(root)
    first = training_pipeline.run(training_pipeline.PipelineConfig(root=root, strategy="finetune", analyze=False,
                                                                   compare_subset=8, **SAME))
    timing = read_history(ws, last=1)[0]["trainings"]
    assert len(timing) == 1 and timing[0]["route"] == "finetune" and timing[0]["imgsz"] == 64
    assert timing[0]["epochs"] == 6 and timing[0]["s_per_image_epoch"] > 0
    assert first.stages["train"]["timing"]["seconds"] == pytest.approx(first.stages["train"]["seconds"], abs=0.01)

    ts = {**Settings.load(ws.training_yaml).section("training"), **SAME, "workers": 0}
    plan = plan_training(ws, ts, strategy="finetune", read_only=True)
    assert "measured on this machine" in plan.estimate_basis and "64 px" in plan.estimate_basis
    assert "measured on this machine" in plan.describe()
    estimate = plan.estimate_s["finetune"]

    rerun = train_yolov8.run(train_yolov8.TrainConfig(root=root, start_from="production", name="rerun", workers=0,
                                                      **SAME))
    assert rerun.epochs_completed == 6
    assert abs(estimate - rerun.seconds) <= 0.30 * rerun.seconds, (estimate, rerun.seconds)

"""Issue 17: after one real training in a workspace, the estimate of a run with the same settings
comes from this machine's measurement of that training, in words the plan shows.

Real trainings (imgsz 64, generated images, CPU). How close the estimate comes to a rerun's wall
time depends on the machine's load: benchmarks/bench_estimate_rerun.py measures that ratio (issue 27: no
test asserts a timing).
"""
from __future__ import annotations

import pytest

import training_pipeline
from toolkit.core.config import Settings
from toolkit.core.layout import Workspace
from toolkit.model.machine import work_images
from toolkit.model.planning import plan_training
from toolkit.core.run_history import read_history

SAME = dict(epochs=2, imgsz=64, batch=8, device="cpu")


def test_estimate_of_a_same_settings_rerun_comes_from_this_machines_measurement(synthetic_workspace):
    root = synthetic_workspace
    ws = Workspace.at(root)
    first = training_pipeline.run(training_pipeline.PipelineConfig(root=root, strategy="finetune", analyze=False,
                                                                   compare_subset=8, **SAME))
    timing = read_history(ws, last=1)[0]["trainings"]
    assert len(timing) == 1 and timing[0]["route"] == "finetune" and timing[0]["imgsz"] == 64
    assert timing[0]["epochs"] == 2 and timing[0]["s_per_image_epoch"] > 0
    assert first.stages["train"]["timing"]["seconds"] == pytest.approx(first.stages["train"]["seconds"], abs=0.01)

    ts = {**Settings.load(ws.training_yaml).section("training"), **SAME, "workers": 0}
    plan = plan_training(ws, ts, strategy="finetune", read_only=True)
    assert "measured on this machine" in plan.estimate_basis and "64 px" in plan.estimate_basis
    assert "measured on this machine" in plan.describe()
    # the estimate is that measurement applied to the same settings: its fixed cost plus its median speed
    # per image-epoch times the same images and epochs (no wall clock of a second run is compared here)
    t = timing[0]
    work = work_images(t["train_images"], t["val_images"])
    assert plan.estimate_s["finetune"] == pytest.approx(t["setup_seconds"] + t["s_per_image_epoch"] * work * 2,
                                                        abs=0.1)  # the plan rounds to 0.1 s

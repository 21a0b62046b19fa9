"""Issue 11, training side: device-aware defaults, the time estimate, the choice of a strategy.

These are the pure decisions (a faked machine stands in for the GPUs this CPU machine lacks);
the real trainings that use them are in test_train_yolov8.py and test_training_pipeline.py.
"""
from __future__ import annotations

import pytest

from toolkit import training as tr
from toolkit.errors import UserError

H100 = tr.Gpu("NVIDIA H100 80GB HBM3", 79.1)
T4 = tr.Gpu("Tesla T4", 14.6)


def auto(**over):
    return {"device": "", "workers": "auto", "batch": "auto", "arch": "yolov8n.yaml", **over}


# ----------------------------------------------------------------------------- machine settings
def test_gpu_machine_gets_full_speed_defaults():
    values, notes = tr.resolve_machine_settings(auto(), tr.Machine(cores=16, gpus=(H100,)))
    assert values == {"device": "0", "workers": 8, "batch": 64}
    assert any("workers auto -> 8" in n for n in notes) and any("batch auto -> 64" in n for n in notes)


def test_cpu_machine_gets_cpu_defaults():
    values, notes = tr.resolve_machine_settings(auto(), tr.Machine(cores=2))
    assert values == {"device": "cpu", "workers": 0, "batch": 16}
    assert any("no CUDA GPU" in n for n in notes)


def test_few_cores_or_small_gpu_or_big_arch():
    values, _ = tr.resolve_machine_settings(auto(), tr.Machine(cores=4, gpus=(T4,)))
    assert values == {"device": "0", "workers": 3, "batch": -1}  # T4 < 16 GB: AutoBatch measures it
    values, _ = tr.resolve_machine_settings(auto(arch="yolov8l.yaml"), tr.Machine(cores=16, gpus=(H100,)))
    assert values["batch"] == -1
    values, _ = tr.resolve_machine_settings(auto(device="0,1"), tr.Machine(cores=16, gpus=(H100, H100)))
    assert values == {"device": "0,1", "workers": 7, "batch": 128}  # 8 cores per GPU, one for the trainer


def test_values_the_user_set_are_kept():
    values, notes = tr.resolve_machine_settings({"device": "cpu", "workers": 5, "batch": 32},
                                                tr.Machine(cores=16, gpus=(H100,)))
    assert values == {"device": "cpu", "workers": 5, "batch": 32} and notes == []
    values, _ = tr.resolve_machine_settings(auto(batch=0.7), tr.Machine(cores=16, gpus=(H100,)))
    assert values["batch"] == 0.7  # a share of the GPU memory stays a share


def test_a_gpu_the_machine_lacks_is_a_user_error():
    with pytest.raises(UserError, match="has 1 CUDA GPU"):
        tr.resolve_machine_settings(auto(device="1"), tr.Machine(cores=16, gpus=(H100,)))
    with pytest.raises(UserError, match="has 0 CUDA GPU"):
        tr.resolve_machine_settings(auto(device="0"), tr.Machine(cores=2))


def test_detect_machine_sees_this_machine():
    machine = tr.detect_machine()
    assert machine.cores >= 1
    import torch

    assert bool(machine.gpus) == torch.cuda.is_available()


# ----------------------------------------------------------------------------- time estimate
def test_estimate_scales_with_images_epochs_imgsz_and_device():
    cpu2 = tr.Machine(cores=2)
    base = tr.estimate_train_seconds(1440, 100, 640, "cpu", cpu2) - 10
    assert tr.estimate_train_seconds(2880, 100, 640, "cpu", cpu2) - 10 == pytest.approx(2 * base)
    assert tr.estimate_train_seconds(1440, 50, 640, "cpu", cpu2) - 10 == pytest.approx(base / 2)
    assert tr.estimate_train_seconds(1440, 100, 320, "cpu", cpu2) - 10 == pytest.approx(base / 4)
    assert tr.estimate_train_seconds(1440, 100, 640, "cpu", tr.Machine(cores=8)) - 10 == pytest.approx(base / 4)
    gpu = tr.estimate_train_seconds(1440, 50, 640, "0", tr.Machine(cores=16, gpus=(H100,)))
    assert 100 < gpu < 200  # the H100 measurement it is calibrated on: 141 s
    assert tr.estimate_train_seconds(1440, 50, 640, "0", tr.Machine(16, (H100,)), arch="yolov8s.yaml") > 2 * gpu - 30


# ----------------------------------------------------------------------------- strategy
def evidence(**over):
    values = dict(production=True, classes_changed=False, train_images=1440, train_images_at_production=720,
                  production_dataset_version=3, estimate_finetune_s=3600.0, estimate_scratch_s=3600.0,
                  time_budget_s=0.0)
    values.update(over)
    return tr.StrategyEvidence(**values)


def test_explicit_strategies_are_followed():
    for name, routes in (("finetune", ("finetune",)), ("scratch", ("scratch",)), ("both", ("finetune", "scratch"))):
        choice = tr.choose_strategy(name, evidence())
        assert choice.strategy == name and choice.routes == routes and name in choice.reason


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(UserError, match="auto, finetune, scratch, both"):
        tr.choose_strategy("finetuned", evidence())


def test_without_production_every_strategy_trains_from_scratch():
    for name in ("auto", "finetune", "both"):
        choice = tr.choose_strategy(name, evidence(production=False))
        assert choice.routes == ("scratch",) and "no production model" in choice.reason


def test_auto_big_growth_retrains_from_scratch():
    choice = tr.choose_strategy("auto", evidence())
    assert choice.requested == "auto" and choice.strategy == "scratch"
    assert "2.00x" in choice.reason and "720 -> 1440" in choice.reason
    assert choice.evidence["growth"] == 2.0


def test_auto_small_growth_fine_tunes():
    choice = tr.choose_strategy("auto", evidence(train_images=800))
    assert choice.strategy == "finetune" and "1.11x" in choice.reason


def test_auto_class_change_trains_from_scratch():
    choice = tr.choose_strategy("auto", evidence(classes_changed=True, train_images=730))
    assert choice.strategy == "scratch" and "classes differ" in choice.reason


def test_auto_unknown_growth_trains_both_within_the_budget():
    choice = tr.choose_strategy("auto", evidence(train_images_at_production=None))
    assert choice.strategy == "both" and "not recorded" in choice.reason
    choice = tr.choose_strategy("auto", evidence(train_images_at_production=None, time_budget_s=5000.0))
    assert choice.strategy == "finetune" and "time budget" in choice.reason


def test_auto_scratch_that_does_not_fit_the_budget_fine_tunes():
    choice = tr.choose_strategy("auto", evidence(estimate_scratch_s=9000.0, time_budget_s=4 * 3600.0))
    assert choice.strategy == "scratch"
    choice = tr.choose_strategy("auto", evidence(estimate_scratch_s=9000.0, time_budget_s=3600.0))
    assert choice.strategy == "finetune" and "exceeds the time budget" in choice.reason


def test_plan_warns_a_cpu_user_when_the_run_takes_more_than_a_night(tmp_path):
    from toolkit.layout import Workspace

    ts = {"epochs": 100, "imgsz": 640, "arch": "yolov8n.yaml", "time_limit": 0, "device": "", "workers": "auto",
          "batch": "auto"}
    ws = Workspace.at(tmp_path)
    ws.images_dir("train").mkdir(parents=True)
    for i in range(1440):  # NEU-DET's training split, as far as the estimate is concerned
        (ws.images_dir("train") / f"{i}.jpg").touch()
    cpu = tr.plan_training(ws, ts, strategy="scratch", machine=tr.Machine(cores=2), read_only=True)
    assert "more than a night" in cpu.describe() and cpu.estimate_s["scratch"] > 8 * 3600
    gpu = tr.plan_training(ws, ts, strategy="scratch", machine=tr.Machine(cores=16, gpus=(H100,)), read_only=True)
    assert "more than a night" not in gpu.describe() and gpu.estimate_s["scratch"] < 600
    limited = tr.plan_training(ws, {**ts, "time_limit": 8}, strategy="scratch", machine=tr.Machine(cores=2),
                               read_only=True)
    assert "more than a night" not in limited.describe()

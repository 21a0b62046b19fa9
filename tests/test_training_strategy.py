"""Issues 11 and 17, training side: device-aware defaults, the time estimate, the choice of a strategy.

These are the pure decisions (a faked machine stands in for the GPUs this CPU machine lacks);
the real trainings that use them are in test_train_yolov8.py, test_pipeline_strategy.py and
test_estimate_calibration.py.
"""
from __future__ import annotations

import pytest

from toolkit.model import machine as mc
from toolkit.model import planning as pl
from toolkit.core.errors import UserError

H100 = mc.Gpu("NVIDIA H100 80GB HBM3", 79.1)
T4 = mc.Gpu("Tesla T4", 14.6)


def auto(**over):
    return {"device": "", "workers": "auto", "batch": "auto", "arch": "yolov8n.yaml", **over}


# ----------------------------------------------------------------------------- machine settings
def test_gpu_machine_gets_full_speed_defaults():
    values, notes = mc.resolve_machine_settings(auto(), mc.Machine(cores=16, gpus=(H100,)))
    assert values == {"device": "0", "workers": 8, "batch": 64}
    assert any("workers auto -> 8" in n for n in notes) and any("batch auto -> 64" in n for n in notes)


def test_cpu_machine_gets_cpu_defaults():
    values, notes = mc.resolve_machine_settings(auto(), mc.Machine(cores=2))
    assert values == {"device": "cpu", "workers": 0, "batch": 16}
    assert any("no CUDA GPU" in n for n in notes)


def test_few_cores_or_small_gpu_or_big_arch():
    values, _ = mc.resolve_machine_settings(auto(), mc.Machine(cores=4, gpus=(T4,)))
    assert values == {"device": "0", "workers": 3, "batch": -1}  # T4 < 16 GB: AutoBatch measures it
    values, _ = mc.resolve_machine_settings(auto(arch="yolov8l.yaml"), mc.Machine(cores=16, gpus=(H100,)))
    assert values["batch"] == -1
    values, _ = mc.resolve_machine_settings(auto(device="0,1"), mc.Machine(cores=16, gpus=(H100, H100)))
    assert values == {"device": "0,1", "workers": 7, "batch": 128}  # 8 cores per GPU, one for the trainer


def test_values_the_user_set_are_kept():
    values, notes = mc.resolve_machine_settings({"device": "cpu", "workers": 5, "batch": 32},
                                                mc.Machine(cores=16, gpus=(H100,)))
    assert values == {"device": "cpu", "workers": 5, "batch": 32} and notes == []
    values, _ = mc.resolve_machine_settings(auto(batch=0.7), mc.Machine(cores=16, gpus=(H100,)))
    assert values["batch"] == 0.7  # a share of the GPU memory stays a share


def test_a_gpu_the_machine_lacks_is_a_user_error():
    with pytest.raises(UserError, match="has 1 CUDA GPU"):
        mc.resolve_machine_settings(auto(device="1"), mc.Machine(cores=16, gpus=(H100,)))
    with pytest.raises(UserError, match="has 0 CUDA GPU"):
        mc.resolve_machine_settings(auto(device="0"), mc.Machine(cores=2))


def test_detect_machine_sees_this_machine():
    machine = mc.detect_machine()
    assert machine.cores >= 1
    import torch

    assert bool(machine.gpus) == torch.cuda.is_available()


# ----------------------------------------------------------------------------- time estimate
def test_estimate_scales_with_images_epochs_imgsz_and_device():
    cpu2 = mc.Machine(cores=2)
    base = mc.estimate_train_seconds(1440, 100, 640, "cpu", cpu2) - 10
    assert mc.estimate_train_seconds(2880, 100, 640, "cpu", cpu2) - 10 == pytest.approx(2 * base)
    assert mc.estimate_train_seconds(1440, 50, 640, "cpu", cpu2) - 10 == pytest.approx(base / 2)
    assert mc.estimate_train_seconds(1440, 100, 320, "cpu", cpu2) - 10 == pytest.approx(base / 4)
    assert mc.estimate_train_seconds(1440, 100, 640, "cpu", mc.Machine(cores=8)) - 10 == pytest.approx(base / 4)
    gpu = mc.estimate_train_seconds(1440, 50, 640, "0", mc.Machine(cores=16, gpus=(H100,)))
    assert 100 < gpu < 200  # the H100 measurement it is calibrated on: 141 s
    assert mc.estimate_train_seconds(1440, 50, 640, "0", mc.Machine(16, (H100,)), arch="yolov8s.yaml") > 2 * gpu - 30


# ----------------------------------------------------------------------------- strategy
def evidence(**over):
    values = dict(production=True, classes_changed=False, train_images=1440, train_images_at_production=720,
                  production_dataset_version=3, estimate_finetune_s=3600.0, estimate_scratch_s=3600.0,
                  time_budget_s=0.0)
    values.update(over)
    return pl.StrategyEvidence(**values)


def test_explicit_strategies_are_followed():
    for name, routes in (("finetune", ("finetune",)), ("scratch", ("scratch",)), ("both", ("finetune", "scratch"))):
        choice = pl.choose_strategy(name, evidence())
        assert choice.strategy == name and choice.routes == routes and name in choice.reason


def test_unknown_strategy_is_a_user_error():
    with pytest.raises(UserError, match="auto, finetune, scratch, both"):
        pl.choose_strategy("finetuned", evidence())


def test_without_production_every_strategy_trains_from_scratch():
    for name in ("auto", "finetune", "both"):
        choice = pl.choose_strategy(name, evidence(production=False))
        assert choice.routes == ("scratch",) and "no production model" in choice.reason


def test_auto_class_change_trains_from_scratch():
    choice = pl.choose_strategy("auto", evidence(classes_changed=True, train_images=730))
    assert choice.strategy == "scratch" and "classes differ" in choice.reason


def test_auto_trains_both_when_both_fit_the_budget_whatever_the_data_growth():
    """No NEU constant: 2x growth or 1.1x, auto trains both when the machine has the time."""
    for grown in (1440, 800):
        choice = pl.choose_strategy("auto", evidence(train_images=grown, time_budget_s=3 * 3600.0))
        assert choice.strategy == "both" and "both routes fit the time budget of 3:00:00" in choice.reason
        assert "validation split" in choice.reason
    night = pl.choose_strategy("auto", evidence())  # no time_limit: a night
    assert night.strategy == "both" and "a night" in night.reason


def test_auto_without_history_fine_tunes_when_only_one_fits_and_says_it_is_the_default():
    choice = pl.choose_strategy("auto", evidence(time_budget_s=5000.0))
    assert choice.strategy == "finetune"
    assert "do not fit the time budget" in choice.reason and "no earlier 'both' run" in choice.reason
    assert "the default" in choice.reason and "training.strategy" in choice.reason


def test_auto_follows_the_routes_that_won_earlier_both_runs_when_only_one_fits():
    won = lambda route, run: {"run": run, "winner": route, "metric": "map50_95",  # noqa: E731
                              "val": {"finetune": 0.31 if route == "finetune" else 0.19,
                                      "scratch": 0.19 if route == "finetune" else 0.31}}
    scratch_won = (won("scratch", "r1"), won("scratch", "r2"), won("finetune", "r3"))
    choice = pl.choose_strategy("auto", evidence(time_budget_s=5000.0, route_history=scratch_won))
    assert choice.strategy == "scratch" and "scratch won 2 of this workspace's last 3 'both' run(s)" in choice.reason
    assert "run r3" in choice.reason and choice.evidence["route_history"] == list(scratch_won)
    # a tie goes to the latest winner
    tie = (won("scratch", "r1"), won("finetune", "r2"))
    assert pl.choose_strategy("auto", evidence(time_budget_s=5000.0, route_history=tie)).strategy == "finetune"
    # the history's winner does not fit even alone, the other does: the other
    slow_scratch = evidence(time_budget_s=5000.0, estimate_scratch_s=6000.0, route_history=scratch_won)
    choice = pl.choose_strategy("auto", slow_scratch)
    assert choice.strategy == "finetune" and "does not fit either" in choice.reason


def test_both_at_once_on_a_gpu_with_spare_cores_and_never_on_a_cpu():
    at_once, each, why = pl.concurrency(mc.Machine(cores=16, gpus=(H100,)), "0", 8)
    assert at_once and each == 7 and "both at once" in why
    assert pl.concurrency(mc.Machine(cores=2), "cpu", 0)[0] is False
    assert pl.concurrency(mc.Machine(cores=4, gpus=(H100,)), "0", 3)[0] is False  # too few cores to feed two
    assert pl.concurrency(mc.Machine(cores=16, gpus=(T4,)), "0", 8)[0] is False   # a small GPU
    # at once, both fit a budget that one-after-the-other would not
    ev = evidence(time_budget_s=6000.0, estimate_finetune_s=3600.0, estimate_scratch_s=3600.0)
    assert pl.choose_strategy("auto", ev).strategy == "finetune"
    import dataclasses

    assert pl.choose_strategy("auto", dataclasses.replace(ev, concurrent=True)).strategy == "both"


def test_plan_warns_a_cpu_user_when_the_run_takes_more_than_a_night(tmp_path):
    from toolkit.core.layout import Workspace

    ts = {"epochs": 100, "imgsz": 640, "arch": "yolov8n.yaml", "time_limit": 0, "device": "", "workers": "auto",
          "batch": "auto"}
    ws = Workspace.at(tmp_path)
    ws.images_dir("train").mkdir(parents=True)
    for i in range(1440):  # NEU-DET's training split, as far as the estimate is concerned
        (ws.images_dir("train") / f"{i}.jpg").touch()
    cpu = pl.plan_training(ws, ts, strategy="scratch", machine=mc.Machine(cores=2), read_only=True)
    assert "more than a night" in cpu.describe() and cpu.estimate_s["scratch"] > 8 * 3600
    gpu = pl.plan_training(ws, ts, strategy="scratch", machine=mc.Machine(cores=16, gpus=(H100,)), read_only=True)
    assert "more than a night" not in gpu.describe() and gpu.estimate_s["scratch"] < 600
    limited = pl.plan_training(ws, {**ts, "time_limit": 8}, strategy="scratch", machine=mc.Machine(cores=2),
                               read_only=True)
    assert "more than a night" not in limited.describe()


# ----------------------------------------------------------------------------- issue 17: the workspace's evidence
def _workspace_with_history(tmp_path, records):
    from toolkit.core.layout import Workspace
    from toolkit.core.run_history import append_history

    ws = Workspace.at(tmp_path)
    ws.images_dir("train").mkdir(parents=True)
    for i in range(300):
        (ws.images_dir("train") / f"{i}.jpg").touch()
    ws.production_model.write_bytes(b"a production model (read-only plan: never loaded)")
    for record in records:
        append_history(ws, record)
    return ws


TS = {"epochs": 15, "imgsz": 320, "arch": "yolov8n.yaml", "device": "cpu", "workers": 0, "batch": 16}


@pytest.mark.parametrize("winner", ["finetune", "scratch"])
def test_history_of_a_workspace_decides_auto_when_only_one_route_fits(tmp_path, winner):
    """The history records that one route won an earlier 'both' run: auto takes it when only one fits."""
    loser = "scratch" if winner == "finetune" else "finetune"
    ws = _workspace_with_history(tmp_path, [
        {"run": "20261201-020000", "decision": "promoted", "strategy": "both",
         "routes": {"winner": winner, "metric": "map50_95", "val": {winner: 0.311, loser: 0.194}}},
        {"run": "20261202-020000", "decision": "kept", "strategy": "finetune"}])
    machine = mc.Machine(cores=2)
    one = pl.plan_training(ws, {**TS, "time_limit": 0}, machine=machine, read_only=True).estimate_s
    hours = 1.5 * one["finetune"] / 3600  # room for one route, not for two
    plan = pl.plan_training(ws, {**TS, "time_limit": hours}, machine=machine, read_only=True)
    assert plan.choice.strategy == winner
    assert f"{winner} won 1 of this workspace's last 1 'both' run(s)" in plan.choice.reason
    assert f"{winner} 0.311, {loser} 0.194" in plan.choice.reason and "run 20261201-020000" in plan.choice.reason
    # with room for both, both are trained (and picked between on val)
    roomy = pl.plan_training(ws, {**TS, "time_limit": 3 * hours}, machine=machine, read_only=True)
    assert roomy.choice.strategy == "both"


def test_estimate_comes_from_this_machines_measured_runs_before_the_table():
    machine = mc.Machine(cores=2)
    table = mc.estimate_train(300, 15, 320, "cpu", machine, val_images=60)
    assert "built-in table" in table.basis
    run = mc.measured_timing(arch="yolov8n.yaml", imgsz=320, device="cpu", machine=machine, train_images=300,
                             val_images=60, epoch_times=[31.0] * 15, seconds=15 * 31.0 + 12.0)
    measured = mc.estimate_train(300, 15, 320, "cpu", machine, val_images=60, measured=[run])
    assert measured.seconds == pytest.approx(15 * 31.0 + 12.0)
    assert "measured on this machine" in measured.basis and "320 px" in measured.basis
    # twice the epochs: twice the epoch time, the same fixed cost; another size scales by imgsz squared
    assert mc.estimate_train(300, 30, 320, "cpu", machine, val_images=60, measured=[run]).seconds == \
        pytest.approx(30 * 31.0 + 12.0)
    scaled = mc.estimate_train(300, 15, 640, "cpu", machine, val_images=60, measured=[run])
    assert scaled.seconds == pytest.approx(4 * 15 * 31.0 + 12.0) and "scaled by imgsz squared" in scaled.basis
    # another machine's or architecture's measurement is not used
    other = mc.estimate_train(300, 15, 320, "cpu", mc.Machine(cores=8), val_images=60, measured=[run])
    assert "built-in table" in other.basis
    assert "built-in table" in mc.estimate_train(300, 15, 320, "cpu", machine, "yolov8s.yaml", 60, [run]).basis
    # the median of the last three matching runs: one slow outlier does not move it
    slow = {**run, "s_per_image_epoch": run["s_per_image_epoch"] * 3}
    assert mc.estimate_train(300, 15, 320, "cpu", machine, val_images=60,
                             measured=[run, slow, run]).seconds == pytest.approx(measured.seconds)

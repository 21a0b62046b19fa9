"""Issues 11 and 17 in the pipeline: --strategy both trains two candidates and picks one on the
validation split, which alone meets production on the test split; auto records what it chose and
why; --dry-run says what will run, about how long, and on what evidence.

Real trainings (imgsz 64, one epoch, generated images) and real comparisons; nothing is mocked.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import training_pipeline
from toolkit.model import machine as mc
from toolkit.model import planning as pl
from toolkit.core.layout import Workspace
from toolkit.promotion.registry import Registry
from toolkit.core.run_history import read_history

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


def test_both_picks_on_val_and_only_the_chosen_one_meets_production_on_test(workspace):
    _lax_promotion(workspace)
    result = training_pipeline.run(training_pipeline.PipelineConfig(root=workspace, strategy="both", **FAST))
    strategy = result.stages["train"]["strategy"]
    assert strategy["requested"] == "both" and strategy["strategy"] == "both"
    cands = strategy["candidates"]
    assert [c["route"] for c in cands] == ["finetune", "scratch"]
    assert Path(cands[0]["run_dir"]).name.endswith("-pipeline-finetune") and cands[0]["start_from"].endswith("yolov8_model.pt")
    assert Path(cands[1]["run_dir"]).name.endswith("-pipeline-scratch") and cands[1]["start_from"] == "yolov8n.yaml"
    # the pick is made on the validation split: the higher val mAP50-95 (ties: fine-tune, listed first)
    vals = {c["route"]: c["val"]["map50_95"] for c in cands}
    want = "finetune" if vals["finetune"] >= vals["scratch"] else "scratch"
    assert strategy["chosen"] == want and [c["chosen_on_val"] for c in cands] == [r == want for r in ("finetune", "scratch")]
    assert "validation" in strategy["pick_reason"] and "test split is kept for the gate" in strategy["pick_reason"]
    chosen = next(c for c in cands if c["route"] == want)
    other = next(c for c in cands if c["route"] != want)
    # test: only the chosen candidate was scored (against production), the other never saw the test split
    compared = result.stages["compare"]
    assert [m["role"] for m in compared["models"]] == ["production", "candidate"]
    assert Path(compared["models"][1]["path"]).resolve() == Path(chosen["path"]).resolve()
    assert chosen["test"]["map50_95"] is not None and other["test"] is None and other["passes"] is None
    assert result.decision == "promoted" and chosen["promoted"] and not other["promoted"]
    ws = Workspace.at(workspace)
    assert ws.production_model.read_bytes() == Path(chosen["path"]).read_bytes()
    assert Registry.load(ws).production_entry()["run_dir"] == chosen["run_dir"]
    assert result.stages["train"]["run_dir"] == chosen["run_dir"]
    assert any(r.startswith(f"candidate {want} (") and "chosen on val" in r for r in result.reasons)
    assert any(r.startswith(f"candidate {other['route']} (") and "not chosen on val" in r for r in result.reasons)
    report = json.loads(Path(result.report).read_text())
    assert [c["route"] for c in report["stages"]["train"]["strategy"]["candidates"]] == ["finetune", "scratch"]
    # the HTML report shows recall and false calls per class at the line's confidence
    assert "recall and false calls per class" in Path(result.html_report).read_text()
    # the history keeps the winner for a later auto, and both runs' measured speed for later estimates
    last = read_history(ws, last=1)[0]
    assert last["strategy"] == "both" and last["routes"]["winner"] == want
    assert last["routes"]["val"] == pytest.approx(vals)
    assert sorted(t["route"] for t in last["trainings"]) == ["finetune", "scratch"]
    assert all(t["s_per_image_epoch"] > 0 and t["imgsz"] == 64 and t["arch"] == "yolov8n" for t in last["trainings"])
    # ... which a later auto that has time for one route only follows
    ts = {**_training_settings(ws), "time_limit": 1e-6}
    plan = pl.plan_training(ws, ts, machine=mc.Machine(cores=2), read_only=True)
    assert plan.choice.strategy == want and f"{want} won 1 of this workspace's last 1 'both' run(s)" in plan.choice.reason


def _training_settings(ws) -> dict:
    from toolkit.core.config import Settings

    return dict(Settings.load(ws.training_yaml).section("training"))


def test_auto_records_its_choice_and_the_evidence(workspace):
    """Tiny data: both routes fit a night on this machine, so auto trains both and says why."""
    _lax_promotion(workspace)
    result = training_pipeline.run(training_pipeline.PipelineConfig(root=workspace, **FAST))
    strategy = result.stages["train"]["strategy"]
    assert strategy["requested"] == "auto" and strategy["strategy"] == "both"
    assert "both routes fit a night" in strategy["reason"]
    evidence = strategy["evidence"]
    assert evidence["both_s"] <= evidence["budget_s"] and "built-in table" in evidence["estimate_basis"]
    assert [c["route"] for c in strategy["candidates"]] == ["finetune", "scratch"]
    assert any(r.startswith("training: auto: both routes fit") for r in result.reasons)


def test_dry_run_says_the_strategy_and_about_how_long(workspace, capsys):
    before = sorted(str(p) for p in workspace.rglob("*"))
    assert training_pipeline.main(["--root", str(workspace), "--dry-run", "--json", "--epochs", "3",
                                   "--imgsz", "64", "--device", "cpu"]) == 0
    step = json.loads(capsys.readouterr().out)["stages"]["plan"]["steps"]["train"]
    # tiny data on this machine: both routes fit a night -> both, each about this long, and on what basis
    assert step.startswith("strategy auto -> both: train finetune (about ") and "scratch (about " in step
    assert "on cpu, workers 0, batch 16" in step and "both routes fit a night" in step
    assert "built-in table" in step and "one after the other" in step
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
    plan = pl.plan_training(Workspace.at(workspace), ts, machine=mc.Machine(cores=2), read_only=True)
    assert plan.choice.strategy == "finetune" and "time budget" in plan.choice.reason


def test_both_routes_at_the_same_time_train_and_pick_on_val(workspace, monkeypatch):
    """The concurrent path (decided for a GPU with spare cores) run for real on this CPU: the GPU
    decision is the one stand-in; both trainings run in threads of one process."""
    _lax_promotion(workspace)
    monkeypatch.setattr(pl, "concurrency", lambda machine, device, workers: (True, 0, "both at once (test)"))
    result = training_pipeline.run(training_pipeline.PipelineConfig(root=workspace, strategy="both", **FAST))
    strategy = result.stages["train"]["strategy"]
    assert "both at once (test)" in strategy["plan"]
    cands = strategy["candidates"]
    assert [c["route"] for c in cands] == ["finetune", "scratch"] and all(c["epochs"] == 1 for c in cands)
    assert strategy["chosen"] in ("finetune", "scratch") and result.decision in ("promoted", "kept")
    assert all(Path(c["path"]).is_file() for c in cands)

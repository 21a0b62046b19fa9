"""The pipeline: promotion with the real NEU models, rollback, lock, kill safety, dry run, skip."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataset_preparer
import setup_training
import training_pipeline
from toolkit.core.layout import Workspace
from toolkit.promotion.registry import Registry
from toolkit.core.run_history import read_history

REPO = Path(__file__).resolve().parent.parent


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def neu_workspace(tmp_path_factory, neu_dir, shared_models):
    """Production = real v1.0; the managed dataset holds a third of NEU's fixed test split (60 images, 10 per
    class; + a few train/val images). The whole split is scored in test_model_comparator.py (slow)."""
    from dataset_helpers import export_voc_as_yolo_splits

    base = tmp_path_factory.mktemp("neu_pipeline")
    lists = {}
    for split, per_list in (("train", 12), ("val", 6), ("test", 60)):
        stems = (neu_dir / "splits" / f"{split}.txt").read_text().split()
        lists[split] = base / f"{split}.txt"
        lists[split].write_text("\n".join(stems if per_list is None else stems[::len(stems) // per_list][:per_list]))
    export = export_voc_as_yolo_splits(neu_dir, lists, base / "export")
    root = base / "ws"
    root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", root / "yolov8_model.pt")
    setup_training.run(setup_training.SetupConfig(root=root))
    # the speed rule is not under test here: no images timed (each run would time 16 x 5 rounds per model)
    yaml_path = Workspace.at(root).training_yaml
    yaml_path.write_text(re.sub(r"^(  speed_images:).*$", r"\1 0", yaml_path.read_text(), count=1, flags=re.M))
    dataset_preparer.run(dataset_preparer.PrepareConfig(root=root, source=export, keep_split=True))
    return root


@pytest.mark.slow  # five pipeline runs that score real NEU models at 640 px: about 30 CPU-s
def test_candidate_promoted_then_kept_then_rollback(neu_workspace, shared_models, capsys):
    root = neu_workspace
    ws = Workspace.at(root)
    v10, v11 = shared_models / "neu_v1.0_half.pt", shared_models / "neu_v1.1_full.pt"

    assert training_pipeline.main(["--root", str(root), "--candidate", str(v11), "--json", "--no-analyze"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["decision"] == "promoted", first["reasons"]
    assert ws.production_model.read_bytes() == v11.read_bytes()
    assert first["production"]["version"] == "1.1"
    assert Path(first["html_report"]).is_file()
    # the version's figures say where they were measured: the test split, at the size it was trained at
    metrics = Registry.load(ws).entry("1.1")["metrics"]
    assert (metrics["split"], metrics["imgsz"]) == ("test", 640) and 0 < metrics["map50_95"] < 1

    assert training_pipeline.main(["--root", str(root), "--candidate", str(v10), "--json", "--no-analyze"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["decision"] == "kept"
    assert ws.production_model.read_bytes() == v11.read_bytes()
    assert any("fell" in r or "drop" in r or "not" in r for r in second["reasons"])
    # the words that matter: v1.0 is worse than production v1.1, by a margin the bootstrap is sure of
    assert any(r.startswith("mAP50-95 changed by -") and "below the required gain" in r for r in second["reasons"])
    assert any("significantly worse" in r for r in second["reasons"]), second["reasons"]

    assert training_pipeline.main(["--root", str(root), "--rollback", "--json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["production"]["version"] == "1.0"
    assert ws.production_model.read_bytes() == v10.read_bytes()

    # registry, sidecar and history agree
    registry = Registry.load(ws)
    assert [v["version"] for v in registry.versions] == ["1.0", "1.1"]
    sidecar = json.loads(ws.production_sidecar.read_text())
    assert sidecar["version"] == "1.0" and sidecar["sha256"] == registry.entry("1.0")["sha256"]
    decisions = [r["decision"] for r in read_history(ws, last=100)]
    assert decisions[-3:] == ["promoted", "kept", "rollback"]
    status = training_pipeline.status(root)
    assert status["production"]["version"] == "1.0"
    # --status: the checks pass and each of the last runs shows its version, run and metric
    assert status["ok"], status["problems"]
    assert training_pipeline.main(["--root", str(root), "--status"]) == 0
    text = capsys.readouterr().out
    runs = text.split("Last runs:")[1].strip().splitlines()
    promoted = next(line for line in runs if " promoted " in line)
    assert "production 1.1" in promoted and f"run {first['report'].split('pipeline_')[1][:15]}" in promoted
    assert re.search(r"candidate mAP50-95 0\.\d{3} vs production 0\.\d{3}", promoted), promoted
    assert "production 1.0" in runs[-1] and "rollback" in runs[-1] and "from 1.1" in runs[-1]

    # v1.1 promoted again after the rollback is version 1.1 again (one model, one version), not "1.2"
    assert training_pipeline.main(["--root", str(root), "--candidate", str(v11), "--json", "--no-analyze"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["decision"] == "promoted" and again["production"]["version"] == "1.1"
    assert [v["version"] for v in Registry.load(ws).versions] == ["1.0", "1.1"]
    assert json.loads(ws.production_sidecar.read_text())["version"] == "1.1"
    assert training_pipeline.main(["--root", str(root), "--rollback", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["production"]["version"] == "1.0"
    assert ws.production_model.read_bytes() == v10.read_bytes()


def test_tampered_archive_refused_by_rollback_cli(tmp_path, shared_models, capsys):
    """Its own workspace (v1.0 archived, v1.1 in production): independent of the other tests' order."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", root / "yolov8_model.pt")
    ws = Workspace.at(root)
    registry = Registry.load(ws)
    registry.register_existing_production()
    registry.promote(shared_models / "neu_v1.1_full.pt", reasons=["test: a second version"])
    archive = ws.models / "yolov8_v1.0.pt"
    assert archive.is_file() and Registry.load(ws).production_entry()["version"] == "1.1"
    original = archive.read_bytes()
    archive.write_bytes(original[:-10] + b"0123456789")
    before = ws.production_model.read_bytes()
    capsys.readouterr()  # ultralytics' first-use notice while the registry read the models' classes
    assert training_pipeline.main(["--root", str(ws.root), "--rollback", "1.0"]) == 1
    err = capsys.readouterr().err
    assert "does not match its recorded sha256" in err and len(err.strip().splitlines()) == 1
    assert ws.production_model.read_bytes() == before


def test_dry_run_and_if_new_data_change_nothing(neu_workspace, capsys):
    root = neu_workspace
    before = tree_digest(root / "training" / "datasets")
    prod = (root / "yolov8_model.pt").read_bytes()
    assert training_pipeline.main(["--root", str(root), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and plan["stages"]["plan"]["steps"]["prepare"].startswith("skip")
    assert training_pipeline.main(["--root", str(root), "--if-new-data", "--json"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert skipped["decision"] == "skipped"
    assert tree_digest(root / "training" / "datasets") == before
    assert (root / "yolov8_model.pt").read_bytes() == prod


# --- synthetic workspace: training inside the pipeline ------------------------------------------

def _pipeline_cmd(root: Path, *extra: str, epochs: int = 3) -> list[str]:
    return [sys.executable, str(REPO / "training_pipeline.py"), "--root", str(root), "--epochs", str(epochs),
            "--imgsz", "64", "--batch", "8", "--compare-subset", "8", "--json", *extra]


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # a real training killed mid-epoch, then the registry checked: about 22 s
def test_sigkill_during_training_leaves_production_and_registry_untouched(synthetic_workspace):
    root = synthetic_workspace
    ws = Workspace.at(root)
    prod_before = ws.production_model.read_bytes()
    registry_before = ws.registry.read_text() if ws.registry.exists() else None
    # a long first run, so that it is surely still training while the second run tries its luck
    proc = subprocess.Popen(_pipeline_cmd(root, epochs=50), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = _wait_for(lambda: any(ws.runs.glob("*/epochs.jsonl")) or proc.poll() is not None, 240)
        assert started and proc.poll() is None, "the pipeline did not reach training"
        # a second run while the first holds the lock is refused, the first is unharmed
        second = subprocess.run(_pipeline_cmd(root), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "busy" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        # ... and the first run is unharmed: still alive and still training
        epochs_log = next(ws.runs.glob("*/epochs.jsonl"))
        lines_before = len(epochs_log.read_text().splitlines())
        assert _wait_for(lambda: len(epochs_log.read_text().splitlines()) > lines_before or proc.poll() is not None, 240)
        assert proc.poll() is None, "the first run ended instead of training on"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ws.production_model.read_bytes() == prod_before
    assert (ws.registry.read_text() if ws.registry.exists() else None) == registry_before

    rerun = subprocess.run(_pipeline_cmd(root), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads(rerun.stdout)
    assert result["decision"] in ("promoted", "kept")
    if result["decision"] == "kept":
        assert ws.production_model.read_bytes() == prod_before
    else:
        assert Registry.load(ws).production_entry()["version"] == "1.1"


def test_pipeline_flags_reach_training_and_scoring_and_training_yaml_is_read_once(synthetic_workspace, monkeypatch,
                                                                                  capsys):
    """Issue 10: trained at --imgsz 96, the candidate is scored at 96 (JSON, reasons, HTML report)."""
    import yaml

    import toolkit.core.config

    root = synthetic_workspace
    reads = []
    real_read = toolkit.core.config.read_training_yaml
    monkeypatch.setattr(toolkit.core.config, "read_training_yaml", lambda path: reads.append(path) or real_read(path))
    args = ["--root", str(root), "--imgsz", "96", "--epochs", "1", "--batch", "4", "--device", "cpu",
            "--compare-subset", "3", "--no-analyze", "--json"]
    assert training_pipeline.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert reads == [Workspace.at(root).training_yaml]

    train = result["stages"]["train"]
    used = yaml.safe_load((Path(train["run_dir"]) / "settings.yaml").read_text())["ultralytics"]
    assert (used["imgsz"], used["epochs"], used["batch"], used["device"]) == (96, 1, 4, "cpu")
    compare = result["stages"]["compare"]
    assert compare["settings"]["evaluation"]["batch"] == 4 and compare["settings"]["evaluation"]["device"] == "cpu"
    assert compare["images"] == 3 and compare["settings"]["subset"] == 3  # --compare-subset
    assert result["stages"]["analyze"] == {"skipped": "--no-analyze"}
    sizes = {m["role"]: (m["imgsz"], m["trained_imgsz"]) for m in compare["models"]}
    assert sizes == {"production": (64, 64), "candidate": (96, 96)}
    size_reason = [r for r in result["reasons"] if "trained at different sizes" in r]
    run_name = Path(result["stages"]["train"]["run_dir"]).name  # a run's best.pt is named by its run (issue 27)
    assert len(size_reason) == 1 and f"candidate {run_name}/best.pt 96 px" in size_reason[0]
    assert "production tiny" not in size_reason[0]  # names the real file
    html = Path(result["html_report"]).read_text()
    assert "scored at" in html and "96 px" in html


def test_explicit_evaluation_imgsz_wins_over_the_training_size(tmp_path, tiny_model, capsys):
    import model_comparator
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    root = tmp_path / "ws"
    root.mkdir()
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_batch(root / "training" / "incoming" / "b1", 30, size=64, seed=5)
    dataset_preparer.run(dataset_preparer.PrepareConfig(root=root, incoming=True))
    base = ["--root", str(root), "--candidates", str(tiny_model), "--device", "cpu", "--speed-images", "0", "--json"]
    assert model_comparator.main(base) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["models"][0]["imgsz"] == trained["models"][0]["trained_imgsz"] == 64
    ws = Workspace.at(root)
    ws.training_yaml.write_text(ws.training_yaml.read_text().replace("  imgsz:\n", "  imgsz: 96\n"))
    assert model_comparator.main(base) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert explicit["models"][0]["imgsz"] == 96 and explicit["models"][0]["trained_imgsz"] == 64
    assert any("every model was scored at 96 px, as evaluation.imgsz says" in r for r in explicit["decision"]["reasons"])


def test_a_first_model_that_detects_almost_nothing_needs_force(tmp_path, tiny_model, capsys):
    from toolkit.data.synthetic import NEU_CLASSES, write_batch

    root = tmp_path / "ws"
    root.mkdir()
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_batch(root / "training" / "incoming" / "b1", 30, size=64, seed=7)
    dataset_preparer.run(dataset_preparer.PrepareConfig(root=root, incoming=True))
    ws = Workspace.at(root)
    args = ["--root", str(root), "--candidate", str(tiny_model), "--device", "cpu", "--no-analyze", "--json"]
    assert training_pipeline.main(args) == 0
    kept = json.loads(capsys.readouterr().out)
    score = kept["stages"]["compare"]["models"][0]["map50_95"]
    assert score < 0.05, "the one-epoch tiny model should detect almost nothing"
    assert kept["decision"] == "kept" and not ws.production_model.exists()
    assert "below promotion.min_first_map 0.050" in kept["reasons"][0] and "--force" in kept["reasons"][0]
    assert training_pipeline.main(args + ["--force"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["decision"] == "promoted" and forced["production"]["version"] == "1.0"
    assert "because --force was given" in forced["reasons"][0]
    assert ws.production_model.read_bytes() == tiny_model.read_bytes()

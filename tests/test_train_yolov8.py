"""train_yolov8.py: helpers, then real (tiny) ultralytics trainings on CPU.

The end-to-end runs use imgsz=64 and 1-4 epochs on generated images or a 42-image NEU-DET
subset; each is a real training, no part of ultralytics is mocked.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import interrupt_training_at
import yaml

import train_yolov8
from toolkit.model import training as tr
from toolkit.core.datafile import write_dataset_yaml
from toolkit.core.errors import Interrupted, UserError
from toolkit.data.labels.voc import voc_as_yolo_text
from toolkit.core.layout import SPLITS, Workspace
from toolkit.data.synthetic import NEU_CLASSES, write_batch

REPO = Path(__file__).resolve().parent.parent
CONTRACT_KEYS = {"run_dir", "best", "epochs_completed", "metrics", "seconds"}
METRIC_KEYS = {"map50", "map50_95", "precision", "recall"}


# ----------------------------------------------------------------------------- helpers
def make_workspace(root: Path, n_train: int = 24, n_val: int = 12, classes=NEU_CLASSES, seed: int = 0) -> Workspace:
    """A workspace whose managed dataset holds generated images (what dataset_preparer would leave).

    The images show NEU-like defects; ``classes`` only renames them in dataset.yaml.
    """
    ws = Workspace.at(root)
    for folder in ws.tree():
        folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", 0)):
        if not n:
            continue
        batch = write_batch(root / "_generated" / split, n, size=64, seed=seed + SPLITS.index(split),
                            classes=NEU_CLASSES[:len(classes)])
        for kind, dest in (("images", ws.images_dir(split)), ("labels", ws.labels_dir(split))):
            for path in (batch.root / kind).iterdir():
                shutil.move(str(path), dest / path.name)
    shutil.rmtree(root / "_generated")
    write_dataset_yaml(ws, classes, 1)
    return ws


def neu_subset(neu_dir: Path, dest: Path, per_class_train: int = 5, per_class_val: int = 2) -> Path:
    """A small YOLO dataset converted from NEU-DET VOC files (copies; the shared files are only read)."""
    train_stems = (neu_dir / "splits" / "train.txt").read_text().split()
    val_stems = (neu_dir / "splits" / "val.txt").read_text().split()
    names = list(NEU_CLASSES)

    def pick(stems, k):
        chosen = []
        for name in names:
            chosen += [s for s in stems if s.startswith(name + "_")][:k]
        return chosen

    for split, stems in (("train", pick(train_stems, per_class_train)), ("val", pick(val_stems, per_class_val))):
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        for stem in stems:
            text = voc_as_yolo_text(neu_dir / "ANNOTATIONS" / f"{stem}.xml", names)
            shutil.copyfile(neu_dir / "IMAGES" / f"{stem}.jpg", dest / "images" / split / f"{stem}.jpg")
            (dest / "labels" / split / f"{stem}.txt").write_text(text)
    data = {"path": str(dest), "train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    (dest / "data.yaml").write_text(yaml.safe_dump(data))
    return dest / "data.yaml"


GUARD = r'''
import json, socket, sys
attempts = []
def _refuse(what):
    def refuse(*args, **kwargs):
        attempts.append(f"{what} {args[1:3] if what == 'connect' else args[:2]!r}")
        raise OSError(f"network disabled by the test ({what})")
    return refuse
socket.socket.connect = _refuse("connect")
socket.socket.connect_ex = _refuse("connect")
socket.create_connection = _refuse("create_connection")
socket.getaddrinfo = _refuse("getaddrinfo")
sys.path.insert(0, sys.argv[1])
import train_yolov8
try:
    rc = train_yolov8.main(sys.argv[3:])
finally:
    with open(sys.argv[2], "w") as fh:
        json.dump(attempts, fh)
sys.exit(rc)
'''


def run_script(args: list[str], tmp: Path, guard: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if guard:
        script = tmp / "guarded_train.py"
        script.write_text(GUARD)
        cmd = [sys.executable, str(script), str(REPO), str(tmp / "attempts.json"), *args]
    else:
        cmd = [sys.executable, str(REPO / "train_yolov8.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


# ----------------------------------------------------------------------------- pure helpers
def test_new_run_dir_never_reuses_a_folder(tmp_path):
    first = tr.new_run_dir(tmp_path, "nightly")
    second = tr.new_run_dir(tmp_path, "nightly")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.endswith("-nightly") and second.name.startswith(first.name)
    with pytest.raises(UserError, match="--name"):
        tr.new_run_dir(tmp_path, "../escape")


def test_set_pairs_are_checked_against_ultralytics_arguments(ultralytics_config_dir):
    base = {"data": "d.yaml", "epochs": 1, "imgsz": 64}
    tr.validate_ultralytics_args({**base, "lr0": 0.005, "cos_lr": True}, {"lr0": 0.005, "cos_lr": True})
    with pytest.raises(UserError, match="not an ultralytics training argument.*lr0"):
        tr.validate_ultralytics_args({**base, "lr00": 0.1}, {"lr00": 0.1})
    with pytest.raises(UserError, match="use --epochs"):
        tr.validate_ultralytics_args(base, {"epochs": 3})
    with pytest.raises(UserError, match="invalid training argument"):
        tr.validate_ultralytics_args({**base, "lr0": "fast"}, {"lr0": "fast"})
    assert tr.parse_extra(("lr0=0.01", ("mosaic", 0.5))) == {"lr0": 0.01, "mosaic": 0.5}


def test_truncate_epochs_keeps_what_last_pt_holds(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)) + '{"epoch": 4, "cut')
    assert tr.truncate_epochs(path, 2) == 1
    assert [r["epoch"] for r in tr.read_epochs(path)] == [1, 2]


def test_resume_dir_explains_finished_and_missing_runs(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="no interrupted run"):
        tr.resolve_resume_dir(runs, True)
    done = runs / "20260101-000000-train"
    (done / "weights").mkdir(parents=True)
    (done / "weights" / "last.pt").write_bytes(b"x")
    (done / "summary.json").write_text("{}")
    with pytest.raises(UserError, match=r"is finished.*--from .*best\.pt"):
        tr.resolve_resume_dir(runs, "last")
    with pytest.raises(UserError, match="is finished"):
        tr.resolve_resume_dir(runs, done)
    broken = runs / "20260102-000000-train"
    broken.mkdir()
    with pytest.raises(UserError, match="before its first epoch"):
        tr.resolve_resume_dir(runs, broken.name)
    open_run = runs / "20260103-000000-train"
    (open_run / "weights").mkdir(parents=True)
    (open_run / "weights" / "last.pt").write_bytes(b"x")
    assert tr.resolve_resume_dir(runs, None) == open_run.resolve()
    assert tr.resolve_resume_dir(runs, open_run / "weights" / "last.pt") == open_run.resolve()


def test_help_is_instant_and_names_the_whole_dataset_rule():
    out = subprocess.run([sys.executable, str(REPO / "train_yolov8.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "old + new images" in out.stdout and "--resume" in out.stdout and "--time-limit" in out.stdout
    check = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x','--help'];"
                            f"sys.path.insert(0, {str(REPO)!r}); import train_yolov8;"
                            "print('torch' in sys.modules, 'ultralytics' in sys.modules)"],
                           capture_output=True, text=True)
    assert check.stdout.split() == ["False", "False"]  # instant: nothing heavy imported (bench_help.py times it)


def test_missing_dataset_and_production_are_user_errors(tmp_path):
    ws = Workspace.at(tmp_path)
    with pytest.raises(UserError, match="dataset_preparer"):
        train_yolov8.run(train_yolov8.TrainConfig(root=tmp_path))
    make_workspace(tmp_path, n_train=2, n_val=1)
    with pytest.raises(UserError, match="no production model"):
        train_yolov8.run(train_yolov8.TrainConfig(root=tmp_path, start_from="production"))
    assert not any(ws.runs.iterdir())  # nothing was started


# ----------------------------------------------------------------------------- real training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real 2-epoch run through main(--json), with every network call refused and recorded."""
    tmp = tmp_path_factory.mktemp("train_main")
    ws = make_workspace(tmp / "ws")
    ws.training_yaml.write_text("training:\n  augment:\n    flipud: 0.5\n")  # a user's augmentation reaches ultralytics
    (tmp / "cwd").mkdir()
    started = time.time()
    proc = run_script(["--root", str(ws.root), "--from", "scratch", "--epochs", "2", "--imgsz", "64",
                       "--batch", "8", "--device", "cpu", "--name", "smoke", "--json"], tmp / "cwd", guard=True)
    return {"ws": ws, "proc": proc, "attempts": json.loads((tmp / "cwd" / "attempts.json").read_text()),
            "seconds": time.time() - started}


def test_two_epoch_training_writes_the_run_contract(trained):
    proc = trained["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is exactly one JSON object: ultralytics' chatter went to stderr
    assert CONTRACT_KEYS <= set(result) and METRIC_KEYS == set(result["metrics"])
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == trained["ws"].runs and run_dir.name.endswith("-smoke")
    assert result["epochs_completed"] == 2 and result["stop_reason"] == "completed"
    assert result["classes"] == list(NEU_CLASSES) and result["start_mode"] == "scratch"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert CONTRACT_KEYS <= set(summary) and summary["best"] == result["best"]
    settings = yaml.safe_load((run_dir / "settings.yaml").read_text())
    assert settings["ultralytics"]["epochs"] == 2 and settings["ultralytics"]["flipud"] == 0.5  # training.yaml augment
    records = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"losses", "precision", "recall", "map50", "map50_95", "lr", "seconds", "eta_seconds"} <= set(r)
        assert r["losses"]["box_loss"] > 0
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert "curves.png" in (run_dir / "report.md").read_text()


def test_ultralytics_plots_are_off_by_default_and_the_machine_is_recorded(trained):
    """Issue 11 overhead: ultralytics' plots cost time outside the epoch loop; the run's report replaces them."""
    run_dir = Path(json.loads(trained["proc"].stdout)["run_dir"])
    settings = yaml.safe_load((run_dir / "settings.yaml").read_text())
    assert settings["ultralytics"]["plots"] is False
    assert not (run_dir / "results.png").exists() and not (run_dir / "labels.jpg").exists()
    assert not list(run_dir.glob("train_batch*.jpg"))
    assert "CPU cores" in settings["toolkit"]["machine"]
    assert settings["ultralytics"]["device"] == "cpu" and settings["ultralytics"]["batch"] == 8


def test_best_pt_loads_with_the_dataset_class_names(trained, ultralytics_config_dir):
    from toolkit.core.offline import model_class_names

    result = json.loads(trained["proc"].stdout)
    assert model_class_names(result["best"], ultralytics_config_dir) == list(NEU_CLASSES)


def test_no_network_attempt_and_one_line_per_epoch(trained):
    assert trained["attempts"] == [], f"ultralytics tried the network: {trained['attempts']}"
    stderr = trained["proc"].stderr
    epoch_lines = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "ETA" in epoch_lines[0]
    assert "━" not in stderr and "Ultralytics 8" not in stderr  # no bars or banners when not on a terminal
    assert "download" not in stderr.lower()


def test_time_limit_stops_cleanly_with_best_kept(tmp_path):
    ws = make_workspace(tmp_path, n_train=16, n_val=8)
    result = train_yolov8.run(train_yolov8.TrainConfig(
        root=ws.root, start_from="scratch", epochs=5, imgsz=64, batch=8, device="cpu",
        time_limit=0.5 / 3600, extra=("plots=false",)))
    assert result.stop_reason == "time_limit" and result.stopped_early
    assert 1 <= result.epochs_completed < 5 and result.best.is_file()
    assert json.loads((result.run_dir / "summary.json").read_text())["stop_reason"] == "time_limit"


def test_interrupted_run_resumes_with_epochs_counted_once(tmp_path, monkeypatch, caplog):
    ws = make_workspace(tmp_path / "ws", n_train=48, n_val=8)
    cmd = [sys.executable, str(REPO / "train_yolov8.py"), "--root", str(ws.root), "--from", "scratch",
           "--epochs", "4", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--set", "plots=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 240
    epochs_file = None
    while time.time() < deadline and proc.poll() is None:
        found = list(ws.runs.glob("*/epochs.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            epochs_file = found[0]
            proc.send_signal(signal.SIGTERM)  # what a scheduler sends when the night window closes
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert epochs_file is not None, f"no epoch finished: {err[-2000:]}"
    assert proc.returncode != 0 and "--resume" in err, err[-2000:]
    run_dir = epochs_file.parent
    assert not (run_dir / "summary.json").exists() and (run_dir / "weights" / "last.pt").is_file()

    # issue 27: a Ctrl-C right after a resume counts the epochs the resume said were done ("resuming ...
    # after epoch 1 of 4", then "interrupted after epoch 0" was printed)
    with monkeypatch.context() as patch, caplog.at_level("INFO"):
        interrupt_training_at(patch, "on_train_epoch_start")
        with pytest.raises(Interrupted) as stopped:
            train_yolov8.run(train_yolov8.TrainConfig(root=ws.root, resume=True))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming run")]
    done = int(said[0].split(" after epoch ")[1].split()[0])
    assert done >= 1 and f"training interrupted after epoch {done} of 4 " in str(stopped.value), (said, stopped.value)

    result = train_yolov8.run(train_yolov8.TrainConfig(root=ws.root, resume=True))
    assert result.run_dir == run_dir and result.resumed
    assert result.epochs_completed == 4 and result.stop_reason == "completed"
    epochs = [r["epoch"] for r in tr.read_epochs(run_dir / "epochs.jsonl")]
    assert epochs == [1, 2, 3, 4]
    with pytest.raises(UserError, match=r"finished.*--from .*best\.pt"):
        train_yolov8.run(train_yolov8.TrainConfig(root=ws.root, resume=str(run_dir)))


def test_finetune_neu_model_on_neu_images(neu_dir, shared_models, tmp_path):
    data = neu_subset(neu_dir, tmp_path / "neu")
    ws = Workspace.at(tmp_path / "ws")
    result = train_yolov8.run(train_yolov8.TrainConfig(
        root=ws.root, start_from=shared_models / "neu_v1.0_half.pt", data=data, epochs=1, imgsz=96, batch=8,
        device="cpu", extra=("plots=false",)))
    assert result.start_mode == "path" and result.classes == NEU_CLASSES
    assert result.epochs_completed == 1 and result.best.is_file()
    assert set(result.metrics) == METRIC_KEYS and all(0.0 <= v <= 1.0 for v in result.metrics.values())
    settings = yaml.safe_load((result.run_dir / "settings.yaml").read_text())
    assert settings["toolkit"]["start_from"] == str((shared_models / "neu_v1.0_half.pt").resolve())
    assert settings["ultralytics"]["data"] == str(data)


def test_other_classes_are_refused_with_both_lists(shared_models, tmp_path):
    ws = make_workspace(tmp_path, n_train=2, n_val=1, classes=("dent", "rust"))
    with pytest.raises(UserError) as info:
        train_yolov8.run(train_yolov8.TrainConfig(root=ws.root, start_from=shared_models / "neu_v1.0_half.pt"))
    message = str(info.value)
    assert "['dent', 'rust']" in message and str(list(NEU_CLASSES)) in message and "--new-classes" in message
    assert not any(ws.runs.iterdir())


def test_new_classes_reinitialise_the_class_head(shared_models, tmp_path, ultralytics_config_dir):
    # same number of classes, other order: shapes match, so only our re-initialisation resets the layers
    renamed = tuple(reversed(NEU_CLASSES))
    ws = make_workspace(tmp_path, n_train=16, n_val=8, classes=renamed)
    start = shared_models / "neu_v1.0_half.pt"
    result = train_yolov8.run(train_yolov8.TrainConfig(
        root=ws.root, start_from=start, epochs=1, imgsz=64, batch=8, device="cpu",
        new_classes=True, extra=("plots=false",)))
    assert any("re-initialised" in n for n in result.notes)
    from toolkit.core.offline import load_yolo

    assert list(load_yolo(result.best, ultralytics_config_dir).names.values()) == list(renamed)
    before = load_yolo(start, ultralytics_config_dir).model.state_dict()
    after = load_yolo(result.best, ultralytics_config_dir).model.state_dict()

    def similarity(key):
        a, b = before[key].float().flatten(), after[key].float().flatten()
        return float((a @ b) / (a.norm() * b.norm()))

    assert similarity("model.22.cv3.0.2.weight") < 0.5   # class layer: fresh
    assert similarity("model.0.conv.weight") > 0.9       # backbone: transferred
    assert similarity("model.22.cv2.0.2.weight") > 0.9   # box layer: transferred


def test_default_start_is_production_when_it_exists(tmp_path, shared_models):
    ws = Workspace.at(tmp_path)
    assert train_yolov8.resolve_start(ws, "", "yolov8s.yaml") == ("scratch", "yolov8s.yaml")
    ws.production_model.symlink_to(shared_models / "neu_v1.0_half.pt")  # read only, never copied
    assert train_yolov8.resolve_start(ws, "", "yolov8n.yaml") == ("production", str(ws.production_model))
    with pytest.raises(UserError, match="no such file"):
        train_yolov8.resolve_start(ws, "missing.pt", "yolov8n.yaml")

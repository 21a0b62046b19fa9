"""Issue 25 ("Trust, round four"), the dataset and history items: lots (break 2), group_by regexes
(break 8), history lines (break 9) and the minor items of the preparer. Each failed before its fix."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import pytest

import dataset_preparer as dp
from test_grouped_split import write_lots, ws  # noqa: F401  (ws: the set-up workspace fixture)
from toolkit.core.layout import Workspace
from toolkit.data.dataset.manifest import load_manifest


def _lot_splits(ws: Workspace) -> dict[str, set[str]]:
    splits = defaultdict(set)
    for e in load_manifest(ws)["images"]:
        splits[e.get("group") or Path(e["source"]).stem.split("_")[0]].add(e["split"])
    return splits


# --- break 2: a lot keeps its split; a near-copy of another split's image is left out ---------------

@pytest.mark.parametrize("more", ["fresh", "near-copies"])
def test_a_later_batch_never_pulls_a_lot_into_a_second_split(ws, tmp_path, more):
    """Batch 1 puts lot L in train; batch 2 brings more of L (new views, or re-encoded copies of its
    images) plus a re-encoded near-copy of a managed test image, named as L's. L stays in train only;
    the near-copy is left out as a duplicate, with a note (before: L went to test too, or all was left out)."""
    src = write_lots(tmp_path / "batch1", 30, 3, seed=7)
    dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by=r"^(lot\d+)_"))
    entries = load_manifest(ws)["images"]
    lot = next(e["group"] for e in entries if e["split"] == "train")
    test_image = next(e for e in entries if e["split"] == "test")
    batch2 = tmp_path / "batch2"
    (batch2 / "images").mkdir(parents=True)
    (batch2 / "labels").mkdir()
    shutil.copyfile(src / "classes.txt", batch2 / "classes.txt")
    fresh = write_lots(tmp_path / "fresh", 1, 3, seed=99)
    for j, e in enumerate(e for e in entries if e["group"] == lot):   # more of L
        stem, image, label = f"{lot}_1{j}", e["source"], e["label_source"]
        if more == "fresh":   # views of the lot unlike the ones imported (another part of the coil)
            image, label = fresh / "images" / f"lot000_{j}.jpg", fresh / "labels" / f"lot000_{j}.txt"
        cv2.imwrite(str(batch2 / "images" / f"{stem}.jpg"), cv2.imread(str(image)), [cv2.IMWRITE_JPEG_QUALITY, 80])
        shutil.copyfile(label, batch2 / "labels" / f"{stem}.txt")
    copy = f"{lot}_99"                                    # the test image, re-encoded, under L's name
    cv2.imwrite(str(batch2 / "images" / f"{copy}.jpg"), cv2.imread(test_image["source"]), [cv2.IMWRITE_JPEG_QUALITY, 80])
    shutil.copyfile(test_image["label_source"], batch2 / "labels" / f"{copy}.txt")
    result = dp.run(dp.PrepareConfig(root=ws.root, source=batch2, group_by=r"^(lot\d+)_"))
    splits = _lot_splits(ws)
    assert splits[lot] == {"train"}, splits[lot]
    assert all(len(s) == 1 for s in splits.values()), {k: v for k, v in splits.items() if len(v) > 1}
    assert result.added == 3
    left = [d for d in result.duplicate_files if d["path"].endswith(f"{copy}.jpg")]
    assert left and test_image["file"] in left[0]["duplicate_of"]
    assert any(f"{copy}.jpg left out" in n and lot in n for n in result.notes), result.notes


def test_an_import_whose_lots_split_badly_warns_naming_the_lots(ws, tmp_path):
    """Five lots of 12 images: the splits cannot come near 80/10/10 and val / test hold one lot each."""
    src = write_lots(tmp_path / "batch1", 5, 12, seed=11)
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by=r"^(lot\d+)_"))
    entries = load_manifest(ws)["images"]
    held = {s: sorted({e["group"] for e in entries if e["split"] == s}) for s in ("val", "test")}
    notes = " ".join(result.notes)
    assert "points from the target 80/10/10" in notes, result.notes
    for s, lots in held.items():
        assert len(lots) < 2 and f"{s} holds {len(lots)} lot(s)" in notes
        assert all(lot in notes for lot in lots)


def test_a_well_split_grouped_import_gives_no_lot_warning(ws, tmp_path):
    src = write_lots(tmp_path / "batch1", 60, 2, seed=5)
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by=r"^(lot\d+)_"))
    assert not any("lot(s)" in n for n in result.notes), result.notes


# --- break 8: a group_by that backtracks --------------------------------------------------------------

def _batch_of_names(dest: Path, names: list[str]) -> Path:
    from toolkit.data.synthetic import write_batch

    batch = write_batch(dest, len(names), size=64, seed=2)
    for item, name in zip(batch.images, names):
        item.path.rename(item.path.with_name(name + item.path.suffix))
        label = dest / "labels" / f"{item.path.stem}.txt"
        label.rename(label.with_name(name + ".txt"))
    return dest


def test_a_backtracking_group_by_is_refused_in_one_line(ws, tmp_path, capsys):
    """``^(a+)+$`` on 88-letter names hung the import holding the lock: now refused as the setting is read."""
    src = _batch_of_names(tmp_path / "b", ["a" * 88 + "!", "a" * 87 + "!"])
    assert dp.main(["--root", str(ws.root), "--source", str(src), "--group-by", "^(a+)+$"]) in (1, 2)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "repeat inside a repeat" in err[0] and len(err[0]) < 400, err


def test_group_by_matching_time_is_bounded_and_the_lock_is_freed(ws, tmp_path, capsys, monkeypatch):
    """A pattern the check lets through but that backtracks polynomially (six a* then b, on 200 a's):
    one error line at the time limit; the next import takes the lock."""
    from toolkit.data.dataset import groups

    monkeypatch.setattr(groups, "GROUP_BY_TIMEOUT_S", 1.0)
    src = _batch_of_names(tmp_path / "b", ["a" * 200 + str(i) for i in range(3)])
    slow = "^(a*a*a*a*a*a*a*b)"
    assert dp.main(["--root", str(ws.root), "--source", str(src), "--group-by", slow]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "took more than 1 s" in err[0], err
    assert dp.main(["--root", str(ws.root), "--source", str(src), "--group-by", "^(a{5})"]) == 0


# --- break 9: a poisoned history line -------------------------------------------------------------------

def _timing(machine, rate, imgsz=64) -> dict:
    from toolkit.model.machine import device_key

    return {"arch": "yolov8n", "imgsz": imgsz, "device": device_key("cpu", machine), "train_images": 100,
            "val_images": 10, "epochs": 3, "epoch_seconds": 30.0, "seconds": 40.0, "s_per_image_epoch": rate,
            "setup_seconds": 10.0}


@pytest.mark.parametrize("poison", ["negative", "nan", "imgsz"])
def test_a_poisoned_history_line_is_skipped_with_its_line_and_no_estimate_goes_wrong(ws, caplog, poison):
    """A negative speed gave "about -6:55:01" and auto concluded both routes fit; NaN gave "about ?";
    imgsz "abc" made every later pipeline fail at train. The line is skipped, naming file and line."""
    import math

    from toolkit.core.run_history import read_history
    from toolkit.model.machine import Machine
    from toolkit.model.planning import plan_training

    machine = Machine(cores=2, gpus=())
    bad = {"negative": _timing(machine, -5.0), "nan": _timing(machine, float("nan")),
           "imgsz": _timing(machine, 0.01, imgsz="abc")}[poison]
    lines = [{"run": "r1", "decision": "kept", "trainings": [_timing(machine, 0.004)]},
             {"run": "r2", "decision": "kept", "trainings": [bad]}, "not json at all"]
    ws.training_history.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    assert [r["run"] for r in read_history(ws, last=10)] == ["r1"]
    assert f"{ws.training_history} line 2 skipped" in caplog.text and "line 3 skipped" in caplog.text
    ts = {"epochs": 50, "imgsz": 64, "arch": "yolov8n.yaml", "device": "cpu", "workers": 0, "batch": 16,
          "strategy": "auto", "time_limit": 0}
    plan = plan_training(ws, ts, machine=machine, read_only=True)
    for seconds in plan.estimate_s.values():
        assert seconds is not None and math.isfinite(seconds) and seconds > 0, plan.estimate_s
    assert "-" not in plan.describe().split("about ")[1][:3]


def test_the_estimate_ignores_a_poisoned_timing_given_directly():
    import math

    from toolkit.model.machine import Machine, estimate_train, timings_from_history

    machine = Machine(cores=2, gpus=())
    records = [{"trainings": [_timing(machine, -5.0), _timing(machine, float("nan")), _timing(machine, 0.01, "abc")]}]
    estimate = estimate_train(100, 10, 64, "cpu", machine, "yolov8n.yaml", 10, measured=timings_from_history(records))
    assert math.isfinite(estimate.seconds) and estimate.seconds > 0 and "built-in table" in estimate.basis


# --- minor items -------------------------------------------------------------------------------------

def test_absurd_worker_and_batch_counts_are_refused_in_one_line(ws, tmp_path, capsys):
    import train_yolov8
    import training_analyzer
    from toolkit.data.synthetic import write_batch

    src = write_batch(tmp_path / "b", 2, size=64, seed=1).root
    assert dp.main(["--root", str(ws.root), "--source", str(src), "--workers", "100000"]) == 1
    assert training_analyzer.main(["--root", str(ws.root), "--scan", str(src), "--scan-batch", "100000000"]) == 1
    assert train_yolov8.main(["--root", str(ws.root), "--workers", "100000", "--epochs", "1"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 3 and "--workers" in errors[0] and "--scan-batch" in errors[1] and "workers" in errors[2]
    assert not load_manifest(ws)


def test_groups_csv_conflicts_and_rows_for_missing_images_are_noted(ws, tmp_path):
    src = write_lots(tmp_path / "batch", 12, 2, seed=5)
    images = sorted((src / "images").glob("*.jpg"))
    rows = ["image,plate"] + [f"images/{p.name},P{int(p.stem[3:6]) // 3}" for p in images]
    rows += [f"images/{images[0].name},P99", "images/gone_1.jpg,P1", "gone_2.jpg,P2"]
    (src / "groups.csv").write_text("\n".join(rows) + "\n")
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by="csv:plate"))
    notes = " ".join(result.notes)
    assert f"1 image(s) have rows of different lots (images/{images[0].name}: P0, P99)" in notes, result.notes
    assert "2 row(s) name images that are not in the batch (gone_2.jpg, images/gone_1.jpg)" in notes
    first = next(e for e in load_manifest(ws)["images"] if e["source"].endswith(images[0].name))
    assert first["group"] == "P0"


def test_yaml_nested_50000_deep_is_one_error_line(ws, tmp_path, capsys):
    """training.yaml, and an import source's data.yaml, nested 50,000 deep: one line, not a RecursionError."""
    import subprocess
    import sys

    from toolkit.data.synthetic import write_batch

    deep = "[" * 50_000 + "]" * 50_000
    src = write_batch(tmp_path / "b", 2, size=64, seed=1).root
    (src / "data.yaml").write_text(f"path: .\ntrain: images\nnames: {deep}\n")
    assert dp.main(["--root", str(ws.root), "--source", str(src)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "data.yaml" in errors[0] and "deep" in errors[0], errors
    ws.training_yaml.write_text(ws.training_yaml.read_text() + f"\nextra: {deep}\n")
    run = subprocess.run([sys.executable, str(Path(dp.__file__)), "--root", str(ws.root), "--check"],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "training.yaml" in lines[0] and "deep" in lines[0], lines


def test_a_run_killed_without_a_word_gets_its_history_line_from_the_next_run(ws, capsys):
    """A `both` run SIGKILLed mid-route leaves its marker and two run folders without summary.json: the next
    pipeline run writes its 'interrupted' history line naming those folders (kept for --resume)."""
    import os
    import time

    import training_pipeline
    from toolkit.core.run_history import mark_running, read_history

    mark_running(ws, "20260101-000000-000001", "2026-01-01T00:00:00Z")   # what the killed run left
    for route in ("finetune", "scratch"):
        (ws.runs / f"20260101-000001-{route}" / "weights").mkdir(parents=True)
    done = ws.runs / "20251231-000000-old"
    (done / "weights").mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    os.utime(done, (time.time() - 10 ** 8, time.time() - 10 ** 8))
    assert training_pipeline.main(["--root", str(ws.root), "--if-new-data"]) == 0
    [line] = [r for r in read_history(ws, last=10) if r["run"] == "20260101-000000-000001"]
    assert line["decision"] == "interrupted" and "killed" in line["error"]
    assert sorted(Path(p).name for p in line["unfinished_run_dirs"]) == ["20260101-000001-finetune",
                                                                        "20260101-000001-scratch"]
    assert not list((ws.root / "training").glob(".pipeline-running-*"))
    from toolkit.core.run_history import record_interrupted_runs
    from toolkit.promotion.registry import Registry

    assert record_interrupted_runs(Registry.load(ws)) == []   # written once
    assert len([r for r in read_history(ws, last=10) if r["run"] == "20260101-000000-000001"]) == 1


@pytest.mark.slow
def test_a_both_run_sigkilled_mid_route_gets_its_history_line(synthetic_workspace):
    """The real thing: a `training_pipeline.py --strategy both` SIGKILLed once its first route's run folder
    exists; the next run writes the 'interrupted' line naming the unfinished folder(s)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from toolkit.core.run_history import read_history

    ws = Workspace.at(synthetic_workspace)
    proc = subprocess.Popen([sys.executable, str(Path(dp.__file__).with_name("training_pipeline.py")), "--root",
                             str(ws.root), "--strategy", "both", "--epochs", "30", "--imgsz", "64", "--batch", "8",
                             "--device", "cpu", "--no-analyze"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (
            ws.runs.is_dir() and any((d / "weights").is_dir() or (d / "epochs.jsonl").exists() for d in ws.runs.iterdir())):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-1500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not read_history(ws, last=10)          # the killed run wrote nothing itself
    import training_pipeline

    assert training_pipeline.main(["--root", str(ws.root), "--if-new-data"]) == 0
    [line] = read_history(ws, last=10)[:1]
    assert line["decision"] == "interrupted" and "killed" in line["error"] and line["unfinished_run_dirs"]

"""training_analyzer.py: matching, priorities, export, scan, the command line."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import training_analyzer
from toolkit.memory.analysis import yolo_lines
from toolkit.memory.priorities import images_needed
from toolkit.memory.bank_aggregate import match_image
from toolkit.memory.memory_bank import read_memory_bank
from toolkit.data.synthetic import write_batch, write_memory_bank

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def line_workspace(tmp_path_factory):
    """A workspace whose memory bank logs 120 generated images: crazing weak, patches hallucinated."""
    root = tmp_path_factory.mktemp("analyzer_ws")
    batch = write_batch(root / "line3", n_images=120, size=128, seed=3)
    write_memory_bank(root / "memory-bank" / "detections.jsonl", batch, seed=3,
                      weak_class="crazing", false_positive_class="patches", review_fraction=0.5)
    return root, batch


def test_match_image_greedy_by_iou_with_confusions_and_misses():
    dets_cls = [0, 0, 1, 2]
    dets = [(0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (80, 80, 90, 90)]
    labels_cls = [0, 2, 1]
    labels = [(0, 0, 10, 10), (50, 50, 61, 61), (200, 200, 210, 210)]
    matches, false_pos, missed, confusions = match_image(dets_cls, dets, labels_cls, labels, 0.5)
    assert matches == [(0, 0)]                 # the exact box wins over the shifted one
    assert confusions == [(2, 1)]              # class 1 detected where the label says class 2
    assert sorted(false_pos) == [1, 2, 3]      # duplicate, confused, nothing there
    assert sorted(missed) == [1, 2]            # the confused label and the one never detected


def test_images_needed_grows_with_the_score_and_the_dataset():
    assert images_needed(2.0, None) == 0
    assert 0 < images_needed(20, None) < images_needed(60, None)
    assert images_needed(60, 4000) > images_needed(60, 0)
    assert images_needed(60, None) % 10 == 0


def test_yolo_lines_clip_to_the_image():
    text = yolo_lines([(1, -4.0, 10.0, 50.0, 30.0), (0, 5, 5, 5, 9)], 100, 50)
    assert text == "1 0.250000 0.400000 0.500000 0.400000\n"  # the degenerate box is dropped


def test_weak_and_false_positive_classes_rank_at_the_top(line_workspace):
    root, _ = line_workspace
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root))
    assert result.records == 120 and result.skipped_records == 0 and result.reviewed_images > 30
    top = {p["class"]: p for p in result.priorities[:2]}
    assert set(top) == {"crazing", "patches"}
    assert result.priorities[2]["score"] < 0.5 * min(p["score"] for p in top.values())
    crazing_reasons = " ".join(top["crazing"]["reasons"])
    assert "uncertain band 0.25-0.60" in crazing_reasons and "% of crazing detections" in crazing_reasons
    patches_reasons = " ".join(top["patches"]["reasons"])
    assert "reviewed precision of patches" in patches_reasons and "false positives" in patches_reasons
    assert top["crazing"]["images_needed"] > 0 and top["patches"]["images_needed"] > 0
    stats = result.classes["patches"]
    assert stats["reviewed"]["fp"] > stats["reviewed"]["tp"] * 0.5
    assert result.classes["crazing"]["uncertain_share"] == 1.0
    assert result.classes["crazing"]["reviewed"]["fn"] > 0
    assert sum(result.classes["scratches"]["confidence_histogram"]["counts"]) == result.classes["scratches"]["detections"]
    # the report: JSON with the DESIGN keys, markdown and the three plots
    data = json.loads(result.report.read_text())
    for key in ("records", "skipped_records", "classes", "priorities", "exported", "report"):
        assert key in data
    markdown = result.report.with_suffix(".md").read_text()
    assert sum(line.startswith("| crazing |") for line in markdown.splitlines()) == 1   # per-class table
    assert f"| 1 | {result.priorities[0]['class']} |" in markdown                     # priorities table
    assert sorted(p.name.rsplit("_", 1)[-1] for p in result.plots) == ["confidence.png", "reviewed.png", "weekly.png"]
    assert all(p.stat().st_size > 1000 for p in result.plots)
    assert result.exported == 0 and not any((root / "training" / "to_label").glob("*"))


def test_export_copies_prelabelled_images_and_reports_missing_ones(line_workspace, tmp_path):
    root, batch = line_workspace
    # a copy of the workspace whose source images exist only partly
    ws = tmp_path / "ws"
    shutil.copytree(root / "memory-bank", ws / "memory-bank")
    src = tmp_path / "line3"
    shutil.copytree(batch.root, src)
    bank_file = ws / "memory-bank" / "detections.jsonl"
    bank_file.write_text(bank_file.read_text().replace(str(batch.root), str(src)))
    records = [json.loads(line) for line in bank_file.read_text().splitlines()]
    gone = [r["image"] for i, r in enumerate(records) if i % 4 == 0]
    for image in gone:
        Path(image).unlink()
    before = sorted(p.name for p in (src / "images").iterdir())

    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=ws, export=12))
    assert result.exported == 12
    out = result.export_dir
    images = sorted((out / "images").iterdir())
    assert len(images) == 12 and (out / "classes.txt").read_text().split() == list(result.classes)
    by_image = {r["image"]: r for r in records}
    rows = list(csv.DictReader(open(out / "selection.csv", newline="")))
    assert len(rows) == 12 and all(r["reason"] for r in rows)
    assert rows[0]["reason"].startswith("uncertain")
    for row in rows:
        record = by_image[row["source"]]
        assert "review" not in record                     # reviewed images go to incoming instead
        label = out / "labels" / (Path(row["file"]).stem + ".txt")
        assert len(label.read_text().splitlines()) == len(record["detections"])
        assert (out / row["file"]).read_bytes() == Path(row["source"]).read_bytes()
    assert result.missing_images_count > 0 and set(result.missing_images) <= set(gone)
    # reviewed images with a file became a labelled YOLO batch
    reviewed = [r for r in records if "review" in r and r["image"] not in gone]
    batch_dir = result.incoming_batch
    assert batch_dir.parent == ws / "training" / "incoming" and result.reviewed_exported == len(reviewed)
    assert len(list((batch_dir / "images").iterdir())) == len(reviewed)
    for r in reviewed:
        label = batch_dir / "labels" / (Path(r["image"]).stem + ".txt")
        assert len(label.read_text().splitlines()) == len(r["review"]["labels"])
    assert sorted(p.name for p in (src / "images").iterdir()) == before  # sources untouched
    try:
        from toolkit.data.labels.read import read_source
    except ImportError:  # the preparer's reader is written in parallel
        return
    source = read_source(batch_dir, fmt="yolo")
    assert source.class_names == tuple(result.classes) and len(source.images) == len(reviewed)
    assert not source.problems and not any(i.problems for i in source.images)


def test_scan_appends_schema_records_with_a_trained_model(tiny_model, tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(tiny_model, root / "yolov8_model.pt")
    (root / "yolov8_model.json").write_text(json.dumps({"version": "7"}))
    folder = tmp_path / "unlabelled"
    write_batch(folder, n_images=10, size=64, seed=21)
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root, scan=folder / "images",
                                                                   scan_batch=4, scan_conf=0.001))
    assert result.scanned == 10 and result.records == 10 and result.skipped_records == 0
    lines = (root / "memory-bank" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == 10
    for line in lines:
        record = json.loads(line)
        assert record["source"] == "scan" and record["model_version"] == "7"
        assert record["image_width"] == 64 and record["image_height"] == 64
        assert Path(record["image"]).is_file()
        for det in record["detections"]:
            assert set(det) == {"class", "confidence", "bbox"} and 0 <= det["confidence"] <= 1
    bank = read_memory_bank(root / "memory-bank" / "detections.jsonl")
    assert bank.records == 10 and bank.skipped == 0 and len(bank.det_cls) > 0


def test_main_json_and_user_errors(line_workspace, tmp_path, capsys):
    root, _ = line_workspace
    assert training_analyzer.main(["--root", str(root), "--json", "-q", "--since", "2026-03-10",
                                   "--uncertain", "0.3,0.7"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["uncertain"] == [0.3, 0.7] and 0 < data["records"] < 120 and data["filtered_out"] > 0
    assert training_analyzer.main(["--root", str(root), "--uncertain", "0.7,0.3"]) == 1
    assert "uncertain band" in capsys.readouterr().err
    assert training_analyzer.main(["--root", str(tmp_path / "empty")]) == 1
    assert "memory bank not found" in capsys.readouterr().err


def test_help_does_not_import_heavy_modules():
    code = ("import sys; sys.argv=['x','--help']; import training_analyzer\n"
            "try:\n    training_analyzer.main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ultralytics', 'cv2', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_dataset_instances_from_the_manifest_or_the_label_files(line_workspace, tmp_path):
    from toolkit.core.datafile import write_dataset_yaml
    from toolkit.core.layout import Workspace
    from toolkit.data.synthetic import NEU_CLASSES

    root, _ = line_workspace
    ws = Workspace.at(tmp_path / "ws")
    shutil.copytree(root / "memory-bank", ws.memory_bank)
    write_dataset_yaml(ws, NEU_CLASSES)
    ws.datasets.mkdir(parents=True, exist_ok=True)
    images = [{"boxes": {name: 40 for name in NEU_CLASSES if name != "inclusion"} | {"inclusion": 1}, "split": "train"},
              {"boxes": {"inclusion": 500}, "split": "test"}]  # test instances do not count
    ws.manifest.write_text(json.dumps({"classes": list(NEU_CLASSES), "images": images}))
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=ws.root))
    assert list(result.classes) == list(NEU_CLASSES)            # model order from dataset.yaml
    assert result.classes["inclusion"]["dataset_instances"] == 1
    assert result.classes["scratches"]["dataset_instances"] == 40
    inclusion = next(p for p in result.priorities if p["class"] == "inclusion")
    assert any("of training instances (1)" in r for r in inclusion["reasons"])
    assert inclusion["parts"]["underrepresented"] > 0.9
    # without a manifest: YOLO label files of the train split, named by dataset.yaml
    ws.manifest.unlink()
    labels = ws.labels_dir("train")
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("5 0.5 0.5 0.1 0.1\n5 0.2 0.2 0.1 0.1\n0 0.5 0.5 0.2 0.2\n")
    (labels / "b.txt").write_text("")
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=ws.root))
    assert result.classes["scratches"]["dataset_instances"] == 2
    assert result.classes["crazing"]["dataset_instances"] == 1
    assert result.classes["inclusion"]["dataset_instances"] == 0


def _never_detects(root: Path, tmp_path: Path, missed: str, keep_reviews: bool) -> Path:
    """A workspace whose production never detects ``missed``, with a manifest saying how common it is."""
    from toolkit.core.datafile import write_dataset_yaml
    from toolkit.core.layout import Workspace
    from toolkit.data.synthetic import NEU_CLASSES

    ws = Workspace.at(tmp_path / f"ws_{missed}_{keep_reviews}")
    ws.memory_bank.mkdir(parents=True)
    lines = []
    for line in (root / "memory-bank" / "detections.jsonl").read_text().splitlines():
        record = json.loads(line)
        record["detections"] = [d for d in record["detections"] if d["class"] != missed]
        if not keep_reviews:
            record.pop("review", None)
        lines.append(json.dumps(record))
    ws.detections.write_text("\n".join(lines) + "\n")
    write_dataset_yaml(ws, NEU_CLASSES)
    ws.datasets.mkdir(parents=True, exist_ok=True)
    # 100 training images; 17 % of their boxes are the missed class
    images = [{"boxes": {missed: 1}, "split": "train"} for _ in range(17)]
    others = [c for c in NEU_CLASSES if c != missed]
    images += [{"boxes": {others[i % len(others)]: 1}, "split": "train"} for i in range(83)]
    ws.manifest.write_text(json.dumps({"classes": list(NEU_CLASSES), "images": images}))
    return ws.root


@pytest.mark.parametrize("keep_reviews", [False, True], ids=["dataset-prevalence", "reviewed-prevalence"])
def test_a_common_class_never_detected_ranks_in_the_top_two_with_a_reason(line_workspace, tmp_path, keep_reviews):
    root, _ = line_workspace
    ws = _never_detects(root, tmp_path, "scratches", keep_reviews)
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=ws))
    assert result.classes["scratches"]["detections"] == 0
    ranks = [p["class"] for p in result.priorities]
    assert "scratches" in ranks[:2], result.priorities
    top = next(p for p in result.priorities if p["class"] == "scratches")
    reason = top["reasons"][0]
    assert reason.startswith("0 detections in ") and reason.endswith("likely missed"), reason
    if keep_reviews:
        assert "reviewed image(s)" in reason and "of reviewed labels" in reason
        assert result.classes["scratches"]["prevalence"]["basis"] == "reviewed"
    else:
        assert "120 logged image(s), while 17% of the training boxes are scratches" in reason
        assert result.classes["scratches"]["prevalence"]["basis"] == "dataset"
    assert top["images_needed"] > 0 and not any("little evidence" in r for r in top["reasons"])
    assert result.classes["scratches"]["prevalence"]["missed"] == 1.0
    # classes detected at their usual rate are not called missed
    for name in ("pitted_surface", "rolled-in_scale"):
        assert result.classes[name]["prevalence"]["missed"] == 0.0
        assert not any("missed" in r for r in next(p for p in result.priorities if p["class"] == name)["reasons"])


def test_without_the_prevalence_the_missed_class_would_rank_last(line_workspace, tmp_path):
    """The PCB finding: with no dataset and no reviews nothing is expected, so no claim is made."""
    root, _ = line_workspace
    ws = _never_detects(root, tmp_path, "scratches", keep_reviews=False)
    from toolkit.core.layout import Workspace

    Workspace.at(ws).manifest.unlink()
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=ws))
    assert result.classes["scratches"]["prevalence"] is None
    top = next(p for p in result.priorities if p["class"] == "scratches")
    assert top["score"] == 0 and any("little evidence: 0 detection(s)" in r for r in top["reasons"])


def test_export_keeps_distinct_neu_images_drops_near_duplicates_and_refuses_non_images(neu_dir, tmp_path):
    """NEU-DET's distinct steel images all go out; a re-encoded and a shifted copy do not; paths in the
    memory bank that are not image files are refused without being opened; CSV cells cannot be formulas."""
    import os

    import cv2
    import numpy as np

    root = tmp_path / "ws"
    bank_dir = root / "memory-bank"
    bank_dir.mkdir(parents=True)
    known_pairs = {"patches_105.jpg", "pitted_surface_292.jpg"}   # NEU-DET's own exact / near duplicates
    distinct = [p for p in sorted((neu_dir / "IMAGES").glob("*.jpg"))[::30] if p.name not in known_pairs]
    copies = tmp_path / "copies"
    copies.mkdir()
    grey = cv2.imread(str(distinct[0]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(copies / "reencoded.jpg"), grey, [cv2.IMWRITE_JPEG_QUALITY, 60])
    grey = cv2.imread(str(distinct[1]), cv2.IMREAD_GRAYSCALE)
    moved = cv2.warpAffine(grey, np.float32([[1, 0, 2], [0, 1, 2]]), grey.shape[::-1], borderMode=cv2.BORDER_REFLECT)
    cv2.imwrite(str(copies / "shifted.jpg"), moved, [cv2.IMWRITE_JPEG_QUALITY, 90])
    shutil.copy(neu_dir / "IMAGES" / "scratches_7.jpg", bank_dir / "=HYPERLINK(evil).jpg")  # a formula-like name
    secret = tmp_path / "secret"                                   # a valid JPEG under a non-image name
    shutil.copy(distinct[3], secret)
    (tmp_path / "link.jpg").symlink_to(secret)                     # an image name pointing at it
    os.mkfifo(tmp_path / "pipe.jpg")                               # would hang if opened
    paths = [str(p) for p in distinct] + [str(copies / "reencoded.jpg"), str(copies / "shifted.jpg"),
                                          "=HYPERLINK(evil).jpg", str(secret), str(tmp_path / "link.jpg"),
                                          str(tmp_path / "pipe.jpg"), "/etc/shadow"]
    lines = []
    for i, path in enumerate(paths):  # every record uncertain; copies and oddities come after the originals
        conf = 0.42 - 0.0005 * i
        lines.append(json.dumps({"timestamp": f"2026-03-02T{i % 24:02d}:00:00Z", "image": path,
                                 "detections": [{"class": "crazing", "confidence": conf, "bbox": [10, 10, 60, 60]}]}))
    (bank_dir / "detections.jsonl").write_text("\n".join(lines) + "\n")

    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root, export=len(paths)))
    assert result.near_duplicates_skipped == 2            # the re-encoded and the shifted copy
    assert result.exported == len(distinct) + 1           # not one distinct steel image dropped
    exported = sorted(p.read_bytes() for p in (result.export_dir / "images").iterdir())
    assert exported == sorted(p.read_bytes() for p in [*distinct, bank_dir / "=HYPERLINK(evil).jpg"])
    refused = dict(item.split(": ", 1) for item in result.refused_images)
    assert set(refused) == {str(secret), str(tmp_path / "link.jpg"), str(tmp_path / "pipe.jpg"), "/etc/shadow"}
    assert "not opened" in refused["/etc/shadow"] and "not opened" in refused[str(tmp_path / "link.jpg")]
    assert "not opened" in refused[str(tmp_path / "pipe.jpg")] and result.refused_images_count == 4
    text = (result.export_dir / "selection.csv").read_text()
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in csv.reader(text.splitlines()) for cell in row)
    rows = list(csv.DictReader(text.splitlines()))
    assert "'=HYPERLINK(evil).jpg" in {r["source"] for r in rows}
    assert all(r["prelabel_trust"] == "low" and "below 0.60" in r["prelabel_notes"] for r in rows)
    assert all(r["prelabels"] == "1" and r["prelabel_min_confidence"] for r in rows)
    assert "refused (not image files): 4" in result.report.with_suffix(".md").read_text()


def test_csv_safe_escapes_formula_cells():
    from toolkit.memory.analysis import csv_safe

    assert [csv_safe(v) for v in ("=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "ok", 3)] == \
        ["'=1+1", "'+cmd", "'-2", "'@SUM(A1)", "'\tx", "ok", 3]


def test_charts_from_the_helper_process_match_in_process_ones_and_survive_its_death(line_workspace, tmp_path):
    from toolkit.memory.analysis import analyze_memory_bank
    from toolkit.memory.analysis_charts import ChartWorker, chart_paths

    root, _ = line_workspace
    analysis = analyze_memory_bank(read_memory_bank(root / "memory-bank" / "detections.jsonl"), (0.25, 0.6), 0.5)
    outputs = {}
    for mode in ("helper", "in-process", "helper-killed"):
        json_path = tmp_path / mode / "analyze.json"
        with ChartWorker(background=mode != "in-process") as charts:
            if mode == "helper-killed":
                assert charts._proc is not None
                charts._proc.kill()
                charts._proc.join()
            announced = charts.submit(analysis, json_path)
            drawn = charts.result()
        assert drawn == announced == chart_paths(analysis, json_path) and len(drawn) == 3
        assert all(p.stat().st_size > 1000 for p in drawn)
        outputs[mode] = [p.name for p in drawn]
    assert outputs["helper"] == outputs["in-process"] == outputs["helper-killed"]


def test_class_weight_power_shares_picks_by_score_or_equally(line_workspace):
    from toolkit.memory.analysis import analyze_memory_bank, candidate_order

    root, _ = line_workspace
    bank = read_memory_bank(root / "memory-bank" / "detections.jsonl")
    analysis = analyze_memory_bank(bank, (0.25, 0.6), 0.5)
    for p in analysis.priorities:   # crazing 4x as urgent as patches (the two with uncertain detections)
        p["score"] = {"crazing": 60.0, "patches": 15.0}.get(p["class"], 0.0)

    def first_picks(power: float, n: int = 5) -> list[str]:
        picks = [r.split()[1] for _, r in candidate_order(bank, analysis, list(analysis.classes), power)
                 if r.startswith("uncertain ")]
        return picks[:n]

    by_score, equal = first_picks(1.0), first_picks(0.0)
    assert by_score.count("crazing") >= 4                      # 4:1 by score
    assert equal.count("crazing") == 3 and equal.count("patches") == 2   # turn about

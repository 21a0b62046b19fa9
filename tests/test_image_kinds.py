"""Every image kind a line camera saves goes through the whole loop, or is refused at import (issue 18).

One workspace holds every kind in every split (2 train, 1 val, 1 test image each, 64 px): import ->
train (1 epoch) -> compare -> promote -> ``training_analyzer.py --scan`` -> ``--export`` ->
``ProductionModel.detect``. One training over all kinds is honest here: ultralytics loads each
file on its own, and the test checks per kind that its files reached every stage (the training
label cache, the scored test split, the scan records, the export, the detection).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dataset_preparer
import model_comparator
import setup_training
import train_yolov8
import training_analyzer
import training_pipeline
from toolkit.data.synthetic import NEU_CLASSES, _yolo_lines, render_image

REPO = Path(__file__).resolve().parent.parent

KINDS = {  # kind -> file suffix
    "jpeg": ".jpg", "jpeg_exif_rotated": ".jpg", "png_rgb": ".png", "png_gray": ".png", "png_16bit": ".png",
    "bmp": ".bmp", "tiff_gray": ".tif", "tiff_16bit": ".tiff", "webp": ".webp",
}
SPLITS = (("train", 2), ("val", 1), ("test", 1))


def write_kind(img: np.ndarray, path: Path, kind: str) -> None:
    """``img`` (BGR, upright, as labelled) saved as ``kind``."""
    import cv2
    from PIL import Image

    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if kind == "jpeg_exif_rotated":  # raw pixels turned left; EXIF 6 says: show them turned right (upright)
        raw = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)).save(path, "JPEG", exif=exif, quality=95)
    elif kind in ("png_gray", "tiff_gray"):
        assert cv2.imwrite(str(path), grey)
    elif kind in ("png_16bit", "tiff_16bit"):
        assert cv2.imwrite(str(path), grey.astype(np.uint16) * 257)
    elif kind == "tiff_float":
        Image.fromarray(grey.astype(np.float32) / 255).save(path)
    else:
        assert cv2.imwrite(str(path), img)


def write_kinds_batch(dest: Path, kinds, size: int = 64, seed: int = 5) -> None:
    """A YOLO batch with train/val/test folders; file names start with their kind."""
    rng = np.random.default_rng(seed)
    i = 0
    for split, n in SPLITS:
        for sub in ("images", "labels"):
            (dest / split / sub).mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            for _ in range(n):
                img, boxes = render_image(rng, size, NEU_CLASSES, [i % len(NEU_CLASSES)])
                stem = f"{kind}-{i:03d}"
                write_kind(img, dest / split / "images" / f"{stem}{KINDS.get(kind, '.tif')}", kind)
                (dest / split / "labels" / f"{stem}.txt").write_text(_yolo_lines(size, size, boxes))
                i += 1
    (dest / "classes.txt").write_text("\n".join(NEU_CLASSES) + "\n")


def kind_of(path: str | Path) -> str:
    return Path(path).name.split("-")[0]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The whole loop over one batch of every kind; what each stage saw, by file name."""
    from ultralytics.data.utils import load_dataset_cache_file

    from toolkit.memory.detection_api import ProductionModel
    from toolkit.data.eval_split import load_split

    tmp = tmp_path_factory.mktemp("kinds")
    root, batch = tmp / "ws", tmp / "batch"
    root.mkdir()
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_kinds_batch(batch, KINDS)
    assert dataset_preparer.main(["--root", str(root), "--source", str(batch), "--keep-split", "-q"]) == 0
    assert train_yolov8.main(["--root", str(root), "--from", "scratch", "--epochs", "1", "--imgsz", "64",
                              "--batch", "8", "--device", "cpu", "-q"]) == 0
    best = next((root / "training" / "runs").glob("*/weights/best.pt"))
    assert model_comparator.main(["--root", str(root), "--candidates", str(best), "-q"]) == 0
    compare = json.loads(sorted((root / "training" / "reports").glob("compare_*.json"))[-1].read_text())
    # a 1-epoch model is below min_first_map: promoting it anyway is the user's explicit choice
    assert training_pipeline.main(["--root", str(root), "--candidate", str(best), "--force", "--no-analyze",
                                   "-q"]) == 0
    scan_dir = batch / "test" / "images"
    assert training_analyzer.main(["--root", str(root), "--scan", str(scan_dir), "--export", "20", "-q"]) == 0
    records = [json.loads(line) for line in (root / "memory-bank" / "detections.jsonl").read_text().splitlines()]
    exported = list((root / "training" / "to_label").glob("*/images/*"))
    model = ProductionModel.load(root)
    detections = {kind_of(f): model.detect(f) for f in scan_dir.iterdir()}
    train_cache = load_dataset_cache_file(root / "training" / "datasets" / "labels" / "train.cache")
    manifest = json.loads((root / "training" / "datasets" / "manifest.json").read_text())
    return {
        "manifest": [kind_of(i["source"]) for i in manifest["images"]],
        "trained": [kind_of(label["im_file"]) for label in train_cache["labels"]],
        "test_split": [kind_of(p) for p in load_split(root / "training" / "configs" / "dataset.yaml", "test").images],
        "compare": compare,
        "scanned": {kind_of(r["image"]): r for r in records},
        "exported": [kind_of(p) for p in exported],
        "detected": detections,
    }


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_goes_through_the_whole_loop(loop, kind):
    assert loop["manifest"].count(kind) == sum(n for _, n in SPLITS), "imported"
    assert loop["trained"].count(kind) == 2, "in ultralytics' training label cache"
    assert loop["test_split"].count(kind) == 1, "scored on the test split, not left out"
    assert loop["compare"]["skipped"] == [] and loop["compare"]["images"] == len(KINDS)
    record = loop["scanned"][kind]
    assert (record["image_width"], record["image_height"]) == (64, 64), "--scan read it"
    assert kind in loop["exported"], "--export copied it"
    found = loop["detected"][kind]
    assert (found["image_width"], found["image_height"]) == (64, 64) and "detections" in found


def test_a_kind_opencv_cannot_read_is_refused_at_import_in_one_line_naming_it(tmp_path, capsys):
    """A 32-bit float TIFF (some measuring cameras): OpenCV, which training and detection use,
    cannot decode it; the import says so per file, and nothing of it reaches the dataset."""
    root = tmp_path / "ws"
    root.mkdir()
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    write_kinds_batch(tmp_path / "batch", ["jpeg"] * 5 + ["tiff_float"])  # under max_bad_fraction
    capsys.readouterr()
    assert dataset_preparer.main(["--root", str(root), "--source", str(tmp_path / "batch"), "--keep-split",
                                  "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    reasons = {kind_of(p["path"]): p["reason"] for p in result["rejected"]}
    assert set(reasons) == {"tiff_float"}
    assert "32-bit float TIFF" in reasons["tiff_float"] and "8- or 16-bit" in reasons["tiff_float"]
    assert "WARN" not in captured.err  # OpenCV's own complaint does not reach the user
    manifest = json.loads((root / "training" / "datasets" / "manifest.json").read_text())
    assert {kind_of(i["source"]) for i in manifest["images"]} == {"jpeg"}


def test_installed_pillow_and_opencv_are_in_the_range_requirements_allow():
    """The matrix above ran with these versions: requirements.txt must allow them (and name both)."""
    import cv2
    import PIL
    from packaging.requirements import Requirement

    reqs = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            reqs[req.name.lower()] = req
    assert "pillow" in reqs and "opencv-python" in reqs
    assert reqs["pillow"].specifier.contains(PIL.__version__), PIL.__version__
    assert reqs["opencv-python"].specifier.contains(cv2.__version__), cv2.__version__


def test_detect_on_a_kind_opencv_cannot_read_names_the_kind_not_an_index_error(tmp_path, tiny_model):
    """The line's detection service handed a 32-bit float TIFF: ultralytics fails deep inside with an
    IndexError; ``detect`` says what the file is and what to save it as (a ValueError, one line).
    A readable TIFF beside it still gives its record, and a missing file stays FileNotFoundError."""
    from toolkit.memory.detection_api import ProductionModel, UnreadableImage

    root = tmp_path / "ws"
    root.mkdir()
    (root / "yolov8_model.pt").write_bytes(tiny_model.read_bytes())
    model = ProductionModel.load(root)
    img, _ = render_image(np.random.default_rng(3), 64, NEU_CLASSES, [0])
    write_kind(img, tmp_path / "float.tif", "tiff_float")
    write_kind(img, tmp_path / "sixteen.tiff", "tiff_16bit")
    with pytest.raises(UnreadableImage) as caught:
        model.detect(tmp_path / "float.tif")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message
    assert "float.tif" in message and "32-bit float TIFF" in message and "8- or 16-bit" in message
    record = model.detect(tmp_path / "sixteen.tiff")
    assert (record["image_width"], record["image_height"]) == (64, 64)
    with pytest.raises(FileNotFoundError):
        model.detect(tmp_path / "gone.tif")

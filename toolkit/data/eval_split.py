"""One split of a dataset as ``ultralytics val`` finds it: image files, labels, shapes.

Images come from the data yaml's split entry (folders or .txt lists), labels by ultralytics'
``/images/`` -> ``/labels/`` convention, read with its checks (a broken label leaves the image
out, with the reason); shapes are as OpenCV decodes them (EXIF rotation applied).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.core.datafile import read_data_yaml
from toolkit.core.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}


@dataclass(frozen=True)
class SplitData:
    """Images and ground truth of one split, in ultralytics' file order."""

    names: tuple[str, ...]
    split: str
    images: tuple[Path, ...]
    shapes: tuple[tuple[int, int], ...]      # (height, width) as decoded (EXIF-rotated)
    target_cls: tuple[np.ndarray, ...]       # per image (n,) int
    target_boxes: tuple[np.ndarray, ...]     # per image (n, 4) xyxy, normalised 0..1
    skipped: tuple[dict[str, str], ...]      # {"path", "reason"} of images left out
    fingerprint: str                         # sha256 of file names, sizes and label contents

    def __len__(self) -> int:
        return len(self.images)



def _resolve_split_paths(data_yaml: Path, data: Mapping[str, Any], split: str) -> list[Path]:
    entry = data.get(split)
    if not entry:
        known = ", ".join(k for k in ("train", "val", "test") if data.get(k))
        raise UserError(f"{data_yaml} has no '{split}:' split (it has: {known or 'none'}); "
                        "choose one with --split or import a test split with dataset_preparer.py")
    base = Path(data.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = (data_yaml.parent / base).resolve()
    files: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(item)
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(f if f.is_absolute() else (p.parent / f).resolve())
        else:
            raise UserError(f"{data_yaml}: split '{split}' points to {p}, which does not exist; "
                            "fix the data yaml or rerun dataset_preparer.py")
    # ultralytics sorts the file list the same way, which fixes the batch composition
    return sorted({f for f in files if f.suffix.lower() in IMAGE_SUFFIXES}, key=lambda f: str(f))


def label_path_for(image: Path) -> Path:
    """ultralytics' convention: the last ``/images/`` of the path becomes ``/labels/``, suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def read_yolo_label(path: Path, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, normalised xyxy boxes) of a YOLO label file; ValueError says what is wrong.

    Mirrors ultralytics' checks: polygons become their bounding box, duplicate rows count once,
    coordinates outside 0..1 or an unknown class make the image unusable.
    """
    if not path.is_file():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)
    boxes = []
    for row in rows:
        try:
            values = [float(v) for v in row]
        except ValueError:
            raise ValueError(f"label line {' '.join(row)!r} is not numbers") from None
        if len(values) == 5:
            c, x, y, w, h = values
            boxes.append([c, x - w / 2, y - h / 2, x + w / 2, y + h / 2, x, y, w, h])
        elif len(values) >= 7 and len(values) % 2 == 1:  # polygon: class x1 y1 x2 y2 ...
            pts = np.array(values[1:]).reshape(-1, 2)
            x1, y1 = pts.min(0)
            x2, y2 = pts.max(0)
            boxes.append([values[0], x1, y1, x2, y2, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise ValueError(f"label line {' '.join(row)!r} needs 5 values (class x y w h)")
    arr = np.array(boxes, dtype=np.float32)
    xywh = arr[:, 5:9]
    if (xywh < 0).any() or (xywh > 1).any() or (arr[:, 0] < 0).any():
        raise ValueError("label coordinates outside 0..1 (YOLO labels are normalised to the image size)")
    if (arr[:, 0] >= nc).any() or (arr[:, 0] != np.round(arr[:, 0])).any():
        raise ValueError(f"label class {int(arr[:, 0].max())} is not one of the {nc} classes of the data yaml")
    _, keep = np.unique(arr[:, [0, 5, 6, 7, 8]], axis=0, return_index=True)
    arr = arr[np.sort(keep)]
    return arr[:, 0].astype(np.int64), np.clip(arr[:, 1:5], 0, 1)


def _image_shape(path: Path) -> tuple[int, int]:
    """(height, width) as OpenCV will decode it (EXIF rotation applied); raises on a broken file."""
    from PIL import Image

    with Image.open(path) as im:  # Pillow (>= 12 for PNG) refuses verify() once anything else was read
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return h, w


def read_class_names_of(data_yaml: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    data, names = read_data_yaml(data_yaml)
    return data, tuple(names)


def load_split(data_yaml: str | Path, split: str, subset: int | None = None) -> SplitData:
    """The images and labels of ``split`` in ``data_yaml`` (first ``subset`` by name when given).

    Nothing is written. An image that cannot be read or whose label is broken is left out and
    listed in ``skipped`` with the reason, as ultralytics leaves out 'corrupt' images.
    """
    data_yaml = Path(data_yaml).resolve()
    if not data_yaml.is_file():
        raise UserError(f"data yaml not found: {data_yaml}; run setup_training.py and dataset_preparer.py, or pass --data")
    data, names = read_class_names_of(data_yaml)
    files = _resolve_split_paths(data_yaml, data, split)
    if subset is not None:
        if subset < 1:
            raise UserError(f"--subset {subset}: give a positive number of images")
        files = files[:subset]
    images, shapes, classes, boxes, skipped = [], [], [], [], []
    digest = hashlib.sha256()
    for f in files:
        label = label_path_for(f)
        try:
            shape = _image_shape(f)
            cls, box = read_yolo_label(label, len(names))
        except Exception as exc:  # unreadable image or broken label: left out, said why
            skipped.append({"path": str(f), "reason": str(exc)})
            logger.warning("left out %s: %s", f, exc)
            continue
        images.append(f)
        shapes.append(shape)
        classes.append(cls)
        boxes.append(box)
        digest.update(f"{f.name}|{f.stat().st_size}|".encode())
        digest.update(label.read_bytes() if label.is_file() else b"-")
    if not images:
        raise UserError(f"no usable images in split '{split}' of {data_yaml}; import a test split first "
                        "(dataset_preparer.py) or choose another with --split")
    digest.update(json.dumps(names).encode())
    return SplitData(names, split, tuple(images), tuple(shapes), tuple(classes), tuple(boxes),
                     tuple(skipped), digest.hexdigest())

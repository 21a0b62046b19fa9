"""Deterministic synthetic steel-surface images with NEU-like defects, and a matching memory bank.

The demo and the tests need labelled images that a model can learn from in a minute on a CPU,
without shipping binaries. Each image is a grey rolled-steel texture (horizontal rolling
streaks + grain noise) with one or more defects drawn to resemble the six NEU-DET classes.
Defects are drawn with strong contrast so that even a tiny model at ``imgsz=64`` learns them.

Usage (from code):
    write_batch("incoming/batch1", n_images=60, fmt="yolo", seed=1)
    write_memory_bank("memory-bank/detections.jsonl", batch, seed=1)
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np

logger = logging.getLogger(__name__)

NEU_CLASSES: tuple[str, ...] = (
    "crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches",
)


@dataclass(frozen=True)
class Box:
    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class SyntheticImage:
    path: Path
    width: int
    height: int
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class SyntheticBatch:
    root: Path
    fmt: str
    classes: tuple[str, ...]
    images: tuple[SyntheticImage, ...] = field(default_factory=tuple)

    @property
    def boxes_per_class(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for image in self.images:
            for box in image.boxes:
                counts[self.classes[box.cls]] += 1
        return counts


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(110, 150)
    rows = rng.normal(0, 6, size=(size, 1))  # rolling streaks run along the strip
    rows = np.convolve(rows[:, 0], np.ones(3) / 3, mode="same")[:, None]
    grain = rng.normal(0, 5, size=(size, size))
    return np.clip(base + rows + grain, 0, 255).astype(np.float32)


def _draw_defect(cv2, img: np.ndarray, rng: np.random.Generator, cls_name: str, size: int) -> tuple[float, float, float, float]:
    """Draw one defect in place; return its box (x1, y1, x2, y2) in pixels."""
    dark, bright = 35.0, 230.0
    s = size
    if cls_name == "scratches":  # long bright straight lines, slightly slanted
        x = rng.uniform(0.2, 0.8) * s
        y1 = rng.uniform(0.03, 0.4) * s
        y2 = min(y1 + rng.uniform(0.45, 0.9) * s, 0.97 * s)
        dx = rng.uniform(-0.2, 0.2) * s
        cv2.line(img, (int(x), int(y1)), (int(x + dx), int(y2)), bright, max(2, s // 40))
        xa, xb = sorted((x, x + dx))
        return xa - 3, y1 - 2, xb + 3, y2 + 2
    # a region for the area-like classes
    w = rng.uniform(0.25, 0.45) * s
    h = rng.uniform(0.25, 0.45) * s
    x1 = rng.uniform(0.02 * s, s - w - 0.02 * s)
    y1 = rng.uniform(0.02 * s, s - h - 0.02 * s)
    cx, cy = x1 + w / 2, y1 + h / 2
    if cls_name == "crazing":  # a web of short dark cracks
        for _ in range(14):
            px, py = rng.uniform(x1, x1 + w), rng.uniform(y1, y1 + h)
            ang = rng.uniform(0, math.pi)
            ln = rng.uniform(0.15, 0.35) * min(w, h)
            qx = np.clip(px + ln * math.cos(ang), x1, x1 + w)
            qy = np.clip(py + ln * math.sin(ang), y1, y1 + h)
            cv2.line(img, (int(px), int(py)), (int(qx), int(qy)), dark + 20, 1)
    elif cls_name == "inclusion":  # a dark elongated blob along the rolling direction
        cv2.ellipse(img, (int(cx), int(cy)), (int(w / 2), max(2, int(h / 6))), 0, 0, 360, dark, -1)
        h = max(4, h / 3)
        y1 = cy - h / 2
    elif cls_name == "patches":  # a large smooth dark patch
        cv2.ellipse(img, (int(cx), int(cy)), (int(w / 2), int(h / 2)), float(rng.uniform(0, 180)), 0, 360, 70.0, -1)
    elif cls_name == "pitted_surface":  # a cluster of small dark pits
        for _ in range(25):
            px, py = rng.uniform(x1 + 2, x1 + w - 2), rng.uniform(y1 + 2, y1 + h - 2)
            cv2.circle(img, (int(px), int(py)), max(1, s // 70), dark, -1)
    elif cls_name == "rolled-in_scale":  # bright flakes pressed into the surface
        for _ in range(10):
            px, py = rng.uniform(x1 + 3, x1 + w - 3), rng.uniform(y1 + 3, y1 + h - 3)
            cv2.ellipse(img, (int(px), int(py)), (max(2, s // 30), max(1, s // 60)), 0, 0, 360, bright - 20, -1)
    else:
        raise ValueError(f"unknown synthetic class {cls_name!r}")
    return x1, y1, x1 + w, y1 + h


def render_image(rng: np.random.Generator, size: int, class_names: Sequence[str],
                 classes_here: Sequence[int]) -> tuple[np.ndarray, list[Box]]:
    """One grey 3-channel image with the given defect classes drawn on it."""
    import cv2

    img = _texture(rng, size)
    boxes = []
    for cls in classes_here:
        x1, y1, x2, y2 = _draw_defect(cv2, img, rng, class_names[cls], size)
        boxes.append(Box(cls, max(0.0, x1), max(0.0, y1), min(float(size), x2), min(float(size), y2)))
    img = cv2.GaussianBlur(img, (3, 3), 0)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), boxes


def _voc_xml(filename: str, width: int, height: int, boxes: Sequence[Box], names: Sequence[str]) -> str:
    objects = "".join(
        f"\t<object>\n\t\t<name>{escape(names[b.cls])}</name>\n\t\t<difficult>0</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{int(round(b.x1))}</xmin>\n\t\t\t<ymin>{int(round(b.y1))}</ymin>\n"
        f"\t\t\t<xmax>{int(round(b.x2))}</xmax>\n\t\t\t<ymax>{int(round(b.y2))}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for b in boxes
    )
    return (f"<annotation>\n\t<filename>{escape(filename)}</filename>\n\t<size>\n\t\t<width>{width}</width>\n"
            f"\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n{objects}</annotation>\n")


def _yolo_lines(width: int, height: int, boxes: Sequence[Box]) -> str:
    lines = []
    for b in boxes:
        xc, yc = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        bw, bh = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
        lines.append(f"{b.cls} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_batch(dest: str | Path, n_images: int, fmt: str = "yolo", size: int = 128, seed: int = 0,
                classes: Sequence[str] = NEU_CLASSES, background_every: int = 0,
                prefix: str = "syn") -> SyntheticBatch:
    """Write ``n_images`` labelled images to ``dest`` and return what was written.

    ``fmt="yolo"``: ``dest/images/*.jpg`` + ``dest/labels/*.txt`` and ``dest/classes.txt``;
    ``fmt="voc"``: ``dest/images/*.jpg`` + ``dest/annotations/*.xml``.
    Classes cycle so every class is equally represented; every third image has a second defect.
    ``background_every=k`` makes every k-th image defect-free (empty label file / no objects).
    """
    import cv2

    if fmt not in ("yolo", "voc"):
        raise ValueError("fmt must be 'yolo' or 'voc'")
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    label_dir = dest / ("labels" if fmt == "yolo" else "annotations")
    label_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = tuple(classes)
    images = []
    for i in range(n_images):
        if background_every and (i + 1) % background_every == 0:
            here: list[int] = []
        else:
            here = [i % len(names)]
            if i % 3 == 2:
                here.append(int(rng.integers(len(names))))
        img, boxes = render_image(rng, size, names, here)
        stem = f"{prefix}_{seed}_{i:05d}"
        img_path = dest / "images" / f"{stem}.jpg"
        cv2.imwrite(str(img_path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if fmt == "yolo":
            (label_dir / f"{stem}.txt").write_text(_yolo_lines(size, size, boxes))
        else:
            (label_dir / f"{stem}.xml").write_text(_voc_xml(img_path.name, size, size, boxes, names))
        images.append(SyntheticImage(img_path, size, size, tuple(boxes)))
    if fmt == "yolo":
        (dest / "classes.txt").write_text("\n".join(names) + "\n")
    logger.debug("wrote %d synthetic images to %s", n_images, dest)
    return SyntheticBatch(dest, fmt, names, tuple(images))


def write_memory_bank(path: str | Path, batch: SyntheticBatch, seed: int = 0, weak_class: str = "crazing",
                      false_positive_class: str = "patches", review_fraction: float = 0.5,
                      start: datetime | None = None, model_version: str = "1.0",
                      source: str = "line3") -> int:
    """Append one detection record per image of ``batch`` to ``path`` (DESIGN.md schema).

    The simulated production model is good on most classes, unsure about ``weak_class``
    (confidence 0.25-0.55, a third of them missed) and hallucinates ``false_positive_class`` on
    some images; about ``review_fraction`` of the records carry an operator review (the truth).
    Returns the number of records written.
    """
    rng = np.random.default_rng(seed)
    names = batch.classes
    start = start or datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a", encoding="utf-8") as fh:
        for i, image in enumerate(batch.images):
            detections = []
            for b in image.boxes:
                name = names[b.cls]
                if name == weak_class:
                    if rng.random() < 0.33:
                        continue
                    conf = rng.uniform(0.25, 0.55)
                else:
                    conf = rng.uniform(0.7, 0.97)
                jitter = rng.normal(0, 1.5, 4)
                detections.append({"class": name, "confidence": round(float(conf), 4),
                                   "bbox": [round(float(v), 1) for v in (b.x1 + jitter[0], b.y1 + jitter[1], b.x2 + jitter[2], b.y2 + jitter[3])]})
            if false_positive_class in names and rng.random() < 0.3:
                x, y = rng.uniform(0, image.width * 0.6), rng.uniform(0, image.height * 0.6)
                detections.append({"class": false_positive_class, "confidence": round(float(rng.uniform(0.4, 0.8)), 4),
                                   "bbox": [round(x, 1), round(y, 1), round(x + image.width * 0.3, 1), round(y + image.height * 0.3, 1)]})
            when = start + timedelta(hours=6 * i)  # spread over weeks for the trend
            record = {"timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "image": str(image.path),
                      "model_version": model_version, "source": source,
                      "image_width": image.width, "image_height": image.height, "detections": detections}
            if rng.random() < review_fraction:
                record["review"] = {"labels": [{"class": names[b.cls], "bbox": [round(b.x1, 1), round(b.y1, 1), round(b.x2, 1), round(b.y2, 1)]}
                                               for b in image.boxes], "reviewer": "qa1"}
            fh.write(json.dumps(record) + "\n")
            n += 1
    return n

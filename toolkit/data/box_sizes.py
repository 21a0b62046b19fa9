"""Can the model see the defects at the size it trains at? Each class's box sizes at a planned imgsz.

Ultralytics loads an image resized so that its long side is ``imgsz`` (aspect kept, then padded:
``load_image``/``LetterBox``), so a box's sides at the training size are its sides in the image
times ``imgsz / max(width, height)``. The check reads the managed dataset (the manifest's image
sizes and the YOLO label files it lists) and looks at each box's **short side** there.

Why 16 px (``MIN_SIDE_PX``): YOLOv8's finest feature map has stride 8, one cell per 8x8 pixels of
the input, and its assigner trains a box only from the grid points whose centres lie inside it. A
box under 16 px on its short side spans fewer than two cells across: it holds one or two such points
that way (none at all under 8 px), so it gets few positive anchors, and after three 2x
downsamplings it is a detail of a cell or two; a localisation error of one pixel per side already
costs a sixth of the IoU at 16 px and half at 5.5 px. COCO's "small" objects (under 32x32) score
about half the AP of the others for the same reason. Such boxes are found late or not at all. (A
PCB line trained at 320 px with defects of about 15 px short side, 10% under 13 px, let 97% of
four defect kinds pass: this check names it.) Why 10% (``RISK_SHARE``): one defect in ten of a class missed by
construction is an escape rate a line notices; below it, a few odd labels would raise alarms.
Both are defaults to start from, measured on nothing but the geometry above.

The size suggested is the smallest multiple of 32 (ultralytics rounds imgsz to the stride 32)
that brings ``SHOW_SHARE`` (90%) of the class's boxes to ``MIN_SIDE_PX`` or more, at most the
images' own size (upscaling past it adds pixels, not detail) - or 640, ultralytics' default, for
images smaller than that: small images are trained upscaled (NEU-DET's 200 px images train at 640,
where its defects span many cells), so a size up to 640 is always a fair suggestion.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

MIN_SIDE_PX = 16.0      # two cells of YOLOv8's finest stride (P3, 8 px)
RISK_SHARE = 0.10       # a class is at risk when this share of its boxes is under MIN_SIDE_PX
SHOW_SHARE = 0.90       # the suggested size shows this share of the class's boxes
MIN_BOXES = 3           # fewer boxes of a class: no verdict
STRIDE = 32
UPSCALE_TO = 640        # smaller images may be suggested up to ultralytics' default size


@dataclass(frozen=True)
class ClassSizes:
    """One class's boxes at ``imgsz``: short sides in pixels, the share under MIN_SIDE_PX, a size that shows them."""

    name: str
    boxes: int
    imgsz: int
    median_px: float
    p10_px: float
    share_small: float          # share of boxes whose short side is under MIN_SIDE_PX at imgsz
    suggested_imgsz: int | None  # smallest multiple of 32 showing SHOW_SHARE of them (None: no size up to max_imgsz)
    max_imgsz: int              # the images' own size (largest long side) rounded down to 32, at least 640
    share_small_at_max: float   # what stays small even at max_imgsz

    @property
    def at_risk(self) -> bool:
        return self.boxes >= MIN_BOXES and self.share_small >= RISK_SHARE

    def words(self) -> str:
        head = (f"{self.name}: {self.share_small:.0%} of its {self.boxes} boxes are under {MIN_SIDE_PX:.0f} px "
                f"(short side; median {self.median_px:.1f} px) at imgsz {self.imgsz}")
        if self.suggested_imgsz is not None:
            return head + f"; imgsz {self.suggested_imgsz} shows {SHOW_SHARE:.0%} of them"
        return (head + f"; no size up to {self.max_imgsz} px (the images' own size or 640) shows {SHOW_SHARE:.0%} of them "
                f"(at {self.max_imgsz}: {self.share_small_at_max:.0%} still under {MIN_SIDE_PX:.0f} px) - train at "
                f"imgsz {self.max_imgsz}, and label or crop so that the defects are larger")

    def as_dict(self) -> dict[str, Any]:
        return {"class": self.name, "boxes": self.boxes, "imgsz": self.imgsz, "median_px": round(self.median_px, 2),
                "p10_px": round(self.p10_px, 2), "share_small": round(self.share_small, 4),
                "suggested_imgsz": self.suggested_imgsz, "max_imgsz": self.max_imgsz,
                "share_small_at_max": round(self.share_small_at_max, 4), "at_risk": self.at_risk,
                "words": self.words()}


def _read_label(path: Path) -> list[tuple[int, float, float]]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5:
            try:
                rows.append((int(float(parts[0])), float(parts[3]), float(parts[4])))
            except ValueError:
                continue
    return rows


def relative_short_sides(workspace, splits: Sequence[str] = ("train", "val", "test")) -> tuple[dict[int, list[float]], int]:
    """Per class id: each box's short side as a share of its image's long side (imgsz-free); and the
    largest image long side. Read from the manifest (sizes) and the managed label files."""
    from toolkit.data.dataset.manifest import load_manifest

    manifest = load_manifest(workspace) or {}
    found: dict[int, list[float]] = {}
    longest = 0
    for entry in manifest.get("images") or ():
        if entry.get("split") not in splits or not entry.get("boxes"):
            continue
        width, height = int(entry.get("width") or 0), int(entry.get("height") or 0)
        if width <= 0 or height <= 0 or not entry.get("label"):
            continue
        long_side = max(width, height)
        longest = max(longest, long_side)
        for cls, w, h in _read_label(workspace.datasets / entry["label"]):
            found.setdefault(cls, []).append(min(w * width, h * height) / long_side)
    return found, longest


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def class_sizes(relative: Mapping[int, Iterable[float]], classes: Sequence[str], imgsz: int,
                longest: int) -> list[ClassSizes]:
    """Each class's box sizes at ``imgsz`` (see the module's docstring), in class order."""
    max_imgsz = max(UPSCALE_TO, (int(longest) // STRIDE) * STRIDE) if longest else max(UPSCALE_TO, int(imgsz))
    out = []
    for i, name in enumerate(classes):
        values = sorted(relative.get(i) or ())
        if not values:
            continue
        px = [v * imgsz for v in values]
        small = sum(1 for v in px if v < MIN_SIDE_PX) / len(px)
        q = _quantile(values, 1.0 - SHOW_SHARE)  # the 10th percentile, relative
        need = MIN_SIDE_PX / q if q > 0 else float("inf")
        suggested = int(math.ceil(need / STRIDE) * STRIDE) if math.isfinite(need) else None
        if suggested is not None and suggested > max_imgsz:
            suggested = None
        at_max = sum(1 for v in values if v * max_imgsz < MIN_SIDE_PX) / len(values)
        out.append(ClassSizes(name, len(values), int(imgsz), _quantile(px, 0.5), _quantile(px, 0.1), small,
                              suggested, max_imgsz, at_max))
    return out


def small_defect_check(workspace, classes: Sequence[str], imgsz: int) -> dict[str, Any]:
    """The check at ``imgsz`` on the managed dataset: every class's sizes, the classes at risk, in words.

    ``suggested_imgsz``: the size that shows 90% of the boxes of every class at risk (the largest
    of their suggestions; the images' own size where no size shows them); None when none is at risk.
    """
    relative, longest = relative_short_sides(workspace)
    sizes = class_sizes(relative, classes, int(imgsz), longest)
    risky = [s for s in sizes if s.at_risk]
    suggested = max((s.suggested_imgsz or s.max_imgsz for s in risky), default=None)
    if risky:
        words = (f"small defects at imgsz {imgsz}: " + "; ".join(s.words() for s in risky)
                 + (f" -> train at imgsz {suggested} (--imgsz {suggested}, or training.imgsz: auto)"
                    if suggested and suggested > imgsz else ""))
    else:
        words = ""
    return {"imgsz": int(imgsz), "min_side_px": MIN_SIDE_PX, "risk_share": RISK_SHARE, "classes": [s.as_dict() for s in sizes],
            "at_risk": [s.name for s in risky], "suggested_imgsz": suggested, "words": words,
            "images_long_side": longest}

"""COCO JSON batches: one or more instances JSON files naming images and boxes.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from toolkit.core.errors import UserError
from toolkit.data.labels.source import (FileIndex, Problem, SPLIT_ALIASES, SourceBatch, SourceBox, SourceImage,
                                        closest, short, split_from_path)

logger = logging.getLogger(__name__)


def load_coco(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            if b'"annotations"' not in fh.read(1 << 20) and path.stat().st_size < (1 << 20):
                return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and "annotations" in data and "categories" in data:
        return data
    return None


def _resolve_coco_image(file_name: str, json_path: Path, index: FileIndex,
                        by_name: dict[str, list[Path]], known: dict[Path, Path]) -> Path | None:
    rel = Path(file_name.replace("\\", "/"))
    bases = [json_path.parent, json_path.parent.parent, json_path.parent / "images",
             json_path.parent.parent / "images", index.root, index.root / "images"]
    for base in bases:
        hit = known.get((base / rel).resolve()) if not rel.is_absolute() else known.get(rel.resolve())
        if hit is not None:
            return hit
    cands = by_name.get(rel.name.lower())
    return closest(cands, json_path) if cands else None


def read_coco(index: FileIndex, json_files: Sequence[Path] | None = None) -> SourceBatch:
    by_name = index.images_by_name()
    known = {p.resolve(): p for p in index.images}
    problems: list[Problem] = []
    notes: list[str] = []
    entries: dict[Path, SourceImage] = {}
    class_names: list[str] = []
    jsons = list(json_files) if json_files else index.jsons
    used_jsons = 0
    for jpath in jsons:
        data = load_coco(jpath)
        if data is None:
            if json_files:
                problems.append(Problem(jpath, "not a COCO JSON (needs 'images', 'annotations', 'categories')"))
            continue
        used_jsons += 1
        cats = {}
        for c in data.get("categories") or []:
            try:
                cats[int(c["id"])] = str(c["name"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(jpath, f"category without id/name: {str(c)[:80]}"))
        for cid in sorted(cats):
            if cats[cid] not in class_names:
                class_names.append(cats[cid])
        json_split = next((SPLIT_ALIASES[t] for t in jpath.stem.lower().replace("-", "_").split("_")
                           if t in SPLIT_ALIASES), None)
        image_of: dict[int, tuple[Path, tuple[int, int] | None]] = {}
        for im in data["images"]:
            try:
                iid, fname = int(im["id"]), str(im["file_name"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(jpath, f"image entry without id/file_name: {str(im)[:80]}"))
                continue
            path = _resolve_coco_image(fname, jpath, index, by_name, known)
            if path is None:
                problems.append(Problem(jpath, f"label without image: '{short(fname)}' (image id {iid}) not found"))
                continue
            try:
                size = (int(im["width"]), int(im["height"]))
                size = size if size[0] > 0 and size[1] > 0 else None
            except (KeyError, TypeError, ValueError):
                size = None
            image_of[iid] = (path, size)
        boxes: dict[int, list[SourceBox]] = defaultdict(list)
        bad: dict[int, list[str]] = defaultdict(list)
        for ann in data.get("annotations") or []:
            try:
                iid = int(ann["image_id"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(jpath, f"annotation without image_id: {str(ann)[:80]}"))
                continue
            if iid not in image_of:
                continue  # its image is missing: already reported above, or never listed
            aid = ann.get("id", "?")
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                bad[iid].append(f"annotation id {aid}: no usable bbox [x, y, width, height]")
                continue
            cid = ann.get("category_id")
            if cid not in cats:
                bad[iid].append(f"annotation id {aid}: category id {cid} not in categories")
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                bad[iid].append(f"annotation id {aid}: NaN or infinite bbox")
                continue
            if w <= 0 or h <= 0:
                bad[iid].append(f"annotation id {aid}: zero or negative box size ({w:g} x {h:g})")
                continue
            boxes[iid].append(SourceBox(cats[cid], x, y, x + w, y + h, bool(ann.get("iscrowd", 0)), f"annotation id {aid}"))
        for iid, (path, size) in image_of.items():
            probs = tuple(Problem(path, f"in {jpath.name}: {p}; image left out") for p in bad.get(iid, ()))
            if path in entries:
                probs += (Problem(path, f"listed twice (again in {jpath.name}); image left out"),)
                prev = entries[path]
                entries[path] = SourceImage(path, prev.label, prev.boxes, False, prev.declared_size, prev.split,
                                            prev.problems + probs)
                continue
            split = json_split or split_from_path(path, index.root)
            entries[path] = SourceImage(path, jpath, tuple(boxes.get(iid, ())), False, size, split, probs)
    if not used_jsons:
        raise UserError(f"no COCO JSON (with 'images', 'annotations', 'categories') found in {index.root}")
    # An image the JSON does not list was never looked at in the labelling tool: not a background.
    for image in index.images:
        if image not in entries:
            problems.append(Problem(image, "not listed in the COCO JSON (unlabelled): not imported; "
                                           "export it from the labelling tool to add it"))
    images = [entries[p] for p in index.images if p in entries]
    desc = f"coco: {used_jsons} JSON file(s), {len(images)} images listed"
    return SourceBatch(index.root, "coco", tuple(class_names), tuple(images), tuple(problems), desc,
                       any(i.split for i in images), tuple(notes))


# --------------------------------------------------------------------------- detection / entry point

"""YOLO batches: ``classes.txt`` / ``data.yaml`` and one ``.txt`` label per image; YOLO label text.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml

from toolkit.core.errors import UserError
from toolkit.core.yaml_safe import YamlTooDeep, YamlTooLarge, load_yaml_text
from toolkit.data.labels.source import (BAD_LINES_SHOWN, CLASS_LIST_FILES, FileIndex, Problem, SourceBatch,
                                        SourceBox, SourceImage, read_class_list, relative_parts, short,
                                        split_from_path)

logger = logging.getLogger(__name__)


def _yaml_names(data: Mapping) -> tuple[str, ...] | None:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            return tuple(str(names[k]) for k in sorted(names, key=int))
        except (TypeError, ValueError):
            return None
    if isinstance(names, list):
        return tuple(str(n) for n in names)
    return None


def find_data_yaml(index: FileIndex, explicit: Path | None) -> tuple[Path, dict] | None:
    candidates = [explicit] if explicit else sorted(index.yamls, key=lambda p: (len(p.relative_to(index.root).parts), str(p)))
    for path in candidates:
        if path is None:
            continue
        try:
            data = load_yaml_text(path.read_text(encoding="utf-8"))
        except (YamlTooLarge, YamlTooDeep) as exc:  # refused at once, found or given: never walked, never skipped silently
            raise UserError(f"{path}: {exc.problem}; fix or remove this file and rerun") from None
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            if explicit:
                raise UserError(f"{path} is not a readable YAML file; check the data yaml you passed") from None
            continue
        if isinstance(data, dict) and _yaml_names(data) is not None:
            return path, data
    return None


def _resolve_yaml_entry(entry: str, base: Path, yaml_dir: Path) -> Path | None:
    """A train/val/test entry of a data yaml as an existing path (tolerating exports made elsewhere).
    Normalized, not resolved: paths are compared with those of the folder walk."""
    raw = Path(entry)
    tries = [raw] if raw.is_absolute() else [base / raw, yaml_dir / raw]
    # Roboflow writes "../train/images" relative to a folder one level deeper than the yaml.
    stripped = Path(*[p for p in raw.parts if p not in ("..", ".")]) if raw.parts else raw
    tries += [yaml_dir / stripped, base / stripped]
    for t in tries:
        if t.exists():
            return Path(os.path.normpath(t))
    return None


def _yaml_split_images(data: dict, yaml_path: Path, index: FileIndex) -> tuple[dict[Path, str], list[str]]:
    """Image path -> split, from a data yaml's train/val/test entries (folders or image lists)."""
    notes: list[str] = []
    yaml_dir = yaml_path.parent
    base = Path(str(data.get("path") or "."))
    base = base if base.is_absolute() else yaml_dir / base
    if not base.exists():
        base = yaml_dir
    images = set(index.images)
    result: dict[Path, str] = {}
    for key in ("train", "val", "test"):
        entries = data.get(key)
        if not entries:
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            target = _resolve_yaml_entry(str(entry), base, yaml_dir)
            if target is None:
                notes.append(f"{yaml_path.name}: '{key}: {short(entry)}' not found; split taken from folder names")
                continue
            if target.is_dir():
                prefix = str(target) + os.sep
                for img in index.images:
                    if str(img).startswith(prefix):
                        result.setdefault(img, key)
            elif target.suffix.lower() == ".txt":
                for line in target.read_text(encoding="utf-8", errors="replace").splitlines():
                    line = line.strip()
                    if not line:
                        continue
                    p = Path(line)
                    p = p if p.is_absolute() else (target.parent / p if line.startswith("./") else base / p)
                    p = Path(os.path.normpath(p))
                    if p in images:
                        result.setdefault(p, key)
    return result, notes



def _label_candidates(image: Path, root: Path) -> list[str]:
    """Where a YOLO label for ``image`` may be: ultralytics' images->labels rule, then beside it."""
    out = []
    parts = relative_parts(image, root)
    stem = os.path.splitext(parts[-1])[0] + ".txt"
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() in ("images", "imgs", "jpegimages"):
            out.append(os.path.join(str(root), *parts[:i], "labels", *parts[i + 1:-1], stem))
            break
    out.append(os.path.join(os.path.dirname(str(image)), stem))
    return out


def _label_image_candidates(label: Path, root: Path) -> list[Path]:
    """Where the image of a YOLO label would be (the reverse of ``_label_candidates``)."""
    out = [label]
    parts = relative_parts(label, root)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() == "labels":
            out.append(root / Path(*(parts[:i] + ["images"] + parts[i + 1:])))
            break
    return out


def parse_yolo_label(text: str, class_names: Sequence[str] | None) -> tuple[list[SourceBox], list[str]]:
    """Boxes of one YOLO label text (``cls xc yc w h`` or a polygon ``cls x1 y1 x2 y2 ...``) and the
    problems found. Coordinates come back as normalized corners; polygons become their bounding box."""
    boxes: list[SourceBox] = []
    problems: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            problems.append(f"line {n}: expected 'class x_center y_center width height', got {short(line)!r}")
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(f"line {n}: not numbers: {short(line)!r}")
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f"line {n}: NaN or infinite value: {short(line)!r}")
            continue
        cls_value = values[0]
        if cls_value != int(cls_value):
            problems.append(f"line {n}: class id {short(fields[0])!r} is not a whole number")
            continue
        cls_id = int(cls_value)
        if cls_id < 0 or (class_names is not None and cls_id >= len(class_names)):
            known = f"0-{len(class_names) - 1}" if class_names else "0 or more"
            problems.append(f"line {n}: class id {cls_id} out of range ({known})")
            continue
        cls: str | int = class_names[cls_id] if class_names is not None else cls_id
        if len(fields) == 5:
            xc, yc, w, h = values[1:]
            if w <= 0 or h <= 0:
                problems.append(f"line {n}: zero or negative box size (width {w:g}, height {h:g})")
                continue
            boxes.append(SourceBox(cls, xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2, where=f"line {n}"))
        else:
            xs, ys = values[1::2], values[2::2]
            if max(xs) <= min(xs) or max(ys) <= min(ys):
                problems.append(f"line {n}: polygon with zero area")
                continue
            boxes.append(SourceBox(cls, min(xs), min(ys), max(xs), max(ys), where=f"line {n}"))
    return boxes, problems


def looks_like_yolo_label(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    first = line.split()[0]
                    return first.replace(".", "", 1).isdigit()
    except OSError:
        return False
    return True  # an empty .txt is a YOLO background label


def read_yolo(index: FileIndex, data_yaml: Path | None = None) -> SourceBatch:
    root = index.root
    notes: list[str] = []
    class_names: tuple[str, ...] | None = None
    split_of: dict[Path, str] = {}
    special: set[Path] = set()
    found = find_data_yaml(index, data_yaml)
    if found:
        yaml_path, data = found
        class_names = _yaml_names(data)
        split_of, yaml_notes = _yaml_split_images(data, yaml_path, index)
        notes += yaml_notes
        notes.append(f"classes from {yaml_path.relative_to(root) if yaml_path.is_relative_to(root) else yaml_path}")
        for key in ("train", "val", "test"):
            entry = data.get(key)
            for e in entry if isinstance(entry, list) else [entry] if entry else []:
                if str(e).endswith(".txt"):
                    t = _resolve_yaml_entry(str(e), yaml_path.parent, yaml_path.parent)
                    if t:
                        special.add(str(t))
    if class_names is None:
        for name in CLASS_LIST_FILES:
            hits = sorted((p for p in index.texts if p.name.lower() == name),
                          key=lambda p: len(p.relative_to(root).parts))
            if hits:
                class_names = read_class_list(hits[0])
                notes.append(f"classes from {hits[0].relative_to(root)}")
                break
    if class_names is None:
        notes_json = [p for p in index.jsons if p.name == "notes.json"]  # Label Studio's YOLO export
        if notes_json:
            try:
                cats = json.loads(notes_json[0].read_text(encoding="utf-8")).get("categories", [])
                class_names = tuple(str(c["name"]) for c in sorted(cats, key=lambda c: int(c["id"])))
                notes.append(f"classes from {notes_json[0].relative_to(root)}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
    special |= {str(p) for p in index.texts if p.name.lower() in CLASS_LIST_FILES}

    texts = {str(p): p for p in index.texts}
    used: set[str] = set()
    images: list[SourceImage] = []
    for image in index.images:
        found = next((c for c in _label_candidates(image, root) if c in texts), None)
        split = split_of.get(image) or split_from_path(image, root)
        if found is None:
            images.append(SourceImage(image, None, (), True, None, split))
            continue
        used.add(found)
        label = texts[found]
        try:
            text = label.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            images.append(SourceImage(image, label, (), True, None, split,
                                      (Problem(label, f"label file unreadable ({exc.__class__.__name__}); image left out"),)))
            continue
        boxes, problems = parse_yolo_label(text, class_names)
        if len(problems) > BAD_LINES_SHOWN:
            problems = problems[:BAD_LINES_SHOWN] + [f"{len(problems) - BAD_LINES_SHOWN} more bad line(s)"]
        images.append(SourceImage(image, label, tuple(boxes), True, None, split,
                                  tuple(Problem(label, f"{p}; image {image.name} left out") for p in problems)))

    problems = []
    unsupported = {p.with_suffix("") for p in index.other_pictures}  # reported once, as the picture
    for key, txt in texts.items():
        if key in used or key in special:
            continue
        if any(c.with_suffix("") in unsupported for c in _label_image_candidates(txt, root)):
            continue
        in_labels_dir = any(part.lower() == "labels" for part in relative_parts(txt, root)[:-1])
        if in_labels_dir or looks_like_yolo_label(txt):
            problems.append(Problem(txt, "label without image (no image with this name next to it or under images/)"))
    desc = f"yolo: {len(images)} images, {len(used)} label files"
    return SourceBatch(root, "yolo", class_names, tuple(images), tuple(problems), desc,
                       any(i.split for i in images), tuple(notes))


# --------------------------------------------------------------------------- Pascal VOC

def yolo_label_text(boxes: Iterable[tuple[int, float, float, float, float]]) -> str:
    """YOLO label lines from (class id, x_center, y_center, width, height) normalized boxes."""
    lines = [f"{c} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}" for c, xc, yc, w, h in boxes]
    return "\n".join(lines) + ("\n" if lines else "")


# Boxes may overshoot the image by less than a pixel (rounding in labelling tools): clipped.
# More than that is a wrong label and the image is left out.
EDGE_TOLERANCE_PX = 1.0


def yolo_boxes(boxes: Iterable[SourceBox], width: int, height: int, normalized: bool, label: Path | None,
               image: Path) -> tuple[list[tuple], list[Problem], list[Problem]]:
    """Boxes as normalized ``(cls, xc, yc, w, h)`` on a ``width`` x ``height`` image, plus problems
    and warnings: the one VOC/COCO/YOLO -> YOLO conversion of the toolkit (the import uses it,
    and so do the test and benchmark fixtures). A box overshooting the image by less than
    ``EDGE_TOLERANCE_PX`` is clipped; more, or no area, is a problem (the image is left out).
    """
    out, problems, warnings = [], [], []
    where_file = label or image
    seen: dict[tuple, str] = {}
    for b in boxes:
        sx, sy = (width, height) if normalized else (1.0, 1.0)
        x1, y1, x2, y2 = b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy  # pixels
        tag = f"{b.where} ({short(b.cls)})" if b.where else short(b.cls)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.append(Problem(where_file, f"{tag}: zero or negative box size; image {image.name} left out"))
            continue
        over = max(-x1, -y1, x2 - width, y2 - height)
        if over >= EDGE_TOLERANCE_PX:
            problems.append(Problem(where_file, f"{tag}: box ({x1:.1f},{y1:.1f})-({x2:.1f},{y2:.1f}) lies "
                                                f"outside the {width}x{height} image; image {image.name} left out"))
            continue
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(width), x2), min(float(height), y2)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.append(Problem(where_file, f"{tag}: box has no area inside the image; image {image.name} left out"))
            continue
        row = (b.cls, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        key = (b.cls, *(round(v, 6) for v in row[1:]))
        if key in seen:
            # Kept as labelled (ultralytics drops the repeat when it loads the label): a warning.
            warnings.append(Problem(where_file, f"{tag}: exact duplicate of {seen[key]} (kept; ultralytics ignores the repeat)"))
        else:
            seen[key] = b.where or "another box"
        out.append(row)
    return out, problems, warnings

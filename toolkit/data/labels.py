"""Readers for labelled batches (YOLO, Pascal VOC, COCO JSON) into one in-memory form.

A reader only *reads*: it never opens a source file for writing. It turns a folder into a
``SourceBatch``: one ``SourceImage`` per image (its boxes as the source gives them, the label
file they came from, the size the label file declares, the split the source carries) and
the problems that belong to no image (a label without an image, an unreadable JSON).
Checks that need the pixels (decode, real size, boxes inside the image) live in
``toolkit.data.dataset.checks``; this module checks only what the label text itself can tell.

Usage (from code):
    batch = read_source("D:/exports/batch7")               # format detected
    batch = read_source("../shared/datasets/NEU-DET", fmt="voc")
    print(batch.fmt, batch.description, len(batch.images))
"""
from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml

from toolkit.core.config import YamlTooLarge, load_yaml_text
from toolkit.core.errors import UserError

logger = logging.getLogger(__name__)

# What ultralytics can train on (and cv2 can decode); other pictures (gif, heic) are reported.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
OTHER_PICTURE_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".jfif", ".avif", ".dng", ".raw", ".cr2", ".nef"})
FORMATS = ("yolo", "voc", "coco")
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
# Files that name the classes of a YOLO export, in the order they are tried.
_CLASS_LIST_FILES = ("classes.txt", "obj.names", "names.txt")
# Junk that file managers and archivers leave behind; never an input.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
# A report quotes at most this much of a bad line or name (a label file may be anything).
QUOTE_LIMIT = 100
# Bad lines reported per label file; the rest are counted (a text that is no label at all).
BAD_LINES_SHOWN = 5


def short(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis): what a report may quote of input."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Problem:
    """One bad input: the file it is about and a reason a person can act on."""

    path: Path
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class SourceBox:
    """One box as the source gives it.

    ``cls`` is a class name, or an integer id when a YOLO source names no classes.
    Coordinates are corners ``x1 y1 x2 y2``: fractions of the image when the image's
    ``normalized`` is true (YOLO), else pixels (VOC, COCO).
    """

    cls: str | int
    x1: float
    y1: float
    x2: float
    y2: float
    difficult: bool = False
    where: str = ""  # "line 3", "object 2", "annotation id 17": for the report


@dataclass(frozen=True)
class SourceImage:
    image: Path
    label: Path | None              # the file the boxes came from; None: no label (background)
    boxes: tuple[SourceBox, ...] = ()
    normalized: bool = False
    declared_size: tuple[int, int] | None = None  # (width, height) the label file states
    split: str | None = None        # the split the source carries (folders, data yaml, json name)
    problems: tuple[Problem, ...] = ()  # what reading the label found wrong (image left out whole)


@dataclass(frozen=True)
class SourceBatch:
    root: Path
    fmt: str
    class_names: tuple[str, ...] | None   # the source's own class list (id order); None: not named
    images: tuple[SourceImage, ...]
    problems: tuple[Problem, ...] = ()    # problems that belong to no image
    description: str = ""
    has_split: bool = False
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- file scan

@dataclass
class FileIndex:
    """Every file under a source folder, sorted, grouped by what it might be."""

    root: Path
    images: list[Path] = field(default_factory=list)
    texts: list[Path] = field(default_factory=list)
    xmls: list[Path] = field(default_factory=list)
    jsons: list[Path] = field(default_factory=list)
    yamls: list[Path] = field(default_factory=list)
    other_pictures: list[Path] = field(default_factory=list)
    skipped: int = 0
    links_out: list[Problem] = field(default_factory=list)  # symbolic links that leave the source

    def images_by_name(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = defaultdict(list)
        for p in self.images:
            index[p.name.lower()].append(p)
        return index

    def images_by_stem(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = defaultdict(list)
        for p in self.images:
            index[p.stem.lower()].append(p)
        return index


def scan_files(root: Path) -> FileIndex:
    """One sorted walk of ``root``; hidden folders, macOS ``._`` forks and OS junk are skipped.

    Symbolic links are not followed out of the source: a link whose target lies outside ``root``
    (``labels/x.txt -> /etc/passwd``, an image on another share) is reported and left out; a
    link to a folder is never descended into (what it holds inside the source is walked anyway).
    """
    index = FileIndex(root)
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if os.path.islink(path) and not _inside(os.path.realpath(path), real_root):
                index.links_out.append(_link_out(Path(path), "folder"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX"
                             and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            if name.startswith("._") or name.lower() in _JUNK_NAMES or name.startswith("."):
                index.skipped += 1
                continue
            path = Path(dirpath) / name
            if os.path.islink(path) and not _inside(os.path.realpath(path), real_root):
                index.links_out.append(_link_out(path, "file"))
                continue
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                index.images.append(path)
            elif suffix == ".txt":
                index.texts.append(path)
            elif suffix == ".xml":
                index.xmls.append(path)
            elif suffix == ".json":
                index.jsons.append(path)
            elif suffix in (".yaml", ".yml"):
                index.yamls.append(path)
            elif suffix in OTHER_PICTURE_SUFFIXES:
                index.other_pictures.append(path)
    return index


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def _link_out(path: Path, what: str) -> Problem:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return Problem(path, f"symbolic link to a {what} outside the source ({short(target)}): not followed, left out")


def split_from_path(path: Path, root: Path) -> str | None:
    """The split a folder name under ``root`` states (``train/``, ``valid/``, ``images/test/``)."""
    for part in reversed(_relative_parts(path, root)[:-1]):
        split = _SPLIT_ALIASES.get(part.lower())
        if split:
            return split
    return None


def _common_depth(a: Path, b: Path) -> int:
    n = 0
    for x, y in zip(a.parent.parts, b.parent.parts):
        if x != y:
            break
        n += 1
    return n


def _name_affinity(a: str, b: str) -> int:
    """Shared prefix + suffix of two folder names: Validation_Images ~ Validation_Annotations."""
    a, b = a.lower(), b.lower()
    prefix = len(os.path.commonprefix([a, b]))
    suffix = len(os.path.commonprefix([a[::-1], b[::-1]]))
    return min(prefix + suffix, min(len(a), len(b)))


def _closest(candidates: Sequence[Path], near: Path, taken: set[Path] | frozenset = frozenset()) -> Path:
    """The candidate that best pairs with ``near``: not yet taken, sharing the longest path
    (train/JPEGImages ~ train/Annotations), then the most similar folder name
    (Validation_Images ~ Validation_Annotations); first in sorted order on a tie."""
    return max(candidates, key=lambda p: (p not in taken, _common_depth(p, near),
                                          _name_affinity(p.parent.name, near.parent.name), -candidates.index(p)))


# --------------------------------------------------------------------------- YOLO

def _read_class_list(path: Path) -> tuple[str, ...]:
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return tuple(n for n in names if n)


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


def _find_data_yaml(index: FileIndex, explicit: Path | None) -> tuple[Path, dict] | None:
    candidates = [explicit] if explicit else sorted(index.yamls, key=lambda p: (len(p.relative_to(index.root).parts), str(p)))
    for path in candidates:
        if path is None:
            continue
        try:
            data = load_yaml_text(path.read_text(encoding="utf-8"))
        except YamlTooLarge as exc:  # refused at once, found or given: never walked, never skipped silently
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


def _relative_parts(path: Path, root: Path) -> list[str]:
    # String slicing: pathlib's relative_to costs more than the rest of reading a label.
    text, base = str(path), str(root) + os.sep
    return text[len(base):].split(os.sep) if text.startswith(base) else list(path.parts)


def _label_candidates(image: Path, root: Path) -> list[str]:
    """Where a YOLO label for ``image`` may be: ultralytics' images->labels rule, then beside it."""
    out = []
    parts = _relative_parts(image, root)
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
    parts = _relative_parts(label, root)
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


def _looks_like_yolo_label(path: Path) -> bool:
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
    found = _find_data_yaml(index, data_yaml)
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
        for name in _CLASS_LIST_FILES:
            hits = sorted((p for p in index.texts if p.name.lower() == name),
                          key=lambda p: len(p.relative_to(root).parts))
            if hits:
                class_names = _read_class_list(hits[0])
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
    special |= {str(p) for p in index.texts if p.name.lower() in _CLASS_LIST_FILES}

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
        in_labels_dir = any(part.lower() == "labels" for part in _relative_parts(txt, root)[:-1])
        if in_labels_dir or _looks_like_yolo_label(txt):
            problems.append(Problem(txt, "label without image (no image with this name next to it or under images/)"))
    desc = f"yolo: {len(images)} images, {len(used)} label files"
    return SourceBatch(root, "yolo", class_names, tuple(images), tuple(problems), desc,
                       any(i.split for i in images), tuple(notes))


# --------------------------------------------------------------------------- Pascal VOC

@dataclass(frozen=True)
class VocAnnotation:
    path: Path
    filename: str
    size: tuple[int, int] | None
    boxes: tuple[SourceBox, ...]
    problems: tuple[str, ...]


def _is_voc_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
        return b"<annotation" in head
    except OSError:
        return False


def parse_voc_xml(path: Path) -> VocAnnotation:
    """One Pascal VOC file. Tolerates NEU-DET's quirks: ``<filename>`` without its extension and
    a ``<depth>`` that disagrees with the image (the real image is trusted, depth is ignored)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return VocAnnotation(path, "", None, (), (f"not valid XML ({exc})",))
    filename = (root.findtext("filename") or "").strip()
    size = None
    try:
        w, h = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
        if w > 0 and h > 0:
            size = (w, h)
    except ValueError:
        pass  # a broken <size> only disables the size check
    boxes: list[SourceBox] = []
    problems: list[str] = []
    for n, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            problems.append(f"object {n}: no <name>")
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            problems.append(f"object {n} ({short(name)}): no <bndbox>")
            continue
        try:
            coords = [float((bnd.findtext(k) or "").strip()) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            problems.append(f"object {n} ({short(name)}): <bndbox> needs numeric xmin, ymin, xmax, ymax")
            continue
        if not all(math.isfinite(v) for v in coords):
            problems.append(f"object {n} ({short(name)}): NaN or infinite coordinate")
            continue
        x1, y1, x2, y2 = coords
        if x2 <= x1 or y2 <= y1:
            problems.append(f"object {n} ({short(name)}): zero or negative box size ({x1:g},{y1:g})-({x2:g},{y2:g})")
            continue
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        # VOC pixel coordinates are used as given, as LabelImg and CVAT write and read them.
        boxes.append(SourceBox(name, x1, y1, x2, y2, difficult, f"object {n}"))
    return VocAnnotation(path, filename, size, tuple(boxes), tuple(problems))


def _match_voc_image(ann: VocAnnotation, by_name: dict[str, list[Path]], by_stem: dict[str, list[Path]],
                     taken: set[Path]) -> Path | None:
    name = Path(ann.filename.replace("\\", "/")).name if ann.filename else ""
    if name and Path(name).suffix.lower() in IMAGE_SUFFIXES and name.lower() in by_name:
        return _closest(by_name[name.lower()], ann.path, taken)
    # <filename> without extension (NEU-DET: 174 files), or pointing nowhere: match by stem.
    for stem in (Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name, ann.path.stem):
        if stem and stem.lower() in by_stem:
            return _closest(by_stem[stem.lower()], ann.path, taken)
    return None


def read_voc(index: FileIndex) -> SourceBatch:
    by_name, by_stem = index.images_by_name(), index.images_by_stem()
    xmls = [p for p in index.xmls if _is_voc_xml(p)]
    owner: dict[Path, VocAnnotation] = {}
    problems: list[Problem] = []
    extra: dict[Path, list[Problem]] = defaultdict(list)
    difficult = 0
    for path in xmls:
        ann = parse_voc_xml(path)
        image = _match_voc_image(ann, by_name, by_stem, set(owner))
        if image is None:
            shown = f"'{short(ann.filename)}'" if ann.filename else "its file name"
            problems.append(Problem(path, f"label without image (no image matches {shown})"
                                    + (f"; also {ann.problems[0]}" if ann.problems else "")))
            continue
        if image in owner:
            extra[image].append(Problem(path, f"a second annotation file for {image.name} "
                                              f"(first: {owner[image].path.name}); image left out"))
            continue
        owner[image] = ann
        difficult += sum(b.difficult for b in ann.boxes)
    images = []
    for image in index.images:
        split = split_from_path(image, index.root)
        ann = owner.get(image)
        if ann is None:
            images.append(SourceImage(image, None, (), False, None, split))
            continue
        probs = tuple(Problem(ann.path, f"{p}; image {image.name} left out") for p in ann.problems)
        images.append(SourceImage(image, ann.path, ann.boxes, False, ann.size, split, probs + tuple(extra.get(image, ()))))
    folders = sorted({str(p.parent.relative_to(index.root)) for p in [*xmls, *index.images]})
    desc = (f"voc: {len(xmls)} XML annotations, {len(images)} images"
            + (f" (folders: {', '.join(folders)})" if len(folders) <= 8 else f" in {len(folders)} folders"))
    notes = [f"{difficult} boxes marked difficult (kept: they are real defects)"] if difficult else []
    return SourceBatch(index.root, "voc", None, tuple(images), tuple(problems), desc,
                       any(i.split for i in images), tuple(notes))


# --------------------------------------------------------------------------- COCO

def _load_coco(path: Path) -> dict | None:
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
    return _closest(cands, json_path) if cands else None


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
        data = _load_coco(jpath)
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
        json_split = next((_SPLIT_ALIASES[t] for t in jpath.stem.lower().replace("-", "_").split("_")
                           if t in _SPLIT_ALIASES), None)
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

def detect_format(index: FileIndex) -> tuple[str, str]:
    """(format, why) for a scanned folder; raises ``UserError`` when there is nothing to import."""
    coco = [p for p in index.jsons if _load_coco(p) is not None]
    voc = [p for p in index.xmls if _is_voc_xml(p)]
    yaml_found = _find_data_yaml(index, None)
    # A sample decides whether the .txt files are YOLO labels (reading all of them is read_yolo's job).
    candidates = [p for p in index.texts if p.name.lower() not in _CLASS_LIST_FILES]
    yolo_txt = candidates if any(_looks_like_yolo_label(p) for p in candidates[:20]) else []
    if not index.images:
        raise UserError(f"no images found in {index.root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    scores = {"coco": sum(len(_load_coco(p)["images"]) for p in coco), "voc": len(voc),
              "yolo": len(yolo_txt) + (1 if yaml_found else 0)}
    found = {k: v for k, v in scores.items() if v}
    if not found:
        raise UserError(f"{index.root}: {len(index.images)} images but no labels (no YOLO .txt, Pascal VOC .xml "
                        "or COCO .json); if they are all defect-free, pass --format yolo to import them as background")
    fmt = max(found, key=lambda k: (found[k], k == "yolo"))
    why = {"coco": f"{len(coco)} COCO JSON file(s)", "voc": f"{len(voc)} Pascal VOC XML file(s)",
           "yolo": f"{len(yolo_txt)} YOLO label file(s)" + (f" and {yaml_found[0].name}" if yaml_found else "")}
    reason = why[fmt]
    if len(found) > 1:
        reason += " (also found: " + ", ".join(why[k] for k in found if k != fmt) + "; pass --format to choose)"
    return fmt, reason


def read_source(source: str | Path, fmt: str = "auto") -> SourceBatch:
    """Read a labelled batch (a folder, or a data yaml / COCO JSON file inside one)."""
    source = Path(source).expanduser().resolve()
    if not source.exists():
        raise UserError(f"source {source} does not exist; check the --source path")
    explicit: Path | None = None
    if source.is_file():
        explicit, source = source, source.parent
        if explicit.suffix.lower() in (".yaml", ".yml"):
            fmt = "yolo" if fmt == "auto" else fmt
        elif explicit.suffix.lower() == ".json":
            fmt = "coco" if fmt == "auto" else fmt
        else:
            raise UserError(f"--source {explicit}: give a folder, a data yaml or a COCO .json file")
    if fmt not in ("auto", *FORMATS):
        raise UserError(f"--format {fmt!r}: use auto, yolo, voc or coco")
    index = scan_files(source)
    why = f"--format {fmt}"
    if fmt == "auto":
        fmt, why = detect_format(index)
    elif not index.images:
        raise UserError(f"no images found in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if fmt == "yolo":
        batch = read_yolo(index, explicit)
    elif fmt == "voc":
        batch = read_voc(index)
        if not any(i.label for i in batch.images) and not batch.problems:
            raise UserError(f"--format voc: no Pascal VOC .xml annotations found in {source}")
    else:
        batch = read_coco(index, [explicit] if explicit else None)
    extra = [Problem(p, f"unsupported image format {p.suffix.lower()} (convert it to JPEG or PNG; "
                        "its label, if any, is not imported)") for p in index.other_pictures] + index.links_out
    notes = list(batch.notes)
    if index.skipped:
        notes.append(f"{index.skipped} hidden or system file(s) skipped")
    logger.info("%s: %s (%s)", source, batch.description, why)
    unlabelled = sum(1 for i in batch.images if i.label is None and not i.problems)
    if unlabelled and unlabelled < len(batch.images):  # all without labels: a background batch, said elsewhere
        note = (f"{unlabelled} of {len(batch.images)} images have no label file: they are imported as defect-free "
                "background images; if they are just not labelled yet, label them first (an empty label file "
                "marks a defect-free image on purpose)")
        logger.info("%s: %s", source, note)  # and in the result's notes: the summary states it
        notes.append(note)
    return SourceBatch(batch.root, batch.fmt, batch.class_names, _without_refused_labels(batch.images, index),
                       batch.problems + tuple(extra), f"{batch.description} [{why}]", batch.has_split, tuple(notes))


def _without_refused_labels(images: Sequence[SourceImage], index: FileIndex) -> tuple[SourceImage, ...]:
    """An image that found no label while a label-like file of its name was refused (a link out
    of the source) is not a background image: it is left out, with the reason."""
    refused = {p.path.stem.lower(): p.path for p in index.links_out if p.path.suffix.lower() in (".txt", ".xml")}
    if not refused:
        return tuple(images)
    out = []
    for item in images:
        link = refused.get(item.image.stem.lower()) if item.label is None else None
        if link is not None:
            item = SourceImage(item.image, None, (), item.normalized, None, item.split,
                               (Problem(item.image, f"its label {link.name} is a link out of the source (not followed); "
                                                    "image left out"),))
        out.append(item)
    return tuple(out)


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


def voc_as_yolo_text(xml: str | Path, names: Sequence[str], image: str | Path | None = None) -> str:
    """The YOLO label text of one Pascal VOC file, converted exactly as an import converts it
    (``yolo_boxes`` on the image's real size when ``image`` is given, else the size the XML
    declares). Raises ``UserError`` where an import would reject the image. For fixtures and
    tools that lay out a YOLO copy by hand."""
    ann = parse_voc_xml(Path(xml))
    size = ann.size
    if image is not None:
        from PIL import Image

        with Image.open(image) as im:
            size = im.size
        if ann.size is not None and ann.size != size:
            raise UserError(f"{xml} gives size {ann.size[0]}x{ann.size[1]} but {Path(image).name} is {size[0]}x{size[1]}")
    if ann.problems or size is None:
        raise UserError(f"{xml}: {(ann.problems or ('no <size> and no image given',))[0]}")
    boxes, problems, _ = yolo_boxes(ann.boxes, size[0], size[1], False, Path(xml), Path(image or xml))
    if problems:
        raise UserError(problems[0].reason)
    return yolo_label_text((list(names).index(str(c)), *rest) for c, *rest in boxes)

"""The common form of a labelled batch: its images, boxes, problems and file index.

A reader (``yolo``, ``voc``, ``coco``) turns a folder into a ``SourceBatch``: one ``SourceImage`` per
image (its boxes as the source gives them, the label file they came from, the size the label file
declares, the split the source carries) and the problems that belong to no image. ``scan_files``
lists a source folder once, without following links out of it.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
OTHER_PICTURE_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".jfif", ".avif", ".dng", ".raw", ".cr2", ".nef"})
FORMATS = ("yolo", "voc", "coco")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
# Files that name the classes of a YOLO export, in the order they are tried.
CLASS_LIST_FILES = ("classes.txt", "obj.names", "names.txt")
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
    for part in reversed(relative_parts(path, root)[:-1]):
        split = SPLIT_ALIASES.get(part.lower())
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


def closest(candidates: Sequence[Path], near: Path, taken: set[Path] | frozenset = frozenset()) -> Path:
    """The candidate that best pairs with ``near``: not yet taken, sharing the longest path
    (train/JPEGImages ~ train/Annotations), then the most similar folder name
    (Validation_Images ~ Validation_Annotations); first in sorted order on a tie."""
    return max(candidates, key=lambda p: (p not in taken, _common_depth(p, near),
                                          _name_affinity(p.parent.name, near.parent.name), -candidates.index(p)))


# --------------------------------------------------------------------------- YOLO

def read_class_list(path: Path) -> tuple[str, ...]:
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    return tuple(n for n in names if n)

def relative_parts(path: Path, root: Path) -> list[str]:
    # String slicing: pathlib's relative_to costs more than the rest of reading a label.
    text, base = str(path), str(root) + os.sep
    return text[len(base):].split(os.sep) if text.startswith(base) else list(path.parts)

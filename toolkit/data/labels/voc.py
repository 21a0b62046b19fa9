"""Pascal VOC batches: one XML annotation per image; conversion of an annotation to YOLO text.
"""
from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolkit.core.errors import UserError
from toolkit.data.labels.source import (FileIndex, IMAGE_SUFFIXES, Problem, SourceBatch, SourceBox, SourceImage,
                                        closest, short, split_from_path)
from toolkit.data.labels.yolo import yolo_boxes, yolo_label_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocAnnotation:
    path: Path
    filename: str
    size: tuple[int, int] | None
    boxes: tuple[SourceBox, ...]
    problems: tuple[str, ...]


def is_voc_xml(path: Path) -> bool:
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
        return closest(by_name[name.lower()], ann.path, taken)
    # <filename> without extension (NEU-DET: 174 files), or pointing nowhere: match by stem.
    for stem in (Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name, ann.path.stem):
        if stem and stem.lower() in by_stem:
            return closest(by_stem[stem.lower()], ann.path, taken)
    return None


def read_voc(index: FileIndex) -> SourceBatch:
    by_name, by_stem = index.images_by_name(), index.images_by_stem()
    xmls = [p for p in index.xmls if is_voc_xml(p)]
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

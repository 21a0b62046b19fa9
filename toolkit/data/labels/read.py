"""Reading a labelled batch, whatever its format (YOLO, Pascal VOC, COCO JSON): ``read_source``.

A reader only *reads*: it never opens a source file for writing. Checks that need the pixels
(decode, real size, boxes inside the image) live in ``toolkit.data.dataset.checks``; the readers
check only what the label text itself can tell.

Usage (from code):
    batch = read_source("D:/exports/batch7")               # format detected
    batch = read_source("../shared/datasets/NEU-DET", fmt="voc")
    print(batch.fmt, batch.description, len(batch.images))
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from toolkit.core.errors import UserError
from toolkit.data.labels.coco import load_coco, read_coco
from toolkit.data.labels.source import (CLASS_LIST_FILES, FORMATS, FileIndex, IMAGE_SUFFIXES, Problem, SourceBatch,
                                        SourceImage, scan_files)
from toolkit.data.labels.voc import is_voc_xml, read_voc
from toolkit.data.labels.yolo import find_data_yaml, looks_like_yolo_label, read_yolo

logger = logging.getLogger(__name__)


def detect_format(index: FileIndex) -> tuple[str, str]:
    """(format, why) for a scanned folder; raises ``UserError`` when there is nothing to import."""
    coco = [p for p in index.jsons if load_coco(p) is not None]
    voc = [p for p in index.xmls if is_voc_xml(p)]
    yaml_found = find_data_yaml(index, None)
    # A sample decides whether the .txt files are YOLO labels (reading all of them is read_yolo's job).
    candidates = [p for p in index.texts if p.name.lower() not in CLASS_LIST_FILES]
    yolo_txt = candidates if any(looks_like_yolo_label(p) for p in candidates[:20]) else []
    if not index.images:
        raise UserError(f"no images found in {index.root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    scores = {"coco": sum(len(load_coco(p)["images"]) for p in coco), "voc": len(voc),
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

"""Dataset fixtures for the tests (not part of the toolkit): YOLO copies of Pascal VOC data.

Every VOC -> YOLO conversion here is ``toolkit.data.labels.voc_as_yolo_text``: the one the import
uses, so a fixture's labels are what an import of the same VOC files would write.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import yaml

from toolkit.core.errors import UserError
from toolkit.data.labels.voc import read_voc, voc_as_yolo_text
from toolkit.data.labels.source import scan_files


def export_voc_as_yolo_splits(voc_root: str | Path, split_files: Mapping[str, str | Path], dest: str | Path,
                              stems_limit: int | None = None) -> Path:
    """Write a YOLO copy of a VOC dataset laid out by split: ``dest/images/<split>/*``,
    ``dest/labels/<split>/*.txt`` and ``dest/data.yaml``.

    ``split_files`` maps a split name to a text file of image stems (NEU-DET's ``splits/*.txt``);
    ``stems_limit`` keeps the first N stems of each list (small test fixtures). Images are copied;
    the VOC source is only read. Returns ``dest``.
    """
    batch = read_voc(scan_files(Path(voc_root).resolve()))
    by_stem = {i.image.stem: i for i in batch.images}
    # Sorted, as the preparer orders VOC names (and as every NEU-DET model is trained).
    names = sorted({str(b.cls) for item in batch.images for b in item.boxes})
    dest = Path(dest)
    for split, list_file in split_files.items():
        stems = [s.strip() for s in Path(list_file).read_text(encoding="utf-8").splitlines() if s.strip()]
        if stems_limit is not None:
            stems = stems[:stems_limit]
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            item = by_stem.get(stem)
            if item is None:
                raise UserError(f"{list_file}: no image with stem {stem!r} in {voc_root}")
            text = voc_as_yolo_text(item.label, names, item.image) if item.label else ""
            shutil.copyfile(item.image, dest / "images" / split / item.image.name)
            (dest / "labels" / split / f"{item.image.stem}.txt").write_text(text, encoding="utf-8")
    data = {"path": str(dest.resolve()), **{s: f"images/{s}" for s in split_files}, "names": dict(enumerate(names))}
    (dest / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest

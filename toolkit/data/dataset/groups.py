"""Which lot an image belongs to (``dataset.group_by``): the images of one lot share one split.

Images of one coil, plate, board design or production lot are near-copies of each other; a split
per image puts the same lot in train and in test, and the test score flatters the model.
``dataset.group_by`` names the lot of each image:

- a regular expression, searched in the file name (or, when the pattern holds a ``/``, in the
  path relative to the batch folder); the lot is its first capture group, else the whole match.
  ``^(coil\\d+)_`` makes ``coil17_0001.jpg`` and ``coil17_0002.jpg`` one lot. An image the
  pattern does not match is a lot of its own (counted in the report);
- ``csv:COLUMN``: the column COLUMN of ``groups.csv`` in the batch folder, whose ``image``
  column gives the file name or the path relative to the batch folder.

Without it, ``looks_grouped`` tells whether a batch looks like lots anyway: many images with a
close copy (perceptual hash) in another split of the proposed assignment.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from toolkit.core.config import CSV_PREFIX, GROUPS_CSV
from toolkit.core.errors import UserError

LOOSE_BITS = 10          # a lot's near-copies: closer than this many bits of 64 (the exact-copy check uses 4)
GROUPED_SHARE = 0.2      # a batch looks grouped when this share of its held-out images has such a copy in train
_SAMPLE = 3000           # images compared at most (brute force, all pairs)


def group_keys(root: Path, images: Sequence[Path], group_by: str) -> tuple[dict[Path, str], list[str]]:
    """The lot of each image of one batch (images the rule does not place are left out) and notes."""
    if not group_by:
        return {}, []
    root = Path(root)
    if group_by.startswith(CSV_PREFIX):
        return _from_csv(root, images, group_by[len(CSV_PREFIX):].strip())
    pattern = re.compile(group_by)
    by_path = "/" in group_by
    keys: dict[Path, str] = {}
    for image in images:
        try:
            text = image.relative_to(root).as_posix() if by_path else image.name
        except ValueError:
            text = image.name
        match = pattern.search(text)
        if match:
            key = match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)
            if key:
                keys[image] = key
    notes = []
    missed = len(images) - len(keys)
    if missed:
        notes.append(f"{root.name}: {missed} of {len(images)} image(s) match no lot of dataset.group_by "
                     f"{group_by!r}: each is a lot of its own")
    return keys, notes


def _from_csv(root: Path, images: Sequence[Path], column: str) -> tuple[dict[Path, str], list[str]]:
    path = root / GROUPS_CSV
    if not path.is_file():
        raise UserError(f"dataset.group_by '{CSV_PREFIX}{column}' needs {path} (columns: image,{column}); "
                        "add it or change dataset.group_by in training.yaml")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "image" not in fields or column not in fields:
            raise UserError(f"{path} needs the columns 'image' and '{column}' (it has: {', '.join(fields) or 'none'})")
        lots = {}
        for row in reader:
            name, lot = (row.get("image") or "").strip().replace("\\", "/"), (row.get(column) or "").strip()
            if name and lot:
                lots[name] = lot
    keys: dict[Path, str] = {}
    for image in images:
        try:
            rel = image.relative_to(root).as_posix()
        except ValueError:
            rel = image.name
        lot = lots.get(rel) or lots.get(image.name)
        if lot:
            keys[image] = lot
    notes = []
    if len(keys) < len(images):
        notes.append(f"{root.name}: {len(images) - len(keys)} of {len(images)} image(s) have no row in "
                     f"{GROUPS_CSV}: each is a lot of its own")
    return keys, notes


def lot_summary(keys: Mapping[int, str], split_of: Mapping[int, str]) -> list[dict]:
    """One row per lot: its split(s) and its images (the import report's 'Lots' table)."""
    lots: dict[str, Counter] = {}
    for i, key in keys.items():
        if i in split_of:
            lots.setdefault(key, Counter())[split_of[i]] += 1
    return [{"group": key, "split": ", ".join(sorted(c)), "images": sum(c.values())}
            for key, c in sorted(lots.items())]


def looks_grouped(hashes: Sequence[int], splits: Sequence[str]) -> str | None:
    """A warning when many held-out images have a close copy in train (the batch looks like lots)."""
    from toolkit.data.phash import near_duplicate_pairs

    n = min(len(hashes), _SAMPLE)
    if n < 10:
        return None
    step = len(hashes) / n
    picked = [int(i * step) for i in range(n)]
    within, _ = near_duplicate_pairs([hashes[i] for i in picked], [], LOOSE_BITS)
    held_out = {k for k, i in enumerate(picked) if splits[i] != "train"}
    leaking = set()
    for a, b in within:
        sa, sb = splits[picked[a]], splits[picked[b]]
        if sa != sb:
            leaking.update(k for k in (a, b) if k in held_out)
    if not held_out or len(leaking) < max(3, GROUPED_SHARE * len(held_out)):
        return None
    return (f"this batch looks grouped: {len(leaking)} of {len(held_out)} val/test image(s) have a near-copy "
            f"(within {LOOSE_BITS} bits) in another split; if images come in lots (a coil, a plate, a board "
            "design), set dataset.group_by in training.yaml so that a lot never spans train and test")

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

LOT_SHARE_MARGIN = 0.05  # a split further than 5 percentage points from its target share: the lots are named
MIN_HELD_OUT_LOTS = 2    # val or test of fewer lots: its score measures one lot, not the line
GROUP_BY_TIMEOUT_S = 10.0  # matching dataset.group_by against one batch's names takes at most this long
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
    by_path = "/" in group_by
    texts = []
    for image in images:
        try:
            texts.append(image.relative_to(root).as_posix() if by_path else image.name)
        except ValueError:
            texts.append(image.name)
    keys = {image: key for image, key in zip(images, _search_all(group_by, texts)) if key}
    notes = []
    missed = len(images) - len(keys)
    if missed:
        notes.append(f"{root.name}: {missed} of {len(images)} image(s) match no lot of dataset.group_by "
                     f"{group_by!r}: each is a lot of its own")
    return keys, notes


def _lot_of(pattern: "re.Pattern", text: str) -> str | None:
    match = pattern.search(text)
    if not match:
        return None
    return match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)


def _search_child(group_by: str, texts: list[str], conn) -> None:
    pattern = re.compile(group_by)
    conn.send([_lot_of(pattern, t) for t in texts])
    conn.close()


def _search_all(group_by: str, texts: list[str]) -> list[str | None]:
    """The lot of each text, matched within ``GROUP_BY_TIMEOUT_S`` in all: a pattern that backtracks
    past it (the setting's check refuses the classic ones) is one error line, not an import that hangs
    holding the workspace lock. POSIX: in a forked child killed at the limit; elsewhere in-process."""
    import multiprocessing as mp
    import os

    if os.name != "posix" or not texts:
        pattern = re.compile(group_by)
        return [_lot_of(pattern, t) for t in texts]
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_search_child, args=(group_by, texts, send), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(GROUP_BY_TIMEOUT_S):
            try:
                return receive.recv()
            except EOFError:
                raise UserError(f"dataset.group_by {group_by!r}: the process matching it died (out of memory?); "
                                "write the lot's part directly, e.g. '^(coil\\d+)_'") from None
        raise UserError(f"dataset.group_by {group_by!r} took more than {GROUP_BY_TIMEOUT_S:.0f} s to match "
                        f"{len(texts)} file name(s): it backtracks; write the lot's part directly, e.g. "
                        "'^(coil\\d+)_'")
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receive.close()


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
        lots: dict[str, str] = {}
        conflicts: dict[str, set[str]] = {}
        for row in reader:
            name, lot = (row.get("image") or "").strip().replace("\\", "/"), (row.get(column) or "").strip()
            if name and lot:
                if lots.setdefault(name, lot) != lot:  # the first row wins; the conflict is named
                    conflicts.setdefault(name, {lots[name]}).add(lot)
    keys: dict[Path, str] = {}
    used: set[str] = set()
    for image in images:
        try:
            rel = image.relative_to(root).as_posix()
        except ValueError:
            rel = image.name
        name = rel if rel in lots else image.name
        lot = lots.get(name)
        if lot:
            keys[image] = lot
            used.add(name)
    notes = []
    if conflicts:
        first = sorted(conflicts)[:3]
        notes.append(f"{path}: {len(conflicts)} image(s) have rows of different lots ("
                     + "; ".join(f"{n}: {', '.join(sorted(conflicts[n]))}" for n in first)
                     + f"{'; ...' if len(conflicts) > 3 else ''}); the first row of each is used - fix {GROUPS_CSV}")
    missing = sorted(set(lots) - used)
    if missing:
        notes.append(f"{path}: {len(missing)} row(s) name images that are not in the batch "
                     f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); they are ignored")
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


def lot_balance(entries: Sequence[Mapping], ratios: Mapping[str, float]) -> list[str]:
    """Warnings about a dataset whose lots split it badly (``entries``: every manifest image after the
    import): a split whose share of the images is more than ``LOT_SHARE_MARGIN`` from its target, or
    val / test holding fewer than ``MIN_HELD_OUT_LOTS`` lots. The words name the lots held out."""
    from toolkit.core.layout import SPLITS

    splits = [s for s in SPLITS if ratios.get(s, 0) > 0]
    total_ratio = sum(ratios[s] for s in splits)
    if not entries or not total_ratio:
        return []
    images = Counter(e["split"] for e in entries)
    lots: dict[str, set[str]] = {s: set() for s in SPLITS}
    for e in entries:  # an image of no lot is a lot of its own
        lots.setdefault(e["split"], set()).add(e.get("group") or f"image {Path(e['file']).name}")

    def named(split: str) -> str:
        names = sorted(lots[split])
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    notes = []
    n = len(entries)
    shares = {s: images[s] / n for s in splits}
    off = [s for s in splits if abs(shares[s] - ratios[s] / total_ratio) > LOT_SHARE_MARGIN]
    if off:
        got = ", ".join(f"{s} {images[s]} ({100 * shares[s]:.0f}%)" for s in splits)
        want = "/".join(f"{100 * ratios[s] / total_ratio:.0f}" for s in splits)
        held = "; ".join(f"{s} holds {len(lots[s])} lot(s): {named(s)}" for s in splits if s != "train")
        notes.append(f"the lots (dataset.group_by) split the images {got}, more than {100 * LOT_SHARE_MARGIN:.0f} "
                     f"points from the target {want}: {held}; import more (or smaller) lots to split closer")
    for s in ("val", "test"):
        if ratios.get(s, 0) > 0 and len(lots[s]) < MIN_HELD_OUT_LOTS:
            notes.append(f"{s} holds {len(lots[s])} lot(s){': ' + named(s) if lots[s] else ''}; fewer than "
                         f"{MIN_HELD_OUT_LOTS}, its score measures that lot, not the line - import more lots")
    return notes


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

"""The records an export can pick, kept chunk by chunk: a bounded bank for ``--export``.

``toolkit.memory.analysis.candidate_order`` walks, per class, the open (not reviewed) detections in the
uncertain band by distance to the band's middle, then the other detections by confidence, then
the records without any detection, each in reading order among equals. ``CandidateKeeper`` keeps,
over the chunks of a bank read chunk by chunk, the ``per_queue`` best detections of each class in
both orders, the first ``per_queue`` records without a detection, and every reviewed record (the
reviewed batch); ``bank()`` builds them into one small ``MemoryBank``. The export's order over that
bank is the whole bank's as long as it takes fewer than ``per_queue`` records from one queue
(``toolkit.memory.memory_bank.aggregate_memory_bank`` keeps 20 x the export size, at least 2,000).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.memory.bank_table import BOX, MemoryBank, Parts


class CandidateKeeper:
    def __init__(self, uncertain: tuple[float, float], per_queue: int) -> None:
        self.lo, self.hi = uncertain
        self.k = per_queue
        self.best: dict[tuple[str, bool], np.ndarray] = {}   # (class, in band) -> rows (key, order, line)
        self.empty = np.zeros(0, np.int64)                     # lines of the first records without detections
        self.order = 0                                         # detections seen: the reading order
        self.pieces: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
        self.kept = 0                                          # records in ``pieces``

    def add(self, bank: MemoryBank) -> None:
        """A chunk of checked records, chunks in reading order."""
        line = bank.line.astype(np.int64)
        reviewed = bank.table["reviewed"].to_numpy(dtype=bool)
        rec = bank.det_record()
        conf = bank.det_conf.astype(np.float64)
        order = self.order + np.arange(len(conf), dtype=np.int64)
        self.order += len(conf)
        open_det = ~reviewed[rec] if len(rec) else np.zeros(0, bool)
        in_band = (conf >= self.lo) & (conf < self.hi)
        key = np.where(in_band, np.abs(conf - (self.lo + self.hi) / 2.0), conf)
        for c, name in enumerate(bank.classes):
            for band in (True, False):
                sel = open_det & (bank.det_cls == c) & (in_band == band)
                new = np.stack([key[sel], order[sel].astype(np.float64), line[rec[sel]].astype(np.float64)], axis=1)
                both = np.concatenate([self.best.get((name, band), np.zeros((0, 3))), new])
                self.best[(name, band)] = both[np.lexsort((both[:, 1], both[:, 0]))][:self.k]
        no_det = (np.diff(bank.det_start) == 0) & ~reviewed
        self.empty = np.concatenate([self.empty, line[no_det]])[:self.k]
        wanted = self._wanted()
        self.pieces.append(_subset(bank, reviewed | np.isin(line, wanted)))
        self.kept += len(self.pieces[-1][0])
        if self.kept > 4 * (len(wanted) + 1000):   # drop the records that left every queue
            self.pieces = [_subset_frames(p, wanted) for p in self.pieces]
            self.kept = sum(len(p[0]) for p in self.pieces)

    def _wanted(self) -> np.ndarray:
        lines = [b[:, 2].astype(np.int64) for b in self.best.values()] + [self.empty]
        return np.unique(np.concatenate(lines)) if lines else np.zeros(0, np.int64)

    def bank(self, path: Path, fmt: str) -> MemoryBank:
        """The kept records (candidates and reviewed ones) as one bank, in reading order."""
        wanted = self._wanted()
        parts = Parts(None, None, None)
        for piece in self.pieces:
            parts.add_frames(*_subset_frames(piece, wanted))
        self.pieces = []
        return parts.build(path, fmt)


def _subset(bank: MemoryBank, keep: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The kept records of a chunk as ``Parts`` frames (names, not codes)."""
    new = np.cumsum(keep) - 1
    versions = np.array(bank.versions + [None], dtype=object)
    sources = np.array(bank.sources + [None], dtype=object)
    classes = np.array(bank.classes, dtype=object)
    t = bank.table
    table = pd.DataFrame({"line": bank.line[keep], "ts": bank.ts[keep], "image": t["image"].to_numpy(dtype=object)[keep],
                          "version": versions[bank.version[keep]], "source": sources[bank.source[keep]],
                          "width": bank.width[keep], "height": bank.height[keep],
                          "reviewed": t["reviewed"].to_numpy(dtype=bool)[keep]})
    frames = []
    for frame, extra in ((bank.boxes, ["conf"]), (bank.labels, [])):
        rec = frame["record"].to_numpy(dtype=np.int64)
        sel = keep[rec] if len(rec) else np.zeros(0, bool)
        frames.append(pd.DataFrame({"record": new[rec[sel]],
                                    "cls": classes[frame["cls"].to_numpy(dtype=np.int64)[sel]],
                                    **{k: frame[k].to_numpy()[sel] for k in extra + BOX}}))
    return table, frames[0], frames[1]


def _subset_frames(piece, wanted: np.ndarray):
    """A kept piece without the records that left every queue (reviewed ones stay)."""
    table, boxes, labels = piece
    keep = table["reviewed"].to_numpy(dtype=bool) | np.isin(table["line"].to_numpy(dtype=np.int64), wanted)
    if keep.all():
        return piece
    new = np.cumsum(keep) - 1
    out = [table[keep].reset_index(drop=True)]
    for frame in (boxes, labels):
        rec = frame["record"].to_numpy(dtype=np.int64)
        sel = keep[rec] if len(rec) else np.zeros(0, bool)
        out.append(frame[sel].assign(record=new[rec[sel]]).reset_index(drop=True))
    return tuple(out)

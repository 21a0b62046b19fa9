"""The memory bank's figures as running aggregates: what the analysis needs, without the records.

``BankAggregate`` holds, per class, per (model version, class) and per (ISO week, class): the
detections, their confidence sum, the detections in the uncertain band, the 10-bin confidence
histogram, the images holding each class, the records per version and per week, and the
reviewed-image matching already done (true / false positives, misses, confusions). A frame chunk
(a ``MemoryBank`` of some thousands of records) is added with ``add_bank``; chunks added in
reading order give exactly the figures of one bank of all their records: counts add up, and the
confidence sums are accumulated element by element onto the running totals (``np.add.at``), the
order of a single ``np.bincount`` over every detection, so even the last bit of a mean is the
same. ``toolkit.memory.analysis.analyze_aggregate`` computes the analyzer's JSON from it.

So a file beyond memory is read chunk by chunk (``toolkit.memory.memory_bank.aggregate_memory_bank``)
and memory holds one chunk plus these small arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolkit.memory.bank_table import MalformedLog, MemoryBank

HIST_BINS = 10


def _iou(a: tuple, b: tuple) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match_image(det_cls: list[int], det_box: list[tuple], label_cls: list[int], label_box: list[tuple],
                iou_min: float) -> tuple[list[tuple[int, int]], list[int], list[int], list[tuple[int, int]]]:
    """Greedy IoU matching of one image's detections against its reviewed labels.

    Returns (matches [(det, label)] of the same class, false-positive detections, missed labels,
    confusions [(det, label)]: a leftover detection overlapping a leftover label of another class).
    Pairs are taken by decreasing IoU, same-class pairs first; a confusion is also a false
    positive and a miss. Plain Python: an image holds a handful of boxes, where numpy's
    per-call overhead would dominate.
    """
    pairs = []
    for d, db in enumerate(det_box):
        for lab, lb in enumerate(label_box):
            iou = _iou(db, lb)
            if iou >= iou_min:
                pairs.append((det_cls[d] != label_cls[lab], -iou, d, lab))
    pairs.sort()
    used_d: set[int] = set()
    used_l: set[int] = set()
    matches: list[tuple[int, int]] = []
    confusions: list[tuple[int, int]] = []
    for other_class, _, d, lab in pairs:
        if d in used_d or lab in used_l:
            continue
        used_d.add(d)
        used_l.add(lab)
        (confusions if other_class else matches).append((d, lab))
    conf_d = {d for d, _ in confusions}
    conf_l = {lab for _, lab in confusions}
    false_pos = [d for d in range(len(det_cls)) if d not in used_d or d in conf_d]
    missed = [lab for lab in range(len(label_cls)) if lab not in used_l or lab in conf_l]
    return matches, false_pos, missed, confusions


def _images_per_class(rec: np.ndarray, cls: np.ndarray, n_records: int, n_cls: int) -> np.ndarray:
    """Records holding at least one detection of each class."""
    if len(rec) == 0:
        return np.zeros(n_cls, np.int64)
    if n_records * n_cls <= 200_000_000:  # a boolean matrix beats np.unique (no sort)
        seen = np.zeros((n_records, n_cls), dtype=bool)
        seen[rec, cls] = True
        return seen.sum(axis=0)
    pair = np.unique(rec * n_cls + cls)
    return np.bincount(pair % n_cls, minlength=n_cls)


def _grow(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``arr`` padded with zeros to ``shape`` (never smaller)."""
    if arr.shape == shape:
        return arr
    out = np.zeros(shape, dtype=arr.dtype)
    out[tuple(slice(0, n) for n in arr.shape)] = arr
    return out


# per-class arrays (axis: class), per-version (version, class), per-week (week, class)
_CLASS = ("det", "conf", "band", "images", "tp", "fp", "fn", "rev_labels", "rev_dets", "rev_images", "fp_images")
_PAIRS = ("det", "conf", "band")


@dataclass
class BankAggregate:
    """Running figures of checked records (module docstring). Class, version and week ids are in
    order of first appearance; version id 0 is "unknown" (a record without a model version)."""

    uncertain: tuple[float, float]
    iou_match: float
    classes: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    mondays: list[int] = field(default_factory=list)   # epoch day of each week's Monday, first appearance
    records: int = 0
    scan_records: int = 0          # records whose source is "scan" (all of them: a scanned folder)
    reviewed_images: int = 0
    rows_read: int = 0             # rows a database sent (0 for a file)
    fmt: str = ""
    location: str = ""             # a database URL (password masked); "" for a file
    malformed: MalformedLog = field(default_factory=MalformedLog)
    filtered_out: int = 0
    c: dict[str, np.ndarray] = field(default_factory=dict)      # per class
    hist: np.ndarray = field(default_factory=lambda: np.zeros((0, HIST_BINS), np.int64))
    v: dict[str, np.ndarray] = field(default_factory=dict)      # per (version, class)
    w: dict[str, np.ndarray] = field(default_factory=dict)      # per (week, class)
    v_records: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    w_records: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confusions: dict[tuple[int, int], int] = field(default_factory=dict)   # (true, predicted) -> n, first seen first
    candidates: MemoryBank | None = None   # the records an --export may pick (toolkit.bank_candidates), if asked

    def __post_init__(self) -> None:
        for name in _CLASS:
            self.c.setdefault(name, np.zeros(0, np.float64 if name == "conf" else np.int64))
        for table, rows in ((self.v, 1), (self.w, 0)):
            for name in _PAIRS:
                table.setdefault(name, np.zeros((rows, 0), np.float64 if name == "conf" else np.int64))

    def _ids(self, table: list, names: list) -> np.ndarray:
        index = {n: i for i, n in enumerate(table)}
        for n in names:
            if n not in index:
                index[n] = len(table)
                table.append(n)
        return np.array([index[n] for n in names], dtype=np.int64)

    def resize(self) -> None:
        """Arrays of the sizes of ``classes``, ``versions`` and ``mondays`` (new entries at zero)."""
        n_c, n_v, n_w = len(self.classes), len(self.versions) + 1, len(self.mondays)
        for name in _CLASS:
            self.c[name] = _grow(self.c[name], (n_c,))
        self.hist = _grow(self.hist, (n_c, HIST_BINS))
        for table, rows in ((self.v, n_v), (self.w, n_w)):
            for name in _PAIRS:
                table[name] = _grow(table[name], (rows, n_c))
        self.v_records = _grow(self.v_records, (n_v,))
        self.w_records = _grow(self.w_records, (n_w,))

    def add_bank(self, bank: MemoryBank) -> None:
        """Add a chunk of checked records (the chunks in reading order: see the module docstring)."""
        lo, hi = self.uncertain
        cls_id = self._ids(self.classes, bank.classes)
        ver_id = self._ids(self.versions, bank.versions) + 1
        days = np.floor(bank.ts / 86400.0).astype(np.int64)
        week_days, rec_week = np.unique(days - (days + 3) % 7, return_inverse=True)   # epoch day 0: a Thursday
        week_id = self._ids(self.mondays, week_days.tolist())
        self.resize()
        n_c = len(self.classes)
        cls = cls_id[bank.det_cls] if len(bank.det_cls) else np.zeros(0, np.int64)
        conf = bank.det_conf.astype(np.float64)
        rec = bank.det_record()
        version = bank.version.astype(np.int64)
        rec_ver = np.where(version < 0, 0, np.append(ver_id, 0)[version])
        rec_wk = week_id[rec_week] if len(rec_week) else np.zeros(0, np.int64)
        in_band = (conf >= lo) & (conf < hi)
        bins = np.minimum((conf * HIST_BINS).astype(np.int64), HIST_BINS - 1)
        c = self.c
        c["det"] += np.bincount(cls, minlength=n_c)
        np.add.at(c["conf"], cls, conf)   # element by element onto the totals: a single bincount's order
        c["band"] += np.bincount(cls[in_band], minlength=n_c)
        self.hist += np.bincount(cls * HIST_BINS + bins, minlength=n_c * HIST_BINS).reshape(n_c, HIST_BINS)
        c["images"] += _images_per_class(rec, cls, bank.records, n_c)
        for table, key, n_rows, rec_key, counts in ((self.v, rec_ver, len(self.versions) + 1, rec_ver, "v_records"),
                                                    (self.w, rec_wk, len(self.mondays), rec_wk, "w_records")):
            pair = key[rec] * n_c + cls if len(rec) else np.zeros(0, np.int64)
            size = n_rows * n_c
            table["det"] += np.bincount(pair, minlength=size).reshape(n_rows, n_c)
            np.add.at(table["conf"].reshape(-1), pair, conf)
            table["band"] += np.bincount(pair[in_band], minlength=size).reshape(n_rows, n_c)
            setattr(self, counts, getattr(self, counts) + np.bincount(rec_key, minlength=n_rows))
        self.records += bank.records
        if bank.records and "scan" in bank.sources:
            self.scan_records += int((bank.source == bank.sources.index("scan")).sum())
        self.add_reviews(bank, cls, cls_id)
        self.malformed, self.filtered_out = bank.malformed, bank.filtered_out

    def add_reviews(self, bank: MemoryBank, cls: np.ndarray, cls_id: np.ndarray) -> None:
        """Match each reviewed record's detections against its labels, in record order."""
        reviews = bank.reviews
        if not reviews:
            return
        c = self.c
        tp, fp, fn = c["tp"].tolist(), c["fp"].tolist(), c["fn"].tolist()
        rev_labels, rev_dets = c["rev_labels"].tolist(), c["rev_dets"].tolist()
        rev_images, fp_images = c["rev_images"].tolist(), c["fp_images"].tolist()
        confusions = self.confusions
        ids = cls_id.tolist()
        # the reviewed records' detections gathered in one numpy pass, then plain lists (a few boxes each)
        rev_records = list(reviews)
        r_arr = np.fromiter(rev_records, dtype=np.int64, count=len(rev_records))
        r_start = bank.det_start[r_arr].astype(np.int64)
        r_count = bank.det_start[r_arr + 1].astype(np.int64) - r_start
        offsets = np.zeros(len(rev_records) + 1, dtype=np.int64)
        np.cumsum(r_count, out=offsets[1:])
        take = np.repeat(r_start - offsets[:-1], r_count) + np.arange(int(offsets[-1]), dtype=np.int64)
        all_cls = cls[take].tolist()
        all_box = bank.det_box[take].tolist()
        bounds = offsets.tolist()
        for i, r in enumerate(rev_records):
            labels = reviews[r]
            s, e = bounds[i], bounds[i + 1]
            d_cls = all_cls[s:e]
            l_cls = [ids[lab[0]] for lab in labels]
            if not d_cls or not l_cls:  # nothing to match: every detection is a false positive, every label a miss
                matches, confused = [], []
                false_pos, missed = list(range(len(d_cls))), list(range(len(l_cls)))
            else:
                matches, false_pos, missed, confused = match_image(d_cls, all_box[s:e], l_cls,
                                                                  [lab[1:] for lab in labels], self.iou_match)
            for d, _ in matches:
                tp[d_cls[d]] += 1
            for d in false_pos:
                fp[d_cls[d]] += 1
            for lab in missed:
                fn[l_cls[lab]] += 1
            for k in l_cls:
                rev_labels[k] += 1
            for k in d_cls:
                rev_dets[k] += 1
            for d, lab in confused:
                key = (l_cls[lab], d_cls[d])
                confusions[key] = confusions.get(key, 0) + 1
            for k in set(d_cls) | set(l_cls):
                rev_images[k] += 1
            for k in {d_cls[d] for d in false_pos}:
                fp_images[k] += 1
        for name, values in (("tp", tp), ("fp", fp), ("fn", fn), ("rev_labels", rev_labels), ("rev_dets", rev_dets),
                             ("rev_images", rev_images), ("fp_images", fp_images)):
            c[name] = np.array(values, dtype=np.int64)
        self.reviewed_images += len(reviews)

    @property
    def all_scanned(self) -> bool:
        """Every record came from a scanned folder (source "scan")."""
        return bool(self.records) and self.scan_records == self.records

    @property
    def skipped(self) -> int:
        return self.malformed.count

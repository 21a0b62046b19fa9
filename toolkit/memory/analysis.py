"""What the memory bank says about the production model: per-class figures, priorities, picks.

Everything here works on the columns of ``toolkit.memory.memory_bank.MemoryBank`` with numpy
(bincounts over class / week / version ids), so a million records cost a few array passes.

Per class: detections, images, mean confidence, a 10-bin confidence histogram, the share of
detections in the uncertain band [lo, hi), figures per model version and per ISO week (with the
drift from the first to the last week), and on reviewed images (``review.labels``) precision,
recall, wrong-class confusions and missed defects by greedy IoU matching.

Export (``export_for_labelling``): the next images to label, chosen by ``candidate_order``
(uncertain detections first, shared among classes by score ** ``analyzer.class_weight_power`` -
default 0, equal shares, which measured best in benchmarks/label_efficiency.py - no
near-duplicates by the toolkit's 64-bit DCT perceptual hash, ``toolkit.data.phash``), copied with YOLO
pre-labels; reviewed images become a labelled YOLO batch.

Priorities (score, reasons, images needed): ``toolkit.memory.priorities``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from toolkit.memory.bank_aggregate import HIST_BINS, BankAggregate
from toolkit.memory.bank_table import MemoryBank
from toolkit.data.phash import phash_bytes, within
from toolkit.memory.priorities import MIN_REVIEWED, WEAK_THRESHOLD, missed_points, prevalence, rank_priorities

logger = logging.getLogger(__name__)

MIN_WEEK_DETECTIONS = 20  # a week with fewer detections is too noisy for a drift figure


@dataclass
class Analysis:
    classes: dict[str, dict[str, Any]]
    priorities: list[dict[str, Any]]
    weeks: list[str]
    versions: list[str]
    reviewed_images: int
    uncertain: tuple[float, float]
    iou_match: float
    score: dict[str, float] = field(default_factory=dict)
    records: int = 0


def iso_week(monday_days: int) -> str:
    """Epoch day of a Monday -> '2026-W10'."""
    year, week, _ = (date(1970, 1, 1) + timedelta(days=int(monday_days))).isocalendar()
    return f"{year}-W{week:02d}"


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def analyze_memory_bank(bank: MemoryBank, uncertain: tuple[float, float], iou_match: float,
                        dataset_instances: dict[str, int] | None = None,
                        class_order: list[str] | None = None, dataset_images: int | None = None) -> Analysis:
    """Every per-class figure and the priorities of a bank read whole (``analyze_aggregate``)."""
    agg = BankAggregate(uncertain, iou_match)
    agg.add_bank(bank)
    return analyze_aggregate(agg, dataset_instances, class_order, dataset_images)


def analyze_aggregate(agg: BankAggregate, dataset_instances: dict[str, int] | None = None,
                      class_order: list[str] | None = None, dataset_images: int | None = None,
                      below_spec: dict[str, dict[str, Any]] | None = None) -> Analysis:
    """Every per-class figure and the priorities. ``class_order`` puts known classes first (model order);
    ``dataset_images``: train images behind ``dataset_instances`` (for the expected rate per image);
    ``below_spec``: classes production's last evaluation found below the line's spec, with its figures
    (counted as missed: ``toolkit.memory.priorities``)."""
    lo, hi = agg.uncertain
    names = list(class_order or [])
    names += [c for c in agg.classes if c not in names]
    if dataset_instances:
        names += [c for c in dataset_instances if c not in names]
    index = {c: i for i, c in enumerate(names)}
    n_cls = len(names)
    # aggregate class ids -> our order (classes absent from the bank stay at zero)
    place = np.array([index[c] for c in agg.classes], dtype=np.int64)

    def ours(arr: np.ndarray) -> np.ndarray:   # the class axis (the last) in our order
        out = np.zeros(arr.shape[:-1] + (n_cls,), dtype=arr.dtype)
        out[..., place] = arr
        return out

    per = {k: ours(v) for k, v in agg.c.items()}
    detections, conf_sum, band_count, images = per["det"], per["conf"], per["band"], per["images"]
    hist = ours(agg.hist.T).T
    # per model version: the bank's versions in order of first appearance, then "unknown" (id 0)
    versions = agg.versions + ["unknown"]
    v_order = np.append(np.arange(1, len(versions)), 0)
    v_count, v_conf, v_band = (ours(agg.v[k])[v_order] for k in ("det", "conf", "band"))
    v_images = agg.v_records[v_order]
    # per ISO week, in time order
    w_order = np.argsort(np.array(agg.mondays, dtype=np.int64), kind="stable")
    weeks = [iso_week(agg.mondays[i]) for i in w_order]
    n_w = len(weeks)
    w_count, w_conf, w_band = (ours(agg.w[k])[w_order] for k in ("det", "conf", "band"))
    w_images = agg.w_records[w_order]
    tp, fp, fn = per["tp"].tolist(), per["fp"].tolist(), per["fn"].tolist()
    rev_labels, rev_dets = per["rev_labels"].tolist(), per["rev_dets"].tolist()
    rev_images, fp_images = per["rev_images"], per["fp_images"]
    place_list = place.tolist()
    confusions = {(place_list[t], place_list[p]): k for (t, p), k in agg.confusions.items()}
    reviewed_total = agg.reviewed_images

    total_dets = int(detections.sum())
    data_total = sum(dataset_instances.values()) if dataset_instances else 0
    prevalences = prevalence(names, detections, agg.records, reviewed_total, rev_labels, rev_dets,
                             dataset_instances, dataset_images, rev_tp=tp)
    all_scanned = agg.all_scanned
    for prev in prevalences:
        if prev is not None:
            prev["images_word"] = "reviewed" if prev["basis"] == "reviewed" else ("scanned" if all_scanned else "logged")
    classes: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        n = int(detections[c])
        by_version = {v: {"detections": int(v_count[i, c]), "images": int(v_images[i]),
                          "mean_confidence": _ratio(v_conf[i, c], v_count[i, c]),
                          "uncertain_share": _ratio(v_band[i, c], v_count[i, c])}
                      for i, v in enumerate(versions) if v_images[i] or v_count[i, c]}
        by_week = {w: {"detections": int(w_count[i, c]), "per_100_images": 100.0 * w_count[i, c] / w_images[i],
                       "mean_confidence": _ratio(w_conf[i, c], w_count[i, c]),
                       "uncertain_share": _ratio(w_band[i, c], w_count[i, c])}
                   for i, w in enumerate(weeks)}
        solid = [i for i in range(n_w) if w_count[i, c] >= MIN_WEEK_DETECTIONS]
        drift = None
        if len(solid) >= 2:
            a, b = solid[0], solid[-1]
            drift = {"first_week": weeks[a], "last_week": weeks[b],
                     "mean_confidence_first": float(w_conf[a, c] / w_count[a, c]),
                     "mean_confidence_last": float(w_conf[b, c] / w_count[b, c]),
                     "mean_confidence_change": float(w_conf[b, c] / w_count[b, c] - w_conf[a, c] / w_count[a, c]),
                     "per_100_images_change": float(100.0 * (w_count[b, c] / w_images[b] - w_count[a, c] / w_images[a]))}
        conf_with = {names[p]: k for (t, p), k in sorted(confusions.items(), key=lambda kv: -kv[1]) if t == c}
        inst = int(dataset_instances.get(name, 0)) if dataset_instances else None
        classes[name] = {
            "detections": n,
            "images": int(images[c]),
            "mean_confidence": _ratio(conf_sum[c], n),
            "uncertain_share": _ratio(band_count[c], n),
            "uncertain_detections": int(band_count[c]),
            "confidence_histogram": {"bins": [round(i / HIST_BINS, 2) for i in range(HIST_BINS + 1)],
                                     "counts": hist[c].tolist()},
            "production_share": _ratio(n, total_dets),
            "by_model_version": by_version,
            "by_week": by_week,
            "drift": drift,
            "reviewed": {"images": int(rev_images[c]), "tp": int(tp[c]), "fp": int(fp[c]), "fn": int(fn[c]),
                         "precision": _ratio(tp[c], tp[c] + fp[c]), "recall": _ratio(tp[c], tp[c] + fn[c]),
                         "false_positive_images": int(fp_images[c])},
            "confusions": conf_with,   # true class -> {predicted as: n}
            "missed": int(fn[c]),
            "dataset_instances": inst,
            "dataset_share": _ratio(inst, data_total) if inst is not None else None,
            "prevalence": prevalences[c],
            "below_spec": (below_spec or {}).get(name),
        }
    analysis = Analysis(classes, [], weeks, versions[:-1] if not v_images[-1] else versions, reviewed_total,
                        (lo, hi), agg.iou_match, records=agg.records)
    analysis.priorities = rank_priorities(analysis)
    analysis.score = {p["class"]: p["score"] for p in analysis.priorities}
    return analysis


# --- choosing images to label -------------------------------------------------------------------

def candidate_order(bank: MemoryBank, analysis: Analysis, class_order: list[str],
                    power: float = 1.0) -> Iterator[tuple[int, str]]:
    """Records to label, best first, with the reason: (record index, reason).

    1. records holding an uncertain detection, shared among classes by priority score (weighted
       round robin: a class with twice the score gets 2 ** ``power`` times the picks; power 0 gives
       every class an equal share), most uncertain first
       (closest to the middle of the band); classes detected below their expected rate (missed,
       see ``toolkit.memory.priorities.prevalence``) take part with their missed points through records without any
       detection, where their defects hide;
    2. then records with other detections of the prioritised classes, lowest confidence first;
    3. then records without any detection (a possible missed defect).
    Reviewed records are left out: they already carry the truth (see the reviewed batch).
    """
    lo, hi = analysis.uncertain
    mid = (lo + hi) / 2.0
    index = {c: i for i, c in enumerate(class_order)}
    remap = np.array([index[c] for c in bank.classes], dtype=np.int64) if bank.classes else np.zeros(0, np.int64)
    cls = remap[bank.det_cls] if len(bank.det_cls) else np.zeros(0, np.int64)
    conf = bank.det_conf
    rec = bank.det_record()
    reviewed = np.zeros(bank.records, dtype=bool)
    if bank.reviews:
        reviewed[np.fromiter(bank.reviews.keys(), dtype=np.int64)] = True
    open_det = ~reviewed[rec] if len(rec) else np.zeros(0, bool)
    in_band = (conf >= lo) & (conf < hi) & open_det

    def queue(mask: np.ndarray, key: np.ndarray, c: int) -> list[tuple[int, float]]:
        sel = np.flatnonzero(mask & (cls == c))
        sel = sel[np.argsort(key[sel], kind="stable")]
        recs = rec[sel]
        _, first = np.unique(recs, return_index=True)
        first.sort()
        return [(int(recs[i]), float(conf[sel[i]])) for i in first]

    scores = {p["class"]: p["score"] for p in analysis.priorities}
    ranked = [c for c in sorted(index, key=lambda c: -scores.get(c, 0.0))]
    distance = np.abs(conf - mid)
    queues = {c: queue(in_band, distance, index[c]) for c in ranked}
    weights = {c: max(v, 0.01) ** power for c, v in scores.items()}
    empty = np.flatnonzero((np.diff(bank.det_start) == 0) & ~reviewed)
    missed = {c: missed_points(analysis.classes[c]) for c in ranked if c in analysis.classes}
    missed = {c: v for c, v in missed.items() if v > 0}
    MISSED = "\0missed"   # the pseudo-class of records without detections, for the missed classes
    if missed and len(empty):
        names = ", ".join(sorted(missed, key=lambda c: -missed[c]))
        queues[MISSED] = [(int(r), -1.0) for r in empty]
        weights[MISSED] = sum(missed.values()) ** power
        ranked = ranked + [MISSED]
    taken = {c: 0 for c in ranked}
    heads = {c: 0 for c in ranked}
    seen: set[int] = set()
    while True:
        live = [c for c in ranked if heads[c] < len(queues[c])]
        if not live:
            break
        c = min(live, key=lambda k: (taken[k] + 1) / max(weights.get(k, 0.0), 0.01))
        r, p = queues[c][heads[c]]
        heads[c] += 1
        if r in seen:
            continue
        seen.add(r)
        taken[c] += 1
        if c == MISSED:
            yield r, f"no detection, while {names} {'is' if len(missed) == 1 else 'are'} detected far below the expected rate"
        else:
            yield r, (f"uncertain {c} detection (confidence {p:.2f}, band {lo:.2f}-{hi:.2f}; "
                      f"class priority score {scores.get(c, 0):.1f})")
    for c in ranked:
        if scores.get(c, 0.0) <= 0:
            continue
        for r, p in queue(open_det & ~in_band, conf, index[c]):
            if r not in seen:
                seen.add(r)
                yield r, f"{c} detection at confidence {p:.2f} (class priority score {scores[c]:.1f})"
    for r in empty:
        if int(r) not in seen:
            yield int(r), "no detection: a defect may have been missed"


# --- writing the export: images to label + the reviewed batch -----------------------------------

@dataclass
class ExportResult:
    export_dir: Path | None
    exported: int
    incoming_batch: Path | None
    reviewed_exported: int
    near_duplicates: int
    missing: list[str]
    refused: list[str] = field(default_factory=list)   # "path: why", never opened or not an image
    selection: dict[str, Any] = field(default_factory=dict)   # mode, candidates, groups, quotas, embedding cost


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def resolve_image(raw: str, bank_path: Path) -> Path:
    """A logged image path; a relative one is taken relative to the memory bank's folder."""
    path = Path(raw)
    return path if path.is_absolute() else (bank_path.parent / path)


def openable_image(raw: str, bank_path: Path) -> Path | None:
    """The real path of a logged image that may be opened (an existing regular file named like an
    image, links resolved); None otherwise. Nothing is read."""
    import os
    import stat

    try:
        real = Path(os.path.realpath(resolve_image(raw, bank_path)))
        ok = real.suffix.lower() in IMAGE_SUFFIXES and stat.S_ISREG(os.stat(real).st_mode)
    except (OSError, ValueError):
        return None
    return real if ok else None


def read_logged_image(raw: str, bank_path: Path) -> tuple[bytes, int, tuple[int, int]] | str | None:
    """The bytes, pHash and (width, height) of a logged image; None when it does not exist; else why it
    is refused. A memory bank is not trusted: a path whose real target (links resolved) is not named
    like an image, or is not a regular file, is refused without being opened; one whose content is
    not a decodable image is refused after reading it."""
    import os
    import stat

    src = resolve_image(raw, bank_path)
    try:
        real = Path(os.path.realpath(src))
        st = os.stat(real)
    except (OSError, ValueError):
        return None
    if real.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file name ({real.name}; {', '.join(sorted(IMAGE_SUFFIXES))}): not opened"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file: not opened"
    try:
        data = real.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    info = phash_bytes(data)
    if info is None:
        return "not a decodable image"
    return data, info[0], info[1]


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with = + - @ (or a tab / CR) gets a leading '."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def yolo_lines(boxes: list[tuple[int, float, float, float, float]], width: int, height: int) -> str:
    """(class id, x1, y1, x2, y2) in pixels -> YOLO txt (normalised centre, size; clipped to the image)."""
    out = []
    for c, x1, y1, x2, y2 in boxes:
        x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
        y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
        if x2 <= x1 or y2 <= y1:
            continue
        out.append(f"{c} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                   f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return "\n".join(out) + ("\n" if out else "")


def _write_labelled_copy(dest: Path, name: str, data: bytes, taken: set, boxes, width: int, height: int) -> str:
    """Write the image bytes (read once from the source, which is never changed) into ``dest/images``
    with its YOLO label; return the name used."""
    name = _unique_name(dest, name, taken)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    (dest / "images" / name).write_bytes(data)
    (dest / "labels" / f"{Path(name).stem}.txt").write_text(yolo_lines(boxes, width, height), encoding="utf-8")
    return name


def _unique_name(folder: Path, name: str, taken: set[str]) -> str:
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, k = name, 1
    while candidate.lower() in taken:
        candidate = f"{stem}_{k}{suffix}"
        k += 1
    taken.add(candidate.lower())
    return candidate


def prelabel_trust(analysis: Analysis, classes: list[str], confs: list[float]) -> tuple[str, str]:
    """How far an image's pre-labels can be trusted: ("high" | "medium" | "low", why in words).

    Pre-labels are the production model's own detections: they miss what it misses and carry its
    confusions (issue 12 found 2 of 5, 2 of 7 and 0 of 6 true defects pre-labelled on three images).
    """
    lo, hi = analysis.uncertain
    notes: list[str] = []
    level = 2
    if not confs:
        level = 0
        notes.append("no pre-labels: draw every defect")
    else:
        low = sum(c < hi for c in confs)
        if low:
            level = min(level, 0 if low == len(confs) else 1)
            notes.append(f"{low} of {len(confs)} box(es) below {hi:.2f} confidence: check class and extent")
        for name in sorted(set(classes)):
            rev = analysis.classes.get(name, {}).get("reviewed", {})
            if rev.get("tp", 0) + rev.get("fp", 0) >= MIN_REVIEWED and (rev.get("precision") or 0) < WEAK_THRESHOLD:
                level = min(level, 1)
                notes.append(f"{name} pre-labels were right {rev['precision']:.0%} of the time in reviewed images")
    missed = [c for c, st in analysis.classes.items() if missed_points(st) > 0]
    if missed:
        level = min(level, 1)
        notes.append(f"the model misses {', '.join(missed)}: look for them")
    if not notes:
        notes.append("every box above the uncertain band")
    return ("low", "medium", "high")[level], "; ".join(notes)


def export_for_labelling(workspace, bank: MemoryBank, analysis: Analysis, n: int, stamp: str,
                         near_duplicate_bits: int, class_weight_power: float = 0.0, selection: str = "uncertainty",
                         seed: int = 0, embed=None) -> ExportResult:
    """Copy the ``n`` most useful images to ``training/to_label/<stamp>/`` and the reviewed ones to incoming/.

    to_label/<stamp>/: images/, labels/ (YOLO pre-labels from the detections), classes.txt,
    selection.csv (why each image, and how far its pre-labels can be trusted). incoming/reviewed_<stamp>/:
    images/ + labels/ (the operators' review labels) + classes.txt, the YOLO batch layout
    dataset_preparer.py imports. Source images are only read; missing ones are listed, paths that
    are not image files are refused unopened (``read_logged_image``), neither is fatal.

    ``selection``: ``uncertainty`` (``candidate_order``) or ``confident`` / ``hybrid`` / ``diversity`` / ``random``
    (``toolkit.memory.selection``; ``embed(paths) -> (vectors, info)`` embeds the candidates).
    """
    import pandas as pd

    class_names = list(analysis.classes)
    index = {c: i for i, c in enumerate(class_names)}
    remap = [index[c] for c in bank.classes]
    missing: list[str] = []
    refused: list[str] = []
    export_dir = workspace.to_label / stamp
    taken: set[str] = set()
    hashes = np.zeros(0, dtype=np.uint64)
    near = 0
    rows = []
    info: dict[str, Any] = {"mode": selection}
    if selection == "uncertainty":
        order = ((r, reason, None) for r, reason in candidate_order(bank, analysis, class_names, class_weight_power))
    else:
        from toolkit.memory.selection import bank_picks

        picks, info = bank_picks(bank, analysis, n, selection, class_weight_power, seed,
                                 lambda r: openable_image(bank.image[r], bank.path), embed)
        order = ((p.record, p.reason, p) for p in picks)
    for r, reason, pick in order:
        if len(rows) >= n:
            break
        got = read_logged_image(bank.image[r], bank.path)
        if got is None:
            missing.append(bank.image[r])
            continue
        if isinstance(got, str):
            refused.append(f"{bank.image[r]}: {got}")
            continue
        data, digest, (w_img, h_img) = got
        if within(digest, hashes, near_duplicate_bits):
            near += 1
            continue
        hashes = np.append(hashes, np.uint64(digest))
        width = int(bank.width[r]) or w_img
        height = int(bank.height[r]) or h_img
        s, e = int(bank.det_start[r]), int(bank.det_start[r + 1])
        boxes = [(remap[int(bank.det_cls[k])], *bank.det_box[k].tolist()) for k in range(s, e)]
        name = _write_labelled_copy(export_dir, Path(bank.image[r]).name, data, taken, boxes, width, height)
        det_names = [bank.classes[int(bank.det_cls[k])] for k in range(s, e)]
        confs = [float(bank.det_conf[k]) for k in range(s, e)]
        trust, why = prelabel_trust(analysis, det_names, confs)
        rows.append({"rank": len(rows) + 1, "file": f"images/{name}", "source": bank.image[r], "reason": reason,
                     "selection": selection, "group": pick.group if pick else "",
                     "cluster": "" if pick is None or pick.cluster is None else pick.cluster,
                     "distance": "" if pick is None or pick.distance is None else pick.distance,
                     "typicality": "" if pick is None or pick.typicality is None else pick.typicality,
                     "uncertainty": round(1.0 - max(confs), 4) if confs else round(1.0 - analysis.uncertain[0], 4),
                     "detections": "; ".join(f"{c} {p:.2f}" for c, p in zip(det_names, confs)),
                     "prelabels": len(confs), "prelabel_min_confidence": f"{min(confs):.2f}" if confs else "",
                     "prelabel_trust": trust, "prelabel_notes": why,
                     "model_version": _name(bank.versions, int(bank.version[r])),
                     "memory_bank_line": int(bank.line[r])})
    if rows:
        (export_dir / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        pd.DataFrame(rows).map(csv_safe).to_csv(export_dir / "selection.csv", index=False, encoding="utf-8")
    incoming, reviewed = _write_reviewed_batch(workspace, bank, class_names, remap, stamp, missing, refused)
    for item in refused[:10]:
        logger.warning("refused %s", item)
    logger.info("exported %d image(s) to label, %d reviewed image(s) as a batch; %d missing, %d refused, "
                "%d near-duplicate(s)", len(rows), reviewed, len(missing), len(refused), near)
    return ExportResult(export_dir if rows else None, len(rows), incoming, reviewed, near, missing, refused, info)


def _name(table: list[str], i: int) -> str:
    return table[i] if 0 <= i < len(table) else ""


def _write_reviewed_batch(workspace, bank: MemoryBank, class_names: list[str], remap: list[int], stamp: str,
                          missing: list[str], refused: list[str]) -> tuple[Path | None, int]:
    if not bank.reviews:
        return None, 0
    batch = workspace.incoming / f"reviewed_{stamp}"
    latest: dict[str, int] = {}
    for r in bank.reviews:  # the latest review of an image wins
        latest[bank.image[r]] = r
    taken: set[str] = set()
    written = 0
    for raw, r in latest.items():
        got = read_logged_image(raw, bank.path)
        if got is None:
            missing.append(raw)
            continue
        if isinstance(got, str):
            refused.append(f"{raw}: {got}")
            continue
        data, _, (w_img, h_img) = got
        width = int(bank.width[r]) or w_img
        height = int(bank.height[r]) or h_img
        boxes = [(remap[c], x1, y1, x2, y2) for c, x1, y1, x2, y2 in bank.reviews[r]]
        _write_labelled_copy(batch, Path(raw).name, data, taken, boxes, width, height)
        written += 1
    if not written:
        return None, 0
    (batch / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    return batch, written

"""Training priorities of the classes: the score, its parts, the reasons in words, images needed.

Works on the per-class figures that ``toolkit.memory.analysis.analyze_memory_bank`` computes.

A class is judged first against what the data says should be there, in absolute terms (issue 17):

    expected per image  the class's labelled instances per image in the reviewed images (when at
                        least MIN_PREVALENCE_IMAGES were reviewed), else in the managed dataset's
                        train split
    expected            expected per image x the images behind it (reviewed images, else all records)
    r                   estimated recall = min(1, found / expected): on reviewed images the
                        detections matched to a review label at ``analyzer.iou_match`` (true positives;
                        a false call is not found), else every record's detections against the
                        dataset's rate (there duplicates and false positives count as found, so r is
                        an upper estimate; logged images that hold fewer defects than the training
                        images lower it: review some images and their labels take over)
    M                   missed: clip((RECALL_OK - r) / (RECALL_OK - RECALL_MISSED), 0, 1); 0 at
                        r >= 0.8 (detected well), 1 at r <= 0.5 (missed)
    Em                  evidence of the expectation: min(1, expected / EXPECTED_FULL); below 1 only
                        where little data says what should be there
    m = Em * M

No other class enters this judgement: when the whole model is weak, every class is missed.
A class that production's last evaluation found below the line's spec (its recall at
promotion.operating_conf on the test split under promotion.min_recall) is missed outright:
m = 1 and r = the lower of that measured recall and the estimate above.

The other signals make the base (0..100):

    base = 100 * E * (0.35*U + 0.25*(1-P) + 0.25*(1-R) + 0.10*G + 0.05*D)

    U  share of the class's detections in the uncertain band
    P  reviewed precision, R reviewed recall (taken as 1, i.e. no evidence of a problem,
       when fewer than MIN_REVIEWED reviewed detections / labels of the class exist)
    G  under-representation in the managed dataset: max(0, 1 - dataset_share / production_share)
       (0 when there is no dataset, and 0 for an over-called class: detections at least
       OVER_CALL x the labelled rate, or reviewed precision below OVER_CALL_PRECISION - a large
       share of production detections is then false calls, a precision problem, and its reason says so)
    D  confidence drift: min(1, drop of mean confidence from the first to the last week / 0.2)
    E  evidence: min(1, (detections + reviewed labels) / 20), so 3 detections cannot top the list

Priority score (0..100, higher = label it first):

    score = (1 - m) * base / 2  +  m * (50 + 50 * (1 - r))

A class detected well (m = 0) scores at most 50; a missed class with full evidence (m = 1) scores
75..100, lower recall first. So a class that works never outranks a missed one, whatever its
share of detections or its uncertainty; between r = 0.5 and 0.8 the two blend.

Images needed (a heuristic, not a guarantee): 0 when score < 5, else
``ceil10(score/100 * max(200, dataset_instances / 2))``: a severe class needs up to 200 new images
from scratch, or up to half as many again as its training instances, scaled by severity.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_REVIEWED = 5       # reviewed detections/labels of a class before P / R count in the score
WEIGHTS = {"uncertain": 0.35, "precision": 0.25, "recall": 0.25, "underrepresented": 0.10, "drift": 0.05}
EVIDENCE_FULL = 20
RECALL_OK = 0.8        # estimated recall at or above this: detected well (M = 0)
RECALL_MISSED = 0.5    # at or below this: missed (M = 1)
EXPECTED_FULL = 10     # expected detections for full evidence of the expectation (Em = 1)
MIN_IMAGES = 20        # fewer images behind the expectation: "little data"
MIN_PREVALENCE_IMAGES = 20  # reviewed images before their labels, not the dataset, set the expectation
WEAK_THRESHOLD = 0.9   # precision/recall below this gets a reason line
BASE_CAP = 50.0        # the most a class detected well can score
OVER_CALL = 1.5        # detections at this multiple of the labelled rate or more: over-called
OVER_CALL_PRECISION = 0.5  # reviewed precision below this (with MIN_REVIEWED detections): over-called


def prevalence(names: list[str], detections: np.ndarray, records: int, reviewed: int, rev_labels: list[int],
               rev_dets: list[int], dataset_instances: dict[str, int] | None,
               dataset_images: int | None, rev_tp: list[int] | None = None) -> list[dict[str, Any] | None]:
    """Expected against actual detections per class, in absolute terms (module docstring: r, M, Em);
    None where nothing is expected.

    With reviewed labels as the basis, the reviewed images' detections matched to a label
    (``rev_tp``, true positives; without it, all their detections) are compared with their labels
    (same images); with the dataset as the basis, all records' detections are compared with the
    dataset's rate. ``calls`` is every detection against the expectation (over-calling). No class is
    compared with the others.
    """
    n = len(names)
    calls = [float(v) for v in detections.tolist()]
    if reviewed >= MIN_PREVALENCE_IMAGES and sum(rev_labels):
        basis, images = "reviewed", reviewed
        per_image = [rev_labels[c] / reviewed for c in range(n)]
        seen = [float((rev_tp if rev_tp is not None else rev_dets)[c]) for c in range(n)]
        calls = [float(rev_dets[c]) for c in range(n)]
        total = sum(rev_labels)
        share = [rev_labels[c] / total for c in range(n)]
    elif dataset_instances and dataset_images and records:
        basis, images = "dataset", records
        per_image = [float(dataset_instances.get(name, 0)) / dataset_images for name in names]
        seen = [float(v) for v in detections.tolist()]
        total = sum(dataset_instances.values()) or 1
        share = [dataset_instances.get(name, 0) / total for name in names]
    else:
        return [None] * n
    out: list[dict[str, Any] | None] = []
    for c in range(n):
        expected = per_image[c] * images
        if expected <= 0:
            out.append(None)
            continue
        ratio = seen[c] / expected
        recall = min(1.0, ratio)
        missed = min(1.0, max(0.0, (RECALL_OK - recall) / (RECALL_OK - RECALL_MISSED)))
        out.append({"basis": basis, "images": int(images), "expected_per_image": round(per_image[c], 4),
                    "expected_detections": round(expected, 1), "detections": int(seen[c]),
                    "matched": basis == "reviewed" and rev_tp is not None,
                    "calls": int(calls[c]), "call_ratio": round(calls[c] / expected, 4),
                    "share": round(share[c], 4), "ratio": round(ratio, 4), "estimated_recall": round(recall, 4),
                    "missed": round(missed, 4), "evidence": round(min(1.0, expected / EXPECTED_FULL), 4),
                    "little_data": bool(images < MIN_IMAGES or expected < EXPECTED_FULL)})
    return out


def over_called(stats: dict[str, Any]) -> str | None:
    """Why the class is over-called (a precision problem), in words; None when it is not."""
    rev = stats["reviewed"]
    prev = stats.get("prevalence")
    precise = rev["tp"] + rev["fp"] >= MIN_REVIEWED and rev["precision"] is not None
    many = prev is not None and prev.get("call_ratio", 0.0) >= OVER_CALL and not prev.get("little_data", False)
    if not many and not (precise and rev["precision"] < OVER_CALL_PRECISION):
        return None
    parts = []
    if prev is not None and prev.get("call_ratio") is not None:
        parts.append(f"{prev['calls']} detection(s) where ~{prev['expected_detections']:.0f} labelled defect(s) "
                     f"were expected ({prev['call_ratio']:.1f}x the labelled rate)")
    if precise:
        parts.append(f"reviewed precision {rev['precision']:.2f} ({rev['fp']} false call(s))")
    return "; ".join(parts)


def _missed_parts(stats: dict[str, Any]) -> tuple[float, float]:
    """(m, r) of the module docstring; (0, 1) where nothing is expected."""
    prev, spec = stats.get("prevalence"), stats.get("below_spec")
    recall = prev.get("estimated_recall", min(1.0, prev["ratio"])) if prev else 1.0
    if spec:  # measured on labelled test images: full evidence that the class is missed
        return 1.0, min(recall, float(spec["recall"]))
    if not prev:
        return 0.0, 1.0
    return prev["evidence"] * prev["missed"], recall


def class_score(stats: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The documented score (module docstring) and its parts."""
    rev = stats["reviewed"]
    u = stats["uncertain_share"] or 0.0
    p = rev["precision"] if rev["tp"] + rev["fp"] >= MIN_REVIEWED and rev["precision"] is not None else 1.0
    r = rev["recall"] if rev["tp"] + rev["fn"] >= MIN_REVIEWED and rev["recall"] is not None else 1.0
    g = 0.0
    if stats["dataset_share"] is not None and stats["production_share"] and not over_called(stats):
        g = max(0.0, 1.0 - stats["dataset_share"] / stats["production_share"])
    d = 0.0
    if stats["drift"] is not None:
        d = min(1.0, max(0.0, -stats["drift"]["mean_confidence_change"]) / 0.2)
    evidence = min(1.0, (stats["detections"] + rev["tp"] + rev["fn"]) / EVIDENCE_FULL)
    parts = {"uncertain": u, "precision": 1.0 - p, "recall": 1.0 - r, "underrepresented": g, "drift": d}
    base = 100.0 * evidence * sum(WEIGHTS[k] * v for k, v in parts.items())
    m, _ = _missed_parts(stats)
    prev = stats.get("prevalence")
    parts["missed"] = 1.0 if stats.get("below_spec") else prev["missed"] if prev else 0.0
    score = (1.0 - m) * base * BASE_CAP / 100.0 + missed_points(stats)
    return round(min(100.0, score), 2), parts


def missed_points(stats: dict[str, Any]) -> float:
    """The part of a class's score that comes from being detected below its expected rate."""
    m, recall = _missed_parts(stats)
    return m * (BASE_CAP + (100.0 - BASE_CAP) * (1.0 - recall))


def images_needed(score: float, dataset_instances: int | None) -> int:
    """The documented heuristic (module docstring)."""
    if score < 5:
        return 0
    base = max(200.0, (dataset_instances or 0) / 2.0)
    return int(math.ceil(score / 100.0 * base / 10.0) * 10)


def reasons_for(name: str, stats: dict[str, Any], uncertain: tuple[float, float], reviewed_total: int) -> list[str]:
    """Why a class ranks where it does, in words."""
    out: list[str] = []
    lo, hi = uncertain
    rev = stats["reviewed"]
    u = stats["uncertain_share"]
    if u is not None and u >= 0.2 and stats["detections"]:
        out.append(f"{u:.0%} of {name} detections are in the uncertain band {lo:.2f}-{hi:.2f} "
                   f"(mean confidence {stats['mean_confidence']:.2f})")
    if rev["tp"] + rev["fp"] >= MIN_REVIEWED and rev["precision"] is not None and rev["precision"] < WEAK_THRESHOLD:
        out.append(f"reviewed precision of {name} is {rev['precision']:.2f}: {rev['fp']} false positives "
                   f"in {reviewed_total} reviewed images")
    if rev["tp"] + rev["fn"] >= MIN_REVIEWED and rev["recall"] is not None and rev["recall"] < WEAK_THRESHOLD:
        wrong = sum(stats["confusions"].values())
        extra = f", {wrong} of them detected as another class" if wrong else ""
        out.append(f"reviewed recall of {name} is {rev['recall']:.2f}: {rev['fn']} of {rev['tp'] + rev['fn']} "
                   f"labelled defects missed{extra}")
    if stats["confusions"]:
        other, k = next(iter(stats["confusions"].items()))
        out.append(f"{name} was detected as {other} {k} time(s) in reviewed images")
    over = over_called(stats)
    if over:
        share = (f"{stats['production_share']:.0%} of production detections, " if stats["production_share"] else "")
        out.append(f"{name} is over-called: {share}{over}. A precision problem (false calls), not "
                   f"under-representation: label the images with its false calls, not more {name} defects")
    elif stats["dataset_share"] is not None and stats["production_share"]:
        if stats["dataset_share"] < 0.5 * stats["production_share"]:
            out.append(f"{name} is {stats['production_share']:.0%} of production detections but "
                       f"{stats['dataset_share']:.0%} of training instances ({stats['dataset_instances']})")
    drift = stats["drift"]
    if drift is not None and drift["mean_confidence_change"] <= -0.1:
        out.append(f"mean confidence of {name} fell from {drift['mean_confidence_first']:.2f} "
                   f"({drift['first_week']}) to {drift['mean_confidence_last']:.2f} ({drift['last_week']})")
    prev = stats.get("prevalence")
    if prev and prev["missed"] > 0:
        where = f"{prev['images']} {prev.get('images_word', prev['basis'])} image(s)"
        why = (f"the reviewed labels hold {prev['expected_per_image']:.2f} {name} defect(s) per image "
               f"({prev['share']:.0%} of reviewed labels)" if prev["basis"] == "reviewed"
               else f"{prev['share']:.0%} of the training boxes are {name}, "
                    f"{prev['expected_per_image']:.2f} per training image")
        recall = prev.get("estimated_recall", min(1.0, prev["ratio"]))
        verdict = "likely missed" if recall <= RECALL_MISSED else "often missed"
        if prev.get("matched") and prev.get("calls"):
            out.insert(0, f"{prev['detections']} of ~{prev['expected_detections']:.0f} labelled {name} defect(s) found "
                          f"in {where} (a detection matched to a review label; {prev['calls'] - prev['detections']} "
                          f"other detection(s) not counted; {why}): estimated recall {recall:.0%}, {verdict}")
        elif prev["detections"] == 0:
            out.insert(0, f"0 detections in {where}, while {why} (~{prev['expected_detections']:.0f} expected): "
                          f"estimated recall 0%, {verdict}")
        else:
            out.insert(0, f"{prev['detections']} detection(s) in {where} where ~{prev['expected_detections']:.0f} "
                          f"were expected ({why}): estimated recall {recall:.0%}, {verdict}")
    spec = stats.get("below_spec")
    if spec:
        out.insert(0, f"below the line's spec: production's recall of {name} at confidence {spec['operating_conf']:.2f} "
                      f"was {spec['recall']:.2f} on the {spec.get('split') or 'test'} split in its last evaluation, under "
                      f"promotion.min_recall {spec['min_recall']:.2f}: counted as missed")
    if prev:
        if prev.get("little_data", prev["evidence"] < 1.0):
            out.append(f"little data: ~{prev['expected_detections']:.1f} {name} defect(s) expected in "
                       f"{prev['images']} image(s)")
    elif stats["detections"] + rev["tp"] + rev["fn"] < EVIDENCE_FULL:
        out.append(f"little evidence: {stats['detections']} detection(s), {rev['tp'] + rev['fn']} reviewed label(s), "
                   f"and no labelled data says how common {name} is (no managed dataset, fewer than "
                   f"{MIN_PREVALENCE_IMAGES} reviewed images)")
    if not out:
        out.append("no sign of weakness in the logged data")
    return out


def rank_priorities(analysis) -> list[dict[str, Any]]:
    """Classes by score, highest first, each with its reasons, images needed, score parts and
    ``estimated_recall`` (module docstring's r; None where no data says what should be there)."""
    ranked = []
    for name, stats in analysis.classes.items():
        score, parts = class_score(stats)
        prev = stats.get("prevalence")
        ranked.append({"class": name, "score": score,
                       "estimated_recall": _missed_parts(stats)[1] if prev or stats.get("below_spec") else None,
                       "reasons": reasons_for(name, stats, analysis.uncertain, analysis.reviewed_images),
                       "images_needed": images_needed(score, stats["dataset_instances"]),
                       "parts": {k: round(v, 4) for k, v in parts.items()}})
    ranked.sort(key=lambda p: (-p["score"], p["class"]))
    return ranked

"""Training priorities of the classes: the score, its parts, the reasons in words, images needed.

Works on the per-class figures that ``toolkit.analysis.analyze_memory_bank`` computes.

Priority score of a class (0..100, higher = label it first):

    score = min(100, 100 * (E * (0.35*U + 0.25*(1-P) + 0.25*(1-R) + 0.10*G + 0.05*D) + 0.6 * Em * M))

    U  share of the class's detections in the uncertain band
    P  reviewed precision, R reviewed recall (taken as 1, i.e. no evidence of a problem,
       when fewer than MIN_REVIEWED reviewed detections / labels of the class exist)
    G  under-representation in the managed dataset: max(0, 1 - dataset_share / production_share)
       (0 when there is no dataset)
    D  confidence drift: min(1, drop of mean confidence from the first to the last week / 0.2)
    E  evidence: min(1, (detections + reviewed labels) / 20), so 3 detections cannot top the list
    M  missed (prevalence): how far the class is detected below the rate expected of it.
       Expected per image = the class's instances per image in reviewed images (when at least
       MIN_PREVALENCE_IMAGES were reviewed), else in the managed dataset's train split; expected
       detections = that x records. ratio = detections / expected, taken relative to the typical
       class (reference = min(1, median ratio of the classes with an expectation), so a model that
       under-detects everything a little does not flag every class); shortfall = 1 - ratio/reference,
       M = clip((shortfall - 0.2) / 0.8, 0, 1): a class never detected although common has M = 1
    Em evidence of the expectation: min(1, expected detections / 20)

A class the model never detects, although the data says it is common, is the strongest signal
there is (the PCB finding of issue 12): M's weight puts such a class above every class that is
only uncertain.

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
MISSED_WEIGHT = 0.6
MISSED_TOLERANCE = 0.2  # a class detected at >= 80 % of the typical rate is not called missed
MIN_PREVALENCE_IMAGES = 20  # reviewed images before their labels, not the dataset, set the expectation
WEAK_THRESHOLD = 0.9   # precision/recall below this gets a reason line


def prevalence(names: list[str], detections: np.ndarray, records: int, reviewed: int, rev_labels: list[int],
               rev_dets: list[int], dataset_instances: dict[str, int] | None,
               dataset_images: int | None) -> list[dict[str, Any] | None]:
    """Expected against actual detections per class (module docstring, M); None where nothing is expected.

    With reviewed labels as the basis, the reviewed images' own detections are compared with their
    labels (same images, so the ratio is a recall estimate that counts duplicates and false positives
    too); with the dataset as the basis, all records' detections are compared with the dataset's rate.
    """
    n = len(names)
    if reviewed >= MIN_PREVALENCE_IMAGES and sum(rev_labels):
        basis, images = "reviewed", reviewed
        per_image = [rev_labels[c] / reviewed for c in range(n)]
        seen = [float(rev_dets[c]) for c in range(n)]
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
    expected = [p * images for p in per_image]
    ratios = [seen[c] / expected[c] if expected[c] > 0 else None for c in range(n)]
    solid = [r for c, r in enumerate(ratios) if r is not None and expected[c] >= 1.0]
    reference = min(1.0, float(np.median(solid))) if solid else 1.0
    out: list[dict[str, Any] | None] = []
    for c in range(n):
        if ratios[c] is None:
            out.append(None)
            continue
        relative = ratios[c] / reference if reference > 0 else 1.0
        shortfall = max(0.0, 1.0 - relative)
        missed = min(1.0, max(0.0, (shortfall - MISSED_TOLERANCE) / (1.0 - MISSED_TOLERANCE)))
        out.append({"basis": basis, "images": int(images), "expected_per_image": round(per_image[c], 4),
                    "expected_detections": round(expected[c], 1), "detections": int(seen[c]),
                    "share": round(share[c], 4), "ratio": round(ratios[c], 4), "reference_ratio": round(reference, 4),
                    "relative_rate": round(relative, 4), "missed": round(missed, 4),
                    "evidence": round(min(1.0, expected[c] / EVIDENCE_FULL), 4)})
    return out


def class_score(stats: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The documented score (module docstring) and its parts."""
    rev = stats["reviewed"]
    u = stats["uncertain_share"] or 0.0
    p = rev["precision"] if rev["tp"] + rev["fp"] >= MIN_REVIEWED and rev["precision"] is not None else 1.0
    r = rev["recall"] if rev["tp"] + rev["fn"] >= MIN_REVIEWED and rev["recall"] is not None else 1.0
    g = 0.0
    if stats["dataset_share"] is not None and stats["production_share"]:
        g = max(0.0, 1.0 - stats["dataset_share"] / stats["production_share"])
    d = 0.0
    if stats["drift"] is not None:
        d = min(1.0, max(0.0, -stats["drift"]["mean_confidence_change"]) / 0.2)
    evidence = min(1.0, (stats["detections"] + rev["tp"] + rev["fn"]) / EVIDENCE_FULL)
    parts = {"uncertain": u, "precision": 1.0 - p, "recall": 1.0 - r, "underrepresented": g, "drift": d}
    score = 100.0 * evidence * sum(WEIGHTS[k] * v for k, v in parts.items())
    prev = stats.get("prevalence")
    parts["missed"] = prev["missed"] if prev else 0.0
    if prev:
        score += 100.0 * MISSED_WEIGHT * prev["evidence"] * prev["missed"]
    return round(min(100.0, score), 2), parts


def missed_points(stats: dict[str, Any]) -> float:
    """The part of a class's score that comes from being detected below its expected rate."""
    prev = stats.get("prevalence")
    return 100.0 * MISSED_WEIGHT * prev["evidence"] * prev["missed"] if prev else 0.0


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
    if stats["dataset_share"] is not None and stats["production_share"]:
        if stats["dataset_share"] < 0.5 * stats["production_share"]:
            out.append(f"{name} is {stats['production_share']:.0%} of production detections but "
                       f"{stats['dataset_share']:.0%} of training instances ({stats['dataset_instances']})")
    drift = stats["drift"]
    if drift is not None and drift["mean_confidence_change"] <= -0.1:
        out.append(f"mean confidence of {name} fell from {drift['mean_confidence_first']:.2f} "
                   f"({drift['first_week']}) to {drift['mean_confidence_last']:.2f} ({drift['last_week']})")
    prev = stats.get("prevalence")
    if prev and prev["missed"] > 0:
        where = f"{prev['images']} {prev['images_word']} image(s)"
        why = (f"the reviewed labels hold {prev['expected_per_image']:.2f} {name} defect(s) per image "
               f"({prev['share']:.0%} of reviewed labels)" if prev["basis"] == "reviewed"
               else f"{prev['share']:.0%} of the training boxes are {name}")
        if prev["detections"] == 0:
            out.insert(0, f"0 detections in {where}, while {why} (~{prev['expected_detections']:.0f} expected): "
                          "likely missed")
        else:
            out.insert(0, f"{prev['detections']} detection(s) in {where} where ~{prev['expected_detections']:.0f} "
                          f"were expected ({why}): {prev['relative_rate']:.0%} of the typical class's rate, "
                          "often missed")
    if stats["detections"] + rev["tp"] + rev["fn"] < EVIDENCE_FULL and not (prev and prev["missed"] > 0):
        out.append(f"little evidence: {stats['detections']} detection(s), {rev['tp'] + rev['fn']} reviewed label(s)")
    if not out:
        out.append("no sign of weakness in the logged data")
    return out


def rank_priorities(analysis) -> list[dict[str, Any]]:
    ranked = []
    for name, stats in analysis.classes.items():
        score, parts = class_score(stats)
        ranked.append({"class": name, "score": score,
                       "reasons": reasons_for(name, stats, analysis.uncertain, analysis.reviewed_images),
                       "images_needed": images_needed(score, stats["dataset_instances"]),
                       "parts": {k: round(v, 4) for k, v in parts.items()}})
    ranked.sort(key=lambda p: (-p["score"], p["class"]))
    return ranked

"""Detection metrics from per-image arrays, as ultralytics computes them, and a paired bootstrap.

One inference pass per model gives, for every image, which predictions are correct at the ten
IoU thresholds 0.50:0.95 (``tp``), their confidence and class, and the image's true classes.
From those arrays alone come the headline numbers (``ultralytics.utils.metrics.ap_per_class``,
the function ``val`` itself uses) and a paired bootstrap over images: a resample only reweights
images, so no model is ever run again. Pure numpy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_AP_X = np.linspace(0, 1, 101)  # COCO 101-point interpolation, as ultralytics
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


@dataclass
class ModelEvaluation:
    """One model on one split: per-image arrays (concatenated) and the metrics they give."""

    path: Path
    sha256: str
    names: tuple[str, ...]
    tp: np.ndarray          # (N, 10) bool, predictions in image order
    conf: np.ndarray        # (N,)
    pred_cls: np.ndarray    # (N,)
    pred_img: np.ndarray    # (N,) image index of each prediction
    target_cls: np.ndarray  # (M,)
    target_img: np.ndarray  # (M,)
    n_images: int
    metrics: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    cache_file: Path | None = None
    ms_per_image: float | None = None
    imgsz: int | None = None  # the size it was scored at


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4) with every box in ``b`` (N, 4), xyxy -> (M, N)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + eps)


def match_predictions(pred_cls: np.ndarray, true_cls: np.ndarray, iou: np.ndarray,
                      thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """(N, T) bool: prediction j is a true positive at threshold t (ultralytics' greedy rule).

    Predictions come in descending confidence; each takes the best unclaimed target of its
    class with IoU above the threshold, independently at every threshold.
    """
    correct = np.zeros((len(pred_cls), len(thresholds)), dtype=bool)
    if len(pred_cls) == 0 or len(true_cls) == 0:
        return correct
    iou = iou * (np.asarray(true_cls)[:, None] == np.asarray(pred_cls)[None, :])
    matched = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    cols = np.arange(len(thresholds))
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, cols] >= thresholds
        matched[k, cols] |= correct[j]
    return correct


def detection_metrics(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                      names: Sequence[str]) -> dict[str, Any]:
    """mAP50, mAP50-95, precision, recall and per-class values exactly as ultralytics val computes them."""
    from ultralytics.utils.metrics import ap_per_class

    per_class: dict[str, dict[str, Any]] = {
        n: {"ap50": None, "ap50_95": None, "precision": None, "recall": None, "instances": 0} for n in names}
    if len(target_cls) == 0:
        return {"map50": 0.0, "map50_95": 0.0, "precision": 0.0, "recall": 0.0, "per_class": per_class}
    _, _, p, r, _, ap, classes, *_ = ap_per_class(tp, conf, pred_cls, target_cls)
    counts = np.bincount(target_cls.astype(int), minlength=len(names))
    for i, c in enumerate(classes):
        per_class[names[c]] = {"ap50": float(ap[i, 0]), "ap50_95": float(ap[i].mean()), "precision": float(p[i]),
                               "recall": float(r[i]), "instances": int(counts[c])}
    return {"map50": float(ap[:, 0].mean()), "map50_95": float(ap.mean()),
            "precision": float(p.mean()), "recall": float(r.mean()), "per_class": per_class}


class BootstrapScorer:
    """mAP of one model on resamples of the images, without re-running anything.

    A resample with image counts ``w`` is scored exactly as ``ap_per_class`` would score the
    concatenation of the resampled images: every prediction of image i repeated ``w[i]`` times.
    The sort by confidence is done once, so a resample costs a ``np.repeat`` and cumulative sums.
    """

    def __init__(self, evaluation: ModelEvaluation):
        order = np.argsort(-evaluation.conf, kind="stable")
        self.n_images = evaluation.n_images
        self.nc = len(evaluation.names)
        self.target_cls, self.target_img = evaluation.target_cls.astype(int), evaluation.target_img
        self.by_class = []  # per class: (tp sorted by conf, image of each prediction)
        cls_sorted = evaluation.pred_cls[order].astype(int)
        for c in range(self.nc):
            idx = order[cls_sorted == c]
            self.by_class.append((evaluation.tp[idx], evaluation.pred_img[idx]))

    def score(self, counts: np.ndarray) -> tuple[float, float]:
        """(mAP50, mAP50-95) of the resample in which image i appears ``counts[i]`` times."""
        n_targets = np.bincount(self.target_cls, weights=counts[self.target_img], minlength=self.nc)
        aps = []
        for c in range(self.nc):
            if n_targets[c] == 0:
                continue  # as ap_per_class: only classes with targets in the resample count
            tp, img = self.by_class[c]
            reps = counts[img]
            if reps.sum() == 0:
                aps.append(np.zeros(tp.shape[1]))
                continue
            tp_rep = np.repeat(tp, reps, axis=0)
            aps.append(_average_precision(tp_rep, n_targets[c]))
        if not aps:
            return 0.0, 0.0
        ap = np.array(aps)
        return float(ap[:, 0].mean()), float(ap.mean())


def _average_precision(tp_sorted: np.ndarray, n_targets: float, eps: float = 1e-16) -> np.ndarray:
    """AP at each IoU threshold of predictions of one class sorted by confidence (ultralytics' compute_ap)."""
    tpc = tp_sorted.cumsum(0)
    n = np.arange(1, len(tp_sorted) + 1)[:, None]
    recall = tpc / (n_targets + eps)
    precision = tpc / n
    out = np.empty(tp_sorted.shape[1])
    for j in range(tp_sorted.shape[1]):
        mrec = np.concatenate(([0.0], recall[:, j], [recall[-1, j]], [1.0]))
        mpre = np.concatenate(([1.0], precision[:, j], [0.0], [0.0]))
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        out[j] = _trapezoid(np.interp(_AP_X, mrec, mpre), _AP_X)
    return out


def paired_bootstrap(production: ModelEvaluation, candidate: ModelEvaluation, metric: str,
                     resamples: int, seed: int = 0) -> np.ndarray:
    """Gains (candidate - production) on ``metric`` over ``resamples`` paired resamples of the images.

    Paired: both models are scored on the very same resample, so image difficulty cancels out.
    """
    if production.n_images != candidate.n_images:
        raise ValueError("paired bootstrap needs both models evaluated on the same images")
    which = {"map50": 0, "map50_95": 1}[metric]
    rng = np.random.default_rng(seed)
    a, b = BootstrapScorer(production), BootstrapScorer(candidate)
    n = production.n_images
    gains = np.empty(resamples)
    for i in range(resamples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)
        gains[i] = b.score(counts)[which] - a.score(counts)[which]
    return gains


def interval95(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- the operating point
def _per_image_counts(ev: ModelEvaluation, conf: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hits, targets, false) per image and class, (n_images, nc) each, at confidence ``conf``.

    A hit is a prediction at or above ``conf`` that is correct at IoU 0.5; the matching was done
    in descending confidence, so the predictions above ``conf`` keep exactly these matches when
    the ones below it are dropped.
    """
    nc, n = len(ev.names), ev.n_images
    keep = ev.conf >= conf
    cls, img = ev.pred_cls[keep].astype(int), ev.pred_img[keep].astype(int)
    correct = ev.tp[keep, 0] if len(ev.tp) else np.zeros(0, bool)
    hits = np.zeros((n, nc))
    false = np.zeros((n, nc))
    np.add.at(hits, (img[correct], cls[correct]), 1)
    np.add.at(false, (img[~correct], cls[~correct]), 1)
    targets = np.zeros((n, nc))
    np.add.at(targets, (ev.target_img.astype(int), ev.target_cls.astype(int)), 1)
    return hits, targets, false


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def operating_point_samples(ev: ModelEvaluation, conf: float, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class recall and false calls per image at ``conf`` for each row of image ``weights`` (B, n)."""
    hits, targets, false = _per_image_counts(ev, conf)
    recall = _ratio(weights @ hits, weights @ targets)            # (B, nc); nan: no instance in the resample
    false_per_image = (weights @ false) / np.maximum(weights.sum(1, keepdims=True), 1)
    return recall, false_per_image


def resample_weights(n_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n_images) image counts of paired bootstrap resamples."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
                     for _ in range(resamples)]).astype(float) if n_images else np.zeros((resamples, 0))


def _interval(samples: np.ndarray) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def operating_point(ev: ModelEvaluation, conf: float, weights: np.ndarray) -> dict[str, Any]:
    """Recall (1 - escape rate) and false calls per image of every class at the line's confidence.

    ``weights``: the bootstrap resamples (``resample_weights``); the 95% intervals come from them,
    as the gain's interval does.
    """
    whole = np.ones((1, ev.n_images))
    recall, false = operating_point_samples(ev, conf, whole)
    r_samples, f_samples = operating_point_samples(ev, conf, weights)
    _, targets, _ = _per_image_counts(ev, conf)
    per_class = {}
    for c, name in enumerate(ev.names):
        instances = int(targets[:, c].sum())
        per_class[name] = {
            "instances": instances,
            "recall": float(recall[0, c]) if instances else None,
            "recall_ci95": _interval(r_samples[:, c]) if instances else None,
            "false_calls_per_image": float(false[0, c]),
            "false_calls_ci95": _interval(f_samples[:, c]),
        }
    return {"conf": float(conf), "false_calls_per_image": float(false[0].sum()),
            "false_calls_ci95": _interval(f_samples.sum(1)), "per_class": per_class}


def recall_drops(production: ModelEvaluation, candidate: ModelEvaluation, conf: float,
                 weights: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per class: production's recall minus the candidate's at ``conf``, with its paired 95% interval."""
    if production.n_images != candidate.n_images:
        raise ValueError("paired bootstrap needs both models evaluated on the same images")
    whole = np.ones((1, production.n_images))
    before, _ = operating_point_samples(production, conf, whole)
    after, _ = operating_point_samples(candidate, conf, whole)
    before_s, _ = operating_point_samples(production, conf, weights)
    after_s, _ = operating_point_samples(candidate, conf, weights)
    out = {}
    for c, name in enumerate(production.names):
        if not np.isfinite(before[0, c]):
            continue  # no instance of the class in the split: nothing escapes
        out[name] = {"before": float(before[0, c]), "after": float(after[0, c]),
                     "drop": float(before[0, c] - after[0, c]), "ci95": _interval(before_s[:, c] - after_s[:, c])}
    return out


# ----------------------------------------------------------------------------- the line's spec
def conf_for_spec(ev: ModelEvaluation, specs: dict[str, float]) -> tuple[dict[str, dict[str, float] | None],
                                                                          dict[str, float | None]]:
    """Per class: the highest confidence at which its recall reaches ``specs[name]``, and the most
    recall any confidence reaches (at evaluation.conf).

    Recall as a function of the confidence threshold comes from the matched predictions: a class's
    predictions in descending confidence, each a hit or a false call at IoU 0.5 (the matching was
    done in that order, so dropping the ones below a threshold keeps the matches above it, as in
    ``_per_image_counts``). Predictions of equal confidence come in together. The first value per
    class is ``{conf, recall, false_calls_per_image, all_false_calls_per_image}`` there (the class's
    own false calls; every class's false calls if the whole line ran at that confidence), or None
    where no confidence reaches the spec or the split holds no instance of the class.
    """
    nc = len(ev.names)
    n_targets = np.bincount(ev.target_cls.astype(int), minlength=nc)
    hit = ev.tp[:, 0].astype(bool) if len(ev.tp) else np.zeros(0, bool)
    cls = ev.pred_cls.astype(int)
    n_images = max(ev.n_images, 1)
    found: dict[str, dict[str, float] | None] = {}
    most: dict[str, float | None] = {}
    for c, name in enumerate(ev.names):
        if n_targets[c] == 0:
            found[name], most[name] = None, None
            continue
        conf, h = ev.conf[cls == c].astype(np.float64), hit[cls == c]
        order = np.argsort(-conf, kind="stable")
        conf, h = conf[order], h[order]
        hits = np.cumsum(h)
        last = np.searchsorted(-conf, -conf, side="right") - 1  # the last prediction of each one's confidence
        recall = hits[last] / n_targets[c] if len(conf) else np.zeros(0)
        most[name] = float(recall[-1]) if len(recall) else 0.0
        need = specs.get(name)
        reach = np.flatnonzero(recall >= need - 1e-9) if need is not None else np.zeros(0, int)
        if not len(reach):
            found[name] = None
            continue
        k = int(reach[0])  # recall only grows as the threshold falls: the first is the highest confidence
        threshold, kept = conf[k], last[k] + 1
        found[name] = {"conf": float(threshold), "recall": float(recall[k]),
                       "false_calls_per_image": float((kept - hits[last[k]]) / n_images),
                       "all_false_calls_per_image": float(np.sum((ev.conf >= threshold) & ~hit) / n_images)}
    return found, most

"""Score detection models on one split the way ``ultralytics val`` does, keeping per-image results.

One inference pass per model gives, for every image, which predictions are correct at the ten
IoU thresholds 0.50:0.95 (``tp``), their confidence and class, and the image's true classes.
From those arrays alone come the headline numbers (``ultralytics.utils.metrics.ap_per_class``,
the function ``val`` itself uses) and a paired bootstrap over images: a resample only reweights
images, so no model is ever run again.

Why our own loop rather than ``model.val()``: ``val`` keeps no per-image arrays, writes a label
``.cache`` next to the user's labels and re-saves JPEGs with a damaged end marker in place -
the user's data must stay untouched. The loop below reproduces ``val`` step by step instead:
images resized long side to ``imgsz``, rectangular batches sorted by aspect ratio and padded to
``ceil(shape * imgsz / stride + 0.5) * stride`` (672 px for a square image at 640), multi-label
NMS, matching in the letterboxed frame. On NEU-DET it agrees with ``val`` to the third decimal.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.config import DEFAULTS, check_value
from toolkit.datafile import read_data_yaml
from toolkit.errors import UserError
from toolkit.files import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"}
# Bump when anything that changes the stored numbers changes (matching, preprocessing, layout).
CACHE_FORMAT = 1
_AP_X = np.linspace(0, 1, 101)  # COCO 101-point interpolation, as ultralytics
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _evaluation_default(key: str) -> Any:
    return DEFAULTS["evaluation"][key]


@dataclass(frozen=True)
class EvalSettings:
    """What must be identical for every model of one comparison (and keys the cache).

    Defaults and checks are those of training.yaml's ``evaluation:`` section (toolkit/config.py).
    ``imgsz`` None: each model is scored at the size it was trained at (``scoring_size``).
    """

    imgsz: int | None = _evaluation_default("imgsz")
    batch: int = _evaluation_default("batch")
    conf: float = _evaluation_default("conf")
    iou: float = _evaluation_default("iou")
    device: str = _evaluation_default("device")            # "" = first GPU if any, else cpu
    speed_images: int = _evaluation_default("speed_images")  # images timed per round; 0: no timing

    @classmethod
    def from_settings(cls, evaluation: Mapping[str, Any]) -> "EvalSettings":
        """From the ``evaluation:`` section of the settings (missing keys: defaults), checked."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: check_value(f"evaluation.{name}", evaluation.get(name, _evaluation_default(name)),
                                        "evaluation settings") for name in names})


@dataclass(frozen=True)
class SplitData:
    """Images and ground truth of one split, in ultralytics' file order."""

    names: tuple[str, ...]
    split: str
    images: tuple[Path, ...]
    shapes: tuple[tuple[int, int], ...]      # (height, width) as decoded (EXIF-rotated)
    target_cls: tuple[np.ndarray, ...]       # per image (n,) int
    target_boxes: tuple[np.ndarray, ...]     # per image (n, 4) xyxy, normalised 0..1
    skipped: tuple[dict[str, str], ...]      # {"path", "reason"} of images left out
    fingerprint: str                         # sha256 of file names, sizes and label contents

    def __len__(self) -> int:
        return len(self.images)


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


# ---------------------------------------------------------------------------------------------
# The split: images and labels as ultralytics finds them

def _resolve_split_paths(data_yaml: Path, data: Mapping[str, Any], split: str) -> list[Path]:
    entry = data.get(split)
    if not entry:
        known = ", ".join(k for k in ("train", "val", "test") if data.get(k))
        raise UserError(f"{data_yaml} has no '{split}:' split (it has: {known or 'none'}); "
                        "choose one with --split or import a test split with dataset_preparer.py")
    base = Path(data.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = (data_yaml.parent / base).resolve()
    files: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(item)
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    f = Path(line)
                    files.append(f if f.is_absolute() else (p.parent / f).resolve())
        else:
            raise UserError(f"{data_yaml}: split '{split}' points to {p}, which does not exist; "
                            "fix the data yaml or rerun dataset_preparer.py")
    # ultralytics sorts the file list the same way, which fixes the batch composition
    return sorted({f for f in files if f.suffix.lower() in IMAGE_SUFFIXES}, key=lambda f: str(f))


def label_path_for(image: Path) -> Path:
    """ultralytics' convention: the last ``/images/`` of the path becomes ``/labels/``, suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    text = str(image)
    if sa in text:
        text = sb.join(text.rsplit(sa, 1))
    return Path(text).with_suffix(".txt")


def read_yolo_label(path: Path, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, normalised xyxy boxes) of a YOLO label file; ValueError says what is wrong.

    Mirrors ultralytics' checks: polygons become their bounding box, duplicate rows count once,
    coordinates outside 0..1 or an unknown class make the image unusable.
    """
    if not path.is_file():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.float32)
    boxes = []
    for row in rows:
        try:
            values = [float(v) for v in row]
        except ValueError:
            raise ValueError(f"label line {' '.join(row)!r} is not numbers") from None
        if len(values) == 5:
            c, x, y, w, h = values
            boxes.append([c, x - w / 2, y - h / 2, x + w / 2, y + h / 2, x, y, w, h])
        elif len(values) >= 7 and len(values) % 2 == 1:  # polygon: class x1 y1 x2 y2 ...
            pts = np.array(values[1:]).reshape(-1, 2)
            x1, y1 = pts.min(0)
            x2, y2 = pts.max(0)
            boxes.append([values[0], x1, y1, x2, y2, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            raise ValueError(f"label line {' '.join(row)!r} needs 5 values (class x y w h)")
    arr = np.array(boxes, dtype=np.float32)
    xywh = arr[:, 5:9]
    if (xywh < 0).any() or (xywh > 1).any() or (arr[:, 0] < 0).any():
        raise ValueError("label coordinates outside 0..1 (YOLO labels are normalised to the image size)")
    if (arr[:, 0] >= nc).any() or (arr[:, 0] != np.round(arr[:, 0])).any():
        raise ValueError(f"label class {int(arr[:, 0].max())} is not one of the {nc} classes of the data yaml")
    _, keep = np.unique(arr[:, [0, 5, 6, 7, 8]], axis=0, return_index=True)
    arr = arr[np.sort(keep)]
    return arr[:, 0].astype(np.int64), np.clip(arr[:, 1:5], 0, 1)


def _image_shape(path: Path) -> tuple[int, int]:
    """(height, width) as OpenCV will decode it (EXIF rotation applied); raises on a broken file."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
        im.verify()
    return h, w


def read_class_names_of(data_yaml: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    data, names = read_data_yaml(data_yaml)
    return data, tuple(names)


def load_split(data_yaml: str | Path, split: str, subset: int | None = None) -> SplitData:
    """The images and labels of ``split`` in ``data_yaml`` (first ``subset`` by name when given).

    Nothing is written. An image that cannot be read or whose label is broken is left out and
    listed in ``skipped`` with the reason, as ultralytics leaves out 'corrupt' images.
    """
    data_yaml = Path(data_yaml).resolve()
    if not data_yaml.is_file():
        raise UserError(f"data yaml not found: {data_yaml}; run setup_training.py and dataset_preparer.py, or pass --data")
    data, names = read_class_names_of(data_yaml)
    files = _resolve_split_paths(data_yaml, data, split)
    if subset is not None:
        if subset < 1:
            raise UserError(f"--subset {subset}: give a positive number of images")
        files = files[:subset]
    images, shapes, classes, boxes, skipped = [], [], [], [], []
    digest = hashlib.sha256()
    for f in files:
        label = label_path_for(f)
        try:
            shape = _image_shape(f)
            cls, box = read_yolo_label(label, len(names))
        except Exception as exc:  # unreadable image or broken label: left out, said why
            skipped.append({"path": str(f), "reason": str(exc)})
            logger.warning("left out %s: %s", f, exc)
            continue
        images.append(f)
        shapes.append(shape)
        classes.append(cls)
        boxes.append(box)
        digest.update(f"{f.name}|{f.stat().st_size}|".encode())
        digest.update(label.read_bytes() if label.is_file() else b"-")
    if not images:
        raise UserError(f"no usable images in split '{split}' of {data_yaml}; import a test split first "
                        "(dataset_preparer.py) or choose another with --split")
    digest.update(json.dumps(names).encode())
    return SplitData(names, split, tuple(images), tuple(shapes), tuple(classes), tuple(boxes),
                     tuple(skipped), digest.hexdigest())


# ---------------------------------------------------------------------------------------------
# Matching and metrics (pure numpy)

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


# ---------------------------------------------------------------------------------------------
# Inference: one pass per model, preprocessing as ultralytics val

def _read_image(path: Path) -> np.ndarray:
    import cv2

    im = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)  # works with non-ASCII paths
    if im is None:
        raise UserError(f"cannot decode image {path}")
    return im


def _resize_long_side(im: np.ndarray, imgsz: int) -> np.ndarray:
    import cv2

    h0, w0 = im.shape[:2]
    r = imgsz / max(h0, w0)
    if r != 1:
        w, h = min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz)
        im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
    return im


def rect_batches(shapes: Sequence[tuple[int, int]], batch: int, imgsz: int, stride: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """ultralytics' rectangular val batches: (image indices, padded (h, w)) sorted by aspect ratio."""
    s = np.array(shapes, dtype=np.float64).reshape(-1, 2)
    ar = s[:, 0] / s[:, 1]
    irect = ar.argsort()
    ar = ar[irect]
    out = []
    for start in range(0, len(irect), batch):
        ari = ar[start:start + batch]
        mini, maxi = ari.min(), ari.max()
        shape = [1.0, 1.0]
        if maxi < 1:
            shape = [maxi, 1]
        elif mini > 1:
            shape = [1, 1 / mini]
        hw = np.ceil(np.array(shape) * imgsz / stride + 0.5).astype(int) * stride
        out.append((irect[start:start + batch], (int(hw[0]), int(hw[1]))))
    return out


class _Letterboxed:
    """A batch ready for the network plus what maps labels into its frame."""

    def __init__(self, tensor, gains, pads):
        self.tensor, self.gains, self.pads = tensor, gains, pads


def letterbox(im: np.ndarray, new_shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Pad (and only ever shrink) ``im`` into ``new_shape`` (h, w), centred, grey 114: val's LetterBox.

    Returns the image, the scale applied and the (left, top) padding.
    """
    import cv2

    h, w = im.shape[:2]
    r = min(new_shape[0] / h, new_shape[1] / w, 1.0)  # scaleup=False, as ultralytics val
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (new_shape[1] - new_w) / 2, (new_shape[0] - new_h) / 2
    if (w, h) != (new_w, new_h):
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return im, r, (left, top)


def _prepare_batch(paths: Sequence[Path], new_shape: tuple[int, int], imgsz: int, device):
    import torch

    ims, gains, pads = [], [], []
    for p in paths:
        im = _resize_long_side(_read_image(p), imgsz)
        rh, rw = im.shape[:2]
        im, r, pad = letterbox(im, new_shape)
        gains.append((rw * r, rh * r))  # normalised label -> letterboxed pixels
        pads.append(pad)
        ims.append(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1]))  # HWC BGR -> CHW RGB
    tensor = torch.from_numpy(np.stack(ims)).to(device).float() / 255
    return _Letterboxed(tensor, gains, pads)


def check_names(model_path: Path, model_names: Sequence[str], data_names: Sequence[str], data_yaml: Path) -> None:
    model_names, data_names = list(model_names), list(data_names)
    if model_names == data_names:
        return
    missing = [n for n in data_names if n not in model_names]
    extra = [n for n in model_names if n not in data_names]
    parts = []
    if missing:
        parts.append(f"the model lacks {missing}")
    if extra:
        parts.append(f"the model has {extra} that the dataset does not")
    if not parts:
        parts.append(f"same names in another order: model {model_names} vs dataset {data_names}")
    raise UserError(f"classes of {model_path.name} differ from {data_yaml.name}: {'; '.join(parts)}. "
                    "Compare only models trained on this dataset's classes (or pass the matching --data)")


class LoadedModel:
    """A checkpoint on the evaluation device, fused, as ultralytics val prepares it."""

    def __init__(self, path: Path, settings: EvalSettings, config_dir: Path):
        from toolkit.offline import load_yolo

        yolo = load_yolo(path, config_dir)
        from ultralytics.nn.autobackend import AutoBackend
        from ultralytics.utils.torch_utils import select_device

        names = yolo.names
        self.names = tuple(names[i] for i in sorted(names)) if isinstance(names, dict) else tuple(names)
        self.path = path
        if getattr(yolo, "task", "detect") != "detect":
            raise UserError(f"{path.name} is a {yolo.task} model; the comparator scores detection models only")
        self.device = select_device(settings.device, verbose=False)
        self.backend = AutoBackend(model=yolo.model, device=self.device, fp16=False, fuse=True, verbose=False)
        self.backend.eval()
        self.stride = max(int(self.backend.stride), 32) if hasattr(self.backend, "stride") else 32
        self.end2end = bool(getattr(self.backend, "end2end", False))
        self.trained_imgsz = trained_imgsz(yolo)

    def forward(self, tensor, settings: EvalSettings, max_det: int):
        import torch
        from ultralytics.utils import nms

        with torch.inference_mode():
            preds = self.backend(tensor)
            return nms.non_max_suppression(preds, settings.conf, settings.iou, nc=0, multi_label=True,
                                           agnostic=False, max_det=max_det, end2end=self.end2end)

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def trained_imgsz(yolo) -> int | None:
    """The image size a checkpoint was trained at (its ``train_args``), None when it does not say."""
    value = ((getattr(yolo, "ckpt", None) or {}).get("train_args") or {}).get("imgsz")
    if isinstance(value, (list, tuple)) and value:
        value = max(value)
    try:
        return int(value) if value else None
    except (TypeError, ValueError):
        return None


def scoring_size(settings: EvalSettings, model: LoadedModel) -> tuple[int, str]:
    """``(imgsz, why)``: evaluation.imgsz when set, else the size the model was trained at.

    A model is scored at the size it was trained at because that is the size it runs at in
    production (ultralytics predicts at the checkpoint's training size unless told otherwise).
    """
    if settings.imgsz is not None:
        return settings.imgsz, "evaluation.imgsz"
    if model.trained_imgsz:
        return model.trained_imgsz, "trained at"
    return DEFAULTS["training"]["imgsz"], "training size unknown (checkpoint without train_args)"


def settings_for(settings: EvalSettings, model: LoadedModel) -> EvalSettings:
    """The settings ``model`` is scored with: ``settings`` at its scoring size."""
    return dataclasses.replace(settings, imgsz=scoring_size(settings, model)[0])


def imgsz_for(settings: EvalSettings, stride: int = 32) -> int:
    """``imgsz`` rounded up to a multiple of the stride, as ultralytics' check_imgsz does."""
    return max(int(math.ceil(settings.imgsz / stride) * stride), stride)


def run_inference(model: LoadedModel, data: SplitData, settings: EvalSettings,
                  progress=None) -> ModelEvaluation:
    """One pass over the split: the per-image arrays of ``model``."""
    imgsz = imgsz_for(settings, model.stride)
    max_det = max([300] + [len(c) for c in data.target_cls])  # as val: never cap recall
    tp_l, conf_l, cls_l, img_l = [], [], [], []
    batches = rect_batches(data.shapes, settings.batch, imgsz, model.stride)
    for indices, shape in (progress(batches, len(batches)) if progress else batches):
        lb = _prepare_batch([data.images[i] for i in indices], shape, imgsz, model.device)
        outputs = model.forward(lb.tensor, settings, max_det)
        for k, i in enumerate(indices):
            out = outputs[k].detach().float().cpu().numpy()
            boxes, conf, cls = out[:, :4], out[:, 4], out[:, 5]
            gt = data.target_boxes[i]
            if len(gt):
                gw, gh = lb.gains[k]
                pl, pt = lb.pads[k]
                gt = gt * np.array([gw, gh, gw, gh], dtype=np.float32) + np.array([pl, pt, pl, pt], dtype=np.float32)
            tp = match_predictions(cls, data.target_cls[i], box_iou(gt, boxes)) if len(gt) and len(cls) \
                else np.zeros((len(cls), len(IOU_THRESHOLDS)), dtype=bool)
            tp_l.append(tp)
            conf_l.append(conf.astype(np.float32))
            cls_l.append(cls.astype(np.int16))
            img_l.append(np.full(len(cls), i, dtype=np.int32))
    target_cls = np.concatenate([c for c in data.target_cls]).astype(np.int16) if data.target_cls else np.zeros(0, np.int16)
    target_img = np.concatenate([np.full(len(c), i, dtype=np.int32) for i, c in enumerate(data.target_cls)])
    ev = ModelEvaluation(
        path=model.path, sha256="", names=data.names,
        tp=np.concatenate(tp_l) if tp_l else np.zeros((0, 10), bool),
        conf=np.concatenate(conf_l) if conf_l else np.zeros(0, np.float32),
        pred_cls=np.concatenate(cls_l) if cls_l else np.zeros(0, np.int16),
        pred_img=np.concatenate(img_l) if img_l else np.zeros(0, np.int32),
        target_cls=target_cls, target_img=target_img, n_images=len(data))
    ev.metrics = detection_metrics(ev.tp, ev.conf, ev.pred_cls, ev.target_cls, data.names)
    return ev


def measure_speeds(models: Sequence[LoadedModel], data: SplitData, settings: EvalSettings,
                   rounds: int = 2) -> list[float | None]:
    """Milliseconds per image (network + NMS) of each model, on the same images and batch size,
    each at its scoring size (``settings_for``).

    Every model is warmed up first, then the models take turns over ``rounds`` rounds and each
    keeps its fastest round: a load spike on a shared machine then hits no model in particular.
    Measured afresh in every comparison (even when accuracy comes from the cache), so the
    slowdown ratio compares models under the same conditions.
    """
    if not models or settings.speed_images == 0:
        return [None] * len(models)
    stride = max(m.stride for m in models)
    n = min(len(data), settings.speed_images)
    sizes = [imgsz_for(settings_for(settings, m), stride) for m in models]
    prepared = {}
    for m, imgsz in zip(models, sizes):  # tensors per device and size, prepared once, outside the timing
        key = (str(m.device), imgsz)
        if key not in prepared:
            batches = rect_batches(data.shapes[:n], settings.batch, imgsz, stride)
            prepared[key] = [_prepare_batch([data.images[i] for i in idx], shape, imgsz, m.device)
                             for idx, shape in batches]
    inputs = [prepared[(str(m.device), imgsz)] for m, imgsz in zip(models, sizes)]
    for m, batches in zip(models, inputs):  # warm-up: allocations, kernel selection, lazy initialisation
        m.forward(batches[0].tensor, settings, 300)
        m.synchronize()
    best = [math.inf] * len(models)
    for _ in range(rounds):
        for k, (m, batches) in enumerate(zip(models, inputs)):
            start = time.perf_counter()
            for lb in batches:
                m.forward(lb.tensor, settings, 300)
            m.synchronize()
            best[k] = min(best[k], (time.perf_counter() - start) * 1000 / n)
    return best


# ---------------------------------------------------------------------------------------------
# Cache: one .npz per (model, data, split, settings)

def cache_key(model_sha256: str, data: SplitData, settings: EvalSettings, dataset_version: str,
              subset: int | None, device_type: str) -> str:
    import ultralytics

    parts = {"format": CACHE_FORMAT, "model": model_sha256, "data": data.fingerprint, "version": dataset_version,
             "split": data.split, "subset": subset, "imgsz": settings.imgsz, "batch": settings.batch,
             "conf": settings.conf, "iou": settings.iou, "device": device_type,
             "ultralytics": ultralytics.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def save_cached(path: Path, ev: ModelEvaluation, key: str) -> None:
    buffer = io.BytesIO()
    meta = {"key": key, "sha256": ev.sha256, "names": list(ev.names), "n_images": ev.n_images, "metrics": ev.metrics}
    np.savez_compressed(buffer, tp=ev.tp, conf=ev.conf, pred_cls=ev.pred_cls, pred_img=ev.pred_img,
                        target_cls=ev.target_cls, target_img=ev.target_img, meta=np.array(json.dumps(meta)))
    atomic_write_bytes(path, buffer.getvalue())


def load_cached(path: Path, key: str, model_path: Path) -> ModelEvaluation | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key:
                return None
            return ModelEvaluation(path=model_path, sha256=meta["sha256"], names=tuple(meta["names"]),
                                   tp=z["tp"], conf=z["conf"], pred_cls=z["pred_cls"], pred_img=z["pred_img"],
                                   target_cls=z["target_cls"], target_img=z["target_img"],
                                   n_images=int(meta["n_images"]), metrics=meta["metrics"], cached=True,
                                   cache_file=path)
    except Exception as exc:  # a damaged cache is only a lost shortcut
        logger.warning("ignoring unreadable evaluation cache %s (%s); evaluating again", path, exc)
        return None


def evaluate(model: LoadedModel, data: SplitData, settings: EvalSettings, cache_dir: str | Path,
             dataset_version: str, subset: int | None = None, use_cache: bool = True,
             progress=None) -> ModelEvaluation:
    """Evaluate one loaded model on ``data``, from the cache when an identical evaluation exists."""
    settings = settings_for(settings, model)
    sha = sha256_file(model.path)
    key = cache_key(sha, data, settings, dataset_version, subset, model.device.type)
    cache_file = Path(cache_dir) / f"{sha[:16]}_{key[:16]}.npz"
    ev = load_cached(cache_file, key, model.path) if use_cache else None
    if ev is not None:
        logger.info("%s: evaluation reused from the cache (%s)", model.path.name, cache_file.name)
        ev.imgsz = settings.imgsz
        return ev
    logger.info("%s: evaluating on %d %s images at %d px", model.path.name, len(data), data.split, settings.imgsz)
    ev = run_inference(model, data, settings, progress=progress)
    ev.sha256, ev.imgsz = sha, settings.imgsz
    if use_cache:
        save_cached(cache_file, ev, key)
        ev.cache_file = cache_file
    return ev


def load_model(path: str | Path, data: SplitData, settings: EvalSettings, config_dir: str | Path,
               data_yaml: Path | None = None) -> LoadedModel:
    """Load a checkpoint for evaluation; a UserError when its classes differ from the dataset's."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"model file not found: {path} (give the path of a YOLOv8 .pt file)")
    model = LoadedModel(path, settings, Path(config_dir))
    check_names(path, model.names, data.names, data_yaml or Path("the data yaml"))
    return model


def dataset_version_of(workspace, data_yaml: Path, fingerprint: str) -> str:
    """The manifest's version for the managed dataset, else a hash of the split's files and labels."""
    if Path(data_yaml).resolve() == workspace.dataset_yaml.resolve() and workspace.manifest.is_file():
        try:
            version = json.loads(workspace.manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError, AttributeError):
            version = None
        if version is not None:
            return str(version)
    return "sha-" + fingerprint[:12]


def evaluate_model(path: str | Path, data_yaml: str | Path, split: str, settings: Mapping[str, Any],
                   cache_dir: str | Path | None = None, subset: int | None = None, use_cache: bool = True,
                   root: str | Path | None = None) -> dict[str, Any]:
    """The per-model entry of a comparison for one model (what the pipeline needs after training).

    ``settings``: the resolved settings (its ``evaluation:`` section is used) or that section.
    ``root``: the workspace, whose cache (``training/cache/evaluations``) and dataset version are
    then shared with model_comparator.py, so neither evaluates the same model twice.
    """
    from toolkit.layout import Workspace

    workspace = Workspace.at(root) if root is not None else None
    eval_settings = EvalSettings.from_settings(settings.get("evaluation", settings))
    data_yaml = Path(data_yaml).resolve()
    data = load_split(data_yaml, split, subset)
    if cache_dir is None:
        if workspace is None:
            raise ValueError("evaluate_model needs cache_dir or root")
        cache_dir = workspace.evaluation_cache
    config_dir = workspace.ultralytics_config if workspace else Path(cache_dir).parent / "ultralytics"
    version = dataset_version_of(workspace, data_yaml, data.fingerprint) if workspace else "sha-" + data.fingerprint[:12]
    model = load_model(path, data, eval_settings, config_dir, data_yaml)
    ev = evaluate(model, data, eval_settings, cache_dir, version, subset=subset, use_cache=use_cache)
    ev.ms_per_image = measure_speeds([model], data, eval_settings)[0]
    return model_entry(ev, role="candidate")


def model_entry(ev: ModelEvaluation, role: str) -> dict[str, Any]:
    """The JSON entry of one model (DESIGN.md keys plus role, sha256, cached)."""
    m = ev.metrics
    return {"path": str(ev.path), "role": role, "sha256": ev.sha256, "map50": m["map50"], "map50_95": m["map50_95"],
            "precision": m["precision"], "recall": m["recall"], "per_class": m["per_class"],
            "ms_per_image": ev.ms_per_image, "cached": ev.cached, "imgsz": ev.imgsz,
            "predictions": int(len(ev.conf)), "cache_file": str(ev.cache_file) if ev.cache_file else None}

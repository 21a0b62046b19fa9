"""Inference for scoring: one pass per model over a split, preprocessed as ``ultralytics val`` does.

Why our own loop rather than ``model.val()``: ``val`` keeps no per-image arrays, writes a label
``.cache`` next to the user's labels and re-saves JPEGs with a damaged end marker in place -
the user's data must stay untouched. The loop below reproduces ``val`` step by step instead:
images resized long side to ``imgsz``, rectangular batches sorted by aspect ratio and padded to
``ceil(shape * imgsz / stride + 0.5) * stride`` (672 px for a square image at 640), multi-label
NMS, matching in the letterboxed frame. On NEU-DET it agrees with ``val`` to the third decimal.

Each model is scored at the size it was trained at unless evaluation.imgsz says otherwise
(``scoring_size``): that is the size ultralytics runs it at in production.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.core.config import DEFAULTS, check_value
from toolkit.core.errors import UserError
from toolkit.data.eval_split import SplitData
from toolkit.model.metrics import IOU_THRESHOLDS, ModelEvaluation, box_iou, detection_metrics, match_predictions

logger = logging.getLogger(__name__)


def _evaluation_default(key: str) -> Any:
    return DEFAULTS["evaluation"][key]


@dataclass(frozen=True)
class EvalSettings:
    """What must be identical for every model of one comparison (and keys the cache).

    Defaults and checks are those of training.yaml's ``evaluation:`` section (toolkit/core/config.py).
    ``imgsz`` None: each model is scored at the size it was trained at (``scoring_size``).
    """

    imgsz: int | None = _evaluation_default("imgsz")
    batch: int = _evaluation_default("batch")
    conf: float = _evaluation_default("conf")
    iou: float = _evaluation_default("iou")
    device: str = _evaluation_default("device")            # "" = first GPU if any, else cpu
    speed_images: int = _evaluation_default("speed_images")  # images timed per round; 0: no timing
    speed_rounds: int = _evaluation_default("speed_rounds")  # rounds the models take turns over

    @classmethod
    def from_settings(cls, evaluation: Mapping[str, Any]) -> "EvalSettings":
        """From the ``evaluation:`` section of the settings (missing keys: defaults), checked."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: check_value(f"evaluation.{name}", evaluation.get(name, _evaluation_default(name)),
                                        "evaluation settings") for name in names})


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
        from toolkit.core.offline import load_yolo

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
        self.architecture = architecture_of(yolo)

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


def architecture_of(yolo) -> dict[str, Any]:
    """What fixes a model's inference cost: its layer configuration and parameter count.

    Two checkpoints with the same ``signature`` run the same layers on the same tensor shapes at
    one input size: their speed differs only by the machine's load while they are timed.
    """
    import hashlib
    import json

    net = yolo.model
    cfg = getattr(net, "yaml", None) or {}
    layers = {k: v for k, v in cfg.items() if k not in ("yaml_file", "ch", "channels")}
    params = int(sum(p.numel() for p in net.parameters()))
    text = json.dumps({"cfg": layers, "params": params}, sort_keys=True, default=str)
    name = Path(str(cfg.get("yaml_file") or "")).stem or "unknown"
    return {"name": name, "params": params, "signature": hashlib.sha256(text.encode()).hexdigest()[:16]}


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


def measure_speed_rounds(models: Sequence[LoadedModel], data: SplitData, settings: EvalSettings,
                         rounds: int | None = None) -> list[list[float]]:
    """Milliseconds per image (network + NMS) of each model in every timing round, on the same
    images and batch size, each model at its scoring size (``settings_for``).

    Every model is warmed up first, then the models take turns, round after round
    (``evaluation.speed_rounds``): a load spike on a shared machine hits one round of one model,
    and each model's median round leaves it out. Measured afresh in every comparison (even when
    accuracy comes from the cache), so the slowdown ratio compares models under the same conditions.
    """
    if not models or settings.speed_images == 0:
        return [[] for _ in models]
    rounds = max(1, int(rounds or settings.speed_rounds))
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
    times: list[list[float]] = [[] for _ in models]
    for r in range(rounds):
        # the order alternates, so that neither model always runs right after the other's warm caches
        order = list(enumerate(zip(models, inputs)))
        for k, (m, batches) in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            for lb in batches:
                m.forward(lb.tensor, settings, 300)
            m.synchronize()
            times[k].append((time.perf_counter() - start) * 1000 / n)
    return times


def measure_speeds(models: Sequence[LoadedModel], data: SplitData, settings: EvalSettings,
                   rounds: int | None = None) -> list[float | None]:
    """Each model's median round of ``measure_speed_rounds`` in ms/image (None: not timed)."""
    return [float(np.median(t)) if t else None for t in measure_speed_rounds(models, data, settings, rounds)]

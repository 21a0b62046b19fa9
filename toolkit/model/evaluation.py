"""Score detection models on one split the way ``ultralytics val`` does, with a cache.

``evaluate`` runs one model over a split (``toolkit/model/inference.py``), keeps the per-image arrays
(``toolkit/model/metrics.py``) and stores them by model sha256, dataset version, split and settings,
so a nightly run does not evaluate an unchanged production model again. The split itself is
read by ``toolkit/data/eval_split.py``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.core.errors import UserError
from toolkit.data.eval_split import SplitData, load_split
from toolkit.core.files import atomic_write_bytes, sha256_file
from toolkit.model.inference import (EvalSettings, LoadedModel, check_names, measure_speed_rounds, measure_speeds,
                               run_inference, scoring_size, settings_for)
from toolkit.model.metrics import (ModelEvaluation, conf_for_spec, interval95, operating_point, paired_bootstrap,
                             recall_drops, resample_weights)

logger = logging.getLogger(__name__)

# what the comparator uses, from one place
__all__ = ["EvalSettings", "LoadedModel", "ModelEvaluation", "SplitData", "conf_for_spec", "dataset_version_of", "evaluate",
           "interval95", "load_model", "load_split", "measure_speed_rounds", "measure_speeds", "median",
           "model_entry", "operating_point", "paired_bootstrap", "recall_drops", "resample_weights",
           "scoring_size"]

# Bump when anything that changes the stored numbers changes (matching, preprocessing, layout).
CACHE_FORMAT = 1


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


def median(values) -> float | None:
    """The median of timing rounds (None: not timed)."""
    return float(np.median(values)) if len(values) else None


def model_entry(ev: ModelEvaluation, role: str) -> dict[str, Any]:
    """The JSON entry of one model (DESIGN.md keys plus role, sha256, cached)."""
    m = ev.metrics
    return {"path": str(ev.path), "role": role, "sha256": ev.sha256, "map50": m["map50"], "map50_95": m["map50_95"],
            "precision": m["precision"], "recall": m["recall"], "per_class": m["per_class"],
            "ms_per_image": ev.ms_per_image, "cached": ev.cached, "imgsz": ev.imgsz,
            "predictions": int(len(ev.conf)), "cache_file": str(ev.cache_file) if ev.cache_file else None}

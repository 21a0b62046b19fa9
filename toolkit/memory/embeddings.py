"""Image embeddings from the production model itself, cached in the workspace by image hash.

The analyzer's selection (``toolkit.memory.selection``) spreads its picks over the variety of the
line. "Variety" is judged by the production model's own view of the images: ultralytics'
``YOLO.embed`` (a ``predict`` that returns, per image, the global average pool of chosen layers'
feature maps instead of boxes; by default ultralytics takes the second-to-last layer). We take the
layers that feed the Detect head (``model.model[-1].f``, P3/P4/P5 for YOLOv8: 64 + 128 + 256 = 448
values for v8n), so both fine texture and larger structure count, at the size the model was
trained at (its ``train_args.imgsz``), offline, through the toolkit's safe loader.

Cache: ``ROOT/training/cache/embeddings/<model sha256[:16]>-<imgsz>.npz`` holds ``keys`` (the
sha256 of each image's bytes) and ``vectors`` (float32). An image is embedded once per model and
size whatever its path; a new model gets its own file. The file is rewritten atomically when new
images were embedded.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

BATCH = 16


@dataclass
class Embedded:
    vectors: np.ndarray          # (n, d) float32, L2-normalised, row i for paths[i]; NaN rows: unreadable
    computed: int                # images embedded in this call (the rest came from the cache)
    seconds: float               # time spent embedding those
    cache: Path
    imgsz: int

    @property
    def seconds_per_1000(self) -> float | None:
        return 1000.0 * self.seconds / self.computed if self.computed else None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_file(cache_dir: Path, model_path: Path, imgsz: int) -> Path:
    return Path(cache_dir) / f"{file_sha256(model_path)[:16]}-{imgsz}.npz"


def load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {str(k): v for k, v in zip(data["keys"], data["vectors"])}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("embedding cache %s unreadable (%s): embedding again", path, exc)
        return {}


def save_cache(path: Path, table: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = np.array(sorted(table), dtype="U64")
    vectors = np.stack([table[k] for k in keys]).astype(np.float32) if len(keys) else np.zeros((0, 0), np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, keys=keys, vectors=vectors)
    os.replace(tmp, path)


def detect_layers(model) -> list[int]:
    """The layer indices the Detect head reads (P3/P4/P5); ultralytics' default when unknown."""
    net = getattr(model, "model", None)
    layers = getattr(net, "model", None)
    if layers is None:
        return []
    head = layers[-1]
    f = getattr(head, "f", None)
    if isinstance(f, (list, tuple)) and f and all(isinstance(i, int) and i >= 0 for i in f):
        return sorted(f)
    return [len(layers) - 2]


def embed_images(paths: list[Path], model_path: Path, cache_dir: Path, config_dir: Path,
                 imgsz: int | None = None, embedder=None) -> Embedded:
    """Embeddings of ``paths`` (rows in that order), each image embedded at most once per model.

    ``embedder(model, paths, imgsz, layers) -> list[np.ndarray]`` replaces ultralytics in tests
    that count calls; by default ``YOLO.embed``.
    """
    from toolkit.core.offline import load_yolo
    from toolkit.model.inference import trained_imgsz

    model = None
    if imgsz is None:
        model = load_yolo(model_path, config_dir)
        imgsz = trained_imgsz(model) or 640
    path = cache_file(cache_dir, model_path, imgsz)
    table = load_cache(path)
    keys: list[str | None] = []
    for p in paths:
        try:
            keys.append(file_sha256(p))
        except OSError:
            keys.append(None)
    todo: dict[str, Path] = {}
    for p, k in zip(paths, keys):
        if k is not None and k not in table and k not in todo:
            todo[k] = Path(p)
    start = time.perf_counter()
    if todo:
        if model is None:
            model = load_yolo(model_path, config_dir)
        layers = detect_layers(model)
        run = embedder or _ultralytics_embed
        items = list(todo.items())
        logger.info("embedding %d image(s) with %s at imgsz %d (layers %s); %d from the cache",
                    len(items), Path(model_path).name, imgsz, layers, len(paths) - len(items))
        for i in range(0, len(items), BATCH):
            chunk = items[i:i + BATCH]
            vectors = run(model, [p for _, p in chunk], imgsz, layers)
            for (k, _), v in zip(chunk, vectors):
                if v is not None:
                    table[k] = np.asarray(v, dtype=np.float32).ravel()
        save_cache(path, table)
    seconds = time.perf_counter() - start
    dim = len(next(iter(table.values()))) if table else 0
    out = np.full((len(paths), dim), np.nan, dtype=np.float32)
    for i, k in enumerate(keys):
        if k is not None and k in table:
            v = table[k]
            out[i] = v / (np.linalg.norm(v) or 1.0)
    if todo:
        logger.info("embedded %d image(s) in %.1f s (%.0f s per 1,000)", len(todo), seconds,
                    1000.0 * seconds / len(todo))
    return Embedded(out, len(todo), seconds, path, int(imgsz))


def _ultralytics_embed(model, paths: list[Path], imgsz: int, layers: list[int]) -> list[np.ndarray | None]:
    """One batch through ``YOLO.embed``; image by image if the batch fails (None for unreadable ones)."""
    try:
        return [t.detach().cpu().numpy() for t in model.embed([str(p) for p in paths], imgsz=imgsz, embed=layers,
                                                              verbose=False)]
    except Exception:  # ultralytics raises plain exceptions for unreadable files
        out: list[np.ndarray | None] = []
        for p in paths:
            try:
                out.append(model.embed(str(p), imgsz=imgsz, embed=layers, verbose=False)[0].detach().cpu().numpy())
            except Exception as exc:
                logger.warning("embed: cannot read %s (%s); left out of the coverage", p, str(exc).splitlines()[0][:80])
                out.append(None)
        return out

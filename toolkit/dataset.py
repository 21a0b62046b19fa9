"""The managed dataset: manifest and versions, per-image checks, duplicates, leakage-free split.

The manifest (``training/datasets/manifest.json``) is the dataset's memory: per image its
content hash, perceptual hash, original path, batch, split and boxes per class; per batch its
fingerprint. Every change writes a new version (``manifests/v0003.json`` keeps the old ones).

Rules kept here (DESIGN.md, "Rules that protect the user's data"):
- an image keeps its split forever, so a test image never becomes a training image;
- near-duplicates (DCT perceptual hash within ``near_duplicate_bits``) always share one split;
- new images are placed so that every class keeps the configured ratios (iterative
  stratification, rarest class first, multi-label images handled).

EXIF orientation: an image whose EXIF orientation is not 1 is written *upright* (re-encoded,
without the tag) and its labels are taken as drawn on the upright image - what CVAT, Label
Studio, browsers and ultralytics' own loader (cv2) show. A VOC/COCO size that matches only the
un-rotated pixels betrays labels drawn on the raw pixels: such an image is rejected.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np

from toolkit.datafile import read_class_names
from toolkit.errors import UserError
from toolkit.files import atomic_write_text
from toolkit.labels import Problem, SourceBatch, SourceImage, yolo_label_text
from toolkit.layout import SPLITS, Workspace
from toolkit.phash import format_phash, near_duplicate_pairs, parse_phash, phash64  # noqa: F401 (re-exported)
from toolkit.reports import timestamp, utc_now_iso

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1
# Boxes may overshoot the image by less than a pixel (rounding in labelling tools): clipped.
# More than that is a wrong label and the image is left out.
EDGE_TOLERANCE_PX = 1.0
# ultralytics rejects images under 10 px a side; catch them here, with a reason.
MIN_IMAGE_SIDE = 10
BACKGROUND = "__background__"  # pseudo-class so defect-free images are stratified too

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------- manifest

def load_manifest(workspace: Workspace) -> dict | None:
    """The current manifest, or None when nothing was ever imported."""
    path = workspace.manifest
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); restore it from {workspace.datasets / 'manifests'}") from None
    data.setdefault("images", [])
    data.setdefault("batches", [])
    data.setdefault("classes", [])
    data.setdefault("version", 0)
    return data


def empty_manifest(classes: Sequence[str]) -> dict:
    return {"schema": MANIFEST_SCHEMA, "version": 0, "classes": list(classes), "images": [], "batches": []}


def manifest_history_path(workspace: Workspace, version: int) -> Path:
    return workspace.datasets / "manifests" / f"v{version:04d}.json"


def manifest_text(manifest: dict) -> str:
    """JSON with one image / batch per line: diff-able and greppable, and written by the C encoder
    (``indent=`` would fall back to the slow pure-Python one: seconds for 100k images)."""
    head = {k: v for k, v in manifest.items() if k not in ("images", "batches")}
    parts = ["{"]
    parts += [f"  {json.dumps(k)}: {json.dumps(v, default=str)}," for k, v in head.items()]
    for key in ("batches", "images"):
        rows = [f"    {json.dumps(r, default=str, ensure_ascii=False)}" for r in manifest.get(key, [])]
        parts.append(f'  "{key}": [' + ("\n" + ",\n".join(rows) + "\n  ]" if rows else "]")
                     + ("," if key == "batches" else ""))
    parts.append("}")
    return "\n".join(parts) + "\n"


def save_manifest(workspace: Workspace, manifest: dict) -> Path:
    """Write the manifest and its versioned copy (the copy first: manifest.json is the commit)."""
    text = manifest_text(manifest)
    atomic_write_text(manifest_history_path(workspace, int(manifest["version"])), text)
    atomic_write_text(workspace.manifest, text)
    return workspace.manifest


def split_counts(manifest: dict | None, classes: Sequence[str]) -> dict:
    """Images per split, and images / boxes per class and split, from a manifest."""
    images = {s: 0 for s in SPLITS}
    class_images = {c: {s: 0 for s in SPLITS} for c in classes}
    class_boxes = {c: {s: 0 for s in SPLITS} for c in classes}
    background = {s: 0 for s in SPLITS}
    for entry in (manifest or {}).get("images", []):
        split = entry["split"]
        images[split] += 1
        boxes = entry.get("boxes") or {}
        if not boxes:
            background[split] += 1
        for cls, n in boxes.items():
            class_images.setdefault(cls, {s: 0 for s in SPLITS})[split] += 1
            class_boxes.setdefault(cls, {s: 0 for s in SPLITS})[split] += n
    return {"images": images, "class_images": class_images, "class_boxes": class_boxes, "background": background}


# --------------------------------------------------------------------------- batches in training/incoming

def batch_fingerprint(folder: str | Path) -> str:
    """sha256 of the relative path, size and mtime of every file under ``folder``: a changed,
    added or removed file changes it, reading no image."""
    digest = hashlib.sha256()

    def walk(path: str, rel: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = f"{rel}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, name + "/")
                    continue
                st = entry.stat()
            except OSError:
                continue
            digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    walk(str(folder), "")
    return digest.hexdigest()


def incoming_batches(workspace: Workspace) -> list[Path]:
    """Sub-folders of ``training/incoming/`` (hidden ones and ``_``-prefixed ones are skipped)."""
    if not workspace.incoming.is_dir():
        return []
    return sorted(p for p in workspace.incoming.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")))


def pending_incoming_batches(workspace: Workspace) -> list[Path]:
    """Sub-folders of ``training/incoming/`` whose current fingerprint no manifest batch has."""
    manifest = load_manifest(workspace)
    seen = {b.get("fingerprint") for b in (manifest or {}).get("batches", [])}
    return [p for p in incoming_batches(workspace) if batch_fingerprint(p) not in seen]


# --------------------------------------------------------------------------- one image

@dataclass(frozen=True)
class CheckedImage:
    """What the check of one source image found (everything the planner and the writer need)."""

    source: SourceImage
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    sha256: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0
    size: int = 0
    mtime_ns: int = 0
    kind: str = ""          # jpeg, png, bmp, tiff, webp
    boxes: tuple[tuple[str | int, float, float, float, float], ...] = ()  # cls, xc, yc, w, h (normalized)
    difficult: int = 0
    orientation: int = 1
    reencode: str = ""      # why the copy must be re-encoded ("" = byte copy)

    @property
    def ok(self) -> bool:
        return not self.problems


def sniff_image_kind(head: bytes) -> str | None:
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def exif_orientation(data: bytes, kind: str) -> int:
    """EXIF orientation tag (1-8; 1 when absent). PIL only reads headers here: cheap."""
    head = data[:1 << 16]
    if kind not in ("tiff", "webp") and b"Exif" not in head and b"eXIf" not in data:
        return 1
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a broken image: the decode decides
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as EXIF ``orientation`` says they should be shown (upright)."""
    import cv2

    ops = {2: lambda a: cv2.flip(a, 1), 3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
           4: lambda a: cv2.flip(a, 0), 5: lambda a: cv2.transpose(a),
           6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
           7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
           8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)}
    return ops[orientation](img) if orientation in ops else img


def _box_problems(boxes, width: int, height: int, normalized: bool, label: Path | None, image: Path):
    """Boxes as normalized (cls, xc, yc, w, h) clipped to the image, plus problems and warnings."""
    out, problems, warnings = [], [], []
    where_file = label or image
    seen: dict[tuple, str] = {}
    for b in boxes:
        sx, sy = (width, height) if normalized else (1.0, 1.0)
        x1, y1, x2, y2 = b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy  # pixels
        tag = f"{b.where} ({b.cls})" if b.where else str(b.cls)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.append(Problem(where_file, f"{tag}: zero or negative box size; image {image.name} left out"))
            continue
        over = max(-x1, -y1, x2 - width, y2 - height)
        if over >= EDGE_TOLERANCE_PX:
            problems.append(Problem(where_file, f"{tag}: box ({x1:.1f},{y1:.1f})-({x2:.1f},{y2:.1f}) lies "
                                                f"outside the {width}x{height} image; image {image.name} left out"))
            continue
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(width), x2), min(float(height), y2)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.append(Problem(where_file, f"{tag}: box has no area inside the image; image {image.name} left out"))
            continue
        row = (b.cls, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
        key = (b.cls, *(round(v, 6) for v in row[1:]))
        if key in seen:
            # Kept as labelled (ultralytics drops the repeat when it loads the label): a warning.
            warnings.append(Problem(where_file, f"{tag}: exact duplicate of {seen[key]} (kept; ultralytics ignores the repeat)"))
        else:
            seen[key] = b.where or "another box"
        out.append(row)
    return out, problems, warnings


def check_image(item: SourceImage) -> CheckedImage:
    """Read, hash and fully decode one image; check its boxes against its real (upright) size.

    Never writes anything and never raises: whatever a strange file makes a decoder throw
    becomes that file's problem. Safe to run in a thread or a process.
    """
    try:
        return _check_image(item)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a batch of thousands
        logger.debug("check of %s failed", item.image, exc_info=True)
        return CheckedImage(item, (Problem(item.image, f"could not be checked ({type(exc).__name__}: {exc})"),
                                   *item.problems))


def _check_image(item: SourceImage) -> CheckedImage:
    import cv2

    path = item.image
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        return CheckedImage(item, (Problem(path, f"cannot read the image ({exc.strerror or exc})"), *item.problems))
    base = dict(size=st.st_size, mtime_ns=st.st_mtime_ns)
    label_problems = tuple(item.problems)  # reported too when the image itself is bad
    if not data:
        return CheckedImage(item, (Problem(path, "empty file (0 bytes)"), *label_problems), **base)
    kind = sniff_image_kind(data[:16])
    if kind is None:
        return CheckedImage(item, (Problem(path, "not an image (content is not JPEG, PNG, BMP, TIFF or WebP)"),
                                   *label_problems), **base)
    sha = hashlib.sha256(data).hexdigest()
    base.update(sha256=sha, kind=kind)
    reencode = ""
    if kind == "jpeg" and not data.endswith(b"\xff\xd9"):
        # cv2 happily decodes a truncated JPEG (grey bottom); PIL in strict mode does not.
        from PIL import Image
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as exc:
            return CheckedImage(item, (Problem(path, f"truncated or corrupt JPEG (no end marker; {exc})"),
                                       *label_problems), **base)
        reencode = "data after the JPEG end marker (ultralytics would rewrite it)"
    if kind == "png" and b"IEND" not in data[-64:]:
        return CheckedImage(item, (Problem(path, "truncated PNG (no IEND chunk)"), *label_problems), **base)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if grey is None or grey.size == 0:
        return CheckedImage(item, (Problem(path, f"corrupt {kind.upper()}: cannot be decoded"), *label_problems), **base)
    raw_h, raw_w = grey.shape[:2]
    orientation = exif_orientation(data, kind)
    warnings: list[Problem] = []
    if orientation != 1:
        grey = apply_orientation(grey, orientation)
        reencode = reencode or f"EXIF orientation {orientation}: copy written upright"
        warnings.append(Problem(path, f"EXIF orientation {orientation}: the copy is written upright, labels taken "
                                      "as drawn on the upright image"))
    height, width = grey.shape[:2]
    problems: list[Problem] = list(item.problems)
    if min(width, height) < MIN_IMAGE_SIDE:
        problems.append(Problem(path, f"image too small ({width}x{height}; at least {MIN_IMAGE_SIDE} px a side)"))
    label_name = item.label.name if item.label else path.name
    if item.declared_size and item.declared_size != (width, height):
        dw, dh = item.declared_size
        if orientation >= 5 and item.declared_size == (raw_w, raw_h):
            problems.append(Problem(item.label or path, f"{label_name} gives size {dw}x{dh}: the un-rotated pixels, but "
                                    f"EXIF orientation {orientation} shows the image as {width}x{height}; labels drawn "
                                    "on the raw pixels cannot be trusted - re-export the image upright and relabel"))
        else:
            problems.append(Problem(item.label or path, f"{label_name} gives size {dw}x{dh} but the image is "
                                                        f"{width}x{height}; image {path.name} left out"))
    boxes, box_problems, box_warnings = _box_problems(item.boxes, width, height, item.normalized, item.label, path)
    problems += box_problems
    warnings += box_warnings
    return CheckedImage(item, tuple(problems), tuple(warnings), sha, phash64(grey), width, height, st.st_size,
                        st.st_mtime_ns, kind, tuple(boxes), sum(b.difficult for b in item.boxes), orientation, reencode)


# --------------------------------------------------------------------------- parallel map

def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [fn(x) for x in chunk]


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, kind: str = "thread",
                 on_done: Callable[[int], None] | None = None, chunk: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a pool, results in input order; ``on_done(n)`` after each chunk.

    Items go out in chunks (one future per image cost more than checking a small image). Threads
    by default: decoding (cv2), hashing and file I/O release the GIL, threads start at once and
    share memory; ``kind="process"`` is there to measure (benchmarks/bench_prepare.py).
    """
    workers = workers or default_workers()
    if workers <= 1 or len(items) < 2:
        out = []
        for x in items:
            out.append(fn(x))
            if on_done:
                on_done(1)
        return out
    size = chunk or max(1, min(64, len(items) // (workers * 4)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    pool: Executor = ThreadPoolExecutor(workers) if kind == "thread" else ProcessPoolExecutor(workers)
    results: list = [None] * len(chunks)
    with pool:
        futures = {pool.submit(_run_chunk, fn, c): i for i, c in enumerate(chunks)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(len(chunks[i]))
    return [r for part in results for r in part]


def _fork_available() -> bool:
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_FORKED_ITEMS: Sequence[SourceImage] = ()  # what forked check workers inherit (never pickled)


def _check_range(lo: int, hi: int) -> list[CheckedImage]:
    # The source item stays out of the result: the parent has it, and pickling Paths and boxes
    # back cost as much as the check of a small image.
    return [replace(check_image(_FORKED_ITEMS[i]), source=None) for i in range(lo, hi)]


def check_images(items: Sequence[SourceImage], workers: int | None = None, kind: str = "auto",
                 on_done: Callable[[int], None] | None = None) -> list[CheckedImage]:
    """``check_image`` of every item, in input order.

    ``kind="auto"``: forked worker processes where the OS forks (Linux) and the batch is large
    enough to pay for them, else threads. Measured on 2 cores (benchmarks/bench_prepare.py):
    threads do not scale past one core here - the checks' many short GIL-held steps (hashing,
    pHash, box checks) serialize them - while forked processes that inherit the items (nothing
    pickled on the way in) and send back compact results use both cores.
    """
    global _FORKED_ITEMS
    workers = workers or default_workers()
    if kind == "auto":
        kind = "process" if workers > 1 and len(items) >= 256 and _fork_available() else "thread"
    if kind != "process":
        return parallel_map(check_image, items, workers, "thread", on_done)
    if not _fork_available():
        return parallel_map(check_image, items, workers, "process", on_done)
    import multiprocessing

    # Large chunks (few round trips), but several per worker so a slow one does not hold the end.
    size = max(1, min(1000, -(-len(items) // (workers * 3))))
    bounds = [(lo, min(lo + size, len(items))) for lo in range(0, len(items), size)]
    results: list = [None] * len(bounds)
    _FORKED_ITEMS = items
    try:
        # No cv2.setNumThreads in the children: after a fork it hangs (measured); OpenCV's own
        # parallel loops do run in a forked child (the checks use few: resize, rotate).
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(_check_range, lo, hi): n for n, (lo, hi) in enumerate(bounds)}
            for fut in as_completed(futures):
                n = futures[fut]
                lo, hi = bounds[n]
                results[n] = [replace(c, source=items[i]) for i, c in zip(range(lo, hi), fut.result())]
                if on_done:
                    on_done(hi - lo)
    finally:
        _FORKED_ITEMS = ()
    return [r for part in results for r in part]


# --------------------------------------------------------------------------- duplicates

class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            out[self.find(i)].append(i)
        return list(out.values())


# --------------------------------------------------------------------------- split

@dataclass
class SplitGroup:
    """Images that must share a split (near-duplicates), with the classes they carry."""

    members: list[int]
    labels: Counter = field(default_factory=Counter)  # class -> images of the group that have it
    key: str = ""                                     # stable order (content hash)


def assign_splits(groups: Sequence[SplitGroup], existing: Mapping[str, Mapping[str, int]],
                  existing_images: Mapping[str, int], ratios: Mapping[str, float]) -> list[str]:
    """A split per group: iterative stratification (Sechidis et al. 2011) on top of what exists.

    For each class the wanted count per split is ``ratio x (existing + new)`` minus what the split
    already has; classes are served rarest first and each group goes to the split that still wants
    that class most (ties: the split that wants the most images). Existing images never move.
    ``existing``: split -> class -> images; ``existing_images``: split -> images.
    """
    splits = [s for s in SPLITS if ratios.get(s, 0) > 0]
    total_ratio = sum(ratios[s] for s in splits)
    share = {s: ratios[s] / total_ratio for s in splits}
    new_per_class: Counter = Counter()
    for g in groups:
        new_per_class.update(g.labels)
    all_classes = set(new_per_class)
    want: dict[str, dict[str, float]] = {}
    for s in splits:
        want[s] = {}
        for c in all_classes:
            total_c = sum(existing.get(t, {}).get(c, 0) for t in SPLITS) + new_per_class[c]
            want[s][c] = share[s] * total_c - existing.get(s, {}).get(c, 0)
    n_total = sum(existing_images.get(s, 0) for s in SPLITS) + sum(len(g.members) for g in groups)
    want_images = {s: share[s] * n_total - existing_images.get(s, 0) for s in splits}
    order = {s: i for i, s in enumerate(SPLITS)}

    result: list[str | None] = [None] * len(groups)
    remaining = set(range(len(groups)))
    by_class: dict[str, list[int]] = defaultdict(list)
    for gi in sorted(range(len(groups)), key=lambda i: groups[i].key):
        for c in groups[gi].labels:
            by_class[c].append(gi)
    while remaining:
        left: Counter = Counter()
        for gi in remaining:
            left.update(groups[gi].labels)
        if not left:  # groups without any label (cannot happen: background is a label) - be safe
            cls = None
            todo = sorted(remaining, key=lambda i: groups[i].key)
        else:
            cls = min(left, key=lambda c: (left[c], c))
            todo = [gi for gi in by_class[cls] if gi in remaining]
        for gi in todo:
            g = groups[gi]
            best = max(splits, key=lambda s: ((want[s][cls] if cls else 0.0), want_images[s], -order[s]))
            result[gi] = best
            for c, n in g.labels.items():
                want[best][c] -= n
            want_images[best] -= len(g.members)
            remaining.discard(gi)
    return [r or "train" for r in result]


# --------------------------------------------------------------------------- managed names

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MANAGED_NAME = re.compile(r"^.+-[0-9a-f]{8}(-\d+)?\.[A-Za-z0-9]+$")  # what managed_name() writes


def managed_name(source: Path, sha256: str, suffix: str | None = None, n: int = 1) -> str:
    """``<stem>-<8 hex of content hash>[-n]<suffix>``: unique across batches, readable, traceable
    (the manifest maps it back to the original path)."""
    stem = _SAFE.sub("_", source.stem).strip("._") or "image"
    return f"{stem[:80]}-{sha256[:8]}{f'-{n}' if n > 1 else ''}{(suffix or source.suffix).lower()}"


def iter_managed_files(workspace: Workspace) -> Iterable[Path]:
    for split in SPLITS:
        for folder in (workspace.images_dir(split), workspace.labels_dir(split)):
            if folder.is_dir():
                yield from (p for p in folder.iterdir() if p.is_file())


# --------------------------------------------------------------------------- import plan

@dataclass
class ImportPlan:
    """What an import will do: new manifest entries and everything the report lists."""

    classes: list[str]
    entries: list[dict] = field(default_factory=list)          # new manifest image entries
    tasks: list[tuple[CheckedImage, dict]] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    near: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    difficult: int = 0
    bad_by_batch: dict[str, tuple[int, int]] = field(default_factory=dict)


def resolve_classes(workspace: Workspace, manifest: dict | None, batches: Sequence[SourceBatch],
                     class_map: dict[str, str]) -> tuple[list[str], bool]:
    """The dataset's classes (dataset.yaml, else the manifest, else the sources) and whether they are new."""
    if workspace.dataset_yaml.exists():
        classes = read_class_names(workspace.dataset_yaml)
        known = (manifest or {}).get("classes") or []
        if known and list(classes[:len(known)]) != list(known):
            raise UserError(f"{workspace.dataset_yaml} lists classes {classes} but the managed dataset was built with "
                            f"{known}; restore dataset.yaml (classes may only be appended at the end)")
        return list(classes), False
    if manifest and manifest.get("classes"):
        return list(manifest["classes"]), False
    names: list[str] = []
    for batch in batches:
        source_names = list(batch.class_names or [])
        if not source_names:
            for item in batch.images:
                for b in item.boxes:
                    if isinstance(b.cls, int):
                        raise UserError(f"{batch.root}: YOLO labels without class names and no dataset.yaml; add a "
                                        "classes.txt (one name per line, in id order) or run setup_training.py --classes ...")
                    source_names.append(class_map.get(b.cls, b.cls))
            # VOC names have no order of their own: sorted, so the same set always gives the same
            # ids (NEU-DET's first-seen order would differ from every NEU model's alphabetical one).
            source_names = sorted(set(source_names))
        for n in source_names:
            mapped = class_map.get(n, n)
            if mapped not in names:
                names.append(mapped)
    if not names:
        raise UserError("no class names found in the source(s) and no dataset.yaml; run setup_training.py --classes a,b,c first")
    return names, True


def class_problems(checked: CheckedImage, class_index: dict[str, int], class_map: dict[str, str],
                    classes: Sequence[str]) -> tuple[list[Problem], list[tuple[int, float, float, float, float]]]:
    rows, problems, unknown = [], [], []
    for cls, xc, yc, w, h in checked.boxes:
        if isinstance(cls, int):
            if 0 <= cls < len(classes):
                rows.append((cls, xc, yc, w, h))
            else:
                problems.append(f"class id {cls} out of range (dataset.yaml has 0-{len(classes) - 1})")
            continue
        name = class_map.get(cls, cls)
        if name in class_index:
            rows.append((class_index[name], xc, yc, w, h))
        elif cls not in unknown:
            unknown.append(cls)
    for cls in unknown:
        problems.append(f"unknown class '{cls}' (dataset classes: {', '.join(classes)}); image left out whole - "
                        f"rename it with --map {cls}=<class> or add the class with setup_training.py")
    where = checked.source.label or checked.source.image
    return [Problem(where, p if "left out" in p else f"{p}; image {checked.source.image.name} left out")
            for p in problems], rows


def plan_import(batches: Sequence[tuple[SourceBatch, str]], checked: Mapping[Path, CheckedImage],
                 already: Mapping[Path, dict], manifest: dict, classes: list[str], class_map: dict[str, str],
                 ratios: dict[str, float], bits: int, keep_split: bool) -> ImportPlan:
    """Decide, for every checked image, whether it is added and to which split.

    Rejected: any problem of its own or an unknown class. Not added: an exact duplicate of a
    managed image, or the same bytes *and* labels twice in the source. Near-duplicate groups
    (union-find) follow a managed member's split, else the source's (``keep_split``), else the
    stratified assignment. Nothing is written here.
    """
    plan = ImportPlan(classes)
    class_index = {c: i for i, c in enumerate(classes)}
    managed_by_sha = {e["sha256"]: e for e in manifest["images"]}
    accepted: list[tuple[CheckedImage, list, str]] = []  # (checked, rows, batch id)
    seen_new: dict[str, tuple[Path, list]] = {}
    for batch, batch_id in batches:
        bad = len(batch.problems)
        plan.rejected += batch.problems
        for item in batch.images:
            if item.image in already:
                plan.duplicates.append({"path": str(item.image), "duplicate_of": already[item.image]["file"],
                                        "kind": "exact (already imported, unchanged)"})
                continue
            c = checked[item.image]
            class_probs, rows = class_problems(c, class_index, class_map, classes) if c.ok or c.boxes else ([], [])
            if not c.ok or class_probs:
                bad += 1
                plan.rejected += list(c.problems) + class_probs
                continue
            plan.warnings += c.warnings
            if c.sha256 in managed_by_sha:
                managed = managed_by_sha[c.sha256]
                same = dict(Counter(classes[r[0]] for r in rows)) == (managed.get("boxes") or {})
                plan.duplicates.append({"path": str(item.image), "duplicate_of": managed["file"],
                                        "kind": "exact" if same else "exact, but labelled differently: the managed "
                                                                     "labels are kept (not updated)"})
                continue
            twin = seen_new.get(c.sha256)
            if twin is not None and sorted(twin[1]) == sorted(rows):
                plan.duplicates.append({"path": str(item.image), "duplicate_of": str(twin[0]),
                                        "kind": "exact (same bytes and labels twice in the source)"})
                continue
            if twin is not None:
                # Same pixels, other labels (NEU-DET: patches_101 / patches_105): both are kept, as
                # the labeller made two records; near-duplicate grouping puts them in one split.
                plan.warnings.append(Problem(item.image, f"same pixels as {twin[0]} but labelled differently: "
                                                         "both kept (as near-duplicates); check which labels are right"))
            seen_new.setdefault(c.sha256, (item.image, rows))
            accepted.append((c, rows, batch_id))
        plan.bad_by_batch[str(batch.root)] = (bad, len(batch.images) + len(batch.problems))

    # Near-duplicates: union-find over new images; a group touching managed images follows them.
    old = [e for e in manifest["images"] if parse_phash(e.get("phash")) is not None]
    within, across = near_duplicate_pairs([c.phash for c, _, _ in accepted],
                                          [parse_phash(e["phash"]) for e in old], bits)
    uf = UnionFind(len(accepted))
    for i, j in within:
        uf.union(i, j)
    linked: dict[int, list[dict]] = defaultdict(list)
    for i, k in across:
        linked[i].append(old[k])
    split_of: dict[int, str] = {}
    to_stratify: list[list[int]] = []
    left_out: set[int] = set()
    for members in uf.groups():
        managed = [e for i in members for e in linked.get(i, [])]
        splits_there = sorted({e["split"] for e in managed}, key=SPLITS.index)
        paths = [str(accepted[i][0].source.image) for i in members]
        if len(splits_there) > 1:
            for i in members:
                plan.duplicates.append({"path": str(accepted[i][0].source.image), "kind": "near (conflict)",
                                        "duplicate_of": ", ".join(sorted({e["file"] for e in managed}))})
                left_out.add(i)
            plan.notes.append(f"{len(members)} image(s) left out: near-duplicates of managed images in several "
                              f"splits ({', '.join(splits_there)}), adding them would leak between splits")
            continue
        if splits_there:
            for i in members:
                wanted = accepted[i][0].source.split if keep_split else None
                if wanted and wanted != splits_there[0]:
                    plan.warnings.append(Problem(accepted[i][0].source.image, f"source split '{wanted}' overridden: "
                                                 f"near-duplicate of a managed {splits_there[0]} image"))
                split_of[i] = splits_there[0]
            near_files = sorted({e["file"] for e in managed})
            for i in members:
                plan.near.append({"path": str(accepted[i][0].source.image), "split": splits_there[0],
                                  "near": near_files + [p for p in paths if p != str(accepted[i][0].source.image)]})
            continue
        if keep_split and any(accepted[i][0].source.split for i in members):
            given = Counter(accepted[i][0].source.split for i in members if accepted[i][0].source.split)
            if len(given) > 1:
                plan.warnings.append(Problem(accepted[members[0]][0].source.image,
                                             f"near-duplicates across the source's splits ({', '.join(sorted(given))}): "
                                             "kept as the source says (--keep-split), but they leak between splits: "
                                             + ", ".join(paths[:6])))
            common = given.most_common(1)[0][0]
            for i in members:
                split_of[i] = accepted[i][0].source.split or common
        else:
            to_stratify.append(members)
        if len(members) > 1:
            for i in members:
                plan.near.append({"path": str(accepted[i][0].source.image), "split": None,
                                  "near": [p for p in paths if p != str(accepted[i][0].source.image)]})

    # Stratify what is left, on top of the managed images and the images placed above.
    counts = split_counts(manifest, classes)
    existing = {s: {c: counts["class_images"].get(c, {}).get(s, 0) for c in classes} for s in SPLITS}
    for s in SPLITS:
        existing[s][BACKGROUND] = counts["background"][s]
    existing_images = dict(counts["images"])

    def labels_of(i: int) -> Counter:
        names = {classes[r[0]] for r in accepted[i][1]}
        return Counter(names or {BACKGROUND})

    for i, s in split_of.items():
        for c in labels_of(i):
            existing[s][c] = existing[s].get(c, 0) + 1
        existing_images[s] += 1
    groups = []
    for members in to_stratify:
        labels: Counter = Counter()
        for i in members:
            labels.update(labels_of(i))
        groups.append(SplitGroup(members, labels, min(accepted[i][0].sha256 for i in members)))
    for g, s in zip(groups, assign_splits(groups, existing, existing_images, ratios)):
        for i in g.members:
            split_of[i] = s
    index_of = {str(c.source.image): i for i, (c, _, _) in enumerate(accepted)}
    for item in plan.near:
        if item["split"] is None:
            item["split"] = split_of[index_of[item["path"]]]

    now = utc_now_iso()
    taken = {Path(e["file"]).stem for e in manifest["images"]}
    for i, (c, rows, batch_id) in enumerate(accepted):
        if i in left_out:
            continue
        split = split_of[i]
        suffix = ".jpg" if c.reencode and c.kind == "jpeg" else None
        name = managed_name(c.source.image, c.sha256, suffix)
        n = 1
        while Path(name).stem in taken:  # same stem and bytes from two folders: still two files
            n += 1
            name = managed_name(c.source.image, c.sha256, suffix, n)
        taken.add(Path(name).stem)
        boxes = Counter(classes[r[0]] for r in rows)
        entry = {"file": f"images/{split}/{name}", "label": f"labels/{split}/{Path(name).stem}.txt",
                 "sha256": c.sha256, "phash": format_phash(c.phash), "source": str(c.source.image),
                 "label_source": str(c.source.label) if c.source.label else None,
                 "source_size": c.size, "source_mtime_ns": c.mtime_ns, "batch": batch_id, "split": split,
                 "boxes": dict(sorted(boxes.items())), "difficult": c.difficult,
                 "width": c.width, "height": c.height, "added_at": now}
        if c.reencode:
            entry["reencoded"] = c.reencode
        plan.difficult += c.difficult
        plan.entries.append(entry)
        plan.tasks.append((c, {"rows": rows, **entry}))
    return plan


# --------------------------------------------------------------------------- writing

def _write_file(dest: Path, payload: bytes) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_copy(task: tuple[CheckedImage, dict], datasets: Path) -> tuple[dict | None, Problem | None]:
    """Copy (or re-encode) one validated image and write its label; the source is only read.

    Files are written in place, without temp file + rename (that doubled the cost on ext4): the
    manifest is the commit, and a file it does not list (a crash mid-copy) is set aside by the next
    run. A plain copy is done by the OS (sendfile); that it is the file that was checked is
    ensured by its size and nanosecond mtime, unchanged since the check.
    """
    checked, info = task
    src = checked.source.image
    changed = Problem(src, "the file changed while it was being imported; rerun to import its new content")
    image_dest, label_dest = datasets / info["file"], datasets / info["label"]
    entry = {k: v for k, v in info.items() if k != "rows"}
    if checked.reencode:
        import cv2

        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != checked.sha256:
            return None, changed
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        img = apply_orientation(img, checked.orientation)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_dest.suffix in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(image_dest.suffix, img, params)
        if not ok:
            return None, Problem(src, f"could not re-encode the copy as {image_dest.suffix}")
        _write_file(image_dest, buf.tobytes())
        entry["stored_sha256"] = hashlib.sha256(buf).hexdigest()
    else:
        st = src.stat()
        if (st.st_size, st.st_mtime_ns) != (checked.size, checked.mtime_ns):
            return None, changed
        shutil.copyfile(src, image_dest)
    _write_file(label_dest, yolo_label_text(info["rows"]).encode("utf-8"))
    return entry, None


def set_aside_unmanaged(workspace: Workspace, manifest: dict | None) -> list[str]:
    """Files in the managed folders that no manifest lists (a crashed run) are moved aside, so
    ultralytics never trains on an unvalidated file; nothing is deleted."""
    listed = set()
    for e in (manifest or {}).get("images", []):
        listed.add((workspace.datasets / e["file"]).resolve())
        listed.add((workspace.datasets / e["label"]).resolve())
    strays = [p for p in iter_managed_files(workspace) if p.resolve() not in listed]
    if not strays:
        return []
    foreign = [p for p in strays if not _MANAGED_NAME.match(p.name)]
    if manifest is None and foreign:
        # Not ours (no manifest, not our names): a dataset someone put there by hand.
        raise UserError(f"{workspace.datasets} already holds {len(foreign)} file(s) that no manifest lists; move "
                        "them out and import them with --source (add --keep-split to keep their split)")
    aside = workspace.datasets / "unmanaged" / timestamp()
    for p in strays:
        dest = aside / p.relative_to(workspace.datasets)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(p), str(dest))
    note = f"{len(strays)} file(s) in the managed folders were not in the manifest; moved to {aside}"
    logger.warning(note)
    return [note]

"""The check of one source image: read, hash, fully decode, orientation, boxes against the real size.

EXIF orientation: an image whose EXIF orientation is not 1 is written *upright* (re-encoded,
without the tag) and its labels are taken as drawn on the upright image - what CVAT, Label
Studio, browsers and ultralytics' own loader (cv2) show. A VOC/COCO size that matches only the
un-rotated pixels betrays labels drawn on the raw pixels: such an image is rejected.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.images import apply_orientation, exif_orientation, sniff_image_kind
from toolkit.data.labels.yolo import yolo_boxes
from toolkit.data.labels.source import Problem, SourceImage

logger = logging.getLogger(__name__)

# ultralytics rejects images under 10 px a side; catch them here, with a reason.
MIN_IMAGE_SIDE = 10


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


# Pillow modes of images that Pillow opens but OpenCV (which ultralytics trains and detects with) cannot.
_SAMPLE_WORDS = {"F": "32-bit float", "I": "32-bit integer", "CMYK": "CMYK", "LAB": "Lab", "YCbCr": "YCbCr"}


def _undecodable(data: bytes, kind: str) -> str:
    """Why OpenCV could not decode ``data``: a sample format it lacks (named), else a corrupt file."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
    except Exception:
        mode = ""
    words = _SAMPLE_WORDS.get(mode)
    if words:
        return (f"{words} {kind.upper()}: OpenCV, which training and detection use, cannot read it; "
                "save it as 8- or 16-bit grayscale or RGB")
    return f"corrupt {kind.upper()}: cannot be decoded"


def _kind_or_why(data: bytes) -> tuple[str | None, str | None]:
    """The image kind of ``data`` (jpeg, png, ...), or None and why it is no image at all."""
    if not data:
        return None, "empty file (0 bytes)"
    kind = sniff_image_kind(data[:16])
    return (kind, None) if kind else (None, "not an image (content is not JPEG, PNG, BMP, TIFF or WebP)")


def _decode_grey(data: bytes):
    """``data`` decoded by OpenCV as training and detection read it (grayscale, raw orientation), or None."""
    import cv2
    import numpy as np

    # OpenCV's own "Sorry, can not handle ..." lines stay quiet: the caller says it once
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if grey is None or grey.size == 0 else grey


def why_undecodable(path: Path) -> str | None:
    """Why OpenCV cannot decode the image file ``path`` (one line, the import's words), or None where it
    can (or the file cannot be read at all: that error is the caller's own, e.g. FileNotFoundError)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    kind, why = _kind_or_why(data)
    if why:
        return why
    return _undecodable(data, kind) if _decode_grey(data) is None else None


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
    from toolkit.data.phash import phash64  # numpy and cv2 load when the first image is checked, not at import

    path = item.image
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        return CheckedImage(item, (Problem(path, f"cannot read the image ({exc.strerror or exc})"), *item.problems))
    base = dict(size=st.st_size, mtime_ns=st.st_mtime_ns)
    label_problems = tuple(item.problems)  # reported too when the image itself is bad
    kind, why = _kind_or_why(data)
    if why:
        return CheckedImage(item, (Problem(path, why), *label_problems), **base)
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
    grey = _decode_grey(data)
    if grey is None:
        return CheckedImage(item, (Problem(path, _undecodable(data, kind)), *label_problems), **base)
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
    boxes, box_problems, box_warnings = yolo_boxes(item.boxes, width, height, item.normalized, item.label, path)
    problems += box_problems
    warnings += box_warnings
    return CheckedImage(item, tuple(problems), tuple(warnings), sha, phash64(grey), width, height, st.st_size,
                        st.st_mtime_ns, kind, tuple(boxes), sum(b.difficult for b in item.boxes), orientation, reencode)

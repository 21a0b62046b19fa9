"""What an image file is and how it should be shown: its kind by magic bytes, its EXIF orientation.

Shared by the import's checks (``toolkit.data.dataset.checks``) and the perceptual hash
(``toolkit.data.phash``), which both decode images as they are shown, upright.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


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


def apply_orientation(img: "np.ndarray", orientation: int) -> "np.ndarray":
    """Pixels as EXIF ``orientation`` says they should be shown (upright)."""
    import cv2

    ops = {2: lambda a: cv2.flip(a, 1), 3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
           4: lambda a: cv2.flip(a, 0), 5: lambda a: cv2.transpose(a),
           6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
           7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
           8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)}
    return ops[orientation](img) if orientation in ops else img

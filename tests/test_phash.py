"""toolkit/data/phash.py: the one perceptual hash (dataset import and analyzer export)."""
from __future__ import annotations

import cv2
import numpy as np

from toolkit.data.phash import format_phash, hamming, near_duplicate_pairs, parse_phash, phash64, phash_bytes, phash_file, within


def _neu_grey(neu_dir, name: str) -> np.ndarray:
    return cv2.imread(str(neu_dir / "IMAGES" / name), cv2.IMREAD_GRAYSCALE)


def test_helpers_round_trip_and_count_bits():
    assert hamming(0b1011, 0b0001) == 2 and hamming(0, 2 ** 64 - 1) == 64
    assert parse_phash(format_phash(0xDEADBEEF)) == 0xDEADBEEF and parse_phash("") is None
    assert within(0b0111, [0b0000, 0xFFFF], 3) and not within(0b0111, [0b0000, 0xFFFF], 2)
    assert not within(1, [], 64)


def test_phash_of_a_file_is_the_dataset_hash_and_unreadable_files_are_none(neu_dir, tmp_path):
    path = neu_dir / "IMAGES" / "crazing_1.jpg"
    digest, size = phash_file(path)
    assert digest == phash64(_neu_grey(neu_dir, "crazing_1.jpg")) and size == (200, 200)
    (tmp_path / "x.jpg").write_text("not an image")
    assert phash_file(tmp_path / "x.jpg") is None and phash_file(tmp_path / "absent.jpg") is None
    assert phash_bytes(b"\xff\xd8\xff" + b"\0" * 40) is None   # a JPEG header with nothing decodable


def test_neu_det_distinct_images_are_not_near_duplicates(neu_dir):
    """The 1770 NEU-DET images: only the one exact and the one real near-duplicate pair, even at 8 bits."""
    images = sorted((neu_dir / "IMAGES").glob("*.jpg"))
    hashes = [phash_file(p)[0] for p in images]
    pairs, _ = near_duplicate_pairs(hashes, [], 8)
    names = {(images[i].name, images[j].name) for i, j in pairs}
    assert names == {("patches_101.jpg", "patches_105.jpg"), ("pitted_surface_171.jpg", "pitted_surface_292.jpg")}


def test_reencoded_and_slightly_shifted_copies_stay_close(neu_dir):
    for name in ("crazing_10.jpg", "scratches_20.jpg", "rolled-in_scale_30.jpg"):
        grey = _neu_grey(neu_dir, name)
        ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 60])
        assert hamming(phash64(grey), phash64(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))) <= 4
        shift = np.float32([[1, 0, 2], [0, 1, 2]])            # 2 px (1 %) both ways
        moved = cv2.warpAffine(grey, shift, grey.shape[::-1], borderMode=cv2.BORDER_REFLECT)
        assert hamming(phash64(grey), phash64(moved)) <= 8

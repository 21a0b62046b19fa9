"""Issue 26: which images to label - embeddings cached by image hash, the selection modes, coverage."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit.memory import embeddings
from toolkit.memory.selection import covered_order, quotas, select


def _blobs(sizes: list[int], seed: int = 0, dim: int = 16, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Separated clusters of the given sizes, L2-normalised; (vectors, blob of each row)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 4.0
    x = np.concatenate([c + rng.normal(0, spread, (n, dim)) for c, n in zip(centres, sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def test_embedding_cache_embeds_each_image_once(tmp_path, shared_models, ultralytics_config_dir):
    """Each image (by its bytes' hash) goes through ultralytics' embed once per model and size; a copy
    under another name and a second call read the cache."""
    from PIL import Image

    model = shared_models / "neu_v1.0_half.pt"
    rng = np.random.default_rng(1)
    paths = []
    for i in range(4):
        p = tmp_path / "imgs" / f"img_{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    copy = tmp_path / "imgs" / "copy_of_0.png"
    shutil.copyfile(paths[0], copy)
    calls: list[Path] = []

    def counting(model_, batch, imgsz, layers):
        calls.extend(batch)
        return embeddings._ultralytics_embed(model_, batch, imgsz, layers)

    cache = tmp_path / "cache"
    first = embeddings.embed_images(paths[:3] + [copy], model, cache, ultralytics_config_dir, imgsz=64,
                                    embedder=counting)
    assert sorted(p.name for p in calls) == ["img_0.png", "img_1.png", "img_2.png"]   # the copy: not again
    assert first.computed == 3 and first.seconds_per_1000 is not None
    assert first.vectors.shape == (4, 448)   # P3 + P4 + P5 of YOLOv8n: 64 + 128 + 256
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first.vectors[0], first.vectors[3])
    assert first.cache.parent == cache and first.cache.name.endswith("-64.npz")
    calls.clear()
    second = embeddings.embed_images(paths, model, cache, ultralytics_config_dir, imgsz=64, embedder=counting)
    assert [p.name for p in calls] == ["img_3.png"]          # only the new image
    np.testing.assert_array_equal(second.vectors[:3], first.vectors[:3])
    calls.clear()
    third = embeddings.embed_images(list(reversed(paths)), model, cache, ultralytics_config_dir, imgsz=64,
                                    embedder=counting)
    assert calls == [] and third.computed == 0
    np.testing.assert_array_equal(third.vectors[::-1], second.vectors)


@pytest.mark.parametrize("mode", ["confident", "hybrid", "diversity", "random"])
def test_selection_is_deterministic_for_a_seed(mode):
    x, _ = _blobs([40, 25, 15, 10])
    rng = np.random.default_rng(5)
    uncertainty = rng.uniform(0, 1, len(x))
    groups = ["a" if i % 3 else "b" for i in range(len(x))]
    records = np.arange(100, 100 + len(x))

    def run(seed: int):
        return [(p.record, p.reason, p.cluster, p.distance) for p in
                select(records, groups, x, uncertainty, {"a": 1.0, "b": 1.0}, 12, mode, seed)]

    assert run(3) == run(3)
    assert sorted(r for r, *_ in run(3)) == list(records)     # every candidate, once
    if mode == "random":
        assert run(3) != run(4)


@pytest.mark.parametrize("mode", ["confident", "hybrid", "diversity"])
def test_picks_spread_over_clusters(mode):
    """One dominant look (200 images) and five rare ones (8 each), each look tight against the distance
    between looks: coverage takes every look in its first 6 picks, where a random draw of 6 mostly
    repeats the dominant one. (With a loose dominant look, k-means - the objective of typical
    clusters - prefers splitting it over keeping two rare looks apart.)"""
    x, blob = _blobs([200, 8, 8, 8, 8, 8], spread=0.1)
    uncertainty = np.linspace(0, 1, len(x))
    records = np.arange(len(x))
    picks = select(records, ["a"] * len(x), x, uncertainty, {"a": 1.0}, 6, mode, seed=0)
    assert sorted(blob[p.record] for p in picks[:6]) == [0, 1, 2, 3, 4, 5]
    assert all(p.cluster is not None and p.distance is not None for p in picks[:6])
    drawn = select(records, ["a"] * len(x), x, uncertainty, {"a": 1.0}, 6, "random", seed=0)
    assert len({blob[p.record] for p in drawn[:6]}) < 6


def test_hybrid_takes_the_most_uncertain_of_the_typical_half():
    """One cluster: the most uncertain image overall is an outlier (outside the typical half) and is
    passed over for the most uncertain typical one; diversity starts from the most typical."""
    x, _ = _blobs([30])
    outlier = np.zeros_like(x[0])
    outlier[-1] = 1.0
    x = np.vstack([x, outlier])
    uncertainty = np.full(len(x), 0.1)
    uncertainty[30] = 1.0            # the outlier
    uncertainty[7] = 0.6             # a typical member, if row 7 is in the typical half
    order = covered_order(x, uncertainty, 1, 0, "hybrid")
    typical_half = {r for r, *_ in covered_order(x, np.zeros(len(x)), 1, 0, "typical")[:16]}
    assert order[0][0] != 30
    assert order[0][0] == (7 if 7 in typical_half else order[0][0])
    assert uncertainty[order[0][0]] == max(uncertainty[r] for r in typical_half)


def test_confident_takes_the_member_the_model_is_surest_of():
    """One cluster per look: confident picks each look's least uncertain member, whether or not it is
    typical; among equally sure members (a group without detections) the most typical one."""
    x, blob = _blobs([20, 20], spread=0.2)
    uncertainty = np.full(len(x), 0.5)
    uncertainty[[3, 31]] = 0.05       # the surest member of each look
    uncertainty[[4, 32]] = 0.95
    order = covered_order(x, uncertainty, 2, 0, "confident")
    assert sorted(r for r, *_ in order[:2]) == [3, 31]
    assert {r for r, *_ in order[-2:]} == {4, 32}     # the least sure: last
    flat = np.full(len(x), 0.75)       # no detection anywhere: the most typical member, as diversity
    assert covered_order(x, flat, 2, 0, "confident")[:2] == covered_order(x, flat, 2, 0, "diversity")[:2]
    picks = select(np.arange(len(x)), ["a"] * len(x), x, uncertainty, {"a": 1.0}, 2, "confident", seed=0)
    assert "the one the model is surest of" in picks[0].reason and picks[0].uncertainty == 0.05


def test_quotas_follow_size_and_priority_and_starve_no_group():
    sizes = {"big": 90, "small": 10, "none": 0}
    assert quotas(sizes, {"big": 1.0, "small": 1.0}, 10) == {"big": 9, "small": 1, "none": 0}
    tilted = quotas(sizes, {"big": 1.0, "small": 9.0}, 10)
    assert tilted["small"] == 5 and tilted["big"] == 5
    assert quotas({"a": 3, "b": 2}, {}, 10) == {"a": 3, "b": 2}          # never more than a group holds
    assert sum(quotas({"a": 50, "b": 30, "c": 1}, {}, 7).values()) == 7 and quotas({"a": 50, "b": 30, "c": 1}, {}, 7)["c"] == 1


@pytest.mark.slow
def test_export_explains_each_pick_and_embeds_once(synthetic_workspace, capsys):
    """The real command: --scan then --export with the default selection; selection.csv gives the
    group, cluster, distance and uncertainty of each pick; a second export embeds nothing new."""
    import training_analyzer

    root = synthetic_workspace
    incoming = root / "training" / "incoming" / "batch_001" / "images"
    args = ["--root", str(root), "--scan", str(incoming), "--export", "8", "--json", "-q"]
    assert training_analyzer.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["selection"]["mode"] == "confident" and first["exported"] == 8
    emb = first["selection"]["embedding"]
    assert emb["embedded_now"] == emb["images"] > 0
    rows = list(csv.DictReader(open(Path(first["export_dir"]) / "selection.csv", newline="", encoding="utf-8")))
    assert len(rows) == 8
    for row in rows:
        assert row["selection"] == "confident" and row["cluster"] and row["distance"] and row["uncertainty"]
        n, of = (int(v) for v in row["reason"].split(": cluster ")[1].split(" in this class")[0].split(" of "))
        assert 1 <= n <= of, row["reason"]
    report = Path(first["report"]).with_suffix(".md").read_text(encoding="utf-8")
    assert "chosen by: confident selection, measured on NEU-DET" in report   # what its picks are worth
    assert training_analyzer.main(["--root", str(root), "--export", "8", "--selection", "diversity", "--json", "-q"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["selection"]["embedding"]["embedded_now"] == 0
    assert second["selection"]["embedding"]["from_cache"] == emb["images"]

"""dataset.group_by: images of one lot (coil, plate, board design) never span train / val / test.

Real imports through dataset_preparer.run on synthetic lots; the test split stays frozen.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

import dataset_preparer as dp
import setup_training
from toolkit.data.dataset.manifest import load_manifest
from toolkit.core.layout import SPLITS, Workspace
from toolkit.data.synthetic import NEU_CLASSES, write_batch

SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def write_lots(dest: Path, n_lots: int, per_lot: int, seed: int, first_lot: int = 0) -> Path:
    """``lot<k>_<j>.jpg``: ``per_lot`` near-copies (shifted 1-2 px, noise) of one image per lot.

    Every image of a lot carries the lot's class (lot k: class k % 6), as a coil's images share its defect.
    """
    base = write_batch(dest / "_base", n_lots, size=96, seed=seed)
    rng = np.random.default_rng(seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base.root / "classes.txt", dest / "classes.txt")
    for k, item in enumerate(base.images):
        img = cv2.imread(str(item.path))
        label = (base.root / "labels" / f"{item.path.stem}.txt").read_text()
        for j in range(per_lot):
            dx, dy = [(1, 0), (-1, 1), (2, -1), (0, 2), (-2, 0), (1, 1)][j % 6]
            moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (96, 96), borderMode=cv2.BORDER_REFLECT)
            moved = np.clip(moved.astype(int) + rng.normal(0, 5, moved.shape), 0, 255).astype(np.uint8)
            stem = f"lot{first_lot + k:03d}_{j}"
            cv2.imwrite(str(dest / "images" / f"{stem}.jpg"), moved, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (dest / "labels" / f"{stem}.txt").write_text(label)
    shutil.rmtree(dest / "_base")
    return dest


@pytest.fixture
def ws(tmp_path) -> Workspace:
    setup_training.run(setup_training.SetupConfig(root=tmp_path / "ws", classes=NEU_CLASSES))
    return Workspace.at(tmp_path / "ws")


def _lots(ws: Workspace) -> dict[str, set[str]]:
    splits = defaultdict(set)
    for e in load_manifest(ws)["images"]:
        lot = Path(e["source"]).stem.split("_")[0]
        splits[lot].add(e["split"])
    return splits


def test_grouped_import_keeps_lots_together_and_classes_stratified(ws, tmp_path):
    src = write_lots(tmp_path / "batch1", 120, 2, seed=3)
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by=r"^(lot\d+)_"))
    assert result.added == 240
    lots = _lots(ws)
    assert len(lots) == 120 and all(len(s) == 1 for s in lots.values()), {k: v for k, v in lots.items() if len(v) > 1}
    assert all(e.get("group", "").startswith("lot") for e in load_manifest(ws)["images"])
    # stratification holds within 5 percentage points per class (20 lots per class)
    per_class: dict[str, Counter] = defaultdict(Counter)
    for e in load_manifest(ws)["images"]:
        for c in e["boxes"] or {"(background)": 1}:
            per_class[c][e["split"]] += 1
    for c, counts in per_class.items():
        total = sum(counts.values())
        for s in SPLITS:
            assert abs(counts[s] / total - SHARES[s]) <= 0.05, (c, dict(counts))
    # the report shows the lots
    assert len(result.groups) == 120 and {g["images"] for g in result.groups} == {2}
    report = json.loads(Path(result.report).read_text())
    assert len(report["groups"]) == 120
    assert "Lots kept in one split" in Path(result.report).with_suffix(".md").read_text()
    # a later batch with more images of known lots: they join their lot's split; nothing moves
    before = {e["file"]: e["split"] for e in load_manifest(ws)["images"]}
    more = write_lots(tmp_path / "batch2", 120, 1, seed=3)  # lot000..lot119 again (other pixels, same lots)
    for p in sorted((more / "images").glob("*.jpg")):
        p.rename(p.with_name(p.stem.replace("_0", "_9") + ".jpg"))
    for p in sorted((more / "labels").glob("*.txt")):
        p.rename(p.with_name(p.stem.replace("_0", "_9") + ".txt"))
    dp.run(dp.PrepareConfig(root=ws.root, source=more, group_by=r"^(lot\d+)_"))
    after = load_manifest(ws)["images"]
    assert {e["file"]: e["split"] for e in after if e["file"] in before} == before  # frozen
    lots = _lots(ws)
    assert all(len(s) == 1 for s in lots.values()), {k: v for k, v in lots.items() if len(v) > 1}


def test_groups_from_a_groups_csv_column(ws, tmp_path):
    src = write_lots(tmp_path / "batch", 30, 3, seed=5)
    rows = ["image,plate"] + [f"images/{p.name},P{int(p.stem[3:6]) // 3}" for p in sorted((src / "images").glob("*.jpg"))]
    (src / "groups.csv").write_text("\n".join(rows) + "\n")
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, group_by="csv:plate"))
    plates = defaultdict(set)
    for e in load_manifest(ws)["images"]:
        plates[e["group"]].add(e["split"])
    assert len(plates) == 10 and all(len(s) == 1 for s in plates.values())
    assert {g["images"] for g in result.groups} == {9}


def test_check_warns_when_a_batch_looks_grouped(ws, tmp_path):
    grouped = write_lots(tmp_path / "lots", 40, 4, seed=9)
    check = dp.run(dp.PrepareConfig(root=ws.root, source=grouped, check=True))
    assert any("looks grouped" in n and "dataset.group_by" in n for n in check.notes), check.notes
    plain = write_batch(tmp_path / "plain", 160, size=96, seed=9).root
    check = dp.run(dp.PrepareConfig(root=ws.root, source=plain, check=True))
    assert not any("looks grouped" in n for n in check.notes), check.notes
    assert load_manifest(ws) is None  # --check changed nothing


def test_group_by_setting_is_checked_when_settings_load(tmp_path):
    from toolkit.core.config import Settings
    from toolkit.core.errors import ConfigError

    (tmp_path / "training.yaml").write_text("dataset:\n  group_by: '^(lot[0-9+_'\n")
    with pytest.raises(ConfigError, match="dataset.group_by"):
        Settings.load(tmp_path / "training.yaml")
    (tmp_path / "training.yaml").write_text("dataset:\n  group_by: 'csv:'\n")
    with pytest.raises(ConfigError, match="dataset.group_by"):
        Settings.load(tmp_path / "training.yaml")

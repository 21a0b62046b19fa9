"""dataset_preparer.py and toolkit/data/dataset/: checks, duplicates, split, versions, and the acceptance runs."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import dataset_preparer as dp
from setup_training import SetupConfig, run as setup_run
from dataset_helpers import export_voc_as_yolo_splits
from toolkit.data.dataset.checks import check_image
from toolkit.data.dataset.incoming import batch_fingerprint, pending_incoming_batches
from toolkit.data.dataset.manifest import load_manifest
from toolkit.data.dataset.parallel import check_images
from toolkit.data.dataset.store import managed_name
from toolkit.data.dataset.stratify import BACKGROUND, SplitGroup, UnionFind, assign_splits
from toolkit.core.errors import UserError
from toolkit.data.labels.voc import parse_voc_xml
from toolkit.data.labels.source import SourceBox, SourceImage
from toolkit.data.phash import near_duplicate_pairs, phash64
from toolkit.core.layout import Workspace
from toolkit.data.synthetic import NEU_CLASSES, write_batch


# --------------------------------------------------------------------------- helpers

def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks followed) -> sha256: the 'byte-identical' witness."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_workspace(tmp_path: Path, name: str = "ws") -> Path:
    root = tmp_path / name
    setup_run(SetupConfig(root=root, classes=NEU_CLASSES))
    return root


def prepare(root: Path, source: Path | None = None, **kw) -> dp.PrepareResult:
    return dp.run(dp.PrepareConfig(root=root, source=source, workers=2, **kw))


def jpeg_bytes(seed: int, w: int = 64, h: int = 64, quality: int = 95) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


def rejected_for(result: dp.PrepareResult, path: Path) -> list[str]:
    return [r["reason"] for r in result.rejected if Path(r["path"]) == path]


# --------------------------------------------------------------------------- pure helpers

def test_parse_split_and_class_map():
    assert dp.parse_split("80/10/10") == {"train": 80.0, "val": 10.0, "test": 10.0}
    assert dp.parse_split("train=0.7,val=0.3") == {"train": 0.7, "val": 0.3}
    assert dp._ratios({"train": 8, "val": 1, "test": 1}) == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1})
    with pytest.raises(UserError, match="three numbers"):
        dp.parse_split("80/20")
    assert dp.parse_class_map(("scratch=scratches", ("dent", "patches"))) == {"scratch": "scratches", "dent": "patches"}
    with pytest.raises(UserError, match="old=new"):
        dp.parse_class_map(("scratch",))


def test_phash_matches_reencoded_copy_not_other_images():
    a = cv2.imdecode(np.frombuffer(jpeg_bytes(1, 200, 200), np.uint8), cv2.IMREAD_GRAYSCALE)
    b = cv2.imdecode(np.frombuffer(jpeg_bytes(2, 200, 200), np.uint8), cv2.IMREAD_GRAYSCALE)
    ok, buf = cv2.imencode(".jpg", cv2.resize(a, (180, 180), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 60])
    a2 = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    assert bin(phash64(a) ^ phash64(a2)).count("1") <= 4
    assert bin(phash64(a) ^ phash64(b)).count("1") > 12


def test_near_duplicate_pairs_and_union_find():
    new = [0b0000, 0b0011, 0xFFFF, 0xFFFC]
    old = [0b0111, 0xF0F0F0F0]
    within, across = near_duplicate_pairs(new, old, bits=2)
    assert within == [(0, 1), (2, 3)]
    assert across == [(1, 0)]
    uf = UnionFind(4)
    for i, j in within:
        uf.union(i, j)
    assert sorted(sorted(g) for g in uf.groups()) == [[0, 1], [2, 3]]


def test_assign_splits_is_stratified_per_class():
    groups = [SplitGroup([i], Counter({NEU_CLASSES[i % 6]: 1}), f"{i:05d}") for i in range(1800)]
    splits = assign_splits(groups, {}, {}, {"train": 0.8, "val": 0.1, "test": 0.1})
    per_class = Counter((NEU_CLASSES[i % 6], s) for i, s in enumerate(splits))
    for cls in NEU_CLASSES:
        assert (per_class[cls, "train"], per_class[cls, "val"], per_class[cls, "test"]) == (240, 30, 30)


def test_assign_splits_multilabel_and_incremental():
    # The rare class rides on multi-label images: it still gets its share in every split.
    groups = [SplitGroup([i], Counter({"common": 1, **({"rare": 1} if i % 10 == 0 else {})}), f"{i:04d}")
              for i in range(200)]
    splits = assign_splits(groups, {}, {}, {"train": 0.8, "val": 0.1, "test": 0.1})
    rare = Counter(s for i, s in enumerate(splits) if i % 10 == 0)
    assert rare == {"train": 16, "val": 2, "test": 2}
    # Incremental: the new images fill what the existing split lacks (val is short here).
    existing = {"train": {"common": 80}, "val": {"common": 0}, "test": {"common": 10}}
    new = [SplitGroup([i], Counter({"common": 1}), f"{i:03d}") for i in range(20)]
    splits = assign_splits(new, existing, {"train": 80, "val": 0, "test": 10}, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert Counter(splits) == {"train": 8, "val": 11, "test": 1}
    # A zero ratio is never used; background is a class like the others.
    bg = [SplitGroup([i], Counter({BACKGROUND: 1}), str(i)) for i in range(10)]
    assert set(assign_splits(bg, {}, {}, {"train": 0.5, "val": 0.5, "test": 0.0})) == {"train", "val"}


def test_managed_name_is_unique_readable_and_safe():
    sha = "ab" * 32
    assert managed_name(Path("D:/line 3/img 01.JPG"), sha) == "img_01-abababab.jpg"
    assert managed_name(Path("x.png"), sha, ".jpg", 2) == "x-abababab-2.jpg"


def test_check_image_finds_each_problem(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(3))
    box = SourceBox("crazing", 0.25, 0.25, 0.75, 0.75)

    def check(path, boxes=(box,), **kw):
        return check_image(SourceImage(path, tmp_path / "x.txt", tuple(boxes), normalized=kw.pop("normalized", True), **kw))

    ok = check(good)
    assert ok.ok and (ok.width, ok.height) == (64, 64) and ok.boxes[0][1:] == pytest.approx((0.5, 0.5, 0.5, 0.5))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:700])
    assert "truncated" in check(truncated).problems[0].reason
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert "empty file" in check(empty).problems[0].reason
    text = tmp_path / "text.jpg"
    text.write_text("this is not a picture")
    assert "not an image" in check(text).problems[0].reason
    outside = check(good, [SourceBox("crazing", 0.8, 0.2, 1.2, 0.4)])
    assert "outside" in outside.problems[0].reason
    overshoot = check(good, [SourceBox("crazing", 0.5, 0.5, 1.005, 0.9)])  # 0.3 px over: clipped
    assert overshoot.ok and overshoot.boxes[0][1] + overshoot.boxes[0][3] / 2 == pytest.approx(1.0)
    twice = check(good, [box, box])
    assert twice.ok and "duplicate" in twice.warnings[0].reason and len(twice.boxes) == 2
    voc_size = check(good, normalized=False, declared_size=(200, 200),
                     boxes=[SourceBox("crazing", 1, 1, 10, 10)])
    assert "200x200 but the image is 64x64" in voc_size.problems[0].reason
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(good.read_bytes() + b"camera junk")
    result = check(trailing)
    assert result.ok and "end marker" in result.reencode


@pytest.mark.parametrize("kind", ["process", "auto"])
def test_check_images_in_forked_workers_match_threads(tmp_path, kind):
    """The forked-process checks (the default for big batches on Linux) find the same problems and
    hashes as the in-process ones, in input order, with cv2 already used by the parent."""
    good = jpeg_bytes(3)
    box = SourceBox("crazing", 0.25, 0.25, 0.75, 0.75)
    items = []
    for i in range(300 if kind == "auto" else 12):  # auto forks from 256 items on
        path = tmp_path / f"img{i:03d}.jpg"
        path.write_bytes({0: good[:700], 1: b"", 2: b"not a picture"}.get(i % 7, good if i % 2 else jpeg_bytes(i)))
        items.append(SourceImage(path, tmp_path / f"img{i:03d}.txt", (box,), normalized=True))
    threads = check_images(items, 2, "thread")
    forked = check_images(items, 2, kind)
    assert forked == threads and [c.source for c in forked] == items
    assert "truncated" in forked[0].problems[0].reason and "empty file" in forked[1].problems[0].reason
    assert "not an image" in forked[2].problems[0].reason
    assert forked[3].ok and forked[3].sha256 == hashlib.sha256(good).hexdigest() and forked[3].phash != 0


def test_exif_rotated_image_is_copied_upright(tmp_path):
    from PIL import Image

    raw = np.zeros((48, 64, 3), np.uint8)  # stored 64 wide, 48 high
    raw[:, :8] = 255                       # a bright band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6                       # shown rotated 90 degrees clockwise: 48 wide, 64 high
    src = tmp_path / "batch"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    (src / "images" / "phone.jpg").write_bytes(buf.getvalue())
    (src / "labels" / "phone.txt").write_text("5 0.5 0.0625 1.0 0.125\n")  # the band, upright: along the top
    (src / "classes.txt").write_text("\n".join(NEU_CLASSES) + "\n")
    root = make_workspace(tmp_path)
    result = prepare(root, src, max_bad_fraction=1.0)
    assert result.added == 1 and "EXIF orientation 6" in result.warnings[0]["reason"]
    entry = load_manifest(Workspace.at(root))["images"][0]
    assert (entry["width"], entry["height"]) == (48, 64) and "upright" in entry["reencoded"]
    copy = Workspace.at(root).datasets / entry["file"]
    pixels = cv2.imread(str(copy), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    assert pixels.shape == (64, 48) and pixels[:8].mean() > 200 and pixels[16:].mean() < 40
    with Image.open(copy) as im:
        assert im.getexif().get(0x0112, 1) == 1


def test_fingerprint_and_pending_incoming(tmp_path):
    root = make_workspace(tmp_path)
    ws = Workspace.at(root)
    write_batch(ws.incoming / "batch_a", 6, size=48, seed=1)
    write_batch(ws.incoming / "batch_b", 6, size=48, seed=2)
    (ws.incoming / "_drafts").mkdir()  # skipped by name
    before = batch_fingerprint(ws.incoming / "batch_a")
    assert pending_incoming_batches(ws) == [ws.incoming / "batch_a", ws.incoming / "batch_b"]

    result = dp.run(dp.PrepareConfig(root=root))  # neither --source nor --incoming: --incoming
    assert result.added == 12 and len(result.batches) == 2
    assert pending_incoming_batches(ws) == []
    again = dp.run(dp.PrepareConfig(root=root, incoming=True))
    assert again.added == 0 and not again.changed and any("no new batch" in n for n in again.notes)

    write_batch(ws.incoming / "batch_a", 1, size=48, seed=9, prefix="late")  # one more image arrives
    assert batch_fingerprint(ws.incoming / "batch_a") != before
    assert pending_incoming_batches(ws) == [ws.incoming / "batch_a"]
    late = dp.run(dp.PrepareConfig(root=root, incoming=True))
    assert late.added == 1 and late.duplicates == 6 and late.dataset_version == 2


# --------------------------------------------------------------------------- NEU-DET acceptance

@pytest.fixture()
def neu_subset(neu_dir, tmp_path) -> Path:
    """60 NEU-DET files (10 per class, both folder pairs), copied (links out of a source are not followed)."""
    dest = tmp_path / "neu_subset"
    picked = []
    for cls in NEU_CLASSES:
        picked += sorted((neu_dir / "IMAGES").glob(f"{cls}_*.jpg"))[:9]
        picked += sorted((neu_dir / "Validation_Images").glob(f"{cls}_*.jpg"))[:1]
    for img in picked:
        ann_dir = "ANNOTATIONS" if img.parent.name == "IMAGES" else "Validation_Annotations"
        for src, sub in ((img, img.parent.name), (neu_dir / ann_dir / f"{img.stem}.xml", ann_dir)):
            (dest / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / sub / src.name)
    return dest


def test_neu_subset_import_then_reimport_adds_nothing(neu_subset, tmp_path):
    before = tree_hashes(neu_subset)
    boxes = sum(len(parse_voc_xml(p).boxes) for p in neu_subset.glob("*/*.xml"))
    root = make_workspace(tmp_path, "fresh")  # only setup makes a workspace (issue 18)
    first = prepare(root, neu_subset, fmt="voc")
    assert first.added == 60 and first.rejected == () and first.dataset_version == 1
    assert sum(first.boxes_per_class.values()) == boxes and first.classes == NEU_CLASSES
    ws = Workspace.at(root)
    data = yaml.safe_load(ws.dataset_yaml.read_text())
    assert data["path"] == str(ws.datasets) and Path(data["path"]).is_absolute()
    assert list(data["names"].values()) == list(NEU_CLASSES)
    manifest = load_manifest(ws)
    assert len({e["file"] for e in manifest["images"]}) == 60
    for e in manifest["images"]:
        assert (ws.datasets / e["file"]).is_file() and (ws.datasets / e["label"]).is_file()
        assert Path(e["source"]).parent.parent == neu_subset
    again = prepare(root, neu_subset, fmt="voc")
    assert again.added == 0 and again.dataset_version == 1 and not again.changed
    assert tree_hashes(neu_subset) == before


def test_neu_det_full_import_acceptance(neu_dir, tmp_path):
    """1800 images, 4189 boxes, 6 classes, nothing rejected, every class about 80/10/10."""
    root = make_workspace(tmp_path)
    result = prepare(root, neu_dir, fmt="voc")
    assert result.added == 1800 and sum(result.images.values()) == 1800
    assert sum(result.boxes_per_class.values()) == 4189 and result.rejected == ()
    assert result.classes == NEU_CLASSES and result.difficult_boxes == 81
    report = json.loads(Path(result.report).read_text())
    assert report["added"] == 1800 and Path(result.report).with_suffix(".md").is_file()
    counts = {}
    for e in load_manifest(Workspace.at(root))["images"]:
        for cls in e["boxes"]:
            counts.setdefault(cls, Counter())[e["split"]] += 1
    for cls, c in counts.items():
        total = sum(c.values())
        assert abs(c["train"] / total - 0.8) < 0.02 and abs(c["val"] / total - 0.1) < 0.02, (cls, c)
    # NEU-DET's one byte-identical pair (patches_101 / patches_105, labelled differently) shares a split.
    splits = {Path(e["source"]).stem: e["split"] for e in load_manifest(Workspace.at(root))["images"]}
    assert splits["patches_101"] == splits["patches_105"]
    assert prepare(root, neu_dir, fmt="voc").added == 0


def test_neu_det_yolo_export_keeps_its_split(neu_dir, tmp_path):
    splits = {s: neu_dir / "splits" / f"{s}.txt" for s in ("train", "val", "test")}
    export = export_voc_as_yolo_splits(neu_dir, splits, tmp_path / "export")
    root = make_workspace(tmp_path)
    result = prepare(root, export, keep_split=True)
    assert result.images == {"train": 1440, "val": 180, "test": 180} and result.rejected == ()
    got = {s: set() for s in splits}
    for e in load_manifest(Workspace.at(root))["images"]:
        got[e["split"]].add(Path(e["source"]).stem)
    for split, list_file in splits.items():
        assert got[split] == set(list_file.read_text().split())
    # The fixed split itself leaks (same pixels in test and train): kept, but said.
    assert any("leak between splits" in w["reason"] for w in result.warnings)


# --------------------------------------------------------------------------- COCO twin

def test_coco_batch_imports_like_its_yolo_twin(tmp_path):
    yolo = write_batch(tmp_path / "yolo", 40, fmt="yolo", size=64, seed=7, background_every=8)
    coco_dir = tmp_path / "coco"
    shutil.copytree(yolo.root / "images", coco_dir / "images")
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NEU_CLASSES)]}
    for i, img in enumerate(yolo.images, start=1):
        coco["images"].append({"id": i, "file_name": img.path.name, "width": img.width, "height": img.height})
        for b in img.boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": b.cls + 1,
                                        "bbox": [b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1], "iscrowd": 0})
    (coco_dir / "annotations").mkdir()
    (coco_dir / "annotations" / "instances_default.json").write_text(json.dumps(coco))

    from_yolo = prepare(make_workspace(tmp_path, "ws_yolo"), yolo.root)  # only setup makes a workspace
    from_coco = prepare(make_workspace(tmp_path, "ws_coco"), coco_dir)
    assert from_coco.formats[str(coco_dir)].startswith("coco")
    assert from_yolo.added == from_coco.added == 40 and from_yolo.rejected == from_coco.rejected == ()
    assert from_yolo.images == from_coco.images
    assert from_yolo.boxes_per_class == from_coco.boxes_per_class == yolo.boxes_per_class
    assert from_yolo.background_images == from_coco.background_images == 5

    def by_name(root):
        return {Path(e["source"]).name: (e["split"], e["boxes"]) for e in load_manifest(Workspace.at(root))["images"]}

    assert by_name(tmp_path / "ws_yolo") == by_name(tmp_path / "ws_coco")


# --------------------------------------------------------------------------- bad input, data safety

def test_bad_inputs_are_reported_good_ones_added_source_untouched(tmp_path):
    src = tmp_path / "mixed"
    good = write_batch(src, 12, fmt="yolo", size=64, seed=5)
    images, labels = src / "images", src / "labels"
    label = "1 0.5 0.5 0.25 0.25\n"

    def add(name: str, data: bytes, label_text: str | None = label) -> Path:
        (images / name).write_bytes(data)
        if label_text is not None:
            (labels / f"{Path(name).stem}.txt").write_text(label_text)
        return images / name

    bad = {
        add("truncated.jpg", jpeg_bytes(20)[:900]): "truncated",
        add("empty.jpg", b""): "empty file",
        add("not_a_picture.jpg", b"GIF89a? no: plain text pretending to be a JPEG"): "not an image",
        add("drawing.gif", b"GIF89a"): "unsupported image format",
        add("broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40): "truncated PNG",
    }
    label_bad = {
        "syntax": ("0 0.5 0.5 0.2\n", "expected 'class x_center"),
        "class_range": ("9 0.5 0.5 0.2 0.2\n", "out of range"),
        "outside": ("0 0.95 0.5 0.3 0.2\n", "outside"),
        "zero_size": ("0 0.5 0.5 0 0.2\n", "zero or negative"),
    }
    for i, (name, (text, reason)) in enumerate(label_bad.items()):
        add(f"{name}.jpg", jpeg_bytes(40 + i), text)
        bad[labels / f"{name}.txt"] = reason
    (labels / "orphan.txt").write_text(label)
    bad[labels / "orphan.txt"] = "label without image"
    accepted = {
        add("background.jpg", jpeg_bytes(60), None): "no label: a defect-free image",
        add("sub_pixel.jpg", jpeg_bytes(61), "0 0.5 0.5 1.008 0.2\n"): "0.26 px over the edge: clipped",
        add("repeated_box.jpg", jpeg_bytes(62), label + label): "duplicate box: warning",
        add("trailing.jpg", jpeg_bytes(63) + b"\0\0junk"): "data after the end marker: re-encoded",
    }
    before = tree_hashes(src)
    root = make_workspace(tmp_path)
    result = prepare(root, src, max_bad_fraction=0.6)

    for path, reason in bad.items():
        reasons = rejected_for(result, path)
        assert reasons and reason in reasons[0], (path.name, result.rejected)
    assert result.added == len(good.images) + len(accepted)
    assert result.background_images == 1
    assert any("duplicate" in w["reason"] and w["path"].endswith("repeated_box.txt") for w in result.warnings)
    sources = {Path(e["source"]).name for e in load_manifest(Workspace.at(root))["images"]}
    assert {p.name for p in accepted} <= sources and not ({p.name for p in bad} & sources)
    copy = next(Workspace.at(root).datasets.glob("images/*/trailing-*.jpg"))
    assert copy.read_bytes().endswith(b"\xff\xd9")  # ultralytics will not rewrite it
    assert tree_hashes(src) == before
    md = Path(result.report).with_suffix(".md").read_text()
    assert "## Rejected" in md and "truncated.jpg" in md


def test_voc_batch_problems_unknown_class_and_map(tmp_path):
    src = tmp_path / "voc"
    batch = write_batch(src, 8, fmt="voc", size=64, seed=11)
    ann = src / "annotations"
    names = [img.path.stem for img in batch.images]
    (ann / f"{names[0]}.xml").write_text((ann / f"{names[0]}.xml").read_text().replace("<width>64</width>", "<width>300</width>"))
    (ann / f"{names[1]}.xml").write_text((ann / f"{names[1]}.xml").read_text().replace(
        f"<name>{NEU_CLASSES[1]}</name>", "<name>inclusion_old</name>"))
    (ann / f"{names[2]}.xml").write_text("<annotation><filename>broken")
    (ann / "ghost.xml").write_text((ann / f"{names[3]}.xml").read_text().replace(names[3], "ghost"))
    root = make_workspace(tmp_path)
    before = tree_hashes(src)

    result = prepare(root, src, max_bad_fraction=0.9)
    assert "300x64 but the image is 64x64" in rejected_for(result, ann / f"{names[0]}.xml")[0]
    assert "unknown class 'inclusion_old'" in rejected_for(result, ann / f"{names[1]}.xml")[0]
    assert "not valid XML" in rejected_for(result, ann / f"{names[2]}.xml")[0]
    assert "label without image" in rejected_for(result, ann / "ghost.xml")[0]
    assert result.added == 5

    mapped = prepare(root, src, max_bad_fraction=0.9, class_map=("inclusion_old=inclusion",))
    assert mapped.added == 1 and mapped.duplicates == 5 and mapped.dataset_version == 2
    with pytest.raises(UserError, match="not dataset classes"):
        prepare(root, src, class_map=("inclusion_old=no_such_class",))
    assert tree_hashes(src) == before


def test_too_many_bad_files_stop_the_import(tmp_path):
    src = tmp_path / "bad_batch"
    write_batch(src, 4, fmt="yolo", size=48, seed=3)
    for i in range(4):
        (src / "images" / f"empty_{i}.jpg").write_bytes(b"")
    root = make_workspace(tmp_path)
    with pytest.raises(UserError, match="max_bad_fraction") as info:
        prepare(root, src)
    assert "4 of 8 files bad" in str(info.value)
    ws = Workspace.at(root)
    assert load_manifest(ws) is None and not any(ws.images_dir("train").iterdir())
    assert list(ws.reports.glob("prepare_*.md"))  # the full list of problems is on disk


def test_check_changes_nothing(tmp_path):
    src = tmp_path / "batch"
    write_batch(src, 10, fmt="yolo", size=48, seed=4)
    root = make_workspace(tmp_path)
    ws = Workspace.at(root)
    yaml_before = ws.dataset_yaml.read_text()
    result = prepare(root, src, check=True)
    assert result.check_only and result.added == 10 and result.dataset_version is None
    assert load_manifest(ws) is None and not any(ws.images_dir("train").iterdir())
    assert ws.dataset_yaml.read_text() == yaml_before


# --------------------------------------------------------------------------- incremental versions

def test_second_batch_moves_nothing_and_near_duplicate_follows_test_image(tmp_path):
    root = make_workspace(tmp_path)
    ws = Workspace.at(root)
    first = prepare(root, write_batch(tmp_path / "b1", 60, fmt="yolo", size=96, seed=1).root)
    assert first.dataset_version == 1 and first.images["test"] > 0
    v1 = load_manifest(ws)
    test_entry = next(e for e in v1["images"] if e["split"] == "test")
    train_entry = next(e for e in v1["images"] if e["split"] == "train")

    b2 = write_batch(tmp_path / "b2", 30, fmt="yolo", size=96, seed=2).root
    # A near-duplicate of a managed test image (re-encoded: other bytes, same picture) ...
    pixels = cv2.imread(test_entry["source"])
    cv2.imwrite(str(b2 / "images" / "again.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 70])
    shutil.copyfile(test_entry["label_source"], b2 / "labels" / "again.txt")
    # ... and an exact copy of a managed train image under another name.
    shutil.copyfile(train_entry["source"], b2 / "images" / "copy.jpg")
    shutil.copyfile(train_entry["label_source"], b2 / "labels" / "copy.txt")
    second = prepare(root, b2)

    assert second.dataset_version == 2 and second.added == 31 and second.duplicates == 1
    v2 = load_manifest(ws)
    old = {e["sha256"]: e["split"] for e in v1["images"]}
    assert all(old[e["sha256"]] == e["split"] for e in v2["images"] if e["sha256"] in old)
    again = next(e for e in v2["images"] if e["source"].endswith("again.jpg"))
    assert again["split"] == "test"
    assert any(n["path"].endswith("again.jpg") and n["split"] == "test" for n in second.near_duplicates)
    assert second.duplicate_files[0]["duplicate_of"] == train_entry["file"]
    assert second.duplicate_files[0]["kind"] == "exact"
    assert (ws.datasets / "manifests" / "v0001.json").is_file() and (ws.datasets / "manifests" / "v0002.json").is_file()
    assert "# Dataset version: 2" in ws.dataset_yaml.read_text()


def test_same_file_names_in_two_batches_do_not_collide(tmp_path):
    root = make_workspace(tmp_path)
    a = write_batch(tmp_path / "a", 5, fmt="yolo", size=48, seed=1, prefix="img")
    b = write_batch(tmp_path / "b", 5, fmt="yolo", size=48, seed=2, prefix="img")
    for i in range(5):  # same names, other pictures
        shutil.move(b.root / "images" / f"img_2_{i:05d}.jpg", b.root / "images" / f"img_1_{i:05d}.jpg")
        shutil.move(b.root / "labels" / f"img_2_{i:05d}.txt", b.root / "labels" / f"img_1_{i:05d}.txt")
    prepare(root, a.root)
    prepare(root, b.root)
    entries = load_manifest(Workspace.at(root))["images"]
    assert len(entries) == 10 and len({Path(e["file"]).name for e in entries}) == 10
    assert {Path(e["source"]).parent.parent for e in entries} == {a.root, b.root}


def test_stray_files_in_managed_folders_are_set_aside(tmp_path):
    root = make_workspace(tmp_path)
    ws = Workspace.at(root)
    prepare(root, write_batch(tmp_path / "a", 5, fmt="yolo", size=48, seed=1).root)
    stray = ws.images_dir("train") / "left_by_a_crash.jpg"
    stray.write_bytes(jpeg_bytes(1))
    result = prepare(root, write_batch(tmp_path / "b", 5, fmt="yolo", size=48, seed=2).root)
    assert not stray.exists() and any("not in the manifest" in n for n in result.notes)
    assert list((ws.datasets / "unmanaged").rglob("left_by_a_crash.jpg"))


def test_first_import_after_a_crash_and_a_hand_made_dataset(tmp_path):
    root = make_workspace(tmp_path)
    ws = Workspace.at(root)
    half_copied = ws.images_dir("train") / "syn_1_00000-0123abcd.jpg"  # our naming, no manifest yet
    half_copied.write_bytes(b"\xff\xd8")
    assert prepare(root, write_batch(tmp_path / "a", 4, fmt="yolo", size=48, seed=1).root).added == 4
    assert not half_copied.exists()
    other = make_workspace(tmp_path, "ws2")
    (Workspace.at(other).images_dir("val") / "my_own_image.jpg").write_bytes(jpeg_bytes(2))
    with pytest.raises(UserError, match="no manifest lists"):
        prepare(other, tmp_path / "a")


# --------------------------------------------------------------------------- CLI

def test_main_json_and_errors(tmp_path, capsys):
    src = write_batch(tmp_path / "batch", 6, fmt="voc", size=48, seed=8).root
    root = make_workspace(tmp_path)
    assert dp.main(["--root", str(root), "--source", str(src), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("dataset_version", "images", "boxes_per_class", "added", "duplicates", "rejected", "report",
                "batches", "background_images", "classes"):
        assert key in out
    assert out["added"] == 6 and set(out["images"]) == {"train", "val", "test"}
    assert dp.main(["--root", str(root), "--source", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        dp.main(["--root", str(root), "--source", str(src), "--incoming"])
    assert usage.value.code == 2
    assert dp.main(["--root", str(root), "--source", str(src), "--keep-split"]) == 1
    assert "carries no train/val/test split" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 18: what the user reads
def test_half_the_images_without_labels_is_said_not_silently_imported_as_background(tmp_path, caplog):
    root = make_workspace(tmp_path)
    batch = write_batch(tmp_path / "batch", 20, size=64, seed=61)
    for image in batch.images[:10]:
        (batch.root / "labels" / f"{image.path.stem}.txt").unlink()
    result = prepare(root, batch.root)
    assert result.background_images == 10
    note = [n for n in result.notes if "no label file" in n]
    assert note and "10 of 20 images" in note[0] and "background" in note[0]
    caplog.clear()
    assert "10 of 20 images have no label file" in dp.describe(result)


def test_check_mode_never_says_added(tmp_path, caplog):
    root = make_workspace(tmp_path)
    batch = write_batch(tmp_path / "batch", 6, size=64, seed=62)
    caplog.set_level("INFO")
    result = prepare(root, batch.root, check=True)
    logged = " ".join(r.message for r in caplog.records)
    assert "added" not in logged and "an import would add 6" in logged
    assert dp.describe(result).startswith("Check only, nothing changed. An import would add 6")


def test_problems_are_counted_per_file_as_well_as_per_line(tmp_path):
    root = make_workspace(tmp_path)
    batch = write_batch(tmp_path / "batch", 20, size=64, seed=63)
    bad = batch.images[0].path.stem
    (batch.root / "labels" / f"{bad}.txt").write_text("0 1.5 0.5 0.1 0.1\n1 1.6 0.5 0.1 0.1\n2 1.7 0.5 0.1 0.1\n")
    result = prepare(root, batch.root)
    paths = {r["path"] for r in result.rejected}
    assert len(result.rejected) > len(paths) == 1
    assert f"problems: {len(result.rejected)} in 1 file(s)" in dp.describe(result)

"""Readers of YOLO / Pascal VOC / COCO batches (toolkit/data/labels/): pure parsing, no decode."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from toolkit.core.errors import UserError
from dataset_helpers import export_voc_as_yolo_splits
from toolkit.data.labels.read import detect_format, read_source
from toolkit.data.labels.yolo import parse_yolo_label, yolo_label_text
from toolkit.data.labels.voc import parse_voc_xml
from toolkit.data.labels.source import scan_files, split_from_path
from toolkit.data.synthetic import NEU_CLASSES, write_batch

VOC_XML = """<annotation><folder>cr</folder><filename>{filename}</filename>
<size><width>{w}</width><height>{h}</height><depth>1</depth></size>
{objects}</annotation>"""
VOC_OBJ = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
           "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def voc_xml(filename: str, boxes, w=200, h=200) -> str:
    objects = "".join(VOC_OBJ.format(name=n, difficult=int(d), x1=a, y1=b, x2=c, y2=e) for n, a, b, c, e, d in boxes)
    return VOC_XML.format(filename=filename, w=w, h=h, objects=objects)


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not decoded by the readers \xff\xd9")
    return path


# --------------------------------------------------------------------------- YOLO text

def test_parse_yolo_label_boxes_and_polygons():
    boxes, problems = parse_yolo_label("0 0.5 0.5 0.2 0.4\n\n2 0.1 0.1 0.3 0.1 0.3 0.5\n", NEU_CLASSES)
    assert problems == []
    assert [b.cls for b in boxes] == ["crazing", "patches"]
    assert boxes[0].x1 == pytest.approx(0.4) and boxes[0].y2 == pytest.approx(0.7)
    assert (boxes[1].x1, boxes[1].y1, boxes[1].x2, boxes[1].y2) == pytest.approx((0.1, 0.1, 0.3, 0.5))
    # Without class names the ids stay ids (resolved later against dataset.yaml).
    boxes, _ = parse_yolo_label("7 0.5 0.5 0.1 0.1", None)
    assert boxes[0].cls == 7


@pytest.mark.parametrize("text, expected", [
    ("0 0.5 0.5 0.2", "expected 'class x_center"),
    ("0 0.5 abc 0.2 0.2", "not numbers"),
    ("9 0.5 0.5 0.2 0.2", "class id 9 out of range"),
    ("-1 0.5 0.5 0.2 0.2", "out of range"),
    ("1.5 0.5 0.5 0.2 0.2", "not a whole number"),
    ("0 0.5 0.5 0 0.2", "zero or negative box size"),
    ("0 0.5 nan 0.2 0.2", "NaN or infinite"),
])
def test_parse_yolo_label_problems(text, expected):
    boxes, problems = parse_yolo_label(text, NEU_CLASSES)
    assert boxes == [] and len(problems) == 1
    assert expected in problems[0] and problems[0].startswith("line 1")


def test_yolo_label_text_round_trip():
    text = yolo_label_text([(3, 0.5, 0.25, 0.1, 0.2)])
    assert text == "3 0.500000 0.250000 0.100000 0.200000\n"
    assert yolo_label_text([]) == ""


# --------------------------------------------------------------------------- VOC

def test_parse_voc_xml_tolerates_neu_quirks(tmp_path):
    path = tmp_path / "pitted_surface_1.xml"
    path.write_text(voc_xml("pitted_surface_1", [("pitted_surface", 1, 2, 200, 150, True), ("patches", 5, 5, 50, 60, False)]))
    ann = parse_voc_xml(path)
    assert ann.filename == "pitted_surface_1" and ann.size == (200, 200)
    assert ann.problems == ()
    assert [(b.cls, b.difficult) for b in ann.boxes] == [("pitted_surface", True), ("patches", False)]
    assert (ann.boxes[0].x1, ann.boxes[0].x2) == (1.0, 200.0)  # VOC pixels used as given


def test_parse_voc_xml_problems(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><filename>x.jpg</filename><object>")
    assert "not valid XML" in parse_voc_xml(broken).problems[0]
    bad = tmp_path / "bad.xml"
    bad.write_text(voc_xml("x.jpg", [("crazing", 50, 5, 10, 60, False)]).replace("<xmin>50</xmin>", "<xmin>fifty</xmin>"))
    assert "numeric" in parse_voc_xml(bad).problems[0]
    flipped = tmp_path / "flipped.xml"
    flipped.write_text(voc_xml("x.jpg", [("crazing", 50, 5, 10, 60, False)]))
    assert "zero or negative" in parse_voc_xml(flipped).problems[0]


def test_read_voc_pairs_folders_and_reports_orphans(tmp_path):
    src = tmp_path / "voc"
    for pair_img, pair_ann in (("IMAGES", "ANNOTATIONS"), ("Validation_Images", "Validation_Annotations")):
        touch_image(src / pair_img / "crazing_1.jpg")  # the same name in both pairs: matched by folder
        (src / pair_ann).mkdir(parents=True)
        (src / pair_ann / "crazing_1.xml").write_text(voc_xml("crazing_1.jpg", [("crazing", 1, 1, 10, 10, False)]))
    touch_image(src / "IMAGES" / "patches_2.jpg")
    (src / "ANNOTATIONS" / "patches_2.xml").write_text(voc_xml("patches_2", [("patches", 1, 1, 10, 10, False)]))
    touch_image(src / "IMAGES" / "scratches_3.jpg")  # no XML: a background image
    (src / "ANNOTATIONS" / "ghost_4.xml").write_text(voc_xml("ghost_4.jpg", [("crazing", 1, 1, 9, 9, False)]))

    batch = read_source(src, "auto")
    assert batch.fmt == "voc"
    by_image = {i.image.relative_to(src).as_posix(): i for i in batch.images}
    assert by_image["IMAGES/crazing_1.jpg"].label == src / "ANNOTATIONS" / "crazing_1.xml"
    assert by_image["Validation_Images/crazing_1.jpg"].label == src / "Validation_Annotations" / "crazing_1.xml"
    assert by_image["IMAGES/patches_2.jpg"].boxes[0].cls == "patches"  # <filename> without extension
    assert by_image["IMAGES/scratches_3.jpg"].label is None
    assert [(p.path.name, "label without image" in p.reason) for p in batch.problems] == [("ghost_4.xml", True)]


# --------------------------------------------------------------------------- YOLO folders

def test_read_yolo_split_folders_and_class_list(tmp_path):
    src = tmp_path / "yolo"
    for split in ("train", "valid"):
        touch_image(src / "images" / split / f"{split}_a.jpg")
        (src / "labels" / split).mkdir(parents=True)
        (src / "labels" / split / f"{split}_a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    touch_image(src / "images" / "train" / "bg.jpg")
    (src / "labels" / "train" / "lost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (src / "classes.txt").write_text("\n".join(NEU_CLASSES) + "\n")
    (src / "README.txt").write_text("exported by a labelling tool\n")  # not a label, not an orphan

    batch = read_source(src)
    assert batch.fmt == "yolo" and batch.class_names == NEU_CLASSES and batch.has_split
    splits = {i.image.name: (i.split, [b.cls for b in i.boxes]) for i in batch.images}
    assert splits == {"train_a.jpg": ("train", ["inclusion"]), "bg.jpg": ("train", []), "valid_a.jpg": ("val", ["inclusion"])}
    assert [p.path.name for p in batch.problems] == ["lost.txt"]


def test_read_yolo_data_yaml_with_image_list(tmp_path):
    src = tmp_path / "export"
    for name in ("a", "b", "c"):
        touch_image(src / "images" / f"{name}.jpg")
        (src / "labels").mkdir(exist_ok=True)
        (src / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "train.txt").write_text("./images/a.jpg\n./images/b.jpg\n")
    (src / "val.txt").write_text("images/c.jpg\n")
    (src / "data.yaml").write_text(yaml.safe_dump({"path": "/elsewhere/on/another/pc", "train": "train.txt",
                                                  "val": "val.txt", "names": {0: "scratches"}}))
    batch = read_source(src / "data.yaml")
    assert batch.class_names == ("scratches",)
    assert {i.image.name: i.split for i in batch.images} == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val"}
    assert batch.problems == ()


def test_split_from_path_aliases(tmp_path):
    assert split_from_path(tmp_path / "valid" / "images" / "x.jpg", tmp_path) == "val"
    assert split_from_path(tmp_path / "images" / "test" / "x.jpg", tmp_path) == "test"
    assert split_from_path(tmp_path / "batch" / "x.jpg", tmp_path) is None


# --------------------------------------------------------------------------- COCO

def test_read_coco_resolves_images_and_reports_problems(tmp_path):
    src = tmp_path / "cvat"
    for name in ("a.jpg", "b.jpg", "unlisted.jpg"):
        touch_image(src / "images" / name)
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                       {"id": 2, "file_name": "sub/b.jpg", "width": 100, "height": 80},
                       {"id": 3, "file_name": "missing.jpg", "width": 100, "height": 80}],
            "categories": [{"id": 1, "name": "scratches"}, {"id": 2, "name": "patches"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
                            {"id": 11, "image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5]}]}
    (src / "annotations").mkdir()
    (src / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    batch = read_source(src)
    assert batch.fmt == "coco" and batch.class_names == ("scratches", "patches")
    items = {i.image.name: i for i in batch.images}
    a = items["a.jpg"]
    assert a.declared_size == (100, 80) and not a.normalized
    assert (a.boxes[0].cls, a.boxes[0].x1, a.boxes[0].y2) == ("scratches", 10.0, 60.0)
    assert "category id 9" in items["b.jpg"].problems[0].reason  # resolved by its base name
    reasons = {p.path.name: p.reason for p in batch.problems}
    assert "missing.jpg" in reasons["instances_default.json"]
    assert "not listed in the COCO JSON" in reasons["unlisted.jpg"]


# --------------------------------------------------------------------------- detection

def test_detect_format_says_what_it_found(tmp_path):
    yolo = write_batch(tmp_path / "y", 2, fmt="yolo", size=32, seed=1)
    voc = write_batch(tmp_path / "v", 2, fmt="voc", size=32, seed=2)
    assert detect_format(scan_files(yolo.root))[0] == "yolo"
    fmt, why = detect_format(scan_files(voc.root))
    assert fmt == "voc" and "2 Pascal VOC XML" in why
    only_images = tmp_path / "pics"
    touch_image(only_images / "x.jpg")
    with pytest.raises(UserError, match="no labels"):
        read_source(only_images)
    with pytest.raises(UserError, match="no images"):
        read_source(tmp_path / "y" / "labels")
    with pytest.raises(UserError, match="does not exist"):
        read_source(tmp_path / "nowhere")


# --------------------------------------------------------------------------- NEU-DET, read in place

def test_read_neu_det_in_place(neu_dir):
    batch = read_source(neu_dir, "voc")
    assert len(batch.images) == 1800 and batch.problems == ()
    assert all(i.label is not None and not i.problems for i in batch.images)
    assert sum(len(i.boxes) for i in batch.images) == 4189
    assert sum(b.difficult for i in batch.images for b in i.boxes) == 81
    assert sorted({b.cls for i in batch.images for b in i.boxes}) == list(NEU_CLASSES)
    assert sum(i.label.parent.name == "Validation_Annotations" for i in batch.images) == 30
    assert all(i.label.stem == i.image.stem for i in batch.images)


def test_export_voc_as_yolo_splits(neu_dir, tmp_path):
    splits = {s: neu_dir / "splits" / f"{s}.txt" for s in ("train", "val", "test")}
    dest = export_voc_as_yolo_splits(neu_dir, splits, tmp_path / "export", stems_limit=4)
    data = yaml.safe_load((dest / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(NEU_CLASSES)) and data["val"] == "images/val"
    for split, list_file in splits.items():
        stems = list_file.read_text().split()[:4]
        assert sorted(p.stem for p in (dest / "images" / split).iterdir()) == sorted(stems)
        for stem in stems:
            voc = parse_voc_xml(next(neu_dir.glob(f"*/{stem}.xml")))
            lines = (dest / "labels" / split / f"{stem}.txt").read_text().splitlines()
            assert len(lines) == len(voc.boxes)
            assert [NEU_CLASSES[int(line.split()[0])] for line in lines] == [b.cls for b in voc.boxes]
    copy = read_source(dest)
    assert copy.fmt == "yolo" and len(copy.images) == 12 and copy.has_split
    shutil.rmtree(dest)

"""The detection system's API: records appended whole by several processes, the model version filled in,
and (with the real NEU models) a new version noticed while the pipeline promotes it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.memory.detection_api import BadRecord, MemoryBankWriter
from toolkit.memory.memory_bank import read_memory_bank

REPO = Path(__file__).resolve().parent.parent


def _record(i: int, writer: int, n_dets: int = 3, pad: int = 0) -> dict:
    dets = [{"class": "scratches", "confidence": 0.5, "bbox": [k, k, k + 10, k + 10 + writer]} for k in range(n_dets)]
    record = {"timestamp": "2026-03-01T08:00:00Z", "image": f"w{writer}_{i:05d}.jpg", "detections": dets}
    if pad:
        record["note"] = "x" * pad  # unknown keys are kept by the writer and ignored by the reader
    return record


def test_writer_fills_the_version_checks_records_and_ends_a_torn_line(tmp_path):
    path = tmp_path / "memory-bank" / "detections.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"timestamp": "2026-03-01T08:00:00Z", "image": "cut.jpg", "detec')  # a crashed writer
    with MemoryBankWriter(path, model_version="1.1", source="line3") as bank:
        assert bank.append(_record(0, 0)) == 1
        assert bank.append([_record(1, 0), {**_record(2, 0), "model_version": "0.9"}], model_version="1.2") == 2
        with pytest.raises(BadRecord, match="confidence"):
            bank.append([_record(3, 0), {**_record(4, 0), "detections": [{"class": "x", "confidence": 2, "bbox": [1, 1, 2, 2]}]}])
        with pytest.raises(BadRecord, match="image"):
            bank.append({"timestamp": "2026-03-01T08:00:00Z", "detections": []})
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5  # the torn line, then 3 whole records; nothing of the bad batch
    bank = read_memory_bank(path)
    assert bank.records == 3 and bank.skipped == 1 and bank.malformed.items[0]["line"] == 1
    assert [bank.versions[v] for v in bank.version] == ["1.1", "1.2", "0.9"]
    assert json.loads(lines[1])["source"] == "line3"


APPENDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from toolkit.memory.detection_api import MemoryBankWriter
sys.path.insert(0, sys.argv[1] + "/tests")
from test_detection_api import _record
writer_id, n, target = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pace = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
with MemoryBankWriter(target, model_version=f"{writer_id}.0") as bank:
    for i in range(n):
        bank.append(_record(i, writer_id, pad=int(sys.argv[5])))
        time.sleep(pace)
"""


def _start_appenders(target: str, writers: int, n: int, pad: int, pace: float = 0.0) -> list[subprocess.Popen]:
    """``writers`` processes appending ``n`` records each; ``pace``: seconds each waits after an append."""
    return [subprocess.Popen([sys.executable, "-c", APPENDER, str(REPO), str(w), str(n), target, str(pad), str(pace)])
            for w in range(writers)]


def _check_complete(bank, writers: int, n: int) -> None:
    assert bank.records == writers * n and bank.skipped == 0
    assert len(set(bank.image)) == writers * n
    counts = bank.det_start[1:] - bank.det_start[:-1]
    assert set(counts.tolist()) == {3}  # no record split or merged with another's rows
    for r in range(bank.records):  # every record's detections are its own writer's
        writer = int(bank.image[r][1:bank.image[r].index("_")])
        boxes = bank.det_box[bank.det_start[r]:bank.det_start[r + 1]]
        assert (boxes[:, 3] - boxes[:, 1] == 10 + writer).all()
        assert bank.versions[bank.version[r]] == f"{writer}.0"


def test_several_processes_append_whole_lines_while_the_analyzer_reads(tmp_path):
    path = tmp_path / "detections.jsonl"
    writers, n = 4, 400
    # lines over 4 KiB (bigger than a pipe's atomic write); paced (about 3 s of writing each) so that the
    # analyzer reads several times while they write, even on a loaded machine (unpaced, the four were
    # once done before its second read: CI, 2026-12-06, two test processes at once)
    procs = _start_appenders(str(path), writers, n, pad=6000, pace=0.008)
    reads = 0
    while any(p.poll() is None for p in procs) or reads == 0:
        if path.exists():
            bank = read_memory_bank(path)
            reads += 1
            # a read may catch the line being written as an unterminated last line, never anything else
            for item in bank.malformed.items:
                assert "incomplete last line" in item["reason"]
            assert bank.skipped <= 1
        time.sleep(0.05)
    assert all(p.wait(60) == 0 for p in procs)
    assert reads > 1
    _check_complete(read_memory_bank(path), writers, n)
    assert all(json.loads(line) for line in path.read_text().splitlines())


@pytest.mark.skipif(os.name == "nt", reason="flock is POSIX; Windows writers share a lock file")
def test_a_writer_starting_while_another_is_mid_line_leaves_no_empty_or_torn_line(tmp_path):
    """Seen under load in CI: a writer that opened the log while another's long line was still being
    written took that line for a crashed writer's cut-off line and 'repaired' it with a newline.
    Here the other writer is held mid-line for a moment, with the writers' lock, as os.write is."""
    import fcntl

    path = tmp_path / "detections.jsonl"
    line = (json.dumps(_record(0, 7, pad=5000), separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, line[:2000])  # half of a line is on disk, the writer is still writing
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(REPO), "1", "1", str(path), "0"])
    time.sleep(1.0)  # the new writer opens the log now and looks at its last byte
    os.write(fd, line[2000:])
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    assert proc.wait(60) == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3  # two records, nothing between them
    assert [json.loads(x)["image"] for x in lines[:-1]] == [_record(0, 7)["image"], _record(0, 1)["image"]]


def test_several_processes_append_to_postgres_while_the_analyzer_reads(postgres, pg_password):
    url = postgres.url("api_appends")
    MemoryBankWriter(url).close()  # create the table once, as the detection system's installer would
    writers, n = 3, 150
    procs = _start_appenders(url, writers, n, pad=0)
    while any(p.poll() is None for p in procs):
        bank = read_memory_bank(url)
        assert bank.skipped == 0 and set((bank.det_start[1:] - bank.det_start[:-1]).tolist()) <= {3}
        time.sleep(0.1)
    assert all(p.wait(60) == 0 for p in procs)
    _check_complete(read_memory_bank(url), writers, n)


DETECTOR = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from toolkit.memory.detection_api import MemoryBankWriter, ProductionModel
root, images, stop = Path(sys.argv[2]), sorted(Path(sys.argv[3]).glob("*.jpg")), Path(sys.argv[4])
model = ProductionModel.load(root)
print(json.dumps({"event": "loaded", "version": model.version, "sha256": model.sha256}), flush=True)
appended = 0
with MemoryBankWriter.for_workspace(root) as bank:
    while not stop.exists():
        if model.changed():  # between two images, as a line would
            old = model.version
            model = model.reload()
            print(json.dumps({"event": "reloaded", "from": old, "version": model.version, "sha256": model.sha256,
                              "after": appended}), flush=True)
        appended += bank.append(model.detect(images[appended % len(images)], source="line3"))
print(json.dumps({"event": "stopped", "appended": appended}), flush=True)
"""


def _versions_in(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line).get("model_version") for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow  # real NEU models detect while a promotion runs: about 19 s
def test_detection_system_notices_a_promotion_while_appending(neu_dir, shared_models, tmp_path, capsys):
    """A detection process appends with the API while training_pipeline.py --candidate promotes v1.1."""
    import yaml

    import dataset_preparer
    import setup_training
    import training_pipeline
    from dataset_helpers import export_voc_as_yolo_splits
    from toolkit.core.layout import Workspace
    from toolkit.promotion.registry import Registry

    lists = {}
    for split, n in (("train", 6), ("val", 6), ("test", 24)):
        stems = (neu_dir / "splits" / f"{split}.txt").read_text().split()
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("\n".join(stems[::len(stems) // n][:n]))
    export = export_voc_as_yolo_splits(neu_dir, lists, tmp_path / "export")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "yolov8_model.pt").write_bytes((shared_models / "neu_v1.0_half.pt").read_bytes())
    setup_training.run(setup_training.SetupConfig(root=root))
    dataset_preparer.run(dataset_preparer.PrepareConfig(root=root, source=export, keep_split=True))
    ws = Workspace.at(root)
    Registry.load(ws).register_existing_production()  # production is v1.0, with its sidecar
    settings = yaml.safe_load(ws.training_yaml.read_text()) or {}
    # the gate is not under test here: a quick, permissive comparison on 24 images
    settings.setdefault("evaluation", {}).update({"imgsz": 320, "speed_images": 0})
    settings.setdefault("promotion", {}).update({"require_significance": False, "max_class_drop": 1.0, "min_gain": 0.0,
                                                 "max_recall_drop": 1.0})
    ws.training_yaml.write_text(yaml.safe_dump(settings))

    images = tmp_path / "line_images"
    images.mkdir()
    for stem in ("crazing_1", "inclusion_1", "patches_1", "scratches_1"):
        (images / f"{stem}.jpg").write_bytes((neu_dir / "IMAGES" / f"{stem}.jpg").read_bytes())
    stop = tmp_path / "stop"
    detector = subprocess.Popen([sys.executable, "-c", DETECTOR, str(REPO), str(root), str(images), str(stop)],
                                stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _versions_in(ws.detections).count("1.0") < 3:  # the line is running on v1.0
            assert detector.poll() is None and time.monotonic() < deadline, "the detection process did not start"
            time.sleep(0.2)
        assert training_pipeline.main(["--root", str(root), "--candidate", str(shared_models / "neu_v1.1_full.pt"),
                                       "--no-analyze", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["decision"] == "promoted" and result["production"]["version"] == "1.1", result
        deadline = time.monotonic() + 120
        while _versions_in(ws.detections).count("1.1") < 3:  # records carry the new version
            assert detector.poll() is None and time.monotonic() < deadline, "no record with the new version"
            time.sleep(0.2)
    finally:
        stop.touch()
        out, _ = detector.communicate(timeout=120)
    assert detector.returncode == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "loaded", "version": "1.0", "sha256": Registry.load(ws).entry("1.0")["sha256"]}
    reloads = [e for e in events if e["event"] == "reloaded"]
    assert reloads and reloads[-1]["version"] == "1.1"
    assert reloads[-1]["sha256"] == Registry.load(ws).entry("1.1")["sha256"] == result["production"]["sha256"]
    # no torn record; the version switches once, at the image where the process reloaded
    bank = read_memory_bank(ws.detections)
    lines = ws.detections.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert bank.skipped == 0 and bank.records == events[-1]["appended"] == len(lines) - 1
    versions = [bank.versions[v] for v in bank.version]
    switch = reloads[-1]["after"]
    assert set(versions[:switch]) == {"1.0"} and set(versions[switch:]) == {"1.1"}


def test_production_model_version_belongs_to_the_bytes_loaded(tiny_model, tmp_path):
    """A sidecar that names other bytes (a promotion half-way) is not believed; the registry is."""
    import hashlib

    import numpy as np

    from toolkit.memory.detection_api import ProductionModel

    root = tmp_path / "ws"
    root.mkdir()
    (root / "yolov8_model.pt").write_bytes(tiny_model.read_bytes())
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    (root / "yolov8_model.json").write_text(json.dumps({"version": "2.0", "sha256": "0" * 64}))
    model = ProductionModel.load(root, settle_s=0.5)
    assert model.sha256 == sha and model.version is None  # not "2.0": those are other bytes
    (root / "yolov8_model.json").write_text(json.dumps({"version": "2.1", "sha256": sha}))
    assert model.changed()
    model = model.reload()
    assert model.version == "2.1" and not model.changed()
    frame = np.full((48, 64, 3), 128, dtype=np.uint8)  # a decoded camera frame, not a file
    record = model.detect(frame, name="line3/frame_1.jpg", source="line3", conf=0.001)
    assert record["image"] == "line3/frame_1.jpg" and record["model_version"] == "2.1"
    assert record["image_width"] == frame.shape[1] and record["source"] == "line3"
    with pytest.raises(ValueError, match="name="):
        model.detect(frame)


def test_writer_to_a_sqlite_url_creates_the_table_and_reads_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}?table=detections"
    with MemoryBankWriter(url, model_version="1.0") as bank:
        assert bank.append([_record(i, 1) for i in range(5)]) == 5
    with MemoryBankWriter(url) as bank:  # the table exists now: appended to, not recreated
        bank.append(_record(5, 1), model_version="1.1")
    read = read_memory_bank(url)
    assert read.records == 6 and read.skipped == 0 and read.line.tolist() == [1, 4, 7, 10, 13, 16]
    assert [read.versions[v] for v in read.version] == ["1.0"] * 5 + ["1.1"]

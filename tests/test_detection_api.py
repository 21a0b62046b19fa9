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

from toolkit.detection_api import BadRecord, MemoryBankWriter
from toolkit.memory_bank import read_memory_bank

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
from toolkit.detection_api import MemoryBankWriter
sys.path.insert(0, sys.argv[1] + "/tests")
from test_detection_api import _record
writer_id, n, target = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with MemoryBankWriter(target, model_version=f"{writer_id}.0") as bank:
    for i in range(n):
        bank.append(_record(i, writer_id, pad=int(sys.argv[5])))
"""


def _start_appenders(target: str, writers: int, n: int, pad: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", APPENDER, str(REPO), str(w), str(n), target, str(pad)])
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
    procs = _start_appenders(str(path), writers, n, pad=6000)  # lines over 4 KiB: bigger than a pipe's atomic write
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

"""Memory-bank readers: malformed-record accounting, the four formats, filters."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from bank_helpers import iter_jsonl, write_csv, write_sqlite
from toolkit.memory.analysis import analyze_memory_bank
from toolkit.core.errors import UserError
from toolkit.memory.memory_bank import detect_format, read_memory_bank
from toolkit.memory.bank_table import MalformedLog, parse_date_bound
from toolkit.data.synthetic import write_batch, write_memory_bank


def _good(i: int, **extra) -> dict:
    record = {"timestamp": f"2026-03-0{1 + i % 5}T08:15:0{i % 10}Z", "image": f"img_{i}.jpg", "model_version": "1.0",
              "detections": [{"class": "scratches", "confidence": 0.5 + i / 100, "bbox": [10, 10, 40, 30 + i]}]}
    record.update(extra)
    return record


def test_malformed_lines_are_counted_exactly_with_their_line_numbers(tmp_path):
    lines = [
        json.dumps(_good(0)),                                                    # 1 ok
        '{"timestamp": "2026-03-01T08:00:00Z", "image": "a.jpg", "detections": [',  # 2 broken JSON
        json.dumps({"timestamp": "2026-03-01T08:00:00Z", "detections": []}),     # 3 missing image
        json.dumps(_good(3, detections=[{"class": "patches", "confidence": "high", "bbox": [1, 1, 5, 5]}])),  # 4 type
        json.dumps(_good(4, detections=[{"class": "patches", "confidence": 1.5, "bbox": [1, 1, 5, 5]}])),     # 5 conf
        json.dumps(_good(5, detections=[{"class": "patches", "confidence": 0.5, "bbox": [9, 1, 5, 5]}])),     # 6 bbox
        json.dumps(_good(6, timestamp="yesterday")),                             # 7 bad timestamp
        "",                                                                      # 8 blank: ignored
        json.dumps(_good(8)),                                                    # 9 ok
        json.dumps(_good(9, detections={"class": "x"})),                         # 10 detections not a list
        json.dumps([1, 2, 3]),                                                   # 11 not an object
        json.dumps(_good(11, detections=[{"class": "patches", "confidence": 0.9, "bbox": [1, 1, 5, 5]},
                                         {"class": "crazing", "confidence": 0.4}])),  # 12 second detection bad
        json.dumps(_good(12, image_width="wide")),                               # 13 wrong optional type
        json.dumps(_good(13, review={"labels": [{"class": "patches", "bbox": [1, 2]}]})),  # 14 bad review bbox
        json.dumps(_good(14)),                                                   # 15 ok
    ]
    path = tmp_path / "detections.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bank = read_memory_bank(path)
    assert bank.records == 3
    assert bank.skipped == 11
    got = {m["line"]: m["reason"] for m in bank.malformed.items}
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14]
    assert "broken JSON" in got[2]
    assert "missing required field 'image'" in got[3]
    assert "confidence" in got[4] and "high" in got[4]
    assert "confidence" in got[5] and "1.5" in got[5]
    assert "bbox" in got[6]
    assert "timestamp" in got[7]
    assert "detections must be a list" in got[10]
    assert "JSON object" in got[11]
    assert "detections[1]" in got[12] and "bbox" in got[12]
    assert "image_width" in got[13]
    assert "review.labels[0]" in got[14]
    # the bad record 12 left nothing behind: 3 good records, one detection each
    assert bank.line.tolist() == [1, 9, 15]
    assert len(bank.det_cls) == 3 and bank.det_start.tolist() == [0, 1, 2, 3]
    assert bank.classes == ["scratches"]


def test_malformed_list_is_capped_but_the_count_stays_exact():
    log = MalformedLog(cap=5)
    for i in range(12):
        log.add(i + 1, "bad")
    assert log.count == 12 and len(log.items) == 5


def test_json_array_reads_the_same_records_and_reports_a_broken_tail(tmp_path):
    records = [_good(i) for i in range(6)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    array_path = tmp_path / "a.json"
    array_path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    a, b = read_memory_bank(jsonl), read_memory_bank(array_path)
    assert b.fmt == "json" and b.records == a.records == 6 and b.skipped == 0
    assert b.line.tolist() == [2, 3, 4, 5, 6, 7]
    assert np.array_equal(a.det_box, b.det_box) and a.image == b.image
    # a small buffer forces records to straddle chunk boundaries (the JSONL reader reads in chunks;
    # the JSON array is read whole)
    from toolkit.memory.bank_table import Parts
    from toolkit.memory.memory_bank import _read_jsonl

    parts = Parts(None, None, None)
    _read_jsonl(jsonl, parts, chunk_bytes=50)
    small = parts.build(jsonl, "jsonl")
    assert small.records == 6 and small.malformed.count == 0 and small.image == a.image
    assert np.array_equal(small.det_box, a.det_box) and small.line.tolist() == a.line.tolist()
    broken = tmp_path / "broken.json"
    broken.write_text("[\n" + json.dumps(records[0]) + ",\n" + json.dumps(records[1])[:-9] + "\n")
    bank = read_memory_bank(broken)
    assert bank.records == 1 and bank.skipped == 1 and bank.malformed.items[0]["line"] == 3


def test_csv_and_sqlite_give_the_same_analysis_as_jsonl(tmp_path):
    batch = write_batch(tmp_path / "src", n_images=60, size=96, seed=5, background_every=7)
    jsonl = tmp_path / "detections.jsonl"
    write_memory_bank(jsonl, batch, seed=5)
    csv_path, db_path = tmp_path / "detections.csv", tmp_path / "detections.db"
    write_csv(iter_jsonl(jsonl), csv_path)
    write_sqlite(iter_jsonl(jsonl), db_path)
    banks = {fmt: read_memory_bank(p) for fmt, p in (("jsonl", jsonl), ("csv", csv_path), ("sqlite", db_path))}
    assert [b.fmt for b in banks.values()] == ["jsonl", "csv", "sqlite"]
    results = {}
    for fmt, bank in banks.items():
        assert bank.records == 60 and bank.skipped == 0
        analysis = analyze_memory_bank(bank, (0.25, 0.6), 0.5)
        results[fmt] = json.dumps({"classes": analysis.classes, "priorities": analysis.priorities,
                                   "reviewed": analysis.reviewed_images}, sort_keys=True)
    assert banks["jsonl"].reviews and len(banks["jsonl"].reviews) == len(banks["csv"].reviews)
    assert results["csv"] == results["jsonl"]
    assert results["sqlite"] == results["jsonl"]


def test_csv_with_only_the_design_columns_and_a_bad_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "timestamp,image,model_version,class,confidence,x1,y1,x2,y2\n"
        "2026-03-01T08:00:00Z,a.jpg,1.0,scratches,0.9,1,2,30,40\n"
        "2026-03-01T08:00:00Z,a.jpg,1.0,patches,0.4,5,5,20,20\n"
        "2026-03-01T08:01:00Z,b.jpg,1.0,,,,,,\n"             # an image with no detection
        "2026-03-01T08:02:00Z,c.jpg,1.0,patches,lots,5,5,20,20\n"  # line 5: bad confidence
        "2026-03-01T08:03:00Z,d.jpg,1.1,crazing,0.3,5,5,20,20\n")
    bank = read_memory_bank(path)
    assert bank.records == 3 and bank.skipped == 1
    assert bank.malformed.items[0]["line"] == 5 and "confidence" in bank.malformed.items[0]["reason"]
    assert bank.det_start.tolist() == [0, 2, 2, 3]
    assert bank.versions == ["1.0", "1.1"]


def test_sqlite_single_table_written_by_another_tool(tmp_path):
    path = tmp_path / "bank.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE detections (timestamp TEXT, image TEXT, model_version TEXT, class TEXT, "
                "confidence REAL, x1 REAL, y1 REAL, x2 REAL, y2 REAL)")
    con.executemany("INSERT INTO detections VALUES (?,?,?,?,?,?,?,?,?)", [
        ("2026-03-01T08:00:00Z", "a.jpg", "1.0", "scratches", 0.9, 1, 2, 30, 40),
        ("2026-03-01T08:01:00Z", "b.jpg", "1.0", None, None, None, None, None, None),
        ("2026-03-01T08:02:00Z", "c.jpg", "1.0", "patches", 0.4, 50, 5, 20, 20),   # rowid 3: x2 < x1
    ])
    con.commit()
    con.close()
    before = path.read_bytes()
    bank = read_memory_bank(path)
    assert bank.fmt == "sqlite" and bank.records == 2 and bank.skipped == 1
    assert bank.malformed.items[0]["line"] == 3 and "bbox" in bank.malformed.items[0]["reason"]
    assert path.read_bytes() == before  # opened read-only


def test_filters_since_until_and_model_version(tmp_path):
    path = tmp_path / "d.jsonl"
    records = [_good(i, timestamp=f"2026-03-{1 + i:02d}T12:00:00Z", model_version="1.0" if i < 6 else "1.1")
               for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    bank = read_memory_bank(path, since=parse_date_bound("2026-03-03"), until=parse_date_bound("2026-03-05", end=True))
    assert [r for r in bank.image] == ["img_2.jpg", "img_3.jpg", "img_4.jpg"] and bank.filtered_out == 7
    bank = read_memory_bank(path, model_version="1.1")
    assert bank.records == 4 and bank.versions == ["1.1"]
    with pytest.raises(UserError, match="not a date"):
        parse_date_bound("March 3rd")


def test_format_detection_and_missing_file(tmp_path):
    (tmp_path / "x.log").write_text('{"a": 1}\n')
    (tmp_path / "y.dat").write_text("[\n]")
    assert detect_format(tmp_path / "x.log") == "jsonl"
    assert detect_format(tmp_path / "y.dat") == "json"
    with pytest.raises(UserError, match="memory bank not found"):
        read_memory_bank(tmp_path / "nope.jsonl")


def test_csv_field_over_the_csv_limit_is_one_malformed_record(tmp_path):
    import csv

    path = tmp_path / "log.csv"
    huge = "x" * (csv.field_size_limit() + 10)
    path.write_text(
        "timestamp,image,model_version,class,confidence,x1,y1,x2,y2\n"
        "2026-03-01T08:00:00Z,a.jpg,1.0,scratches,0.9,1,2,30,40\n"
        f"2026-03-01T08:01:00Z,{huge},1.0,patches,0.4,5,5,20,20\n"          # line 3: a field over the limit
        "2026-03-01T08:02:00Z,c.jpg,1.0,patches,0.5,5,5,20,20\n")
    bank = read_memory_bank(path)
    assert bank.records == 2 and bank.image == ["a.jpg", "c.jpg"]
    assert bank.skipped == 1 and bank.malformed.items[0]["line"] == 3
    assert "field larger than field limit" in bank.malformed.items[0]["reason"]


def test_huge_fields_are_malformed_records_with_their_line(tmp_path):
    """Issue 19 item 5: a class name over 200 characters or an image path over 4096 is a malformed
    record (reported with its line), in every format; nothing of it reaches the analysis."""
    from toolkit.memory.bank_table import MAX_CLASS_CHARS, MAX_IMAGE_CHARS

    long_class = "c" * (MAX_CLASS_CHARS + 1)
    records = [_good(0), _good(1, detections=[{"class": long_class, "confidence": 0.5, "bbox": [1, 1, 5, 5]}]),
               _good(2, image="d/" + "i" * MAX_IMAGE_CHARS), _good(3, review={"labels": [{"class": long_class,
                                                                                          "bbox": [1, 1, 5, 5]}]}),
               _good(4, detections=[{"class": "x" * MAX_CLASS_CHARS, "confidence": 0.5, "bbox": [1, 1, 5, 5]}])]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    csv_path = tmp_path / "d.csv"
    write_csv(records, csv_path)
    for path, lines in ((jsonl, [2, 3, 4]), (csv_path, [3, 4, 5])):  # CSV: line 1 header, a record from its first row
        bank = read_memory_bank(path)
        assert bank.records == 2 and bank.skipped == 3, path
        assert [m["line"] for m in bank.malformed.items] == lines
        reasons = [m["reason"] for m in bank.malformed.items]
        assert all("field larger than field limit" in r for r in reasons) and all(len(r) < 200 for r in reasons)
        assert "class name" in reasons[0] and "image path" in reasons[1] and "review.labels[0]" in reasons[2] \
            or path == csv_path
        assert bank.classes == ["scratches", "x" * MAX_CLASS_CHARS]  # 200 characters are still a name


def test_one_huge_row_does_not_reach_the_report(tmp_path):
    """A 1 MB class name and a 5 MB image path (issue 19: no result after 180 s, a 4.2 MB report,
    chart processes of 7 GB) are two malformed lines; the report stays small."""
    import training_analyzer

    root = tmp_path / "ws"
    (root / "memory-bank").mkdir(parents=True)
    records = [_good(i) for i in range(30)]
    records[7]["detections"][0]["class"] = "n" * 1_000_000
    records[9]["image"] = "p" * 5_000_000
    (root / "memory-bank" / "detections.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root))
    assert result.records == 28 and [m["line"] for m in result.malformed] == [8, 10]
    assert list(result.classes) == ["scratches"]
    assert result.report.stat().st_size < 200_000
    assert result.report.with_suffix(".md").stat().st_size < 50_000


def test_parquet_and_csv_read_like_jsonl(tmp_path):
    batch = write_batch(tmp_path / "src", n_images=40, size=96, seed=8, background_every=5)
    jsonl = tmp_path / "detections.jsonl"
    write_memory_bank(jsonl, batch, seed=8)
    from toolkit.memory.bank_table import record_rows

    import pandas as pd

    rows = [row for record in iter_jsonl(jsonl) for row in record_rows(record)]
    parquet = tmp_path / "detections.parquet"
    frame = pd.DataFrame(rows).replace("", None)
    for c in ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height"):
        frame[c] = pd.to_numeric(frame[c])
    frame.to_parquet(parquet)
    a, b = read_memory_bank(jsonl), read_memory_bank(parquet)
    assert b.fmt == "parquet" and detect_format(parquet) == "parquet"
    assert b.records == a.records == 40 and b.skipped == 0 and b.image == a.image
    assert np.array_equal(a.det_box, b.det_box) and a.reviews == b.reviews and a.classes == b.classes


def test_the_memory_bank_modules_import_in_one_direction():
    """reading (memory_bank, memory_bank_sql) -> the table (bank_table); analysis and the detection
    system's side import downwards only: no module imports one that imports it back."""
    import ast
    from pathlib import Path

    toolkit = Path(__file__).resolve().parent.parent / "toolkit" / "memory"
    mods = ["bank_table", "bank_rows", "memory_bank", "memory_bank_sql", "analysis", "detection_api", "priorities"]
    imports = {}
    for mod in mods:
        tree = ast.parse((toolkit / f"{mod}.py").read_text(encoding="utf-8"))
        imports[mod] = {n.module.split(".")[-1] for n in ast.walk(tree)
                        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("toolkit.memory.")}

    def reaches(a, b, seen=()):
        return any(x == b or (x in imports and x not in seen and reaches(x, b, seen + (x,))) for x in imports[a])

    circles = [m for m in mods if reaches(m, m)]
    assert circles == []
    assert imports["bank_table"] & set(mods) == set()

"""Issue 25 ("Trust, round four"): what a live line and a hostile file still broke, one test each.

Each test failed on the code before its fix (the closing note of issue 25 names them). More of
round four: tests/test_trust_round4_data.py (lots, group_by, history), tests/test_trust_round4_models.py
(production archives, the safe loader).
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _record(i: int, ts: str = "2026-03-02T08:00:00Z", n_dets: int = 1, **extra) -> dict:
    dets = [{"class": f"c{k % 3}", "confidence": 0.5, "bbox": [1, 2, 30, 40]} for k in range(n_dets)]
    return {"timestamp": ts, "image": f"img_{i:04d}.jpg", "model_version": "1.0", "detections": dets, **extra}


def _write(records: list[dict], path: Path, fmt: str) -> Path:
    """The records in one format; returns the file (the line of record k: jsonl k+1; tables: its first row)."""
    from bank_helpers import write_csv, write_sqlite

    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "csv":
        write_csv(records, path)
    elif fmt == "sqlite":
        write_sqlite(records, path)
    else:
        import pandas as pd

        from toolkit.memory.bank_table import ALL_COLUMNS, record_rows

        rows = [row for r in records for row in record_rows(r)]
        frame = pd.DataFrame([{c: (None if row.get(c, "") == "" else row.get(c)) for c in ALL_COLUMNS} for row in rows])
        for c in ("confidence", "x1", "y1", "x2", "y2"):
            frame[c] = pd.to_numeric(frame[c])
        frame.to_parquet(path)
    return path


SUFFIX = {"jsonl": "jsonl", "csv": "csv", "sqlite": "db", "parquet": "parquet"}


# --- break 1: a timestamp out of the representable range -------------------------------------------

OUT_OF_RANGE = ["0001-01-01T00:00:00+05:00", "0000-01-01T00:00:00", "9999-12-31T23:59:59-05:00"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "sqlite"])
def test_an_out_of_range_timestamp_is_a_malformed_record_with_its_line(tmp_path, fmt):
    """Year 1 with +05:00 (year 0 in UTC), year 0, year 10000 in UTC: malformed with their line in every
    format and in both readers (whole and chunked); the edges themselves (year 1 and 9999 in UTC) are kept."""
    from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank

    records = [_record(0), _record(1, OUT_OF_RANGE[0]), _record(2, "0001-01-01T00:00:00Z"), _record(3, OUT_OF_RANGE[1]),
               _record(4, "9999-12-31T23:59:59Z"), _record(5, OUT_OF_RANGE[2])]
    path = _write(records, tmp_path / f"bank.{SUFFIX[fmt]}", fmt)
    bank = read_memory_bank(path)
    lines = [item["line"] for item in bank.malformed.items]
    assert bank.records == 3 and len(lines) == 3, bank.malformed.items
    if fmt == "jsonl":
        assert lines == [2, 4, 6]
    assert all("out of range" in item["reason"] for item in bank.malformed.items), bank.malformed.items
    agg = aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_rows=2)
    assert agg.records == 3 and agg.malformed.count == 3


def test_the_analyzer_and_the_writer_take_an_out_of_range_timestamp_as_malformed(tmp_path, capsys):
    """The whole analyzer: exit 0, the bad records counted with their lines; the writer refuses the record."""
    import training_analyzer
    from toolkit.memory.bank_table import BadRecord
    from toolkit.memory.detection_api import MemoryBankWriter

    path = _write([_record(0), _record(1, OUT_OF_RANGE[0]), _record(2, OUT_OF_RANGE[1]), _record(3, "0001-01-01T00:00:00Z"),
                   _record(4, "9999-12-31T23:59:59Z")], tmp_path / "bank.jsonl", "jsonl")
    root = tmp_path / "ws"
    root.mkdir()
    assert training_analyzer.main(["--root", str(root), "--memory-bank", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"] == 3 and result["skipped_records"] == 2
    out = tmp_path / "out.jsonl"
    with MemoryBankWriter(out) as writer:
        for ts in OUT_OF_RANGE:
            with pytest.raises(BadRecord, match="out of range"):
                writer.append(_record(9, ts))
        writer.append(_record(9))
    assert len(out.read_text().splitlines()) == 1


# --- break 10: detections per record ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "sqlite"])
def test_a_record_over_the_detections_cap_is_malformed_in_every_format(tmp_path, fmt):
    """10,001 detections in one record: malformed with its line (whole and chunked reading); 10,000 pass."""
    from toolkit.memory.bank_table import MAX_DETECTIONS
    from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank

    records = [_record(0), _record(1, n_dets=MAX_DETECTIONS + 1), _record(2, n_dets=MAX_DETECTIONS), _record(3)]
    path = _write(records, tmp_path / f"bank.{SUFFIX[fmt]}", fmt)
    bank = read_memory_bank(path)
    assert bank.records == 3 and bank.malformed.count == 1, bank.malformed.items
    item = bank.malformed.items[0]
    assert item["line"] == {"jsonl": 2, "csv": 3, "parquet": 2, "sqlite": 2}[fmt] and "limit" in item["reason"]
    agg = aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_rows=700)
    assert agg.records == 3 and agg.malformed.count == 1


def test_one_parquet_record_of_a_million_detections_is_dropped_as_it_is_read(tmp_path):
    """A small Parquet file (one record of 10^6 identical rows) read chunk by chunk: the record is malformed
    at its first row, the records around it are kept, and the reader never holds the record's rows
    (the carried rows stay under the cap)."""
    import pandas as pd

    from toolkit.memory import bank_rows
    from toolkit.memory.memory_bank import aggregate_memory_bank

    n = 1_000_000
    base = {"timestamp": "2026-03-02T08:00:00Z", "model_version": "1.0", "class": "c0", "confidence": 0.5,
            "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}
    frame = pd.DataFrame([{**base, "image": "a.jpg"}] + [{**base, "image": "huge.jpg"}] * n + [{**base, "image": "b.jpg"}])
    path = tmp_path / "hostile.parquet"
    frame.to_parquet(path)
    assert path.stat().st_size < 1_000_000
    seen = []
    real = bank_rows.records_from_rows

    def spy(df, parts):
        seen.append(len(df))
        return real(df, parts)

    bank_rows.records_from_rows = spy
    try:
        agg = aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_rows=50_000)
    finally:
        bank_rows.records_from_rows = real
    assert agg.records == 2 and agg.malformed.count == 1 and agg.malformed.items[0]["line"] == 2
    assert max(seen) < 50_000 + bank_rows.MAX_RECORD_ROWS


def test_the_writer_refuses_too_many_detections_and_a_huge_line_is_skipped_unread(tmp_path, monkeypatch):
    from toolkit.memory import memory_bank
    from toolkit.memory.bank_table import MAX_DETECTIONS, BadRecord
    from toolkit.memory.detection_api import MemoryBankWriter

    path = tmp_path / "bank.jsonl"
    with MemoryBankWriter(path) as writer:
        with pytest.raises(BadRecord, match="limit"):
            writer.append(_record(1, n_dets=MAX_DETECTIONS + 1))
        writer.append(_record(0))
    with open(path, "a") as fh:   # a line of 300 KB under a cap of 64 KB, then a good one
        fh.write(json.dumps(_record(1, n_dets=4000)) + "\n" + json.dumps(_record(2)) + "\n")
        fh.write(json.dumps(_record(3, n_dets=4000)))       # and unterminated at the end
    monkeypatch.setattr(memory_bank, "MAX_LINE_BYTES", 1 << 16)
    bank = memory_bank.read_memory_bank(path)
    agg = memory_bank.aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_bytes=1 << 14)
    for got in (bank.malformed, agg.malformed):
        assert [item["line"] for item in got.items] == [2, 4] and "bytes" in got.items[0]["reason"]
    assert bank.records == agg.records == 2


# --- break 3: one snapshot for the check and every aggregation query ------------------------------

def _insert_after_the_check(monkeypatch, insert) -> list[str]:
    """Run ``insert()`` (another connection: a live line) right after the aggregation's check queries."""
    from sqlalchemy import event

    from toolkit.memory import bank_sql_aggregate

    real, done = bank_sql_aggregate.create_engine_for, []

    def engine_for(loc):
        engine = real(loc)

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn, cursor, statement, parameters, context, executemany):
            if "SELECT DISTINCT substr(ts, 1, 10)" in statement and not done:
                insert()
                done.append(statement)
        return engine

    monkeypatch.setattr(bank_sql_aggregate, "create_engine_for", engine_for)
    return done


LIVE = [_record(100 + i, "2026-03-02T09:00:00Z") for i in range(5)]
POISON = {"timestamp": "2026-03-02T09:30:00Z", "image": "poison.jpg", "model_version": "1.0",
          "detections": [{"class": "c0", "confidence": 7.5, "bbox": [1, 2, 3, 4]}]}


def _check_one_snapshot(url: str, done: list) -> None:
    from toolkit.memory.bank_sql_aggregate import aggregate_in_database

    agg = aggregate_in_database(url, (0.25, 0.6), 0.5)
    assert done, "the hook never ran"
    assert agg is not None and agg.records == 10, agg.records   # the 10 records of the snapshot, none of the 6 new
    assert agg.c["conf"].sum() == pytest.approx(0.5 * 10)      # the poisoned 7.5 was never counted
    again = aggregate_in_database(url, (0.25, 0.6), 0.5)         # the next run sees the poison: row-by-row path
    assert again is None


def test_postgres_aggregation_reads_one_snapshot_while_a_line_inserts(postgres, pg_password, monkeypatch):
    from bank_helpers import write_pg_table

    with postgres.admin("inspection") as con:
        con.execute("DROP TABLE IF EXISTS live_snapshot")
        write_pg_table(con, "live_snapshot", [_record(i) for i in range(10)])

    def insert():
        with postgres.admin("inspection") as con:
            from bank_helpers import ALL_COLUMNS, record_rows

            columns = ",".join(f'"{c}"' for c in ALL_COLUMNS)
            for record in LIVE + [POISON]:
                for row in record_rows(record):
                    con.execute(f"INSERT INTO live_snapshot ({columns}) VALUES ({','.join(['%s'] * len(ALL_COLUMNS))})",
                                tuple(None if row[c] == "" else row[c] for c in ALL_COLUMNS))

    done = _insert_after_the_check(monkeypatch, insert)
    _check_one_snapshot(postgres.url("live_snapshot"), done)


def test_sqlite_aggregation_reads_one_snapshot_while_a_line_inserts(tmp_path, monkeypatch):
    from bank_helpers import write_sqlite

    path = tmp_path / "bank.db"
    write_sqlite([_record(i) for i in range(10)], path)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode=WAL")   # a live line's database: readers and one writer at once
    done = _insert_after_the_check(monkeypatch, lambda: write_sqlite(LIVE + [POISON], path))
    _check_one_snapshot(f"sqlite:///{path}", done)


# --- break 4: a URL's password on every error path ---------------------------------------------------

SECRET = "Sekr3t@x/9"
HOSTILE_URLS = [f"postgresql://inspector:{SECRET}@127.0.0.1:5543x/inspection?table=detections",   # malformed port
                f"postgersql://inspector:{SECRET}@127.0.0.1/inspection?table=detections",         # scheme typo
                f"postgresql:/inspector:{SECRET}@127.0.0.1/inspection"]                           # one slash


def test_url_password_is_masked_in_every_form_of_the_url():
    from toolkit.core.redact import mask_url

    assert mask_url(HOSTILE_URLS[0]) == "postgresql://inspector:***@127.0.0.1:5543x/inspection?table=detections"
    assert mask_url(f"not found: /ws/{HOSTILE_URLS[2].replace('//', '/')} (x)") == \
        "not found: /ws/postgresql:/inspector:***@127.0.0.1/inspection (x)"
    assert mask_url(str([HOSTILE_URLS[0]])) == "['postgresql://inspector:***@127.0.0.1:5543x/inspection?table=detections']"
    assert mask_url("C:/Users/qa:1@x/bank.jsonl") == "C:/Users/qa:1@x/bank.jsonl"   # a Windows path is no URL


def _texts(root: Path, *more: str) -> list[str]:
    return list(more) + [p.read_text(errors="replace") for p in (root / "training").rglob("*")
                         if p.is_file() and p.name != "training.yaml"] + \
        [p.read_text(errors="replace") for p in (root / "memory-bank").glob("*.jsonl")]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_malformed_url_never_shows_its_password(tmp_path, capsys, caplog, url):
    """The analyzer with --memory-bank, and the pipeline with the URL in training.yaml: one error line,
    the password nowhere (stdout, stderr, logs, training/logs, history, reports)."""
    import setup_training
    import training_analyzer
    import training_pipeline

    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=("a", "b")))
    capsys.readouterr()
    assert training_analyzer.main(["--root", str(root), "--memory-bank", url]) == 1
    yaml_path = root / "training" / "configs" / "training.yaml"
    yaml_path.write_text(yaml_path.read_text().replace('  url: ""', f"  url: {json.dumps(url)}", 1))
    assert training_pipeline.main(["--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "error:" in out.err
    for text in _texts(root, out.out, out.err, caplog.text):
        assert "Sekr3t" not in text and "x/9" not in text


def test_a_list_typed_url_in_training_yaml_never_shows_its_password(tmp_path, capsys, caplog):
    import setup_training
    import training_analyzer
    import training_pipeline

    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=("a", "b")))
    yaml_path = root / "training" / "configs" / "training.yaml"
    yaml_path.write_text(yaml_path.read_text().replace('  url: ""', f"  url: [{json.dumps(HOSTILE_URLS[0])}]", 1))
    capsys.readouterr()
    assert training_analyzer.main(["--root", str(root)]) == 1
    assert training_pipeline.main(["--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "memory_bank.url" in out.err and "inspector:***@" in out.err
    for text in _texts(root, out.out, out.err, caplog.text):
        assert "Sekr3t" not in text and "x/9" not in text


def test_the_writer_refuses_a_url_with_a_scheme_typo_and_makes_no_folder(tmp_path, monkeypatch):
    from toolkit.core.errors import UserError
    from toolkit.memory.detection_api import MemoryBankWriter

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        MemoryBankWriter(HOSTILE_URLS[1])
    assert "Sekr3t" not in str(caught.value) and not any(tmp_path.iterdir())


# --- break 7: thousands of class names -------------------------------------------------------------

def _many_classes(path: Path, n_classes: int, n_records: int) -> Path:
    import random

    rng = random.Random(1)
    with open(path, "w") as fh:
        for i in range(n_records):
            cls = f"scratch_{i % n_classes}"
            fh.write(json.dumps({"timestamp": f"2026-03-{1 + i % 20:02d}T08:00:00Z", "image": f"im{i}.jpg",
                                 "detections": [{"class": cls, "confidence": rng.random(), "bbox": [1, 2, 30, 40]}],
                                 **({"review": {"labels": [{"class": cls, "bbox": [1, 2, 30, 40]}]}} if i % 4 == 0
                                    else {})}) + "\n")
    return path


def test_charts_and_tables_of_three_thousand_classes_are_capped(tmp_path, capsys):
    """3,000 class names (a logger appending an id): charts show the largest classes plus one 'others'
    entry whose figures are the rest summed; the markdown tables likewise; the JSON keeps every class."""
    import training_analyzer
    from toolkit.memory.analysis import analyze_aggregate
    from toolkit.memory import analysis_charts
    from toolkit.memory.analysis_charts import charted_classes, draw_charts
    from toolkit.memory.memory_bank import aggregate_memory_bank

    path = _many_classes(tmp_path / "bank.jsonl", 3000, 6000)
    analysis = analyze_aggregate(aggregate_memory_bank(path, (0.25, 0.6), 0.5))
    names = charted_classes(analysis)
    assert len(names) <= 20 and names[-1].startswith("others (2989")
    others = analysis_charts.class_stats(analysis, names[-1])
    assert others["detections"] + sum(analysis.classes[n]["detections"] for n in names[:-1]) == 6000
    assert sum(others["confidence_histogram"]["counts"]) == others["detections"]
    assert others["reviewed"]["tp"] + sum(analysis.classes[n]["reviewed"]["tp"] for n in names[:-1]) == 1500
    assert len(draw_charts(analysis, tmp_path / "charts.json")) == 3
    root = tmp_path / "ws"
    root.mkdir()
    assert training_analyzer.main(["--root", str(root), "--memory-bank", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["classes"]) == 3000
    report = Path(result["report"]).with_suffix(".md").read_text()
    assert report.count("| scratch_") <= 2 * training_analyzer.MAX_TABLE_CLASSES and "others (2950 classes" in report


# --- minor items ----------------------------------------------------------------------------------

def test_a_writer_never_glues_its_record_onto_a_line_torn_while_it_was_open(tmp_path):
    """Another process dies mid-line after our writer opened the file: our next record starts a new line."""
    from toolkit.memory.detection_api import MemoryBankWriter
    from toolkit.memory.memory_bank import read_memory_bank

    path = tmp_path / "bank.jsonl"
    with MemoryBankWriter(path) as writer:
        writer.append(_record(0))
        with open(path, "ab") as other:          # a foreign writer, killed mid-line
            other.write(json.dumps(_record(1)).encode()[:25])
        writer.append(_record(2))
        writer.append(_record(3))
    bank = read_memory_bank(path)
    assert bank.records == 3 and [m["line"] for m in bank.malformed.items] == [2]
    assert [Path(i).name for i in bank.image] == ["img_0000.jpg", "img_0002.jpg", "img_0003.jpg"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc to find the helper")
def test_a_killed_analyzer_leaves_no_chart_helper(tmp_path):
    """SIGKILL the analyzer while it reads: its chart helper (forked at the start) dies with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "bank.jsonl"
    line = json.dumps(_record(0)) + "\n"
    path.write_text(line * 400_000)
    root = tmp_path / "ws"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "training_analyzer.py"), "--root", str(root),
                             "--memory-bank", str(path)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline and proc.poll() is None:
        try:
            children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        except OSError:
            pass
        time.sleep(0.05)
    assert children, "no chart helper seen"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(c) for c in children):
        time.sleep(0.1)
    left = [c for c in children if alive(c)]
    for c in left:   # do not leave it to the next test
        os.kill(c, signal.SIGKILL)
    assert not left


def test_a_duplicate_csv_column_and_a_hostile_parquet_schema_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolkit.core.errors import UserError
    from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank

    dup = tmp_path / "dup.csv"
    dup.write_text("timestamp,image,model_version,class,confidence,confidence,x1,y1,x2,y2\n"
                   "2026-03-01T00:00:00Z,a.jpg,1,c,0.5,0.9,1,2,3,4\n")
    hostile = tmp_path / "hostile.parquet"
    pq.write_table(pa.table({"timestamp": [[1, 2]], "image": ["a.jpg"], "class": [{"x": 1}], "confidence": [0.5],
                             "x1": [1.0], "y1": [1.0], "x2": [2.0], "y2": [2.0]}), hostile)
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"timestamp": ["2026-03-01T00:00:00Z"], "image": ["a.jpg"], "class": [{"x": 1}],
                             "confidence": [0.5], "x1": [1.0], "y1": [1.0], "x2": [2.0], "y2": [2.0]}), nested)
    for path, words in ((dup, "confidence twice"), (hostile, "column 'timestamp'"), (nested, "column 'class'")):
        for read in (lambda p: read_memory_bank(p), lambda p: aggregate_memory_bank(p, (0.25, 0.6), 0.5)):
            with pytest.raises(UserError, match=words):
                read(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "sqlite"])
def test_a_nul_in_an_image_path_is_a_malformed_record(tmp_path, fmt):
    from toolkit.core.errors import UserError
    from toolkit.memory.bank_table import BadRecord
    from toolkit.memory.detection_api import MemoryBankWriter
    from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank

    bad = dict(_record(1), image="line3/img\x00.jpg")
    path = _write([_record(0), bad, _record(2)], tmp_path / f"bank.{SUFFIX[fmt]}", fmt)
    bank = read_memory_bank(path)
    assert bank.records == 2 and bank.malformed.count == 1 and "NUL" in bank.malformed.items[0]["reason"]
    assert aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_rows=2).records == 2
    if fmt == "sqlite":  # the database's own GROUP BY path sends it to the row-by-row check too
        from toolkit.memory.bank_sql_aggregate import aggregate_in_database

        assert aggregate_in_database(f"sqlite:///{path}", (0.25, 0.6), 0.5) is None
    with MemoryBankWriter(tmp_path / "out.jsonl") as writer, pytest.raises((BadRecord, UserError), match="NUL"):
        writer.append(bad)


def test_a_view_without_order_counts_each_record_once(postgres, pg_password):
    """A VIEW has no key: its rows come in the server's order, where a record's rows may be apart (here sorted
    by class) and were counted as two records. Read ordered by timestamp, image and version: once each."""
    from bank_helpers import write_pg_table
    from toolkit.memory.memory_bank import aggregate_memory_bank, read_memory_bank

    records = [_record(i, n_dets=3) for i in range(6)]
    with postgres.admin("inspection") as con:
        con.execute("DROP VIEW IF EXISTS by_class")
        con.execute("DROP TABLE IF EXISTS view_base")
        write_pg_table(con, "view_base", records)
        con.execute("CREATE VIEW by_class AS SELECT * FROM view_base ORDER BY class, id")
    table = read_memory_bank(postgres.url("view_base"))
    for bank in (read_memory_bank(postgres.url("by_class")),
                 aggregate_memory_bank(postgres.url("by_class"), (0.25, 0.6), 0.5, chunk_rows=4)):
        assert bank.records == table.records == 6 and bank.skipped == 0


def test_since_and_until_at_the_edges_of_the_range(tmp_path, capsys):
    """--since 0001-01-01 / --until 9999-12-31 read everything (a file, SQLite by URL: its WHERE clause's
    margin of a day stays within the range); a bound out of range is one line."""
    import training_analyzer
    from toolkit.core.errors import UserError
    from toolkit.memory.bank_table import parse_date_bound

    records = [_record(0), _record(1, "0001-01-01T00:00:00Z"), _record(2, "9999-12-31T23:59:59Z")]
    jsonl = _write(records, tmp_path / "bank.jsonl", "jsonl")
    db = _write(records, tmp_path / "bank.db", "sqlite")
    root = tmp_path / "ws"
    root.mkdir()
    for bank in (str(jsonl), f"sqlite:///{db}"):
        assert training_analyzer.main(["--root", str(root), "--memory-bank", bank, "--since", "0001-01-01",
                                       "--until", "9999-12-31", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["records"] == 3
    with pytest.raises(UserError, match="out of range"):
        parse_date_bound("0001-01-01T00:00:00+05:00")

"""The memory bank in a real PostgreSQL server (started by the ``postgres`` fixture in a temp folder).

Same records in JSONL, SQLite and PostgreSQL give the same analysis, malformed rows included;
--since/--until is a WHERE clause; --scan writes rows there; every error is one line; the
password never reaches a report or a log.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import training_analyzer
from bank_helpers import iter_jsonl, write_pg_table, write_sqlite
from toolkit.memory.analysis import analyze_memory_bank
from toolkit.core.errors import UserError
from toolkit.memory.memory_bank import read_memory_bank
from toolkit.memory.bank_table import parse_date_bound
from toolkit.memory.memory_bank_sql import is_database_url, mask_url, parse_url
from toolkit.data.synthetic import write_batch, write_memory_bank

BAD_RECORDS = [  # malformed records a database row can hold (broken JSON it cannot)
    {"timestamp": "yesterday", "image": "bad_ts.jpg", "detections": []},
    {"timestamp": "2026-03-03T10:00:00Z", "detections": [{"class": "patches", "confidence": 0.5, "bbox": [1, 1, 5, 5]}]},
    {"timestamp": "2026-03-03T11:00:00Z", "image": "conf.jpg", "detections": [{"class": "patches", "confidence": 1.5, "bbox": [1, 1, 5, 5]}]},
    {"timestamp": "2026-03-04T12:00:00Z", "image": "box.jpg", "detections": [{"class": "crazing", "confidence": 0.5, "bbox": [9, 1, 5, 5]}]},
    {"timestamp": "2026-03-05T12:00:00Z", "image": "width.jpg", "image_width": -5, "detections": []},
    {"timestamp": "2026-03-06T12:00:00Z", "image": "review.jpg", "detections": [],
     "review": {"labels": [{"class": "patches", "bbox": [8, 2, 3, 9]}]}},
    {"timestamp": "2026-03-07T12:00:00Z", "image": "noconf.jpg", "detections": [{"class": "patches", "confidence": None, "bbox": [1, 1, 5, 5]}]},
]


def _summary(bank) -> str:
    analysis = analyze_memory_bank(bank, (0.25, 0.6), 0.5)
    return json.dumps({"records": bank.records, "skipped": bank.skipped, "images": bank.image,
                       "versions": bank.versions, "reviews": len(bank.reviews), "classes": analysis.classes,
                       "priorities": analysis.priorities, "reviewed": analysis.reviewed_images,
                       "weeks": analysis.weeks}, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def same_records(tmp_path_factory):
    """60 synthetic records (half reviewed) with the malformed ones mixed in, as JSONL."""
    base = tmp_path_factory.mktemp("bank_db")
    batch = write_batch(base / "src", n_images=60, size=96, seed=5, background_every=7)
    good = base / "good.jsonl"
    write_memory_bank(good, batch, seed=5)
    records = list(iter_jsonl(good))
    for i, bad in enumerate(BAD_RECORDS):  # spread through the file
        records.insert(5 + 8 * i, bad)
    jsonl = base / "detections.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"base": base, "jsonl": jsonl, "records": records}


def test_postgres_sqlite_and_jsonl_give_the_same_analysis_malformed_included(postgres, pg_password, same_records):
    with postgres.admin("inspection") as con:
        rows = write_pg_table(con, "same_records", same_records["records"])
    db_file = same_records["base"] / "same.db"
    write_sqlite(same_records["records"], db_file)
    jsonl = read_memory_bank(same_records["jsonl"])
    pg = read_memory_bank(postgres.url("same_records"))
    lite = read_memory_bank(db_file)
    assert jsonl.records == 60 and jsonl.skipped == len(BAD_RECORDS)
    assert pg.fmt == "postgresql" and pg.rows_read == rows
    assert _summary(pg) == _summary(jsonl)
    assert _summary(lite) == _summary(jsonl)
    # malformed rows are reported by primary key: the id of the row in the table
    with postgres.admin("inspection") as con:
        ids = {r[0]: r[1] for r in con.execute("SELECT id, image FROM same_records")}
    by_line = {m["line"]: m["reason"] for m in pg.malformed.items}
    assert len(by_line) == len(BAD_RECORDS)
    assert ids[next(line for line, reason in by_line.items() if "timestamp" in reason)] == "bad_ts.jpg"
    assert ids[next(line for line, reason in by_line.items() if "1.5" in reason)] == "conf.jpg"


def test_since_until_is_a_where_clause(postgres, pg_password, same_records):
    with postgres.admin("inspection") as con:
        write_pg_table(con, "in_window", same_records["records"])
        # a timestamptz column (a plant's own table) is filtered in SQL as well
        write_pg_table(con, "in_window_tz", [r for r in same_records["records"] if r.get("timestamp") != "yesterday"],
                       ts_type="TIMESTAMPTZ")
        total = con.execute("SELECT count(*) FROM in_window").fetchone()[0]
    since, until = parse_date_bound("2026-03-05"), parse_date_bound("2026-03-08", end=True)
    from_file = read_memory_bank(same_records["jsonl"], since=since, until=until)
    from_db = read_memory_bank(postgres.url("in_window"), since=since, until=until)
    assert 0 < from_file.records < 60
    assert from_db.image == from_file.image and from_db.skipped == from_file.skipped
    assert _summary(from_db) == _summary(from_file)
    # the server sent the window (a day of margin either side for time zones) and the malformed-timestamp
    # rows, not the whole table
    assert from_db.rows_read < total / 2
    tz = read_memory_bank(postgres.url("in_window_tz"), since=since, until=until)
    assert tz.image == from_file.image and tz.rows_read < total / 2
    # the margin rows were dropped by the exact bounds in the reader
    assert from_db.ts.min() >= since and from_db.ts.max() <= until and tz.ts.min() >= since


@pytest.mark.parametrize("ts_type", ["TIMESTAMPTZ", "TIMESTAMP", "DATE"])
def test_a_date_before_year_1_or_infinite_is_out_of_range_never_another_date(postgres, pg_password, ts_type):
    """PostgreSQL holds what Python cannot: 2026-03-01 BC (to_char alone writes it as 2026-03-01, a date
    in the window) and +-infinity (to_char gives NULL: "missing"). Each is a malformed record that says
    it is out of range; the good rows are read."""
    records = [{"timestamp": f"2026-03-0{i}T08:00:00Z", "image": f"{name}.jpg", "model_version": "v1", "detections": []}
               for i, name in enumerate(["bc", "inf", "neginf", "good1", "good2"], 1)]
    table = f"eras_{ts_type.lower()}"
    with postgres.admin("inspection") as con:
        write_pg_table(con, table, records, ts_type=ts_type)
        for image, value in (("bc", "2026-03-01 08:00:00+00 BC"), ("inf", "infinity"), ("neginf", "-infinity")):
            con.execute(f"UPDATE {table} SET timestamp = %s WHERE image = %s", (value, f"{image}.jpg"))
    bank = read_memory_bank(postgres.url(table))
    assert sorted(bank.image) == ["good1.jpg", "good2.jpg"] and bank.skipped == 3
    reasons = sorted(m["reason"] for m in bank.malformed.items)
    assert all("is out of range" in r for r in reasons), reasons
    assert [r.split("'")[1].endswith(" BC") for r in reasons].count(True) == 1
    assert sum("infinity'" in r for r in reasons) == 2
    # a window around the BC row's month and day takes only the good rows in it
    window = read_memory_bank(postgres.url(table), since=parse_date_bound("2026-03-01"),
                              until=parse_date_bound("2026-03-04", end=True))
    assert sorted(window.image) == ["good1.jpg"] and window.skipped == 0


def test_pgpass_file_and_training_yaml_url(postgres, same_records, tmp_path, monkeypatch):
    import pg_server

    with postgres.admin("inspection") as con:
        write_pg_table(con, "from_yaml", same_records["records"][:20])
    monkeypatch.delenv("PGPASSWORD", raising=False)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:inspection:{pg_server.USER}:{pg_server.PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    root = tmp_path / "ws"
    (root / "training" / "configs").mkdir(parents=True)
    (root / "training" / "configs" / "training.yaml").write_text(
        f"memory_bank:\n  url: \"{postgres.url('from_yaml')}\"\n")
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root))
    assert result.format == "postgresql" and result.memory_bank == postgres.url("from_yaml")
    assert result.records + result.skipped_records == 20
    # the pipeline analyses that memory bank too (no detections.jsonl in the workspace)
    import training_pipeline

    assert not (root / "memory-bank" / "detections.jsonl").exists()
    assert training_pipeline.plan(training_pipeline.PipelineConfig(root=root))["steps"]["analyze"] == "run"


def test_scan_writes_rows_to_postgres_and_the_password_stays_out_of_reports(postgres, tiny_model, tmp_path,
                                                                             monkeypatch, caplog):
    import pg_server

    monkeypatch.delenv("PGPASSWORD", raising=False)
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(tiny_model, root / "yolov8_model.pt")
    (root / "yolov8_model.json").write_text(json.dumps({"version": "3.1"}))
    folder = tmp_path / "unlabelled"
    write_batch(folder, n_images=6, size=64, seed=21)
    # a URL that holds the password (discouraged, but it must not leak)
    url = postgres.url("scanned").replace(f"{pg_server.USER}@", f"{pg_server.USER}:{pg_server.PASSWORD}@")
    caplog.set_level(logging.DEBUG)
    result = training_analyzer.run(training_analyzer.AnalyzeConfig(root=root, memory_bank=url, scan=folder / "images",
                                                                   scan_batch=4, scan_conf=0.001))
    assert result.scanned == 6 and result.records == 6 and result.skipped_records == 0
    assert result.model_versions == ("3.1",)
    with postgres.admin("inspection") as con:
        rows = con.execute("SELECT DISTINCT image, model_version, source FROM scanned").fetchall()
    assert len(rows) == 6 and {r[1] for r in rows} == {"3.1"} and {r[2] for r in rows} == {"scan"}
    assert all(Path(r[0]).is_file() for r in rows)
    texts = [p.read_text(errors="replace") for p in (root / "training" / "reports").rglob("*") if p.suffix in (".json", ".md")]
    assert texts and all(pg_server.PASSWORD not in t for t in texts)
    assert any("***" in t for t in texts)
    assert pg_server.PASSWORD not in caplog.text
    assert pg_server.PASSWORD not in str(result)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert training_analyzer.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_every_database_error_is_one_line(postgres, pg_password, tmp_path, capsys, monkeypatch):
    import pg_server

    root = str(tmp_path)
    with postgres.admin("inspection") as con:
        con.execute("CREATE TABLE no_conf (id serial primary key, timestamp text, image text, class text, "
                    "x1 float, y1 float, x2 float, y2 float)")
        con.execute("CREATE TABLE text_conf (id serial primary key, timestamp text, image text, class text, "
                    "confidence text, x1 float, y1 float, x2 float, y2 float)")
    unreachable = _one_line_error(capsys, ["--root", root, "--memory-bank",
                                           postgres.url(port=pg_server.free_port())])
    assert "cannot reach the database server" in unreachable and "127.0.0.1" in unreachable
    missing = _one_line_error(capsys, ["--root", root, "--memory-bank", postgres.url("nothere")])
    assert "no table 'nothere'" in missing and "tables found:" in missing and "no_conf" in missing
    no_column = _one_line_error(capsys, ["--root", root, "--memory-bank", postgres.url("no_conf")])
    assert "lacks column(s) confidence" in no_column
    wrong_type = _one_line_error(capsys, ["--root", root, "--memory-bank", postgres.url("text_conf")])
    assert "column 'confidence'" in wrong_type and "must be a number" in wrong_type
    no_db = _one_line_error(capsys, ["--root", root, "--memory-bank", postgres.url(database="nope")])
    assert "no database 'nope'" in no_db
    monkeypatch.setenv("PGPASSWORD", "wrong-password")
    auth = _one_line_error(capsys, ["--root", root, "--memory-bank", postgres.url("no_conf")])
    assert "authentication failed for user 'inspector'" in auth and "PGPASSWORD" in auth
    assert "wrong-password" not in auth


def test_url_parsing_and_masking():
    assert is_database_url("postgresql://u@h:5432/db?table=x") and is_database_url("sqlite:///a.db")
    assert not is_database_url("D:/inspection/detections.jsonl") and not is_database_url("detections.db")
    loc = parse_url("postgresql://u:pw@h:5432/db?table=plant.detections&sslmode=require")
    assert loc.table == "detections" and loc.schema == "plant" and loc.drivername == "postgresql+psycopg"
    assert "pw" not in loc.shown and "***" in loc.shown and "table=plant.detections" in loc.shown
    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    query_pw = parse_url("postgresql://u@h/db?password=secret2&table=t")
    assert query_pw.password == "secret2" and "secret2" not in query_pw.shown and "password" not in query_pw.query
    with pytest.raises(UserError, match="not a database URL"):
        parse_url("postgresql://u:pw@h:notaport/db")


def test_sqlite_through_a_url_reads_like_the_file(same_records):
    db_file = same_records["base"] / "via_url.db"
    write_sqlite(same_records["records"], db_file)
    via_url = read_memory_bank(f"sqlite:///{db_file}?table=detections")
    assert _summary(via_url) == _summary(read_memory_bank(db_file))


def test_a_table_without_primary_key_reports_row_numbers(postgres, pg_password):
    with postgres.admin("inspection") as con:
        con.execute("CREATE TABLE no_key (timestamp text, image text, model_version text, class text, "
                    "confidence real, x1 real, y1 real, x2 real, y2 real)")
        con.execute("INSERT INTO no_key VALUES ('2026-03-01T08:00:00Z', 'a.jpg', '1.0', 'scratches', 0.5, 1, 2, 30, 40), "
                    "('2026-03-01T08:00:00Z', 'a.jpg', '1.0', 'patches', 0.25, 5, 5, 20, 20), "
                    "('2026-03-01T08:01:00Z', 'b.jpg', '1.0', 'patches', 0.5, 50, 5, 20, 20), "  # row 3: x2 < x1
                    "('2026-03-01T08:02:00Z', 'c.jpg', '1.0', NULL, NULL, NULL, NULL, NULL, NULL)")
    bank = read_memory_bank(postgres.url("no_key"))
    assert bank.records == 2 and bank.image == ["a.jpg", "c.jpg"] and bank.det_start.tolist() == [0, 2, 2]
    assert bank.skipped == 1 and bank.malformed.items[0]["line"] == 3 and "bbox" in bank.malformed.items[0]["reason"]


def test_model_version_is_a_where_clause_too(postgres, pg_password, same_records):
    """--model-version goes into the WHERE clause with --since/--until (a bound value): the server
    sends that version's rows (and the rows malformed whatever their version), not the table."""
    records = [{**r, "model_version": "2.0"} if i % 3 == 0 else r for i, r in enumerate(same_records["records"])]
    jsonl = same_records["base"] / "by_version.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    with postgres.admin("inspection") as con:
        write_pg_table(con, "by_version", records)
        total = con.execute("SELECT count(*) FROM by_version").fetchone()[0]
    from_file = read_memory_bank(jsonl, model_version="2.0")
    from_db = read_memory_bank(postgres.url("by_version"), model_version="2.0")
    assert 0 < from_file.records < 60 and from_db.versions == ["2.0"]
    assert from_db.image == from_file.image and from_db.skipped == from_file.skipped
    assert _summary(from_db) == _summary(from_file)
    assert from_db.rows_read < total / 2
    lite = same_records["base"] / "by_version.db"
    write_sqlite(records, lite)
    via_url = read_memory_bank(f"sqlite:///{lite}?table=detections", model_version="2.0")
    assert _summary(via_url) == _summary(from_file) and via_url.rows_read < total / 2
    hostile = read_memory_bank(postgres.url("by_version"), model_version="2.0' OR '1'='1")
    assert hostile.records == 0

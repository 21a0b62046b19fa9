"""A memory bank read chunk by chunk into running figures gives the analysis of the bank read whole.

``toolkit.memory.memory_bank.aggregate_memory_bank`` never holds more than one chunk of records; the
analysis it feeds (``toolkit.memory.analysis.analyze_aggregate``) must equal ``analyze_memory_bank`` on
the whole bank, field for field and to the last bit of every mean, in every format, with the
planted malformed records of the golden comparison (tests/bank_golden.py) split across chunks.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bank_golden import CASES, write_planted
from bank_helpers import iter_jsonl, write_csv, write_pg_table, write_sqlite
from toolkit.memory.analysis import analyze_aggregate, analyze_memory_bank
from toolkit.memory.bank_aggregate import BankAggregate
from toolkit.memory.bank_sql_aggregate import aggregate_in_database
from toolkit.memory.memory_bank import ALL_COLUMNS, aggregate_memory_bank, read_memory_bank
from toolkit.memory.bank_table import parse_date_bound, record_rows

CLASSES = ["scratches", "patches", "crazing", "inclusion", "pitted_surface", "rolled-in_scale"]
INSTANCES = {"scratches": 300, "patches": 200, "crazing": 10}


def _json(source, analysis) -> str:
    return json.dumps({"records": source.records, "skipped": source.skipped, "malformed": source.malformed.items,
                       "filtered_out": source.filtered_out, "fmt": source.fmt, "weeks": analysis.weeks,
                       "versions": analysis.versions, "reviewed": analysis.reviewed_images,
                       "classes": analysis.classes, "priorities": analysis.priorities}, default=str)


def _whole(path, **filters) -> str:
    bank = read_memory_bank(path, **filters)
    return _json(bank, analyze_memory_bank(bank, (0.25, 0.6), 0.5, INSTANCES, CLASSES, dataset_images=400))


def _chunked(path, monkeypatch, **kwargs) -> tuple[str, list[int]]:
    """The chunked analysis, and the records of each chunk the aggregate was given."""
    sizes: list[int] = []
    add = BankAggregate.add_bank

    def counting(self, bank):
        sizes.append(bank.records)
        add(self, bank)

    monkeypatch.setattr(BankAggregate, "add_bank", counting)
    agg = aggregate_memory_bank(path, (0.25, 0.6), 0.5, **kwargs)
    monkeypatch.setattr(BankAggregate, "add_bank", add)
    return _json(agg, analyze_aggregate(agg, INSTANCES, CLASSES, dataset_images=400)), sizes


def _filters(case: dict) -> dict:
    return {"since": parse_date_bound(case["since"]) if "since" in case else None,
            "until": parse_date_bound(case["until"], end=True) if "until" in case else None,
            "model_version": case.get("model_version")}


def _rowable(record) -> bool:
    """A planted record that rows of a table can hold (some malformed ones only JSON can)."""
    try:
        return all(all(c in row for c in ALL_COLUMNS) for row in record_rows(record))
    except (TypeError, KeyError, AttributeError, ValueError):
        return False


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tmp_path_factory.mktemp("aggregate")
    jsonl = write_planted(base / "planted.jsonl")
    records = [r for r in iter_jsonl(jsonl) if _rowable(r)]
    write_csv(records, base / "planted.csv")
    write_sqlite(records, base / "planted.db")
    pd.read_csv(base / "planted.csv", dtype=str, keep_default_na=False).to_parquet(base / "planted.parquet")
    return base


@pytest.mark.parametrize("case", list(CASES))
def test_jsonl_in_small_chunks_gives_the_whole_bank_analysis(planted, monkeypatch, case):
    path = planted / "planted.jsonl"
    got, sizes = _chunked(path, monkeypatch, chunk_bytes=1 << 17, **_filters(CASES[case]))
    assert got == _whole(path, **_filters(CASES[case]))
    whole = read_memory_bank(path, **_filters(CASES[case])).records
    assert len(sizes) > 20 and sum(sizes) == whole
    assert max(sizes) < 1000   # 128 KB of lines at a time: the whole bank's frames are never built


@pytest.mark.parametrize("name", ["planted.csv", pytest.param("planted.db", marks=pytest.mark.slow),  # ~22 s
                                  "planted.parquet"])
def test_tables_in_chunks_give_the_whole_bank_analysis(planted, monkeypatch, name):
    path = planted / name
    for case in CASES.values():
        got, sizes = _chunked(path, monkeypatch, chunk_rows=997, **_filters(case))   # records cut at chunk ends
        assert got == _whole(path, **_filters(case)), case
        assert len(sizes) > 20 and max(sizes) <= 997


@pytest.mark.slow  # every case through SQLAlchemy in chunks: about 14 s; test_sqlite_computes_the_figures_itself
# (default run) reads a SQLite bank through its URL, its reviewed rows in chunks
def test_a_database_url_in_chunks_gives_the_whole_bank_analysis(planted, monkeypatch):
    url = f"sqlite:///{planted / 'planted.db'}"
    for case in CASES.values():
        got, sizes = _chunked(url, monkeypatch, chunk_rows=2000, in_database=False, **_filters(case))
        assert got == _whole(url, **_filters(case)), case
        assert len(sizes) > 10 and max(sizes) <= 2000


def test_postgres_in_chunks_gives_the_whole_bank_analysis(postgres, pg_password, planted, monkeypatch):
    numbers = ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height")
    records = [r for r in iter_jsonl(planted / "planted.jsonl") if _rowable(r) and all(
        row[c] in ("", None) or type(row[c]) in (int, float) for row in record_rows(r) for c in numbers)][:6000]
    with postgres.admin("inspection") as con:
        write_pg_table(con, "chunked_records", records)
    url = postgres.url("chunked_records")
    got, sizes = _chunked(url, monkeypatch, chunk_rows=1000, in_database=False)
    assert got == _whole(url)
    assert len(sizes) > 3 and max(sizes) <= 1000


def test_a_csv_whose_rows_do_not_parse_as_a_table_is_read_whole_with_the_same_analysis(planted, monkeypatch):
    lines = (planted / "planted.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(5000, "2026-01-05T08:00:00Z,short_row.jpg\n")   # a row of another length, deep in the file
    path = planted / "short_row.csv"
    path.write_text("".join(lines), encoding="utf-8")
    got, sizes = _chunked(path, monkeypatch, chunk_rows=997)
    assert got == _whole(path)
    assert json.loads(got)["records"] == json.loads(_whole(planted / "planted.csv"))["records"] + 1   # a record


# --- the figures computed by the database (toolkit/memory/bank_sql_aggregate.py) ------------------------------

def _same(got, want, where="") -> None:
    """Equal, floats to 12 digits (the server sums confidences in its own order), everything else exactly."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """20,000 generated records (no malformed line), as JSONL rows in SQLite."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_memory_bank import generate

    base = tmp_path_factory.mktemp("clean")
    generate(base / "clean.jsonl", 20_000, seed=3)
    records = list(iter_jsonl(base / "clean.jsonl"))
    rows = write_sqlite(records, base / "clean.db")
    return {"base": base, "records": records, "rows": rows}


def _in_database(url: str, **filters):
    agg = aggregate_in_database(url, (0.25, 0.6), 0.5, **filters)
    assert agg is not None, "the clean table was not aggregated by the database"
    return agg, _json(agg, analyze_aggregate(agg, INSTANCES, CLASSES, dataset_images=400))


def test_sqlite_computes_the_figures_itself_and_sends_few_rows(clean, monkeypatch):
    import toolkit.memory.bank_sql_aggregate as bank_sql_aggregate

    monkeypatch.setattr(bank_sql_aggregate, "REVIEW_CHUNK_ROWS", 333)   # the reviewed rows in many chunks
    url = f"sqlite:///{clean['base'] / 'clean.db'}"
    for case in CASES.values():
        agg, got = _in_database(url, **_filters(case))
        _same(json.loads(got), json.loads(_whole(url, **_filters(case))))
        # what travels: a row per (day, version, class, histogram bin, in the band or not), per (day, version)
        # and per class, and the reviewed records' rows; not a row per detection
        reviewed_rows = sum(len(record_rows(r)) for r in clean["records"] if "review" in r)
        days = len({r["timestamp"][:10] for r in clean["records"]})
        groups = days * 2 * len(CLASSES) * (10 + 1) + days * 2 * 2 + 3 * len(CLASSES) + 10
        assert agg.rows_read <= reviewed_rows + groups
        assert agg.rows_read < clean["rows"] / 3


def test_a_table_the_database_cannot_judge_is_read_row_by_row(planted, clean, tmp_path):
    """Malformed rows (the planted bank), a time zone, a record split in two: None, so the rows are read."""
    assert aggregate_in_database(f"sqlite:///{planted / 'planted.db'}", (0.25, 0.6), 0.5) is None
    records = clean["records"][:300]
    zoned = [dict(r, timestamp=r["timestamp"].replace("Z", "+02:00")) if i == 150 else r for i, r in enumerate(records)]
    write_sqlite(zoned, tmp_path / "zoned.db")
    assert aggregate_in_database(f"sqlite:///{tmp_path / 'zoned.db'}", (0.25, 0.6), 0.5) is None
    write_sqlite(records + records[:1], tmp_path / "again.db")   # one image logged twice, apart
    assert aggregate_in_database(f"sqlite:///{tmp_path / 'again.db'}", (0.25, 0.6), 0.5) is None
    two = [r for r in records if len(r["detections"]) >= 2][0]
    write_sqlite([r for r in records if r is not two], tmp_path / "sources.db")   # a record's rows of two sources
    write_sqlite([dict(two, source="line3")], tmp_path / "sources.db")
    import sqlite3

    con = sqlite3.connect(tmp_path / "sources.db")
    con.execute("UPDATE detections SET source = 'line4' WHERE rowid = (SELECT MAX(rowid) FROM detections)")
    con.commit()
    con.close()
    assert aggregate_in_database(f"sqlite:///{tmp_path / 'sources.db'}", (0.25, 0.6), 0.5) is None
    write_sqlite(records, tmp_path / "fine.db")
    assert aggregate_in_database(f"sqlite:///{tmp_path / 'fine.db'}", (0.25, 0.6), 0.5) is not None
    # a --since that is not a whole day is applied to the rows
    assert aggregate_in_database(f"sqlite:///{tmp_path / 'fine.db'}", (0.25, 0.6), 0.5,
                                 since=parse_date_bound("2026-02-01T12:00:00Z")) is None


def test_postgres_computes_the_figures_itself(postgres, pg_password, clean):
    with postgres.admin("inspection") as con:
        write_pg_table(con, "clean_records", clean["records"])
    url = postgres.url("clean_records")
    for case in CASES.values():
        agg, got = _in_database(url, **_filters(case))
        _same(json.loads(got), json.loads(_whole(url, **_filters(case))))
        assert agg.fmt == "postgresql" and agg.rows_read < clean["rows"] / 3
    zoned = [dict(r, timestamp=r["timestamp"].replace("Z", "+02:00")) if i == 150 else r
             for i, r in enumerate(clean["records"][:300])]
    with postgres.admin("inspection") as con:
        write_pg_table(con, "zoned_records", zoned)
    assert aggregate_in_database(postgres.url("zoned_records"), (0.25, 0.6), 0.5) is None   # read row by row
    quoted = dict(_filters(CASES["version"]), model_version="1.1' OR '1'='1")   # a bound value, not SQL text
    agg, _ = _in_database(url, **quoted)
    assert agg.records == 0


# --- the records an export may pick, kept chunk by chunk (toolkit/memory/bank_candidates.py) ------------------

@pytest.mark.parametrize("name", ["planted.jsonl", "planted.csv"])
def test_the_kept_candidates_give_the_whole_bank_export_order(planted, monkeypatch, name):
    from itertools import islice

    import toolkit.memory.memory_bank as memory_bank
    from toolkit.memory.analysis import candidate_order

    path = planted / name
    monkeypatch.setattr(memory_bank, "MIN_KEPT", 400)   # 400 per class and queue; 300 candidates are taken
    agg = aggregate_memory_bank(path, (0.25, 0.6), 0.5, chunk_bytes=1 << 17, chunk_rows=997, export=15)
    thin = agg.candidates
    analysis = analyze_aggregate(agg, INSTANCES, CLASSES, dataset_images=400)
    bank = read_memory_bank(path)
    whole = analyze_memory_bank(bank, (0.25, 0.6), 0.5, INSTANCES, CLASSES, dataset_images=400)
    got = [(int(thin.line[r]), why) for r, why in islice(candidate_order(thin, analysis, list(analysis.classes)), 300)]
    want = [(int(bank.line[r]), why) for r, why in islice(candidate_order(bank, whole, list(whole.classes)), 300)]
    assert got == want
    assert thin.records < bank.records / 3           # not the whole bank
    assert len(thin.reviews) == len(bank.reviews)    # every reviewed record, for the reviewed batch

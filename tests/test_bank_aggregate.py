"""A memory bank read chunk by chunk into running figures gives the analysis of the bank read whole.

``toolkit.memory_bank.aggregate_memory_bank`` never holds more than one chunk of records; the
analysis it feeds (``toolkit.analysis.analyze_aggregate``) must equal ``analyze_memory_bank`` on
the whole bank, field for field and to the last bit of every mean, in every format, with the
planted malformed records of the golden comparison (tests/bank_golden.py) split across chunks.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bank_golden import CASES, write_planted
from bank_helpers import iter_jsonl, write_csv, write_pg_table, write_sqlite
from toolkit.analysis import analyze_aggregate, analyze_memory_bank
from toolkit.bank_aggregate import BankAggregate
from toolkit.memory_bank import ALL_COLUMNS, aggregate_memory_bank, parse_date_bound, read_memory_bank, record_rows

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


@pytest.mark.parametrize("name", ["planted.csv", "planted.db", "planted.parquet"])
def test_tables_in_chunks_give_the_whole_bank_analysis(planted, monkeypatch, name):
    path = planted / name
    for case in CASES.values():
        got, sizes = _chunked(path, monkeypatch, chunk_rows=997, **_filters(case))   # records cut at chunk ends
        assert got == _whole(path, **_filters(case)), case
        assert len(sizes) > 20 and max(sizes) <= 997


def test_a_database_url_in_chunks_gives_the_whole_bank_analysis(planted, monkeypatch):
    url = f"sqlite:///{planted / 'planted.db'}"
    for case in CASES.values():
        got, sizes = _chunked(url, monkeypatch, chunk_rows=2000, **_filters(case))
        assert got == _whole(url, **_filters(case)), case
        assert len(sizes) > 10 and max(sizes) <= 2000


def test_postgres_in_chunks_gives_the_whole_bank_analysis(postgres, pg_password, planted, monkeypatch):
    numbers = ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height")
    records = [r for r in iter_jsonl(planted / "planted.jsonl") if _rowable(r) and all(
        row[c] in ("", None) or type(row[c]) in (int, float) for row in record_rows(r) for c in numbers)][:6000]
    with postgres.admin("inspection") as con:
        write_pg_table(con, "chunked_records", records)
    url = postgres.url("chunked_records")
    got, sizes = _chunked(url, monkeypatch, chunk_rows=1000)
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

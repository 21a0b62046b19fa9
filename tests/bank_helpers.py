"""Test helpers: write the same schema records as CSV, SQLite or rows of a database table.

They exist for the tests (same records in every format); the package only reads those formats
and appends through toolkit.memory.detection_api. No validation here on purpose: tests write malformed
records too, to check that every reader counts them alike.
"""
from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

from toolkit.memory.memory_bank import ALL_COLUMNS, SQLITE_TABLE
from toolkit.memory.bank_table import record_rows


def write_csv(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write schema records as a CSV memory bank; returns the number of rows."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ALL_COLUMNS))
        writer.writeheader()
        for record in records:
            for row in record_rows(record):
                writer.writerow(row)
                n += 1
    return n


def write_sqlite(records: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write schema records into a SQLite ``detections`` table with the CSV columns."""
    con = sqlite3.connect(str(path))
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS {SQLITE_TABLE} (timestamp TEXT, image TEXT, "
                    "model_version TEXT, class TEXT, confidence REAL, x1 REAL, y1 REAL, x2 REAL, y2 REAL, "
                    "source TEXT, image_width INTEGER, image_height INTEGER, kind TEXT)")
        n = 0
        placeholders = ",".join("?" * len(ALL_COLUMNS))
        for record in records:
            rows = record_rows(record)
            con.executemany(f"INSERT INTO {SQLITE_TABLE} ({','.join(ALL_COLUMNS)}) VALUES ({placeholders})",
                            [tuple(None if row[c] == "" else row[c] for c in ALL_COLUMNS) for row in rows])
            n += len(rows)
        con.commit()
        return n
    finally:
        con.close()


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The parseable records of a JSONL file (no validation)."""
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue


PG_TABLE_SQL = ("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, timestamp {ts_type}, image TEXT, model_version TEXT, "
                "class TEXT, confidence DOUBLE PRECISION, x1 DOUBLE PRECISION, y1 DOUBLE PRECISION, x2 DOUBLE PRECISION, "
                "y2 NUMERIC, source VARCHAR(40), "
                "image_width INTEGER, image_height INTEGER, kind TEXT)")


def write_pg_table(con, table: str, records: Iterable[dict[str, Any]], ts_type: str = "TEXT") -> int:
    """Create ``table`` as another tool would (nullable columns, REAL and NUMERIC boxes) and insert the rows.

    ``con``: a psycopg connection. Returns the number of rows.
    """
    con.execute(PG_TABLE_SQL.format(table=table, ts_type=ts_type))
    rows = []
    for record in records:
        for row in record_rows(record):
            rows.append(tuple(None if row[c] == "" else row[c] for c in ALL_COLUMNS))
    columns = ",".join(f'"{c}"' for c in ALL_COLUMNS)
    with con.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({','.join(['%s'] * len(ALL_COLUMNS))})", rows)
    return len(rows)

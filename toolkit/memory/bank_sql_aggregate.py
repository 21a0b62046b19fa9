"""The memory bank's figures computed by the database: GROUP BY queries, a bounded answer.

For a table on PostgreSQL or SQLite, ``aggregate_in_database`` asks the server for the analysis
figures (``toolkit.memory.bank_aggregate.BankAggregate``) instead of its rows: detections, confidence
sums, histogram bins and uncertain-band counts per (day, model version, class); records per
(day, version); images per (day, version, class); the order in which versions and classes first
appear. What comes back grows with the days, versions and classes, not with the rows. Only the
rows of reviewed records travel (the matching against the review labels is done in Python, as
for a file). ``--since/--until`` (whole days) and ``--model-version`` are bound parameters of
the WHERE clause; identifiers are quoted.

The figures equal those of the rows read and checked one by one only when the table holds
nothing the row-by-row check would refuse or treat otherwise, so one query first checks the
whole table: every timestamp UTC ISO 8601 text (``2026-03-01T08:00:00Z``, ``.123``,
``+00:00`` or no zone), every value of the right kind and in range, every record's rows
consecutive (in primary-key order) and of one source. When anything is off (a malformed row, a
time zone, a table without an integer key, another dialect, a --since that is not a date), the
answer is None and the caller reads the rows chunk by chunk (``toolkit.memory.memory_bank``), which
names every malformed row. The check and every aggregation query read one snapshot (``_snapshot``:
one REPEATABLE READ transaction on PostgreSQL, one read transaction on SQLite): rows a live line
inserts meanwhile are neither unchecked nor counted twice. The confidence sums are the server's: a mean may differ from the
rows' in the last bits (summation order), every count is exact.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toolkit.memory.bank_aggregate import HIST_BINS, BankAggregate
from toolkit.memory.bank_rows import rows_in_chunks
from toolkit.memory.bank_table import MAX_CLASS_CHARS, MAX_DETECTIONS, MAX_IMAGE_CHARS, ROW_COLUMNS, Parts
from toolkit.memory.memory_bank_sql import create_engine_for, database_error, inspect_table, parse_url

logger = logging.getLogger(__name__)

DAY = 86400.0
REVIEW_CHUNK_ROWS = 100_000   # the reviewed records' rows come in chunks of this many
_NUMBER_KINDS = ("number", "decimal", "integer")


def _shift(day: str, days: int) -> str:
    ordinal = date.fromisoformat(day).toordinal() + days
    return date.fromordinal(min(max(ordinal, 1), date.max.toordinal())).isoformat() if ordinal <= date.max.toordinal() \
        else "9999-12-31T99"   # after every time of year 9999


def _day_bound(seconds: float | None, end: bool) -> str | None | bool:
    """A --since/--until bound as 'YYYY-MM-DD' when it is a whole day; False when it is not."""
    if seconds is None:
        return None
    start = seconds + 1e-6 if end else seconds
    if abs(start / DAY - round(start / DAY)) > 1e-9:
        return False
    day = date.fromordinal(date(1970, 1, 1).toordinal() + int(round(start / DAY)) - (1 if end else 0))
    return day.isoformat()


class _Sql:
    """The SELECT pieces for one table and dialect."""

    def __init__(self, loc, info, quote) -> None:
        self.pg = loc.backend == "postgresql"
        cols = info.columns
        self.table = (f"{quote(loc.schema)}." if loc.schema else "") + quote(loc.table)

        def col(name: str, text: bool = False, number: bool = False) -> str:
            if name not in cols:
                return "NULL"
            if text:
                return f"NULLIF({quote(name)}, '')"
            if number and self.pg:
                return f"CAST({quote(name)} AS DOUBLE PRECISION)"
            return quote(name)

        line = "rowid" if info.line_column == "rowid" else quote(info.line_column)
        self.base = (f"SELECT {line} AS line, {quote('timestamp')} AS ts, {quote('image')} AS image, "
                     f"{col('model_version', text=True)} AS mv, {col('class', text=True)} AS cls, "
                     f"{col('confidence', number=True)} AS conf, "
                     + ", ".join(f"{col(k, number=True)} AS {k}" for k in ("x1", "y1", "x2", "y2")) + ", "
                     f"{col('source', text=True)} AS source, {col('image_width', number=True)} AS width, "
                     f"{col('image_height', number=True)} AS height, {col('kind', text=True)} AS kind FROM {self.table}")
        self.line_sql = line

    def typed(self, column: str, kinds: tuple[str, ...]) -> str:
        """SQLite keeps any value in any column: the value's own type must be one of ``kinds``."""
        if self.pg:
            return "1 = 1"
        return f"typeof({column}) IN ({', '.join(repr(k) for k in kinds + ('null',))})"

    def bad_row(self) -> str:
        """A row the fast path cannot take as the row-by-row check would (module docstring)."""
        digits = [1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19]
        ts = " AND ".join([f"substr(ts, {i}, 1) BETWEEN '0' AND '9'" for i in digits]
                          + [f"substr(ts, {i}, 1) = '{c}'" for i, c in ((5, "-"), (8, "-"), (11, "T"), (14, ":"),
                                                                           (17, ":"))]
                          + ["substr(ts, 6, 2) BETWEEN '01' AND '12'", "substr(ts, 9, 2) BETWEEN '01' AND '31'",
                             "substr(ts, 12, 2) <= '23'", "substr(ts, 15, 2) <= '59'", "substr(ts, 18, 2) <= '59'"])
        zone = ("(substr(ts, 20) IN ('', 'Z', '+00\\:00') OR (substr(ts, 20, 1) = '.' AND length(ts) <= 32 "
                "AND substr(ts, 21, 1) BETWEEN '0' AND '9' AND rtrim(substr(ts, 21), '0123456789') IN ('', 'Z', '+00\\:00')))")
        box = "x1 IS NULL OR y1 IS NULL OR x2 IS NULL OR y2 IS NULL OR NOT (x1 < x2 AND y1 < y2)"
        sizes = " OR ".join(f"({c} IS NOT NULL AND ({c} <= 0 OR {c} <> ROUND({c})))" for c in ("width", "height"))
        text_kinds = [self.typed(c, ("text",)) for c in ("ts", "image", "mv", "cls", "source", "kind")]
        number_kinds = [self.typed(c, ("real", "integer")) for c in ("conf", "x1", "y1", "x2", "y2", "width", "height")]
        if self.pg:   # one regular expression per row: the same forms, far fewer calls
            ts, zone = (r"ts ~ '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3])\:[0-5]\d\:[0-5]\d"
                        r"(\.\d+)?(Z|\+00\:00)?$'", "(length(ts) <= 32)")
        nul = "" if self.pg else "OR instr(image, char(0)) > 0 "   # PostgreSQL text cannot hold a NUL
        return (f"ts IS NULL OR NOT ({' AND '.join(text_kinds + number_kinds)}) OR length(ts) < 19 OR NOT ({ts}) "
                f"OR NOT {zone} OR image IS NULL OR image = '' OR length(image) > {MAX_IMAGE_CHARS} {nul}"
                f"OR (kind IS NOT NULL AND kind NOT IN ('detection', 'review')) OR {sizes} "
                f"OR (cls IS NOT NULL AND (length(cls) > {MAX_CLASS_CHARS} OR {box} OR ((kind IS NULL OR kind = "
                "'detection') AND (conf IS NULL OR conf < 0 OR conf > 1))))")

    def windowed(self) -> str:
        """The rows with ``starts`` (1: the first row of a record) and ``rec`` (its record's first line)."""
        same = ("LAG(ts) OVER o = ts AND LAG(image) OVER o = image AND (LAG(mv) OVER o = mv OR "
                "(LAG(mv) OVER o IS NULL AND mv IS NULL))")
        return (f"WITH b AS ({self.base}), s AS (SELECT b.*, CASE WHEN {same} THEN 0 ELSE 1 END AS starts, CASE WHEN "
                "LAG(source) OVER o = source OR (LAG(source) OVER o IS NULL AND source IS NULL) THEN 0 ELSE 1 END "
                "AS new_source FROM b "
                "WINDOW o AS (ORDER BY line)), r AS (SELECT s.*, MAX(CASE WHEN starts = 1 THEN line END) "
                "OVER (ORDER BY line ROWS UNBOUNDED PRECEDING) AS rec FROM s) ")

    def bin(self) -> str:
        return "FLOOR(conf * 10)" if self.pg else "CAST(conf * 10 AS INTEGER)"


def aggregate_in_database(location: str, uncertain: tuple[float, float], iou_match: float,
                          since: float | None = None, until: float | None = None,
                          model_version: str | None = None) -> BankAggregate | None:
    """The figures computed by the server (module docstring); None: read the rows instead."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    loc = parse_url(location)
    since_day, until_day = _day_bound(since, False), _day_bound(until, True)
    if loc.backend not in ("postgresql", "sqlite") or since_day is False or until_day is False:
        return None
    engine = create_engine_for(loc)
    try:
        with _snapshot(engine, loc) as conn:
            info = inspect_table(conn, loc)
            kinds_ok = (info.columns["timestamp"] in ("text", "any")
                        and all(info.columns.get(c, "text") in ("text", "any") for c in ("image", "class",
                                                                                          "model_version", "source",
                                                                                          "kind"))
                        and all(info.columns.get(c, "number") in _NUMBER_KINDS + ("any",)
                                for c in ("confidence", "x1", "y1", "x2", "y2", "image_width", "image_height")))
            if info.line_column is None or not kinds_ok:
                return None
            sql = _Sql(loc, info, engine.dialect.identifier_preparer.quote)
            agg = _run(conn, text, sql, uncertain, iou_match, since_day, until_day, model_version)
            if agg is not None:
                agg.fmt, agg.location = loc.backend, loc.shown
            return agg
    except SQLAlchemyError as exc:
        raise database_error(loc, exc) from None
    finally:
        engine.dispose()


@contextmanager
def _snapshot(engine, loc):
    """A connection whose every query reads one snapshot of the table: the check and each aggregation
    see the same rows, whatever a live line inserts meanwhile. PostgreSQL: one REPEATABLE READ, read-only
    transaction. SQLite: one explicit deferred transaction (its first SELECT fixes the snapshot in WAL
    mode; in rollback-journal mode its shared lock holds writers off until it ends)."""
    from sqlalchemy import text

    if loc.backend == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            try:
                yield conn
            finally:
                conn.rollback()
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")   # the driver then leaves BEGIN to us
        conn.execute(text("BEGIN"))
        try:
            yield conn
        finally:
            conn.execute(text("ROLLBACK"))


def _run(conn, text, sql: _Sql, uncertain, iou_match, since_day, until_day, model_version) -> BankAggregate | None:
    fetched = [0]   # rows the server sent, every query together

    def rows(query: str, params: dict[str, Any] | None = None) -> list[tuple]:
        started = time.perf_counter()
        got = [tuple(r) for r in conn.execute(text(query), params or {})]
        logger.debug("memory bank query (%.2f s, %d rows): %s %s", time.perf_counter() - started, len(got), query,
                     params)
        fetched[0] += len(got)
        return got

    # a record of two sources (its rows disagree) is bad too: the rows' reader takes the first row's
    # a record of many rows may pass the detections cap (line - rec bounds its rows): the rows' reader decides
    checked = rows(f"{sql.windowed()}SELECT COUNT(*), SUM(CASE WHEN {sql.bad_row()} OR (starts = 0 AND new_source = 1) "
                   "THEN 1 ELSE 0 END), SUM(starts), MAX(line - rec) FROM r")[0]
    n_rows, bad, starts, span = (int(v or 0) for v in checked)
    distinct = rows(f"SELECT COUNT(*) FROM (SELECT DISTINCT ts, image, mv FROM ({sql.base}) b) d")[0][0]
    if bad or starts != distinct or span >= MAX_DETECTIONS:
        logger.info("the memory bank table needs the row-by-row check (%d row(s) of another form, %d record(s) "
                    "not in consecutive rows): its rows are read", bad, starts - distinct)
        return None
    day_texts = [r[0] for r in rows(f"SELECT DISTINCT substr(ts, 1, 10) FROM ({sql.base}) b")]
    try:
        epoch = {d: date.fromisoformat(d).toordinal() - date(1970, 1, 1).toordinal() for d in day_texts}
    except ValueError:   # 2026-02-30: the row-by-row check refuses it
        return None
    where, params = ["1 = 1"], {}
    if since_day:
        where.append("substr(ts, 1, 10) >= :since")
        params["since"] = since_day
    if until_day:
        where.append("substr(ts, 1, 10) <= :until")
        params["until"] = until_day
    if model_version is not None:
        where.append("mv = :version")
        params["version"] = model_version
    kept = " AND ".join(where)
    agg = BankAggregate(uncertain, iou_match)
    # filtered out, as the rows' reader counts it: records the WHERE clause sends (a day of margin) but not kept
    sent, sent_params = ["1 = 1"], dict(params)
    ts_c = 'ts COLLATE "C"' if sql.pg else "ts"
    if since_day:
        sent.append(f"{ts_c} >= :since_m")
        sent_params["since_m"] = _shift(since_day, -1)
    if until_day:
        sent.append(f"{ts_c} < :until_m")
        sent_params["until_m"] = _shift(until_day, 2)
    if model_version is not None:
        sent.append("mv = :version")
    count = f"SELECT COUNT(*) FROM (SELECT DISTINCT ts, image, mv FROM ({sql.base}) b WHERE {{}}) d"
    agg.filtered_out = rows(count.format(" AND ".join(sent)), sent_params)[0][0]   # less the kept ones, below
    # first appearances: versions by their first record, classes by (record, detection before label, line)
    agg.versions = [r[0] for r in rows(f"SELECT mv, MIN(line) FROM ({sql.base}) b WHERE mv IS NOT NULL AND {kept} "
                                       "GROUP BY mv ORDER BY 2", params)]
    first = rows(f"{sql.windowed()}SELECT cls FROM (SELECT cls, rec, CASE WHEN kind = 'review' THEN 1 ELSE 0 END AS "
                 "lab, line, ROW_NUMBER() OVER (PARTITION BY cls ORDER BY rec, CASE WHEN kind = 'review' THEN 1 ELSE 0 "
                 f"END, line) AS n FROM r WHERE cls IS NOT NULL AND {kept}) f WHERE n = 1 ORDER BY rec, lab, line",
                 params)
    agg.classes = [r[0] for r in first]
    lo, hi = uncertain
    dets = rows(f"SELECT substr(ts, 1, 10), mv, cls, {sql.bin()}, CASE WHEN conf >= :lo AND conf < :hi THEN 1 ELSE 0 "
                f"END, COUNT(*), SUM(conf) FROM ({sql.base}) b WHERE cls IS NOT NULL AND (kind IS NULL OR kind = "
                f"'detection') AND {kept} GROUP BY 1, 2, 3, 4, 5", {**params, "lo": lo, "hi": hi})
    recs = rows(f"SELECT substr(ts, 1, 10), mv, COUNT(*), SUM(CASE WHEN source = 'scan' THEN 1 ELSE 0 END) FROM "
                f"(SELECT DISTINCT ts, image, mv, source FROM ({sql.base}) b WHERE {kept}) d GROUP BY 1, 2", params)
    images = rows(f"SELECT cls, COUNT(*) FROM (SELECT DISTINCT ts, image, mv, cls FROM ({sql.base}) b WHERE cls IS NOT "
                  f"NULL AND (kind IS NULL OR kind = 'detection') AND {kept}) d GROUP BY cls", params)
    monday = {d: epoch[d] - (epoch[d] + 3) % 7 for d in epoch}   # epoch day 0 was a Thursday
    agg.mondays = sorted({monday[r[0]] for r in recs})           # the weeks of the kept records
    agg.resize()
    week_of = {d: agg.mondays.index(m) for d, m in monday.items() if m in agg.mondays}
    cls_id = {c: i for i, c in enumerate(agg.classes)}
    ver_id = {v: i + 1 for i, v in enumerate(agg.versions)}
    _fill(agg, dets, recs, images, cls_id, ver_id, week_of)
    agg.filtered_out -= agg.records
    query = (f"{sql.windowed()}SELECT line, ts, image, mv, cls, conf, x1, y1, x2, y2, source, width, height, kind "
             f"FROM r WHERE {kept} AND rec IN (SELECT rec FROM r WHERE kind = 'review') ORDER BY line")
    agg.rows_read = fetched[0] + _add_reviewed(agg, conn, text(query), params)
    return agg


def _fill(agg: BankAggregate, dets, recs, images, cls_id, ver_id, week_of) -> None:
    """The grouped answers into the aggregate's arrays."""
    if dets:
        day, mv, cls, bins, band, count, total = zip(*dets)
        c = np.array([cls_id[k] for k in cls], dtype=np.int64)
        v = np.array([ver_id.get(k, 0) for k in mv], dtype=np.int64)
        w = np.array([week_of[d] for d in day], dtype=np.int64)
        count = np.array(count, dtype=np.int64)
        total = np.array(total, dtype=np.float64)
        band = np.array(band, dtype=np.int64) == 1
        bins = np.minimum(np.array(bins, dtype=np.int64), HIST_BINS - 1)
        np.add.at(agg.c["det"], c, count)
        np.add.at(agg.c["conf"], c, total)
        np.add.at(agg.c["band"], c[band], count[band])
        np.add.at(agg.hist, (c, bins), count)
        for table, row in ((agg.v, v), (agg.w, w)):
            np.add.at(table["det"], (row, c), count)
            np.add.at(table["conf"], (row, c), total)
            np.add.at(table["band"], (row[band], c[band]), count[band])
    for day, mv, count, scans in recs:
        agg.v_records[ver_id.get(mv, 0)] += int(count)
        agg.w_records[week_of[day]] += int(count)
        agg.records += int(count)
        agg.scan_records += int(scans or 0)
    for cls, count in images:
        agg.c["images"][cls_id[cls]] += int(count)


def _add_reviewed(agg: BankAggregate, conn, query, params: dict[str, Any]) -> int:
    """The reviewed records' rows, streamed in chunks, checked and matched as a file's
    (``BankAggregate.add_reviews``); returns the rows read."""
    parts = Parts(None, None, None)

    def flush() -> None:
        bank = parts.build(Path("(database)"), "rows")
        if bank.records:
            cls_id = np.array([agg.classes.index(c) for c in bank.classes], dtype=np.int64)
            agg.add_reviews(bank, cls_id[bank.det_cls] if len(bank.det_cls) else np.zeros(0, np.int64), cls_id)

    frames = pd.read_sql_query(query, conn.execution_options(stream_results=True), params=params,
                               chunksize=REVIEW_CHUNK_ROWS)
    return rows_in_chunks((frame.set_axis(list(ROW_COLUMNS), axis=1) for frame in frames), parts, flush)

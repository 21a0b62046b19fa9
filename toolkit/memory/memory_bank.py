"""Read the memory bank (JSONL, JSON array, CSV, SQLite, Parquet, a database URL) into frames.

The detection system logs one record per inspected image (schema: memory-bank/README.md). Every
format becomes the same frames (``toolkit.memory.bank_table.MemoryBank``), so an analysis of the same
records gives the same answer in every format. A malformed record (broken JSON, a missing required
field, a wrong type, a bad bbox, a confidence outside 0..1, an unreadable timestamp, a class name
over 200 or an image path over 4096 characters) is counted with its line number (row id for a
table) and skipped; it never stops the reading.

- JSONL is parsed in bulk by pyarrow's C JSON reader, a few MB at a time, and checked with
  vectorised masks. Only a block that does not parse (broken JSON, a value of another type) is
  read again in smaller pieces, down to line by line, to name its malformed lines.
- CSV (pandas with the pyarrow engine), SQLite and Parquet are tables of one row per detection:
  consecutive rows of one timestamp, image and model version form a record (``records_from_rows``).
- A database URL is read by ``toolkit.memory.memory_bank_sql``.

Usage (from code):
    bank = read_memory_bank("memory-bank/detections.jsonl", since=..., until=...)
    bank.table, bank.boxes, bank.labels, bank.malformed       # frames + accounting
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.memory.bank_table import (ALL_COLUMNS, BOX, CSV_COLUMNS, MAX_CLASS_CHARS, MAX_DETECTIONS, MAX_IMAGE_CHARS,
                                       MAX_LINE_BYTES, REQUIRED_COLUMNS, SQLITE_TABLE, MemoryBank, Parts,
                                       check_parquet_schema, duplicate_columns, keep_mask)
from toolkit.memory.bank_aggregate import BankAggregate
from toolkit.memory.bank_rows import iso_seconds, records_from_rows, rows_in_chunks
from toolkit.core.errors import UserError

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "json", "csv", "sqlite", "parquet")
CHUNK_BYTES = 1 << 24      # JSONL parsed 16 MB at a time
PIECE_BYTES = 1 << 20      # a block that does not parse is parsed again in pieces of 1 MB
PARSE_THREADS = min(4, os.cpu_count() or 1)
CHUNK_ROWS = 200_000       # rows of a table (CSV, SQLite, Parquet, database) per chunk when aggregating
MIN_KEPT = 2000            # candidates kept per class and queue for an --export (20 x its size, at least this)
SPLIT_TRIES = 20           # bad lines in a piece before the rest of it is read line by line


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:100]


# --- JSONL ------------------------------------------------------------------------------------------

def _schema():
    import pyarrow as pa

    box = ("bbox", pa.list_(pa.float64()))
    det = pa.struct([("class", pa.string()), ("confidence", pa.float64()), box])
    label = pa.struct([("class", pa.string()), box])
    return pa.schema([("timestamp", pa.string()), ("image", pa.string()), ("model_version", pa.string()),
                      ("source", pa.string()), ("image_width", pa.int64()), ("image_height", pa.int64()),
                      ("detections", pa.list_(det)), ("review", pa.struct([("labels", pa.list_(label))]))])


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _name_ok(names) -> np.ndarray:
    import pyarrow.compute as pc

    length = _np(pc.utf8_length(names).fill_null(0))
    return (length > 0) & (length <= MAX_CLASS_CHARS)


def _boxes(items) -> tuple[np.ndarray, np.ndarray]:
    """(n x 4 boxes, ok) of a struct array's ``bbox`` lists: ok = 4 numbers with x1 < x2, y1 < y2."""
    import pyarrow.compute as pc

    bbox = items.field("bbox")
    n4 = _np(pc.list_value_length(bbox).fill_null(0)) == 4
    start = _np(bbox.offsets)[:-1]
    values = _np(bbox.values) if len(bbox.values) else np.zeros(1)
    take = np.where(n4, start, 0)[:, None] + np.arange(4)
    box = values[np.minimum(take, len(values) - 1)]
    with np.errstate(invalid="ignore"):
        ok = n4 & _np(items.is_valid()) & _np(bbox.is_valid()) & (box[:, 0] < box[:, 2]) & (box[:, 1] < box[:, 3])
    return box, ok


def _rows_of(parent: np.ndarray, bad: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(parent[bad], minlength=n) > 0


def _arrow_chunk(tab, lines: np.ndarray, parts: Parts) -> np.ndarray:
    """Check a parsed block in bulk and keep its good records; returns the rows to check one by one."""
    import pyarrow.compute as pc

    n = tab.num_rows
    ts, ok = iso_seconds(tab.column("timestamp"))
    image_len = _np(pc.utf8_length(tab.column("image")).fill_null(0))
    ok = ok & ((image_len > 0) & (image_len <= MAX_IMAGE_CHARS))
    ok = ok & ~_np(pc.match_substring(tab.column("image"), "\x00").fill_null(False))
    for name in ("image_width", "image_height"):
        col = tab.column(name)
        ok = ok & (_np(pc.or_kleene(pc.is_null(col), pc.greater(col, 0)).fill_null(False)))
    dets = tab.column("detections").combine_chunks()
    ok = ok & (_np(dets.is_valid())) & (_np(pc.list_value_length(dets).fill_null(0)) <= MAX_DETECTIONS)
    items = pc.list_flatten(dets)
    parent = _np(pc.list_parent_indices(dets)).astype(np.int64)
    box, d_ok = _boxes(items)
    conf = _np(items.field("confidence").fill_null(-1.0))
    d_ok = d_ok & (_name_ok(items.field("class")) & (conf >= 0.0) & (conf <= 1.0))
    ok = ok & (~_rows_of(parent, ~d_ok, n))
    review = tab.column("review").combine_chunks()
    labels = review.field("labels")
    reviewed = _np(review.is_valid()) & _np(labels.is_valid())
    ok = ok & (_np(pc.list_value_length(labels).fill_null(0)) <= MAX_DETECTIONS)
    l_items = pc.list_flatten(labels)
    l_parent = _np(pc.list_parent_indices(labels)).astype(np.int64)
    l_box, l_ok = _boxes(l_items)
    l_ok = l_ok & (_name_ok(l_items.field("class")))
    l_keep = reviewed[l_parent] if len(l_parent) else np.zeros(0, bool)
    ok = ok & (~_rows_of(l_parent, l_keep & ~l_ok, n))
    version = tab.column("model_version").to_pandas()
    keep = keep_mask(ts, version, parts.since, parts.until, parts.model_version)
    parts.filtered_out += int((ok & ~keep).sum())
    kept = ok & keep
    new = np.cumsum(kept) - 1
    d_sel, l_sel = kept[parent], l_keep & kept[l_parent]
    table = pd.DataFrame({
        "line": lines[kept], "ts": ts[kept], "image": tab.column("image").filter(kept).to_pandas(),
        "version": version[kept].reset_index(drop=True),
        "source": tab.column("source").filter(kept).to_pandas(),
        "width": _np(tab.column("image_width").fill_null(0))[kept],
        "height": _np(tab.column("image_height").fill_null(0))[kept], "reviewed": reviewed[kept]}, copy=False)
    boxes = pd.DataFrame({"record": new[parent[d_sel]], "cls": _category(items.field("class").filter(d_sel)),
                          "conf": conf[d_sel], **dict(zip(BOX, box[d_sel].T))}, copy=False)
    labs = pd.DataFrame({"record": new[l_parent[l_sel]], "cls": _category(l_items.field("class").filter(l_sel)),
                         **dict(zip(BOX, l_box[l_sel].T))}, copy=False)
    parts.add_frames(table, boxes, labs)
    return np.flatnonzero(~ok)


def _category(names) -> pd.Categorical:
    """Strings as a categorical (a class name repeats a million times; its code is what counts)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(names)
    return pd.Categorical.from_codes(_np(encoded.indices), categories=encoded.dictionary.to_pylist())


def _python_lines(data: bytes, first_line: int, parts: Parts, eof: bool) -> None:
    """A block line by line (the record-by-record check gives each malformed line its reason)."""
    import orjson

    for number, raw in enumerate(data.splitlines(keepends=True), first_line):
        if number == 1 and raw[:3] == b"\xef\xbb\xbf":  # a BOM from a Windows editor
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if eof and raw[-1:] != b"\n":  # the last line, unterminated
                parts.malformed.add(number, "incomplete last line (a writer is still writing it, or it was "
                                            f"cut off by a crash): {_short(exc)}")
            else:
                parts.malformed.add(number, f"broken JSON: {_short(exc)}")
            continue
        parts.add_object(obj, number)


def _parse(data: bytes, block_size: int):
    """pyarrow's JSON reader over ``data``: (table, None) or (None, the row it failed at, if it says)."""
    import io
    import re

    import pyarrow as pa
    import pyarrow.json as pj

    try:
        return pj.read_json(io.BytesIO(data), read_options=pj.ReadOptions(block_size=block_size),
                            parse_options=pj.ParseOptions(explicit_schema=_schema(),
                                                          unexpected_field_behavior="ignore")), None
    except pa.ArrowInvalid as exc:
        found = re.search(r"in row (\d+)", str(exc))
        return None, int(found.group(1)) if found else None


def _pieces(data: bytes, first_line: int, eof: bool) -> list[tuple[bytes, int, bool]]:
    """``data`` (whole lines) cut into pieces of about PIECE_BYTES: (bytes, first line, ends the file)."""
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start + PIECE_BYTES)
        end = len(data) if end < 0 else end + 1
        out.append((data[start:end], first_line, eof and end == len(data)))
        first_line += data.count(b"\n", start, end)
        start = end
    return out


def _jsonl_capped(data: bytes, first_line: int, parts: Parts, eof: bool, pool) -> None:
    """``_jsonl_block`` for the lines of ``data`` up to ``MAX_LINE_BYTES``; a longer one is malformed, unparsed."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    bounds = np.concatenate([[-1], ends, [len(data)] if len(data) and data[-1:] != b"\n" else []]).astype(np.int64)
    huge = np.flatnonzero(np.diff(bounds) - 1 > MAX_LINE_BYTES)
    start, line = 0, first_line
    for k in huge.tolist():
        head_end = int(bounds[k]) + 1
        if head_end > start:
            _jsonl_block(data[start:head_end], line, parts, False, pool)
        parts.malformed.add(first_line + k, _too_long_line())
        start, line = int(bounds[k + 1]) + 1, first_line + k + 1
    if start < len(data):
        _jsonl_block(data[start:], line, parts, eof, pool)


def _too_long_line() -> str:
    return f"a line of more than {MAX_LINE_BYTES:,} bytes: over the record size limit, left unread"


def _jsonl_block(data: bytes, first_line: int, parts: Parts, eof: bool, pool) -> None:
    """A block of whole lines, parsed piece by piece on the pool's threads (pyarrow frees the GIL);
    the pieces that parse are checked together, the others are taken apart (``_jsonl_piece``)."""
    pieces = _pieces(data, first_line, eof)
    good = []
    for (piece, line, last), (tab, _) in zip(pieces, pool.map(lambda p: _parse(p[0], len(p[0]) + 1), pieces)):
        n_lines = piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
        if tab is not None and tab.num_rows == n_lines:
            good.append((tab, piece, line, last))
        else:
            _jsonl_piece(piece, line, parts, last)
    if good:
        import pyarrow as pa

        tab = pa.concat_tables([g[0] for g in good])
        lines = np.concatenate([np.arange(line, line + t.num_rows, dtype=np.int64) for t, _, line, _ in good])
        _checked(tab, lines, [(piece, line, last) for _, piece, line, last in good], parts)


def _jsonl_piece(data: bytes, first_line: int, parts: Parts, eof: bool) -> None:
    """A piece parsed as one block, so that a parse error names its row: the rows before it are
    parsed again in bulk, the bad line is read on its own, and the rest goes on the same way."""
    for _ in range(SPLIT_TRIES):
        if not data:
            return
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
        n_lines = len(ends) + (0 if data.endswith(b"\n") else 1)
        tab, row = _parse(data, len(data) + 1)
        if tab is not None and tab.num_rows == n_lines:
            _checked(tab, np.arange(first_line, first_line + n_lines, dtype=np.int64), [(data, first_line, eof)],
                     parts)
            return
        if tab is not None or row is None or row >= n_lines:  # blank lines, or no row named
            break
        head_end = int(ends[row - 1]) if row else 0
        line_end = int(ends[row]) if row < len(ends) else len(data)
        head, _ = _parse(data[:head_end], head_end + 1) if row else (None, None)
        if head is not None and head.num_rows == row:
            _checked(head, np.arange(first_line, first_line + row, dtype=np.int64), [(data[:head_end], first_line,
                                                                                       False)], parts)
        else:
            _python_lines(data[:head_end], first_line, parts, False)
        _python_lines(data[head_end:line_end], first_line + row, parts, eof and line_end == len(data))
        data, first_line = data[line_end:], first_line + row + 1
    _python_lines(data, first_line, parts, eof)


def _checked(tab, lines: np.ndarray, pieces: list[tuple[bytes, int, bool]], parts: Parts) -> None:
    """Check parsed rows in bulk; the rows a mask refused are read again from their piece, on their own,
    so that the record-by-record check says why (or keeps them)."""
    again = _arrow_chunk(tab, lines, parts)
    if len(again):
        starts = np.array([line for _, line, _ in pieces])
        split = {}
        for number in lines[again].tolist():
            k = int(np.searchsorted(starts, number, side="right")) - 1
            piece, line, last = pieces[k]
            rows = split.setdefault(k, piece.splitlines(keepends=True))
            _python_lines(rows[number - line], number, parts, last and number - line == len(rows) - 1)


def _read_jsonl(path: Path, parts: Parts, chunk_bytes: int = CHUNK_BYTES, flush=None) -> None:
    """Block by block; ``flush()`` after each block takes the records read so far (chunked reading).
    A line over ``MAX_LINE_BYTES`` is a malformed record, skipped unread (dropped as it streams past)."""
    from concurrent.futures import ThreadPoolExecutor

    with open(path, "rb") as fh, ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        rest, line, skipping = b"", 1, False
        while True:
            more = fh.read(chunk_bytes)
            if skipping:  # the rest of an over-long line
                end = more.find(b"\n")
                if more and end < 0:
                    continue
                skipping, more, line = False, (more[end + 1:] if more else b""), line + 1
            data = rest + more
            huge = data.find(b"\n")
            if (huge < 0 and len(data) > MAX_LINE_BYTES) or huge > MAX_LINE_BYTES:
                parts.malformed.add(line, _too_long_line())
                if huge < 0:
                    rest, skipping = b"", True
                else:
                    rest, line = data[huge + 1:], line + 1
                continue
            if not more:
                if data:
                    _jsonl_capped(data, line, parts, True, pool)
                if flush:
                    flush()
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            _jsonl_capped(block, line, parts, False, pool)
            line += block.count(b"\n")
            if flush:
                flush()


def _read_json_array(path: Path, parts: Parts) -> None:
    """A JSON array of records, element by element by the standard decoder: each record's line is
    where it starts, and a broken element ends the reading with its line named."""
    import json

    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.lstrip().startswith("["):
        raise UserError(f"{path}: a .json memory bank must be one JSON array of records (or use .jsonl)")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    while True:  # element by element: each record's line is where it starts
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            parts.malformed.add(line, "the JSON array is not closed with ']' (file cut short?)")
            return
        if text[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            parts.malformed.add(line, f"broken JSON ({exc.msg}); the rest of the array cannot be read")
            return
        parts.add_object(obj, line)
        pos = end


def _frame(df: pd.DataFrame, where: str, line: np.ndarray) -> pd.DataFrame:
    """The reader's columns as ROW_COLUMNS (absent optional ones null); UserError without a required one."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}; the columns are {','.join(CSV_COLUMNS)} "
                        "(see memory-bank/README.md)")
    out = df.assign(line=line, **{c: None for c in ALL_COLUMNS if c not in df.columns})  # columns by name
    return out


def _csv_header(path: Path) -> list[str]:
    """The CSV's column names; UserError when it cannot be read or lacks a required column."""
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig", encoding_errors="replace").columns.tolist()
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read the CSV header ({_short(exc)})") from None
    duplicate_columns(header, f"{path}: the CSV header")  # pandas would read the first without a word
    if any(c not in header for c in REQUIRED_COLUMNS):
        _frame(pd.DataFrame(columns=header), f"{path}: CSV header", np.zeros(0))
    return header


def _read_csv(path: Path) -> pd.DataFrame:
    header = _csv_header(path)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    text = [c for c in ("timestamp", "image", "model_version", "class", "source", "kind", "image_width",
                        "image_height") if c in header]
    try:  # pyarrow's CSV reader (what pandas' pyarrow engine runs), text columns kept as text
        df = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in text}, null_values=[""], strings_can_be_null=True)).to_pandas(split_blocks=True, self_destruct=True)
    except (pa.ArrowInvalid, UnicodeDecodeError):  # rows of another length, odd bytes: pandas' python engine
        df = pd.read_csv(path, engine="python", encoding="utf-8-sig", encoding_errors="replace",
                         dtype={c: str for c in text}, keep_default_na=False, na_values=[""],
                         on_bad_lines=lambda fields: (fields + [""] * len(header))[:len(header)])
    return _frame(df, f"{path}: CSV header", np.arange(2, len(df) + 2, dtype=np.int64))


def _read_sqlite(path: Path) -> pd.DataFrame:
    [df] = list(_sqlite_frames(path, None))
    return df


def _sqlite_frames(path: Path, chunk_rows: int | None):
    """The rows in rowid order: one frame, or frames of ``chunk_rows`` rows, read one by one."""
    import sqlite3

    uri = f"file:{path.resolve().as_posix()}?mode=ro"  # read-only: the user's database is never written
    try:
        con = sqlite3.connect(uri, uri=True)
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path}: cannot open as SQLite ({exc})") from None
    try:
        table = SQLITE_TABLE if SQLITE_TABLE in tables else (tables[0] if len(tables) == 1 else None)
        if table is None:
            raise UserError(f"{path}: no table '{SQLITE_TABLE}' (tables: {', '.join(tables) or 'none'}); "
                            "see memory-bank/README.md for the layout")
        columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise UserError(f"{path}: table '{table}' lacks column(s) {', '.join(missing)} (see memory-bank/README.md)")
        select = ", ".join(f'"{c}"' if c in columns else f'NULL AS "{c}"' for c in ALL_COLUMNS)
        query = f'SELECT rowid AS line, {select} FROM "{table}" ORDER BY rowid'
        if chunk_rows is None:
            yield pd.read_sql_query(query, con)
        else:
            yield from pd.read_sql_query(query, con, chunksize=chunk_rows)
    finally:
        con.close()


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.concat(list(_parquet_chunks(path, None)), ignore_index=True)


# --- format detection and the public entry point ------------------------------------------------

def detect_format(path: Path) -> str:
    """jsonl / json / csv / sqlite / parquet from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".db": "sqlite", ".sqlite": "sqlite",
                 ".sqlite3": "sqlite", ".parquet": "parquet"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{") or not stripped:
        return "jsonl"
    return "csv"


def read_memory_bank(path: str | Path, fmt: str | None = None, since: float | None = None,
                     until: float | None = None, model_version: str | None = None,
                     image_root: Path | None = None) -> MemoryBank:
    """Read a memory bank of any accepted format; ``since``/``until`` are epoch seconds, both inclusive.

    ``path`` may also be a database URL (``postgresql://user@host/db?table=detections``, see
    toolkit/memory/memory_bank_sql.py); relative image paths in a database are taken relative to
    ``image_root`` (the analyzer passes ROOT/memory-bank, the folder of the default file).
    """
    from toolkit.memory import memory_bank_sql as sql
    parts = Parts(since, until, model_version)
    if sql.is_database_url(path):
        loc = sql.parse_url(str(path))
        [frame] = list(sql.read_rows(str(path), since, until, model_version))
        rows = len(frame)
        records_from_rows(frame, parts)
        # ``path`` anchors relative image paths: its parent is image_root
        bank = parts.build(Path(image_root or Path.cwd()).resolve() / "(database)", loc.backend)
        bank.location, bank.rows_read = loc.shown, rows
        logger.debug("read %d record(s) from %d row(s) of %s, %d malformed, %d filtered out",
                     bank.records, rows, loc.shown, bank.skipped, bank.filtered_out)
        return bank
    sql.refuse_url_typo(path)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"memory bank not found: {path} (give --memory-bank PATH, or --scan DIR to build one)")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown memory-bank format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        _read_jsonl(path, parts)
    elif fmt == "json":
        _read_json_array(path, parts)
    else:
        records_from_rows({"csv": _read_csv, "sqlite": _read_sqlite, "parquet": _read_parquet}[fmt](path), parts)
    bank = parts.build(path, fmt)
    logger.debug("read %d record(s) from %s (%s), %d malformed, %d filtered out",
                 bank.records, path, fmt, bank.skipped, bank.filtered_out)
    return bank


# --- chunk by chunk: the figures of a bank beyond memory --------------------------------------------

def _csv_chunks(path: Path, chunk_rows: int):
    """A CSV's rows chunk by chunk (pyarrow's streaming reader, every column as text: a block's type
    guess may not fit the next block); ArrowInvalid when a row does not parse (read it whole then)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(path)
    first = 2
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=max(1 << 16, chunk_rows * 80)),
                            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                                 null_values=[""], strings_can_be_null=True))
    for batch in reader:
        df = batch.to_pandas(split_blocks=True, self_destruct=True)
        yield _frame(df, f"{path}: CSV header", np.arange(first, first + len(df), dtype=np.int64))
        first += len(df)


def _parquet_chunks(path: Path, chunk_rows: int | None):
    """A Parquet file's rows chunk by chunk (None: whole), after its schema is checked (one line if not flat)."""
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        check_parquet_schema(path, source.schema_arrow)
        batches = [source.read()] if chunk_rows is None else source.iter_batches(batch_size=chunk_rows)
    except UserError:
        raise
    except Exception as exc:  # pyarrow's errors have no common base
        raise UserError(f"{path}: cannot read as Parquet ({_short(exc)})") from None
    first = 1
    for batch in batches:
        df = batch.to_pandas()
        yield _frame(df, f"{path}: Parquet file", np.arange(first, first + len(df), dtype=np.int64))
        first += len(df)


def aggregate_memory_bank(path: str | Path, uncertain: tuple[float, float], iou_match: float, fmt: str | None = None,
                          since: float | None = None, until: float | None = None, model_version: str | None = None,
                          chunk_rows: int = CHUNK_ROWS, chunk_bytes: int = CHUNK_BYTES,
                          in_database: bool = True, export: int = 0, image_root: Path | None = None) -> BankAggregate:
    """The analysis figures of a memory bank (``toolkit.memory.bank_aggregate``) read chunk by chunk: memory
    holds one chunk (``chunk_bytes`` of JSONL, ``chunk_rows`` rows of a table) and the running
    figures, whatever the size of the bank; the same figures as ``read_memory_bank`` + analysis.
    A JSON array, and a CSV whose rows do not parse as a table, are read whole. A database computes
    the figures itself when its table allows (``toolkit.memory.bank_sql_aggregate``; ``in_database``).
    ``export``: images an --export will take; the records it may pick are kept (``agg.candidates``)."""
    from toolkit.memory import memory_bank_sql as sql
    from toolkit.memory.bank_candidates import CandidateKeeper

    parts = Parts(since, until, model_version)
    agg = BankAggregate(uncertain, iou_match)
    keeper = CandidateKeeper(uncertain, max(MIN_KEPT, 20 * export)) if export else None

    def flush() -> None:
        bank = parts.build(where, agg.fmt)
        agg.add_bank(bank)
        if keeper is not None:
            keeper.add(bank)

    if sql.is_database_url(path):
        from toolkit.memory.bank_sql_aggregate import aggregate_in_database

        if in_database and not export:
            got = aggregate_in_database(str(path), uncertain, iou_match, since, until, model_version)
            if got is not None:
                return got
        loc = sql.parse_url(str(path))
        where = Path(image_root or Path.cwd()).resolve() / "(database)"   # its parent anchors relative images
        agg.fmt, agg.location = loc.backend, loc.shown
        agg.rows_read = rows_in_chunks(sql.read_rows(str(path), since, until, model_version, chunk_rows), parts, flush)
        return _kept(agg, keeper, where)
    sql.refuse_url_typo(path)
    where = Path(path)
    if not where.is_file():
        raise UserError(f"memory bank not found: {where} (give --memory-bank PATH, or --scan DIR to build one)")
    agg.fmt = fmt or detect_format(where)
    if agg.fmt == "jsonl":
        _read_jsonl(where, parts, chunk_bytes, flush)
        return _kept(agg, keeper, where)
    if agg.fmt == "csv":
        import pyarrow as pa

        try:
            rows_in_chunks(_csv_chunks(where, chunk_rows), parts, flush)
            return _kept(agg, keeper, where)
        except (pa.ArrowInvalid, UnicodeDecodeError):  # rows of another length, odd bytes: read whole
            parts, agg = Parts(since, until, model_version), BankAggregate(uncertain, iou_match, fmt="csv")
            logger.info("%s: rows of another length, read whole", where)
    elif agg.fmt in ("sqlite", "parquet"):
        chunks = _sqlite_frames if agg.fmt == "sqlite" else _parquet_chunks
        rows_in_chunks(chunks(where, chunk_rows), parts, flush)
        return _kept(agg, keeper, where)
    bank = read_memory_bank(where, agg.fmt, since, until, model_version)
    agg.add_bank(bank)
    agg.candidates = bank if export else None
    return agg


def _kept(agg: BankAggregate, keeper, where: Path) -> BankAggregate:
    """The keeper's records as the bank an export picks from (empty when no chunk came)."""
    if keeper is not None:
        agg.candidates = keeper.bank(where, agg.fmt)
    return agg

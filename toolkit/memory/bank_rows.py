"""Tables of one row per detection (CSV, SQLite, Parquet, a database) into the memory bank's frames.

Consecutive rows of one timestamp, image and model version form a record; a review label is a
row with ``kind`` = review (memory-bank/README.md). ``records_from_rows`` checks every value with
vectorised masks; a record that fails one is rebuilt as a schema record and checked one by one
(``toolkit.memory.bank_table.normalise``), which names the bad row and the reason, as for a JSONL line.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from toolkit.memory.bank_table import (BOX, MAX_CLASS_CHARS, MAX_DETECTIONS, MAX_IMAGE_CHARS, ROW_COLUMNS, BadRecord,
                                       Parts, keep_mask, parse_timestamp, too_many, ts_in_range)


# --- timestamps in bulk ---------------------------------------------------------------------------

def iso_seconds(values) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 strings (a pyarrow or pandas column) -> (epoch seconds, parsed mask); naive means UTC.

    pyarrow's cast parses the common forms in C; when any value is of another form, the distinct
    values are parsed by ``datetime.fromisoformat``, the rule of the record-by-record check. A time
    outside the range the toolkit represents (``bank_table.TS_MIN``..``TS_MAX``) is not parsed.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=pa.string(),
                                                                                  from_pandas=True)
    for unit in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            micros = pc.cast(arr, unit).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        seconds = micros.fill_null(0).to_numpy(zero_copy_only=False) / 1e6
        return seconds, micros.is_valid().to_numpy(zero_copy_only=False) & ts_in_range(seconds)
    codes, uniques = pd.factorize(arr.to_numpy(zero_copy_only=False))
    seconds = np.full(len(uniques) + 1, np.nan)
    for i, text in enumerate(uniques):
        try:
            seconds[i] = parse_timestamp(text)
        except BadRecord:
            pass
    got = seconds[codes]   # code -1 (null) takes the NaN at the end
    return np.nan_to_num(got), ~np.isnan(got)


def _text(col: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """A text column with '' as null, and where each value is usable as is (null or a string)."""
    if pd.api.types.is_string_dtype(col) and col.dtype != object:  # pandas' own string type: nulls as NA
        empty = (col == "").fillna(False).to_numpy(dtype=bool)
        return (col.mask(empty) if empty.any() else col), np.ones(len(col), dtype=bool)
    col = col.where(col.notna() & (col != ""), None) if len(col) else col
    ok = col.map(lambda v: v is None or type(v) is str, na_action=None).to_numpy(dtype=bool)
    return col, ok


def _changed(col: pd.Series) -> np.ndarray:
    """Whether each value (after the first) differs from the one before it; null equals null."""
    if isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = pa.array(col.array)
        a, b = arr.slice(1), arr.slice(0, len(arr) - 1)
        differ = pc.fill_null(pc.not_equal(a, b), True).to_numpy(zero_copy_only=False)
        return differ & ~(a.is_null().to_numpy(zero_copy_only=False) & b.is_null().to_numpy(zero_copy_only=False))
    codes = pd.factorize(col)[0]
    return codes[1:] != codes[:-1]


def _numbers(col: pd.Series) -> np.ndarray:
    """Numbers of a column (NaN where null or not a number)."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _sizes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """image_width / image_height: (value, 0 when null; usable as is)."""
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
        null = np.isnan(values)
        ok = null | ((values > 0) & (values == np.floor(values)))
        return np.where(ok & ~null, values, 0).astype(np.int64), ok
    text, is_text = _text(col)
    null = text.isna().to_numpy()
    if is_text.all():
        digits = text.str.isdigit().fillna(False).to_numpy(dtype=bool)
    else:  # a column of mixed values (SQLite without types): whole numbers only
        digits = text.map(lambda v: type(v) is int or (type(v) is str and v.isdigit())).to_numpy(dtype=bool)
    values = np.zeros(len(col), dtype=np.int64)
    values[digits] = text[digits].astype(np.int64).to_numpy()
    return values, null | (digits & (values > 0))


def _lengths(text: pd.Series) -> np.ndarray:
    """Characters of each string (0 for null or another type)."""
    return text.map(lambda v: len(v) if type(v) is str else 0).to_numpy(dtype=np.int64) if text.dtype == object \
        else text.str.len().fillna(0).to_numpy(dtype=np.int64)


def _int_or_text(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value  # the record check reports it


def _csv_float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"{what} must be a number, got {value!r:.40}") from None


def _record_of_rows(rows: list[tuple]) -> tuple[dict, tuple[int, str] | None]:
    """One record's rows (ROW_COLUMNS order, null as None) as a schema record; (line, why) of a bad row."""
    _, ts, image, version, _, _, _, _, _, _, source, width, height, _ = rows[0]
    record: dict[str, Any] = {"detections": []}
    for key, value in (("timestamp", ts), ("image", image), ("model_version", version), ("source", source)):
        if value is not None:
            record[key] = str(value) if key in ("model_version", "source") else value
    for key, value in (("image_width", width), ("image_height", height)):
        if value is not None:
            record[key] = _int_or_text(value)
    for line, _, _, _, name, conf, x1, y1, x2, y2, _, _, _, kind in rows:
        kind = str(kind or "detection").strip().lower()
        try:
            if kind not in ("detection", "review"):
                raise BadRecord(f"kind must be 'detection' or 'review', got {kind!r:.20}")
            if kind == "review":
                labels = record.setdefault("review", {"labels": []})["labels"]
            if name is None:
                continue  # an image with no detection / reviewed, no defect
            box = [_csv_float(v, k) for v, k in zip((x1, y1, x2, y2), BOX)]
            if kind == "review":
                labels.append({"class": str(name), "bbox": box})
            else:
                record["detections"].append({"class": str(name), "confidence": _csv_float(conf, "confidence"),
                                             "bbox": box})
        except BadRecord as exc:
            return record, (line, str(exc))
    return record, None


def _record_starts(cols: dict[str, tuple[pd.Series, np.ndarray]], n: int) -> np.ndarray:
    """Where a record starts: a row whose timestamp, image or model version differs from the row before."""
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    for c in ("timestamp", "image", "model_version"):
        starts[1:] |= _changed(cols[c][0])
    return starts


def last_record_start(df: pd.DataFrame) -> int:
    """The first row of the last record of ``df`` (rows of ROW_COLUMNS): a chunked reader carries the
    rows from there to the next chunk, where the record may go on."""
    if not len(df):
        return 0
    starts = _record_starts({c: _text(df[c]) for c in ("timestamp", "image", "model_version")}, len(df))
    return int(np.flatnonzero(starts)[-1])


def records_from_rows(df: pd.DataFrame, parts: Parts) -> None:
    """Rows of ROW_COLUMNS (one per detection or review label; '' or null alike) into ``parts``.

    Consecutive rows of one timestamp, image and model version form a record. Records whose every
    value passes the masks go into the frames in bulk; the others are rebuilt as schema records
    and checked one by one, which names the bad row (its line) and the reason.
    """
    if not len(df):
        return
    line = df["line"].to_numpy(dtype=np.int64)
    cols = {c: _text(df[c]) for c in ("timestamp", "image", "model_version", "class", "source", "kind")}
    starts = _record_starts(cols, len(df))
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    n = len(first)
    # record level: the record's first row
    ts_col = df["timestamp"].iloc[first]
    if pd.api.types.is_datetime64_any_dtype(ts_col):
        stamps = ts_col.dt.tz_localize("UTC") if ts_col.dt.tz is None else ts_col
        ts = stamps.astype("int64").to_numpy() / 10 ** {"s": 0, "ms": 3, "us": 6, "ns": 9}[stamps.dt.unit]
        ok = ts_col.notna().to_numpy() & ts_in_range(ts)
    else:
        text, is_text = _text(ts_col)
        ts, ok = iso_seconds(text)
        ok = ok & (is_text)
    image, image_ok = cols["image"][0].iloc[first], cols["image"][1][first]
    length = _lengths(image)
    ok = ok & (image_ok & (length > 0) & (length <= MAX_IMAGE_CHARS))
    ok = ok & ~image.map(lambda v: type(v) is str and "\x00" in v).to_numpy(dtype=bool) if image.dtype == object \
        else ok & ~image.str.contains("\x00", regex=False).fillna(False).to_numpy(dtype=bool)
    ok = ok & (cols["model_version"][1][first] & cols["source"][1][first])
    width, w_ok = _sizes(df["image_width"].iloc[first])
    height, h_ok = _sizes(df["image_height"].iloc[first])
    ok = ok & (w_ok & h_ok)
    # row level
    kind, kind_ok = cols["kind"]
    review = (kind == "review").to_numpy(dtype=bool)
    row_ok = kind_ok & (kind.isna().to_numpy() | review | (kind == "detection").to_numpy(dtype=bool))
    name, name_ok = cols["class"]
    has = name.notna().to_numpy()
    name_len = _lengths(name)
    conf = _numbers(df["confidence"])
    box = np.stack([_numbers(df[k]) for k in BOX], axis=1)
    with np.errstate(invalid="ignore"):
        good_box = (box[:, 0] < box[:, 2]) & (box[:, 1] < box[:, 3])
        good_det = (conf >= 0) & (conf <= 1)
    row_ok = row_ok & (name_ok & (~has | ((name_len <= MAX_CLASS_CHARS) & good_box & (review | good_det))))
    ok = ok & (np.bincount(group[~row_ok], minlength=n) == 0)
    # the detections cap: such a record is reported from its counts, never rebuilt row by row
    n_det, n_lab = np.bincount(group[has & ~review], minlength=n), np.bincount(group[has & review], minlength=n)
    over = (n_det > MAX_DETECTIONS) | (n_lab > MAX_DETECTIONS)
    ok = ok & ~over
    version = cols["model_version"][0].iloc[first].reset_index(drop=True)
    keep = keep_mask(ts, version, parts.since, parts.until, parts.model_version)
    parts.filtered_out += int((ok & ~keep).sum())
    kept = ok & keep
    new = np.cumsum(kept) - 1
    row_kept = kept[group]
    reviewed = np.bincount(group[review & row_kept], minlength=n) > 0
    table = pd.DataFrame({"line": line[first][kept], "ts": ts[kept], "image": image[kept].array,
                          "version": version[kept].array, "source": cols["source"][0].iloc[first][kept].array,
                          "width": width[kept], "height": height[kept], "reviewed": reviewed[kept]}, copy=False)
    d_sel = row_kept & has & ~review
    l_sel = row_kept & has & review
    codes, uniques = pd.factorize(name)
    names = pd.Index(np.asarray(uniques, dtype=object), dtype=object)
    boxes = pd.DataFrame({"record": new[group[d_sel]], "cls": pd.Categorical.from_codes(codes[d_sel], names),
                          "conf": conf[d_sel],
                          **dict(zip(BOX, box[d_sel].T))}, copy=False)
    labels = pd.DataFrame({"record": new[group[l_sel]], "cls": pd.Categorical.from_codes(codes[l_sel], names),
                           **dict(zip(BOX, box[l_sel].T))}, copy=False)
    parts.add_frames(table, boxes, labels)
    for g in np.flatnonzero(over).tolist():
        what = ("detections", n_det[g]) if n_det[g] > MAX_DETECTIONS else ("review labels", n_lab[g])
        parts.malformed.add(int(line[first[g]]), too_many(*what))
    bad = np.flatnonzero(~ok & ~over)
    if len(bad):
        ends = np.append(first[1:], len(df))
        sizes = ends[bad] - first[bad]
        at = np.concatenate([[0], np.cumsum(sizes)])
        take = np.repeat(first[bad] - at[:-1], sizes) + np.arange(at[-1])   # the bad records' rows only
        frame = df.iloc[take][list(ROW_COLUMNS)].astype(object)
        frame = frame.where(frame.notna() & (frame != ""), None)
        for k, g in enumerate(bad.tolist()):
            rows = list(frame.iloc[at[k]:at[k + 1]].itertuples(index=False, name=None))
            record, problem = _record_of_rows(rows)
            if problem is not None:
                parts.malformed.add(*problem)
            else:
                parts.add_object(record, int(line[first[g]]))


MAX_RECORD_ROWS = 2 * MAX_DETECTIONS + 2   # detections, review labels, and the two rows of an empty record


def _continues(df: pd.DataFrame, tail: pd.DataFrame) -> int:
    """How many leading rows of ``df`` continue the record whose last row is ``tail``."""
    both = pd.concat([tail, df], ignore_index=True)
    starts = _record_starts({c: _text(both[c]) for c in ("timestamp", "image", "model_version")}, len(both))
    new = np.flatnonzero(starts[1:])
    return int(new[0]) if len(new) else len(df)


def rows_in_chunks(frames, parts: Parts, flush) -> int:
    """Tables of rows chunk by chunk into ``parts``; the last record of a chunk waits for the next
    (its rows may go on there). Returns the rows read.

    A record whose rows pass ``MAX_RECORD_ROWS`` is malformed (over the detections cap): it is
    counted at its first row and its further rows are dropped as they come, so memory holds at
    most a chunk and one capped record, never the 10 million rows of one hostile record.
    """
    carry, rows, skip = None, 0, None
    for df in frames:
        rows += len(df)
        if skip is not None and len(df):   # the rest of an over-long record
            drop = _continues(df.reset_index(drop=True), skip)
            if drop == len(df):
                skip = df.iloc[-1:].reset_index(drop=True)
                continue
            df, skip = df.iloc[drop:].reset_index(drop=True), None
        if carry is not None and len(carry):
            df = pd.concat([carry, df], ignore_index=True)
        cut = last_record_start(df)
        if len(df) - cut > MAX_RECORD_ROWS:
            if cut:
                records_from_rows(df.iloc[:cut].reset_index(drop=True), parts)
                flush()
            parts.malformed.add(int(df["line"].iloc[cut]), f"a record of more than {MAX_RECORD_ROWS:,} rows: over "
                                                            f"the limit of {MAX_DETECTIONS:,} detections")
            carry, skip = None, df.iloc[-1:].reset_index(drop=True)
            continue
        if cut:
            records_from_rows(df.iloc[:cut].reset_index(drop=True), parts)
            flush()
        carry = df.iloc[cut:].reset_index(drop=True)
    if carry is not None and len(carry):
        records_from_rows(carry, parts)
    flush()
    return rows

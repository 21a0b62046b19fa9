"""The memory bank as tables: the schema, the frames every reader fills, and the record check.

Every source (JSONL, JSON array, CSV, SQLite, Parquet, a database) ends up in the same three
pandas frames of a ``MemoryBank`` (schema of a record: memory-bank/README.md):

- ``table``: one row per logged image: ``line`` (where the record starts: file line, row id or
  primary key), ``ts`` (epoch seconds, UTC), ``image``, ``version`` / ``source`` (codes into
  ``versions`` / ``sources``, -1 none), ``width`` / ``height`` (0 unknown), ``reviewed``;
- ``boxes``: one row per detection: ``record`` (row of ``table``), ``cls`` (code into
  ``classes``), ``conf``, ``x1 y1 x2 y2`` (pixels);
- ``labels``: one row per review label: ``record``, ``cls``, ``x1 y1 x2 y2``.

Readers check records in bulk (vectorised masks) and hand only the records that fail a mask to
``normalise``, the one record-by-record check, which gives the reason a malformed record is
skipped (or accepts it: the masks are only ever stricter). ``Parts`` collects both kinds and
builds the frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from toolkit.core.errors import UserError

CSV_COLUMNS = ("timestamp", "image", "model_version", "class", "confidence", "x1", "y1", "x2", "y2")
CSV_OPTIONAL_COLUMNS = ("source", "image_width", "image_height", "kind")
ALL_COLUMNS = CSV_COLUMNS + CSV_OPTIONAL_COLUMNS
SQLITE_TABLE = "detections"
REQUIRED_COLUMNS = ("timestamp", "image", "class", "confidence", "x1", "y1", "x2", "y2")
# a table's columns in reading order (line: rowid / primary key / row number)
ROW_COLUMNS = ("line",) + ALL_COLUMNS
BOX = ["x1", "y1", "x2", "y2"]
MALFORMED_LIST_CAP = 200  # the list in results is capped; the count stays exact
MAX_CLASS_CHARS = 200     # a longer class name is a malformed record (one huge row must not stall the analysis)
MAX_IMAGE_CHARS = 4096    # a longer image path likewise
MAX_DETECTIONS = 10_000   # detections (and review labels) in one record: more is a malformed record
MAX_LINE_BYTES = 1 << 24  # a JSONL line over 16 MB is one too, unread (10,000 detections take about 1 MB)
_UTC = timezone.utc
# the times the toolkit can represent: a UTC datetime (years 1 to 9999, after the offset is applied)
TS_MIN = datetime(1, 1, 1, tzinfo=_UTC).timestamp()
TS_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=_UTC).timestamp()
TS_RANGE = "0001-01-01 to 9999-12-31 in UTC"


class BadRecord(ValueError):
    """A record that breaks the schema; the message is the reason shown to the user."""


@dataclass
class MalformedLog:
    """Exact count of skipped records plus the first ``cap`` of them (by line) as {line, reason}."""

    cap: int = MALFORMED_LIST_CAP
    count: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        """Readers check blocks in bulk first and single lines after: items may come out of order."""
        from bisect import insort

        self.count += 1
        if len(self.items) < self.cap or line < self.items[-1]["line"]:
            insort(self.items, {"line": int(line), "reason": reason}, key=lambda item: item["line"])
            del self.items[self.cap:]


@dataclass
class MemoryBank:
    """Validated records as frames (module docstring), with numpy views the analysis uses."""

    path: Path
    fmt: str
    table: pd.DataFrame
    boxes: pd.DataFrame
    labels: pd.DataFrame
    classes: list[str]
    versions: list[str]
    sources: list[str]
    malformed: MalformedLog
    filtered_out: int = 0
    location: str = ""      # a database URL (password masked); "" for a file (see ``path``)
    rows_read: int = 0      # rows a database sent (after its WHERE clause); 0 for a file

    @property
    def records(self) -> int:
        return len(self.table)

    @property
    def skipped(self) -> int:
        return self.malformed.count

    def _col(self, frame: pd.DataFrame, name: str) -> np.ndarray:
        return frame[name].to_numpy()

    line = property(lambda self: self._col(self.table, "line"))
    ts = property(lambda self: self._col(self.table, "ts"))
    version = property(lambda self: self._col(self.table, "version"))
    source = property(lambda self: self._col(self.table, "source"))
    width = property(lambda self: self._col(self.table, "width"))
    height = property(lambda self: self._col(self.table, "height"))
    det_cls = property(lambda self: self._col(self.boxes, "cls"))
    det_conf = property(lambda self: self._col(self.boxes, "conf"))

    @cached_property
    def image(self) -> list[str]:
        return self.table["image"].tolist()

    @cached_property
    def det_box(self) -> np.ndarray:
        return self.boxes[BOX].to_numpy(dtype=np.float64)

    @cached_property
    def det_start(self) -> np.ndarray:
        """Record i's detections are rows ``det_start[i]:det_start[i+1]`` of ``boxes``."""
        counts = np.bincount(self.boxes["record"].to_numpy(), minlength=self.records)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def det_record(self) -> np.ndarray:
        """The record index of every detection."""
        return self.boxes["record"].to_numpy()

    @cached_property
    def reviews(self) -> dict[int, list[tuple[int, float, float, float, float]]]:
        """{record: [(class, x1, y1, x2, y2), ...]} for reviewed records (empty list: no defect seen)."""
        out: dict[int, list] = {int(r): [] for r in np.flatnonzero(self.table["reviewed"].to_numpy())}
        for r, *label in self.labels[["record", "cls"] + BOX].itertuples(index=False, name=None):
            out[r].append((int(label[0]), *label[1:]))
        return out


# --- the columns of a table file (CSV, Parquet) ---------------------------------------------------------

def duplicate_columns(names: list[str], where: str) -> None:
    """UserError for a known column named twice (also as pandas renames the second: ``confidence.1``)."""
    base = [n.rsplit(".", 1)[0] if n not in ALL_COLUMNS and n.rsplit(".", 1)[-1].isdigit() else n for n in names]
    twice = sorted({n for n in base if n in ALL_COLUMNS and base.count(n) > 1})
    if twice:
        raise UserError(f"{where} names column(s) {', '.join(twice)} twice; keep one of each "
                        "(see memory-bank/README.md)")


def check_parquet_schema(path: Path, schema) -> None:
    """One line for a Parquet file whose columns are not the flat layout: a list, a struct or a map
    where a text or a number belongs (a hostile schema must not end in a raw TypeError)."""
    import pyarrow as pa

    duplicate_columns(list(schema.names), f"{path}: the Parquet file")
    for field in schema:
        if field.name not in ALL_COLUMNS:
            continue
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        flat = (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_floating(kind) or pa.types.is_null(kind) or pa.types.is_decimal(kind)
                or (field.name == "timestamp" and (pa.types.is_timestamp(kind) or pa.types.is_date(kind))))
        if not flat:
            raise UserError(f"{path}: column '{field.name}' of the Parquet file is {str(kind)[:60]}; it must be "
                            f"{'a text or a timestamp' if field.name == 'timestamp' else 'a text or a number'} "
                            "(one row per detection, see memory-bank/README.md)")


# --- the record-by-record check: the reason of every malformed record -----------------------------

def ts_in_range(seconds: np.ndarray) -> np.ndarray:
    """Which epoch seconds the toolkit can represent (``TS_MIN``..``TS_MAX``); NaN is not."""
    with np.errstate(invalid="ignore"):
        return (seconds >= TS_MIN) & (seconds <= TS_MAX)


def _out_of_range(value: Any) -> BadRecord:
    return BadRecord(f"timestamp {str(value)[:40]!r} is out of range: the toolkit takes {TS_RANGE}")


def parse_timestamp(value: Any) -> float:
    """ISO 8601 (date or date-time; naive means UTC) to epoch seconds; BadRecord otherwise.

    A ``datetime`` (a database ``timestamp`` column) is taken as is, naive meaning UTC as well.
    A time outside ``TS_MIN``..``TS_MAX`` once its offset is applied (``0001-01-01T00:00:00+05:00``
    is year 0 in UTC; ``0000-01-01``) is a malformed record too, never an OverflowError later.
    """
    if isinstance(value, datetime):
        moment = value
    elif type(value) is not str:
        raise BadRecord(f"timestamp must be an ISO 8601 string, got {type(value).__name__}")
    elif value.endswith(" BC") or value in ("infinity", "-infinity"):  # from a database (memory_bank_sql)
        raise _out_of_range(value)
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            if "out of range" in str(exc) and value[:4].isdigit():  # year 0: ISO in form, not representable
                raise _out_of_range(value) from None
            raise BadRecord(f"timestamp {value[:40]!r} is not ISO 8601 (e.g. 2026-03-01T08:15:02Z)") from None
    try:
        seconds = (moment if moment.tzinfo is not None else moment.replace(tzinfo=_UTC)).timestamp()
    except (OverflowError, ValueError, OSError):
        raise _out_of_range(value) from None
    if not TS_MIN <= seconds <= TS_MAX:
        raise _out_of_range(value)
    return seconds


def parse_date_bound(text: str, end: bool = False) -> float:
    """``--since`` / ``--until``: a date (whole day; ``until`` includes that day) or an ISO timestamp."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{text!r} is not a date or ISO timestamp; write it like 2026-03-01 or 2026-03-01T08:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    try:
        seconds = moment.timestamp()
    except (OverflowError, ValueError, OSError):
        seconds = float("nan")
    if end and len(text.strip()) == 10:  # a bare date: up to the end of that day
        seconds += 86400.0 - 1e-6
    if not TS_MIN <= seconds <= TS_MAX + 86400.0:
        raise UserError(f"{text!r} is out of range: give a date from 0001-01-01 to 9999-12-31 (UTC)")
    return min(seconds, TS_MAX)


def _too_long(what: str, text: str, cap: int) -> str:
    return f"{what} of {len(text)} characters: field larger than field limit ({cap})"


def too_many(what: str, count: int | str) -> str:
    return f"{count} {what} in one record: more than the limit of {MAX_DETECTIONS:,}"


def _bbox(value: Any, what: str) -> tuple[float, float, float, float]:
    if type(value) is not list or len(value) != 4:
        raise BadRecord(f"{what} bbox must be [x1, y1, x2, y2], got {value!r:.60}")
    if any(type(v) not in (float, int) for v in value):
        raise BadRecord(f"{what} bbox must hold 4 numbers, got {value!r:.60}")
    x1, y1, x2, y2 = value
    # a box a little outside the image (-0.5) is a sloppy logger, not nonsense: it is clipped on export
    if not (x2 > x1 and y2 > y1):
        raise BadRecord(f"{what} bbox {value!r:.60} is not x1 < x2, y1 < y2 in pixels")
    return float(x1), float(y1), float(x2), float(y2)


def _class_name(name: Any, what: str, error: str) -> str:
    if type(name) is not str or not name:
        raise BadRecord(error)
    if len(name) > MAX_CLASS_CHARS:
        raise BadRecord(_too_long(f"{what} name", name, MAX_CLASS_CHARS))
    return name


def _detection(i: int, det: Any) -> tuple:
    if type(det) is not dict:
        raise BadRecord(f"detections[{i}] must be an object, got {det!r:.40}")
    for key in ("class", "confidence", "bbox"):
        if key not in det:
            raise BadRecord(f"detections[{i}] is missing '{key}'")
    name, conf = det["class"], det["confidence"]
    _class_name(name, f"detections[{i}].class", f"detections[{i}].class must be a class name, got {name!r:.40}")
    if type(conf) not in (int, float) or not 0.0 <= conf <= 1.0:
        raise BadRecord(f"detections[{i}].confidence must be a number in 0..1, got {conf!r:.40}")
    return (name, float(conf), *_bbox(det["bbox"], f"detections[{i}]"))


def _optional_int(obj: dict, key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if type(value) is not int or value <= 0:
        raise BadRecord(f"{key} must be a positive integer, got {value!r:.40}")
    return value


def _optional_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None or type(value) is str:
        return value
    if type(value) in (int, float):  # "model_version": 1.1 is written as a number by some loggers
        return str(value)
    raise BadRecord(f"{key} must be a string, got {value!r:.40}")


def _review(review: Any) -> list[tuple] | None:
    if review is None:
        return None
    if type(review) is not dict:
        raise BadRecord("review must be an object with 'labels'")
    raw = review.get("labels")
    if raw is None:
        return None
    if type(raw) is not list:
        raise BadRecord("review.labels must be a list")
    if len(raw) > MAX_DETECTIONS:
        raise BadRecord(too_many("review labels", len(raw)))
    labels = []
    for i, lab in enumerate(raw):
        what = f"review.labels[{i}]"
        name = lab.get("class") if type(lab) is dict else None
        _class_name(name, f"{what}.class", f"{what} must be an object with a 'class' name")
        labels.append((name, *_bbox(lab.get("bbox"), what)))
    return labels


Keep = Callable[[float, "str | None"], bool]


def normalise(obj: Any, keep: Keep | None = None) -> tuple | None:
    """One record checked: (ts, image, version, source, width, height, detections, labels | None),
    detections and labels as (class, [conf,] x1, y1, x2, y2); None when ``keep`` filters it out.

    The order of the checks is the contract: a record outside the filters is counted as filtered
    out, not malformed, unless its timestamp, image, detections list or version is unusable.
    """
    if type(obj) is not dict:
        raise BadRecord(f"a record must be a JSON object, got {type(obj).__name__}")
    for key in ("timestamp", "image", "detections"):
        if key not in obj:
            raise BadRecord(f"missing required field '{key}'")
    seconds = parse_timestamp(obj["timestamp"])
    image, dets = obj["image"], obj["detections"]
    if type(image) is not str or not image:
        raise BadRecord(f"image must be a non-empty string, got {image!r:.40}")
    if len(image) > MAX_IMAGE_CHARS:
        raise BadRecord(_too_long("image path", image, MAX_IMAGE_CHARS))
    if "\x00" in image:  # no file system takes it; an export would fail on it
        raise BadRecord(f"image path {image[:40]!r} holds a NUL character")
    if type(dets) is not list:
        raise BadRecord(f"detections must be a list, got {type(dets).__name__}")
    if len(dets) > MAX_DETECTIONS:
        raise BadRecord(too_many("detections", len(dets)))
    version = _optional_str(obj, "model_version")
    if keep is not None and not keep(seconds, version):
        return None
    width, height = _optional_int(obj, "image_width"), _optional_int(obj, "image_height")
    source = _optional_str(obj, "source")
    detections = [_detection(i, det) for i, det in enumerate(dets)]
    return seconds, image, version, source, width, height, detections, _review(obj.get("review"))


def validate_record(obj: Any) -> None:
    """Raise BadRecord (the reason) unless ``obj`` is a record the readers accept."""
    normalise(obj)


def make_keep(since: float | None, until: float | None, model_version: str | None) -> Keep | None:
    if since is None and until is None and model_version is None:
        return None
    return lambda ts, version: ((model_version is None or version == model_version)
                                and (since is None or ts >= since) and (until is None or ts <= until))


def keep_mask(ts: np.ndarray, version: pd.Series, since: float | None, until: float | None,
              model_version: str | None) -> np.ndarray:
    """The vectorised ``make_keep``."""
    keep = np.ones(len(ts), dtype=bool)
    if model_version is not None:
        keep &= (version == model_version).fillna(False).to_numpy(dtype=bool)
    if since is not None:
        keep &= ts >= since
    if until is not None:
        keep &= ts <= until
    return keep


def record_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One schema record as CSV-shaped rows (detections, then review labels with kind=review)."""
    base = {k: record.get(k, "") for k in ("timestamp", "image", "model_version", "source", "image_width",
                                           "image_height")}
    empty = {"class": "", "confidence": "", "x1": "", "y1": "", "x2": "", "y2": ""}
    rows = [{**base, "class": d["class"], "confidence": d["confidence"], **dict(zip(BOX, d["bbox"])),
             "kind": "detection"} for d in record.get("detections", [])] or [{**base, **empty, "kind": "detection"}]
    labels = (record.get("review") or {}).get("labels")
    if labels is not None:
        rows += [{**base, "class": lab["class"], "confidence": "", **dict(zip(BOX, lab["bbox"])), "kind": "review"}
                 for lab in labels] or [{**base, **empty, "kind": "review"}]
    return rows


# --- collecting checked records and building the frames ----------------------------------------------

class Parts:
    """Checked records in pieces (bulk-checked chunks and single records), built into frames once."""

    def __init__(self, since: float | None, until: float | None, model_version: str | None) -> None:
        self.since, self.until, self.model_version = since, until, model_version
        self.keep = make_keep(since, until, model_version)
        self.malformed = MalformedLog()
        self.filtered_out = 0
        self.pieces: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
        self._single: list[tuple[int, tuple]] = []

    def add_frames(self, table: pd.DataFrame, boxes: pd.DataFrame, labels: pd.DataFrame) -> None:
        """``table``: line, ts, image, version, source (str or None), width, height, reviewed;
        ``boxes``/``labels``: record (row of ``table``), cls (str), conf, x1..y2."""
        self.pieces.append((table, boxes, labels))

    def add_object(self, obj: Any, line: int) -> None:
        """One parsed record: checked by ``normalise``, kept, filtered out or counted malformed."""
        try:
            checked = normalise(obj, self.keep)
        except BadRecord as exc:
            self.malformed.add(line, str(exc))
            return
        if checked is None:
            self.filtered_out += 1
        else:
            self._single.append((line, checked))

    def _single_frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        recs, dets, labs = [], [], []
        for i, (line, (ts, image, version, source, width, height, detections, labels)) in enumerate(self._single):
            recs.append((line, ts, image, version, source, width, height, labels is not None))
            dets += [(i, *d) for d in detections]
            labs += [(i, *lab) for lab in labels or ()]
        return (pd.DataFrame(recs, columns=TABLE_COLUMNS),
                pd.DataFrame(dets, columns=["record", "cls", "conf"] + BOX),
                pd.DataFrame(labs, columns=["record", "cls"] + BOX))

    def build(self, path: Path, fmt: str) -> MemoryBank:
        from pandas.api.types import union_categoricals

        pieces = [p for p in self.pieces + ([self._single_frames()] if self._single else []) if len(p[0])]
        self.pieces, self._single = [], []  # the frames below replace them: hold each copy only once
        offset, tables, boxes, labels = 0, [], [], []
        for table, box, lab in pieces:
            tables.append(table)
            boxes.append(box.assign(record=box["record"].to_numpy(dtype=np.int64) + offset))
            labels.append(lab.assign(record=lab["record"].to_numpy(dtype=np.int64) + offset))
            offset += len(table)
        if not tables:
            tables = [pd.DataFrame({c: [] for c in TABLE_COLUMNS})]
            boxes = [pd.DataFrame({c: [] for c in ["record", "cls", "conf"] + BOX})]
            labels = [pd.DataFrame({c: [] for c in ["record", "cls"] + BOX})]
        # one code per class name across the pieces
        names = union_categoricals([_categorical(f["cls"]) for f in boxes + labels], ignore_order=True)
        codes, at = names.codes.astype(np.int64), 0
        for f in boxes + labels:
            f["cls"], at = codes[at:at + len(f)], at + len(f)
        n_pieces = len(pieces)
        table = pd.concat(tables, ignore_index=True)
        box, lab = pd.concat(boxes, ignore_index=True), pd.concat(labels, ignore_index=True)
        del pieces, tables, boxes, labels
        line = table["line"].to_numpy(dtype=np.int64)
        if n_pieces > 1 and (np.diff(line) < 0).any():  # single records rejoin their place
            order = np.argsort(line, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            table = table.iloc[order].reset_index(drop=True)
            box, lab = _by_record(box, rank), _by_record(lab, rank)
        versions, version = _codes(table["version"])
        sources, source = _codes(table["source"])
        # class codes in order of first appearance: a record's detections, then its labels
        where = np.concatenate([box["record"].to_numpy(dtype=np.int64) * 2,
                                lab["record"].to_numpy(dtype=np.int64) * 2 + 1])
        both = np.concatenate([box["cls"].to_numpy(dtype=np.int64), lab["cls"].to_numpy(dtype=np.int64)])
        first = pd.unique(both[np.argsort(where, kind="stable")])
        remap = np.zeros(len(names.categories), dtype=np.int32)
        remap[first] = np.arange(len(first))
        table = pd.DataFrame({
            "line": table["line"].to_numpy(dtype=np.int64),
            "ts": table["ts"].to_numpy(dtype=np.float64), "image": table["image"].array,
            "version": version, "source": source, "width": table["width"].to_numpy(dtype=np.int32),
            "height": table["height"].to_numpy(dtype=np.int32), "reviewed": table["reviewed"].to_numpy(dtype=bool)}, copy=False)
        box = pd.DataFrame({"record": box["record"].to_numpy(dtype=np.int64),
                            "cls": remap[box["cls"].to_numpy(dtype=np.int64)],
                            "conf": box["conf"].to_numpy(dtype=np.float64),
                            **{k: box[k].to_numpy(dtype=np.float64) for k in BOX}}, copy=False)
        lab = pd.DataFrame({"record": lab["record"].to_numpy(dtype=np.int64),
                            "cls": remap[lab["cls"].to_numpy(dtype=np.int64)].astype(np.int64),
                            **{k: lab[k].to_numpy(dtype=np.float64) for k in BOX}}, copy=False)
        return MemoryBank(path=path, fmt=fmt, table=table, boxes=box, labels=lab,
                          classes=[str(c) for c in names.categories[first]], versions=versions, sources=sources,
                          malformed=self.malformed, filtered_out=self.filtered_out)


TABLE_COLUMNS = ["line", "ts", "image", "version", "source", "width", "height", "reviewed"]


def _categorical(values: pd.Series) -> pd.Categorical:
    cat = values.array if isinstance(values.dtype, pd.CategoricalDtype) else pd.Categorical(values.to_numpy(dtype=object))
    return pd.Categorical.from_codes(cat.codes, categories=pd.Index(cat.categories.to_numpy(dtype=object), dtype=object))


def _by_record(frame: pd.DataFrame, rank: np.ndarray) -> pd.DataFrame:
    """Rows of ``frame`` renumbered to the sorted records, in record order."""
    frame = frame.assign(record=rank[frame["record"].to_numpy(dtype=np.int64)])
    return frame.iloc[np.argsort(frame["record"].to_numpy(), kind="stable")].reset_index(drop=True)


def _codes(values: pd.Series) -> tuple[list[str], np.ndarray]:
    """Names in order of first appearance and each row's code (-1: none)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    return [str(u) for u in uniques], codes.astype(np.int32)

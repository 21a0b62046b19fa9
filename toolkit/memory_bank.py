"""Read the memory bank (JSONL, JSON array, CSV, SQLite) as one stream of validated records.

The detection system logs one record per inspected image (schema: memory-bank/README.md).
Every reader streams - the file is never loaded whole - and turns its rows into the same
normalised record, so an analysis of the same records gives the same answer in every format.
A malformed record (broken JSON, a missing required field, a wrong type, a bad bbox, a
confidence outside 0..1, an unreadable timestamp) is counted with its line number and
skipped; it never stops the reading.

Usage (from code):
    bank = read_memory_bank("memory-bank/detections.jsonl", since=..., until=...)
    bank.records, bank.skipped, bank.malformed         # columnar arrays + accounting

The JSONL reader is the hot path (a year of a busy line is millions of records): it parses
with ``orjson`` when installed (else the standard ``json``) and appends straight into typed
arrays (``array.array``), so a million records cost tens of MB and no per-record objects.
"""
from __future__ import annotations

import csv
import json
import logging
import sqlite3
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from toolkit.errors import UserError

logger = logging.getLogger(__name__)

try:  # a 3-4x faster parser; the standard library is the fallback
    import orjson as _orjson

    _loads = _orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (_orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
    _loads = json.loads
    _JSON_ERRORS = (ValueError,)

FORMATS = ("jsonl", "json", "csv", "sqlite")
CSV_COLUMNS = ("timestamp", "image", "model_version", "class", "confidence", "x1", "y1", "x2", "y2")
CSV_OPTIONAL_COLUMNS = ("source", "image_width", "image_height", "kind")
SQLITE_TABLE = "detections"
REQUIRED_COLUMNS = ("timestamp", "image", "class", "confidence", "x1", "y1", "x2", "y2")
# the order in which a database table's columns are read (line: rowid / primary key / row number)
ROW_COLUMNS = ("line", "timestamp", "image", "model_version", "class", "confidence", "x1", "y1", "x2", "y2",
               "source", "image_width", "image_height", "kind")
_ROW_ERROR = "\x00error"  # key of a CSV row that could not be parsed (no real column has this name)
MALFORMED_LIST_CAP = 200  # the list in results is capped; the count stays exact
_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat


class BadRecord(ValueError):
    """A record that breaks the schema; the message is the reason shown to the user."""


@dataclass
class MalformedLog:
    """Exact count of skipped records plus the first ``cap`` of them as {line, reason}."""

    cap: int = MALFORMED_LIST_CAP
    count: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.items) < self.cap:
            self.items.append({"line": line, "reason": reason})


@dataclass
class MemoryBank:
    """Validated records in columns (one row per record, one row per detection).

    Records: ``line`` (where it starts in the file, 1-based; SQLite: rowid), ``ts`` (epoch seconds,
    UTC), ``image``, ``version`` (index into ``versions``; -1 none), ``source`` (index into
    ``sources``; -1 none), ``width``/``height`` (0 unknown), ``det_start`` (offsets: record i's
    detections are ``det_start[i]:det_start[i+1]``).
    Detections: ``det_cls`` (index into ``classes``), ``det_conf``, ``det_box`` (n x 4, pixels).
    Reviews: ``reviews`` {record index: [(class index, x1, y1, x2, y2), ...]} (empty list: the
    operator saw no defect).
    """

    path: Path
    fmt: str
    classes: list[str]
    versions: list[str]
    sources: list[str]
    line: np.ndarray
    ts: np.ndarray
    image: list[str]
    version: np.ndarray
    source: np.ndarray
    width: np.ndarray
    height: np.ndarray
    det_start: np.ndarray
    det_cls: np.ndarray
    det_conf: np.ndarray
    det_box: np.ndarray
    reviews: dict[int, list[tuple[int, float, float, float, float]]]
    malformed: MalformedLog
    filtered_out: int = 0
    location: str = ""      # a database URL (password masked); "" for a file (see ``path``)
    rows_read: int = 0      # rows a database sent (after its WHERE clause); 0 for a file

    @property
    def records(self) -> int:
        return len(self.image)

    @property
    def skipped(self) -> int:
        return self.malformed.count

    def det_record(self) -> np.ndarray:
        """The record index of every detection."""
        counts = np.diff(self.det_start)
        return np.repeat(np.arange(self.records, dtype=np.int64), counts)


class _Columns:
    """Append-only typed columns; ``add`` takes one normalised record."""

    def __init__(self) -> None:
        self.class_ids: dict[str, int] = {}
        self.version_ids: dict[str, int] = {}
        self.source_ids: dict[str, int] = {}
        self.line = array("q")
        self.ts = array("d")
        self.image: list[str] = []
        self.version = array("i")
        self.source = array("i")
        self.width = array("i")
        self.height = array("i")
        self.det_start = array("q", [0])
        self.det_cls = array("i")
        self.det_conf = array("d")
        self.det_box = array("d")
        self.reviews: dict[int, list[tuple[int, float, float, float, float]]] = {}

    def _id(self, table: dict[str, int], name: str | None) -> int:
        if name is None:
            return -1
        got = table.get(name)
        if got is None:
            got = table[name] = len(table)
        return got

    def build(self, path: Path, fmt: str, malformed: MalformedLog, filtered_out: int) -> MemoryBank:
        def names(table: dict[str, int]) -> list[str]:
            return sorted(table, key=table.__getitem__)

        return MemoryBank(
            path=path, fmt=fmt, classes=names(self.class_ids), versions=names(self.version_ids),
            sources=names(self.source_ids), line=np.frombuffer(self.line, dtype=np.int64),
            ts=np.frombuffer(self.ts, dtype=np.float64), image=self.image,
            version=np.frombuffer(self.version, dtype=np.int32), source=np.frombuffer(self.source, dtype=np.int32),
            width=np.frombuffer(self.width, dtype=np.int32), height=np.frombuffer(self.height, dtype=np.int32),
            det_start=np.frombuffer(self.det_start, dtype=np.int64),
            det_cls=np.frombuffer(self.det_cls, dtype=np.int32), det_conf=np.frombuffer(self.det_conf, dtype=np.float64),
            det_box=np.frombuffer(self.det_box, dtype=np.float64).reshape(-1, 4), reviews=self.reviews,
            malformed=malformed, filtered_out=filtered_out)


# --- validation: one function turns any format's record into the normalised form ----------------

def parse_timestamp(value: Any) -> float:
    """ISO 8601 (date or date-time; naive means UTC) to epoch seconds; BadRecord otherwise.

    A ``datetime`` (a database ``timestamp`` column) is taken as is, naive meaning UTC as well.
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=_UTC)).timestamp()
    if type(value) is not str:
        raise BadRecord(f"timestamp must be an ISO 8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRecord(f"timestamp {value[:40]!r} is not ISO 8601 (e.g. 2026-03-01T08:15:02Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return moment.timestamp()


def parse_date_bound(text: str, end: bool = False) -> float:
    """``--since`` / ``--until``: a date (whole day; ``until`` includes that day) or an ISO timestamp."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{text!r} is not a date or ISO timestamp; write it like 2026-03-01 or 2026-03-01T08:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    seconds = moment.timestamp()
    if end and len(text.strip()) == 10:  # a bare date: up to the end of that day
        seconds += 86400.0 - 1e-6
    return seconds


def _bbox(value: Any, what: str) -> tuple[float, float, float, float]:
    if type(value) is not list or len(value) != 4:
        raise BadRecord(f"{what} bbox must be [x1, y1, x2, y2], got {value!r:.60}")
    x1, y1, x2, y2 = value
    for v in value:
        kind = type(v)
        if kind is not float and kind is not int:
            raise BadRecord(f"{what} bbox must hold 4 numbers, got {value!r:.60}")
    # a box a little outside the image (-0.5) is a sloppy logger, not nonsense: it is clipped on export
    if not (x2 > x1 and y2 > y1):
        raise BadRecord(f"{what} bbox {value!r:.60} is not x1 < x2, y1 < y2 in pixels")
    return x1, y1, x2, y2


def _detection_problem(dets: list) -> str:
    """The precise reason the first bad detection of a record is bad."""
    for i, det in enumerate(dets):
        if type(det) is not dict:
            return f"detections[{i}] must be an object, got {det!r:.40}"
        for key in ("class", "confidence", "bbox"):
            if key not in det:
                return f"detections[{i}] is missing '{key}'"
        name, conf = det["class"], det["confidence"]
        if type(name) is not str or not name:
            return f"detections[{i}].class must be a class name, got {name!r:.40}"
        if type(conf) not in (int, float) or not 0.0 <= conf <= 1.0:
            return f"detections[{i}].confidence must be a number in 0..1, got {conf!r:.40}"
        try:
            _bbox(det["bbox"], f"detections[{i}]")
        except BadRecord as exc:
            return str(exc)
    return "a detection is malformed"


def _optional_int(obj: dict, key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if type(value) is not int or value <= 0:
        raise BadRecord(f"{key} must be a positive integer, got {value!r:.40}")
    return value


def _optional_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is str:
        return value
    if type(value) in (int, float):  # "model_version": 1.1 is written as a number by some loggers
        return str(value)
    raise BadRecord(f"{key} must be a string, got {value!r:.40}")


class _Reader:
    """Validates records, applies the filters and appends them to the columns."""

    def __init__(self, since: float | None, until: float | None, model_version: str | None) -> None:
        self.cols = _Columns()
        self.malformed = MalformedLog()
        self.filtered_out = 0
        self.since = since
        self.until = until
        self.model_version = model_version

    def add(self, obj: Any, line: int) -> None:
        """Validate one parsed record and append it (or count it as malformed / filtered)."""
        try:
            self._add(obj, line)
        except BadRecord as exc:
            self.malformed.add(line, str(exc))

    def _add(self, obj: Any, line: int) -> None:
        if type(obj) is not dict:
            raise BadRecord(f"a record must be a JSON object, got {type(obj).__name__}")
        try:
            ts = obj["timestamp"]
            image = obj["image"]
            dets = obj["detections"]
        except KeyError as exc:
            raise BadRecord(f"missing required field '{exc.args[0]}'") from None
        # the common cases inline (this runs a million times); the helpers give the reasons
        if type(ts) is str:
            try:
                moment = _fromisoformat(ts)
            except ValueError:
                raise BadRecord(f"timestamp {ts[:40]!r} is not ISO 8601 (e.g. 2026-03-01T08:15:02Z)") from None
            seconds = (moment if moment.tzinfo is not None else moment.replace(tzinfo=_UTC)).timestamp()
        else:
            seconds = parse_timestamp(ts)
        if type(image) is not str or not image:
            raise BadRecord(f"image must be a non-empty string, got {image!r:.40}")
        if type(dets) is not list:
            raise BadRecord(f"detections must be a list, got {type(dets).__name__}")
        version = obj.get("model_version")
        if version is not None and type(version) is not str:
            version = _optional_str(obj, "model_version")
        if self.model_version is not None and version != self.model_version:
            self.filtered_out += 1
            return
        if (self.since is not None and seconds < self.since) or (self.until is not None and seconds > self.until):
            self.filtered_out += 1
            return
        width = obj.get("image_width", 0)
        if type(width) is not int or width <= 0:
            width = _optional_int(obj, "image_width")
        height = obj.get("image_height", 0)
        if type(height) is not int or height <= 0:
            height = _optional_int(obj, "image_height")
        source = obj.get("source")
        if source is not None and type(source) is not str:
            source = _optional_str(obj, "source")
        cols = self.cols
        class_ids = cols.class_ids
        c_cls, c_conf, c_box = cols.det_cls, cols.det_conf, cols.det_box
        mark, class_mark = len(c_cls), len(class_ids)
        # The hot loop: one try block, comparisons that raise TypeError on non-numbers; the
        # precise reason is worked out only for a bad detection (rare), in _detection_problem.
        # Appends go straight into the columns and are rolled back if the record turns out bad.
        try:
            for det in dets:
                name = det["class"]
                conf = det["confidence"]
                box = det["bbox"]
                x1, y1, x2, y2 = box
                if not (type(name) is str and name and 0.0 <= conf <= 1.0 and x1 < x2 and y1 < y2
                        and type(box) is list):
                    raise TypeError
                cid = class_ids.get(name)
                if cid is None:
                    cid = class_ids[name] = len(class_ids)
                c_cls.append(cid)
                c_conf.append(conf)
                c_box.extend(box)
        except (KeyError, TypeError, ValueError):
            self._roll_back(mark, class_mark)
            raise BadRecord(_detection_problem(dets)) from None
        review = obj.get("review")
        try:
            labels = self._review(review) if review is not None else None
        except BadRecord:
            self._roll_back(mark, class_mark)
            raise
        # everything valid: append the record
        index = len(cols.image)
        cols.line.append(line)
        cols.ts.append(seconds)
        cols.image.append(image)
        cols.version.append(-1 if version is None else cols._id(cols.version_ids, version))
        cols.source.append(-1 if source is None else cols._id(cols.source_ids, source))
        cols.width.append(width)
        cols.height.append(height)
        cols.det_start.append(len(c_cls))
        if labels is not None:
            cols.reviews[index] = labels

    def _roll_back(self, mark: int, class_mark: int) -> None:
        """Forget the detections (and class names) a record added before it turned out bad."""
        cols = self.cols
        del cols.det_cls[mark:], cols.det_conf[mark:], cols.det_box[4 * mark:]
        while len(cols.class_ids) > class_mark:
            cols.class_ids.popitem()  # dicts pop the newest entry first

    def _review(self, review: Any) -> list[tuple[int, float, float, float, float]] | None:
        if review is None:
            return None
        if type(review) is not dict:
            raise BadRecord("review must be an object with 'labels'")
        raw_labels = review.get("labels")
        if raw_labels is None:
            return None
        if type(raw_labels) is not list:
            raise BadRecord("review.labels must be a list")
        labels = []
        for i, lab in enumerate(raw_labels):
            if type(lab) is not dict or type(lab.get("class")) is not str or not lab["class"]:
                raise BadRecord(f"review.labels[{i}] must be an object with a 'class' name")
            lx1, ly1, lx2, ly2 = _bbox(lab.get("bbox"), f"review.labels[{i}]")
            labels.append((self.cols._id(self.cols.class_ids, lab["class"]), lx1, ly1, lx2, ly2))
        return labels
    # --- the four formats ------------------------------------------------------------------------

    def read_jsonl(self, path: Path) -> None:
        add = self._add
        malformed = self.malformed
        loads = _loads
        errors = _JSON_ERRORS
        # orjson parses bytes directly; the standard json is faster on text (no encoding sniffing)
        opened = open(path, "rb") if _orjson is not None else open(path, encoding="utf-8-sig", errors="replace")
        with opened as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    obj = loads(raw)
                except errors as exc:
                    if number == 1 and raw[:3] == b"\xef\xbb\xbf":  # a BOM from a Windows editor
                        raw = raw[3:]
                        if raw.strip():
                            try:
                                obj = loads(raw)
                            except errors:
                                pass
                            else:
                                try:
                                    add(obj, number)
                                except BadRecord as bad:
                                    malformed.add(number, str(bad))
                                continue
                    if raw.strip():
                        if raw[-1:] not in (b"\n", "\n"):  # the last line, unterminated
                            malformed.add(number, "incomplete last line (a writer is still writing it, or it was "
                                                  f"cut off by a crash): {_short(exc)}")
                        else:
                            malformed.add(number, f"broken JSON: {_short(exc)}")
                    continue
                try:
                    add(obj, number)
                except BadRecord as exc:
                    malformed.add(number, str(exc))

    def read_json_array(self, path: Path, chunk_chars: int = 1 << 22) -> None:
        """A JSON array of records, decoded element by element from a sliding text buffer."""
        decoder = json.JSONDecoder()
        with open(path, encoding="utf-8", errors="replace") as fh:
            buf = fh.read(chunk_chars)
            eof = not buf
            pos, line = 0, 1

            def skip_ws() -> None:
                nonlocal pos, line
                n = len(buf)
                while pos < n and buf[pos] in " \t\r\n":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1

            skip_ws()
            if pos >= len(buf) or buf[pos] != "[":
                raise UserError(f"{path}: a .json memory bank must be one JSON array of records (or use .jsonl)")
            pos += 1
            while True:
                skip_ws()
                while pos >= len(buf) - 1 and not eof:  # keep at least one char ahead
                    more = fh.read(chunk_chars)
                    eof = not more
                    buf = buf[pos:] + more
                    pos = 0
                    skip_ws()
                if pos >= len(buf):
                    self.malformed.add(line, "the JSON array is not closed with ']' (file cut short?)")
                    return
                if buf[pos] == "]":
                    return
                if buf[pos] == ",":
                    pos += 1
                    continue
                start_line = line
                while True:
                    try:
                        obj, end = decoder.raw_decode(buf, pos)
                        break
                    except json.JSONDecodeError as exc:
                        if eof:
                            self.malformed.add(start_line, f"broken JSON ({exc.msg}); the rest of the array "
                                                           "cannot be read")
                            return
                        more = fh.read(chunk_chars)
                        eof = not more
                        buf = buf[pos:] + more
                        pos = 0
                line += buf.count("\n", pos, end)
                pos = end
                self.add(obj, start_line)
                if pos > chunk_chars:  # drop what is consumed so memory stays one chunk
                    buf = buf[pos:]
                    pos = 0

    def read_rows(self, rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """CSV-shaped rows (one per detection; consecutive rows of one image form a record)."""
        key = None
        record: dict[str, Any] | None = None
        bad: tuple[int, str] | None = None
        start = 0
        for number, row in rows:
            if _ROW_ERROR in row:  # a row the CSV parser could not read: a malformed record of its own
                if record is not None:
                    self._flush(record, start, bad)
                key, record, bad = None, None, None
                self.malformed.add(number, row[_ROW_ERROR])
                continue
            row_key = (row.get("timestamp"), row.get("image"), row.get("model_version"))
            if row_key != key:
                if record is not None:
                    self._flush(record, start, bad)
                key, start, bad = row_key, number, None
                record = {"timestamp": row.get("timestamp") or None, "image": row.get("image") or None,
                          "detections": []}
                for name in ("model_version", "source"):
                    if row.get(name) not in (None, ""):
                        record[name] = str(row[name])
                for name in ("image_width", "image_height"):
                    if row.get(name) not in (None, ""):
                        record[name] = _int_or_text(row[name])
            if bad is not None:
                continue
            try:
                self._row_into(record, row)
            except BadRecord as exc:
                bad = (number, str(exc))
        if record is not None:
            self._flush(record, start, bad)

    def read_row_tuples(self, rows: Iterable[tuple]) -> None:
        """Rows of a database table, as tuples in ``ROW_COLUMNS`` order (NULL and '' mean the same).

        The same rules as ``read_rows``: consecutive rows of one timestamp, image and model version
        form a record. This is the path of a million-row table, so a record of plain detection rows
        with well-typed values goes straight into the columns; anything else (reviews, NULLs where
        a value belongs, odd types, a bad value) takes the general path, which gives the reason.
        """
        from itertools import groupby
        from operator import itemgetter

        fast, slow = self._fast_group_fn(), self._slow_group
        # groupby and itemgetter run in C: no Python step per row, only per record
        for _, rows_of_record in groupby(rows, key=itemgetter(1, 2, 3)):  # timestamp, image, model_version
            group = list(rows_of_record)
            if not fast(group):
                slow(group)

    def _fast_group_fn(self):
        """``fast(group)``: append a record of plain, well-typed detection rows; False (nothing kept)
        for any other. A closure over the columns: this runs once per record of a big table."""
        cols = self.cols
        class_ids, version_ids, source_ids = cols.class_ids, cols.version_ids, cols.source_ids
        c_cls, c_conf, c_box = cols.det_cls, cols.det_conf, cols.det_box
        c_line, c_ts, c_image, c_version, c_source = cols.line, cols.ts, cols.image, cols.version, cols.source
        c_width, c_height, c_start = cols.width, cols.height, cols.det_start
        want_version, since, until = self.model_version, self.since, self.until
        roll_back = self._roll_back
        fromiso, utc = _fromisoformat, _UTC

        def fast(group: list[tuple]) -> bool:
            line, ts, image, version, _, _, _, _, _, _, source, width, height, _ = group[0]
            if type(image) is not str or not image:
                return False
            if version is not None and (type(version) is not str or not version):
                return False
            if source is not None and (type(source) is not str or not source):
                return False
            if type(ts) is str:
                try:
                    moment = fromiso(ts)
                except ValueError:
                    return False
            elif type(ts) is datetime:  # a timestamp / timestamptz column
                moment = ts
            else:
                return False
            seconds = (moment if moment.tzinfo is not None else moment.replace(tzinfo=utc)).timestamp()
            if width is None:
                width = 0
            elif type(width) is not int or width <= 0:
                return False
            if height is None:
                height = 0
            elif type(height) is not int or height <= 0:
                return False
            if want_version is not None and version != want_version:
                self.filtered_out += 1
                return True
            if (since is not None and seconds < since) or (until is not None and seconds > until):
                self.filtered_out += 1
                return True
            mark, class_mark = len(c_cls), len(class_ids)
            try:
                for _, _, _, _, name, conf, x1, y1, x2, y2, _, _, _, kind in group:
                    if kind is not None and kind != "detection":
                        raise TypeError
                    if name is None:
                        continue  # an image with no detection
                    # NULL or text where a number belongs fails the comparison with TypeError
                    if type(name) is not str or not name or not (0.0 <= conf <= 1.0 and x1 < x2 and y1 < y2):
                        raise TypeError
                    cid = class_ids.get(name)
                    if cid is None:
                        cid = class_ids[name] = len(class_ids)
                    c_cls.append(cid)
                    c_conf.append(conf)
                    c_box.extend((x1, y1, x2, y2))
            except (TypeError, ValueError):
                roll_back(mark, class_mark)
                return False
            c_line.append(line)
            c_ts.append(seconds)
            c_image.append(image)
            if version is None:
                c_version.append(-1)
            else:
                vid = version_ids.get(version)
                if vid is None:
                    vid = version_ids[version] = len(version_ids)
                c_version.append(vid)
            if source is None:
                c_source.append(-1)
            else:
                sid = source_ids.get(source)
                if sid is None:
                    sid = source_ids[source] = len(source_ids)
                c_source.append(sid)
            c_width.append(width)
            c_height.append(height)
            c_start.append(len(c_cls))
            return True

        return fast

    def _slow_group(self, group: list[tuple]) -> None:
        """One record's rows the general way: a schema record checked by ``add`` (or the bad row's reason)."""
        line, ts, image, version, _, _, _, _, _, _, source, width, height, _ = group[0]
        record: dict[str, Any] = {"timestamp": None if ts == "" else ts, "image": None if image == "" else image,
                                  "detections": []}
        if version is not None and version != "":
            record["model_version"] = version if type(version) is str else str(version)
        if source is not None and source != "":
            record["source"] = source if type(source) is str else str(source)
        if width is not None and width != "":
            record["image_width"] = width if type(width) is int else _int_or_text(width)
        if height is not None and height != "":
            record["image_height"] = height if type(height) is int else _int_or_text(height)
        bad: tuple[int, str] | None = None
        for number, _, _, _, name, conf, x1, y1, x2, y2, _, _, _, kind in group:
            try:
                self._row_into(record, {"kind": kind, "class": name, "confidence": conf,
                                        "x1": x1, "y1": y1, "x2": x2, "y2": y2})
            except BadRecord as exc:
                bad = (number, str(exc))
                break
        self._flush(record, line, bad)

    def _flush(self, record: dict, start: int, bad: tuple[int, str] | None) -> None:
        if record.get("timestamp") is None:
            del record["timestamp"]
        if record.get("image") is None:
            del record["image"]
        if bad is not None:
            self.malformed.add(bad[0], bad[1])
        else:
            self.add(record, start)

    @staticmethod
    def _row_into(record: dict, row: dict[str, Any]) -> None:
        kind = (row.get("kind") or "detection").strip().lower()
        name = row.get("class")
        if kind == "review":
            labels = record.setdefault("review", {"labels": []})["labels"]
            if name in (None, ""):
                return  # reviewed, no defect
            labels.append({"class": str(name), "bbox": [_csv_float(row.get(k), k) for k in ("x1", "y1", "x2", "y2")]})
            return
        if kind != "detection":
            raise BadRecord(f"kind must be 'detection' or 'review', got {kind!r:.20}")
        if name in (None, ""):
            return  # an image with no detection
        record["detections"].append({"class": str(name), "confidence": _csv_float(row.get("confidence"), "confidence"),
                                     "bbox": [_csv_float(row.get(k), k) for k in ("x1", "y1", "x2", "y2")]})


def _csv_float(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"{what} must be a number, got {value!r:.40}") from None


def _int_or_text(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value  # validation reports it


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:100]


# --- format detection and the public entry point ------------------------------------------------

def detect_format(path: Path) -> str:
    """jsonl / json / csv / sqlite from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".db", ".sqlite", ".sqlite3"):
        return "sqlite"
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{") or not stripped:
        return "jsonl"
    return "csv"


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        try:
            fieldnames = reader.fieldnames or []
        except csv.Error as exc:
            raise UserError(f"{path}: cannot read the CSV header ({_short(exc)})") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
        if missing:
            raise UserError(f"{path}: CSV header lacks {', '.join(missing)}; the columns are "
                            f"{','.join(CSV_COLUMNS)} (see memory-bank/README.md)")
        while True:
            starts = reader.line_num + 1  # the line where the next row begins
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a field over the csv module's limit, a NUL byte: that row only
                yield starts, {_ROW_ERROR: f"unreadable CSV row: {_short(exc)}"}
                continue
            yield reader.line_num, row


def _sqlite_rows(path: Path) -> Iterator[tuple]:
    # read-only URI: the user's database is never written, not even a journal
    uri = f"file:{path.resolve().as_posix()}?mode=ro"
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
        select = ", ".join(f'"{c}"' if c in columns else "NULL" for c in ROW_COLUMNS[1:])
        yield from con.execute(f'SELECT rowid, {select} FROM "{table}" ORDER BY rowid')
    finally:
        con.close()


def read_memory_bank(path: str | Path, fmt: str | None = None, since: float | None = None,
                     until: float | None = None, model_version: str | None = None,
                     image_root: Path | None = None) -> MemoryBank:
    """Read a memory bank of any accepted format; ``since``/``until`` are epoch seconds, both inclusive.

    ``path`` may also be a database URL (``postgresql://user@host/db?table=detections``, see
    toolkit/memory_bank_sql.py); relative image paths in a database are taken relative to
    ``image_root`` (the analyzer passes ROOT/memory-bank, the folder of the default file).
    """
    from toolkit.memory_bank_sql import is_database_url

    if is_database_url(path):
        return _read_database(str(path), since, until, model_version, image_root)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"memory bank not found: {path} (give --memory-bank PATH, or --scan DIR to build one)")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise UserError(f"unknown memory-bank format {fmt!r}; use one of {', '.join(FORMATS)}")
    reader = _Reader(since, until, model_version)
    if fmt == "jsonl":
        reader.read_jsonl(path)
    elif fmt == "json":
        reader.read_json_array(path)
    elif fmt == "csv":
        reader.read_rows(_csv_rows(path))
    else:
        reader.read_row_tuples(_sqlite_rows(path))
    bank = reader.cols.build(path, fmt, reader.malformed, reader.filtered_out)
    logger.debug("read %d record(s) from %s (%s), %d malformed, %d filtered out",
                 bank.records, path, fmt, bank.skipped, bank.filtered_out)
    return bank


def _read_database(url: str, since: float | None, until: float | None, model_version: str | None,
                   image_root: Path | None) -> MemoryBank:
    from itertools import chain

    from toolkit.memory_bank_sql import parse_url, sql_batches

    loc = parse_url(url)
    reader = _Reader(since, until, model_version)
    stats: dict[str, Any] = {}
    reader.read_row_tuples(chain.from_iterable(sql_batches(url, since, until, stats)))
    # ``path`` anchors relative image paths: its parent is image_root
    anchor = Path(image_root or Path.cwd()).resolve() / "(database)"
    bank = reader.cols.build(anchor, loc.backend, reader.malformed, reader.filtered_out)
    bank.location = loc.shown
    bank.rows_read = stats.get("rows", 0)
    logger.debug("read %d record(s) from %d row(s) of %s, %d malformed, %d filtered out",
                 bank.records, bank.rows_read, loc.shown, bank.skipped, bank.filtered_out)
    return bank


def validate_record(obj: Any) -> None:
    """Raise BadRecord (the reason) unless ``obj`` is a record the readers accept."""
    _Reader(None, None, None)._add(obj, 0)


# --- writing: records to the other formats (conversion, tests) and appending ---------------------

def record_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One schema record as CSV-shaped rows (detections, then review labels with kind=review)."""
    base = {"timestamp": record.get("timestamp", ""), "image": record.get("image", ""),
            "model_version": record.get("model_version", ""), "source": record.get("source", ""),
            "image_width": record.get("image_width", ""), "image_height": record.get("image_height", "")}
    empty = {"class": "", "confidence": "", "x1": "", "y1": "", "x2": "", "y2": ""}
    rows = []
    for det in record.get("detections", []):
        x1, y1, x2, y2 = det["bbox"]
        rows.append({**base, "class": det["class"], "confidence": det["confidence"],
                     "x1": x1, "y1": y1, "x2": x2, "y2": y2, "kind": "detection"})
    if not rows:
        rows.append({**base, **empty, "kind": "detection"})
    review = record.get("review")
    if review is not None and review.get("labels") is not None:
        labels = review["labels"]
        for lab in labels:
            x1, y1, x2, y2 = lab["bbox"]
            rows.append({**base, "class": lab["class"], "confidence": "", "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                         "kind": "review"})
        if not labels:
            rows.append({**base, **empty, "kind": "review"})
    return rows


ALL_COLUMNS = CSV_COLUMNS + CSV_OPTIONAL_COLUMNS


# --- scan: run the production model over a folder and log what it sees --------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def scan_folder(workspace, folder: Path, model_path: Path, bank: str | Path, batch: int = 16,
                conf: float = 0.25, imgsz: int | None = None) -> int:
    """Run ``model_path`` over every image under ``folder``; append one record per image to ``bank``.

    ``bank`` is a JSONL file or a database URL; records go through the detection system's writer
    (toolkit/detection_api.py). Records follow the schema: timestamp (scan time, UTC), image
    (absolute path), model_version (the production version when ``model_path`` is the production
    model), source "scan", image_width/height, detections. ``imgsz`` defaults to the size the
    model was trained at. Unreadable images are logged and skipped. Returns the records appended.
    """
    from toolkit.detection_api import MemoryBankWriter, ProductionModel, record_from_result
    from toolkit.offline import load_yolo
    from toolkit.progress import progress_bar

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--scan {folder}: not a folder of images")
    if batch < 1:
        raise UserError("--scan-batch must be at least 1")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"--scan {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    writer = MemoryBankWriter(bank, source="scan")  # checks the target before the model is loaded
    try:
        if Path(model_path).resolve() == workspace.production_model.resolve():
            production = ProductionModel.load(workspace.root)
            model, version, trained_size = production.model, production.version, production.imgsz
        else:
            model, version = load_yolo(model_path, workspace.ultralytics_config), None
            ckpt = getattr(model, "ckpt", None)
            size = (ckpt.get("train_args", {}) if isinstance(ckpt, dict) else {}).get("imgsz", 640)
            trained_size = size if isinstance(size, int) else 640
        names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
        imgsz = imgsz or trained_size
        logger.info("scanning %d image(s) under %s with %s (imgsz %d)", len(images), folder, model_path, imgsz)
        written = 0
        batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        for chunk in progress_bar(batches, total=len(batches), desc="scan"):
            results = _predict(model, chunk, imgsz, conf)
            records = [record_from_result(result, path, names, version, source="scan")
                       for path, result in zip(chunk, results) if result is not None]
            written += writer.append(records)
    finally:
        writer.close()
    logger.info("appended %d record(s) to %s", written, writer.shown)
    return written


def _predict(model, paths: list[Path], imgsz: int, conf: float) -> list:
    """One batch; if it fails (a corrupt image), image by image, None for the unreadable ones."""
    try:
        return list(model.predict([str(p) for p in paths], imgsz=imgsz, conf=conf, verbose=False))
    except Exception:  # ultralytics raises plain exceptions for unreadable files
        out = []
        for p in paths:
            try:
                out.append(model.predict(str(p), imgsz=imgsz, conf=conf, verbose=False)[0])
            except Exception as exc:
                logger.warning("scan: cannot read %s (%s); skipped", p, str(exc).splitlines()[0][:80])
                out.append(None)
        return out

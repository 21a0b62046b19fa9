"""The detection system's side of the toolkit: the production model with its version, and the log.

A detection service on the line needs three things from the toolkit, and this module is all it
has to import:

- ``ProductionModel.load(root)``: ``ROOT/yolov8_model.pt`` loaded safely (the toolkit's loader,
  no code run from the file), with its ``version`` and ``sha256`` (from ``yolov8_model.json``,
  checked against the bytes actually loaded, so a promotion in progress is never mislabelled).
- ``model.changed()``: a cheap check (two ``stat`` calls) that a new version was promoted or
  rolled back; call it between images and ``reload()`` when it says so - never in mid-image.
- ``MemoryBankWriter``: appends detection records to the memory bank - the JSONL file, or the
  database URL of training.yaml ``memory_bank.url`` - with ``model_version`` filled in. Each
  record is checked against the schema first (a bad record raises ``BadRecord``, nothing is
  written). In a file every record is one whole line, written by one ``os.write`` on a file
  opened for appending, under a lock that only writers take, so several processes can append
  while the analyzer reads: no torn, interleaved or empty lines. In a database the rows of one call are one transaction.

Usage:
    from toolkit.memory.detection_api import MemoryBankWriter, ProductionModel

    model = ProductionModel.load("D:/inspection")
    with MemoryBankWriter.for_workspace("D:/inspection") as bank:
        for image in new_images():
            if model.changed():
                model = model.reload()
            bank.append(model.detect(image, source="line3"))

``detect`` raises ``UnreadableImage`` (a ValueError: which kind, what to save it as) for a file
OpenCV cannot decode, e.g. a 32-bit float TIFF.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from toolkit.core.errors import UserError
from toolkit.core.layout import Workspace
from toolkit.memory.bank_table import BadRecord, validate_record

logger = logging.getLogger(__name__)

__all__ = ["BadRecord", "MemoryBankWriter", "ProductionModel", "record_from_result", "scan_folder"]

# A promotion replaces yolov8_model.pt, then writes the sidecar: between the two the file's sha256
# matches no sidecar yet. Loading waits this long for the pair to agree.
SETTLE_S = 10.0


def _stamp(*paths: Path) -> tuple:
    """What changes when a file is replaced (atomic rename: a new inode) or rewritten."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _sidecar(ws: Workspace) -> dict[str, Any]:
    try:
        data = json.loads(ws.production_sidecar.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _version_of(ws: Workspace, sha256: str) -> str | None:
    """The version of these bytes: the sidecar when it describes them, else the registry.

    A sidecar written by hand without a sha256 is believed; one whose sha256 names other bytes
    (a promotion between replacing the model and rewriting the sidecar) is not.
    """
    side = _sidecar(ws)
    if side.get("version") is not None and side.get("sha256") in (None, sha256):
        return str(side["version"])
    try:
        from toolkit.promotion.registry import Registry

        entry = Registry.load(ws).entry_by_sha(sha256)
    except (UserError, OSError, ValueError, KeyError, TypeError, AttributeError):
        entry = None
    return str(entry["version"]) if entry and entry.get("version") is not None else None


@dataclass
class ProductionModel:
    """``ROOT/yolov8_model.pt`` as loaded: the ultralytics model, its version and sha256."""

    root: Path
    path: Path
    version: str | None
    sha256: str
    model: Any = field(repr=False)
    sidecar: Path = field(default=Path("yolov8_model.json"), repr=False)
    imgsz: int = 640
    _stamp: tuple = field(default=(), repr=False)

    @classmethod
    def load(cls, root: str | Path, settle_s: float = SETTLE_S) -> "ProductionModel":
        """Load the production model safely, with the version that belongs to the bytes loaded."""
        from toolkit.core.files import sha256_file
        from toolkit.core.offline import load_yolo

        ws = Workspace.at(root)
        if not ws.production_model.is_file():
            raise UserError(f"no production model at {ws.production_model}; promote one with training_pipeline.py")
        deadline = time.monotonic() + settle_s
        while True:
            stamp = _stamp(ws.production_model, ws.production_sidecar)
            sha = sha256_file(ws.production_model)
            model = load_yolo(ws.production_model, ws.ultralytics_config)
            version = _version_of(ws, sha)
            # the bytes hashed are the bytes loaded, and the version describes them
            settled = _stamp(ws.production_model, ws.production_sidecar) == stamp and sha256_file(ws.production_model) == sha
            # (the registry gets a new version before yolov8_model.pt is replaced, so settled bytes
            # with no version are a model placed by hand: waiting would not help)
            if settled or time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # a promotion or rollback is being written: load again when it is done
        if version is None:
            logger.warning("%s matches no version in %s or the registry (placed by hand?): records get no "
                           "model_version", ws.production_model, ws.production_sidecar.name)
        ckpt = getattr(model, "ckpt", None)
        train_args = ckpt.get("train_args", {}) if isinstance(ckpt, dict) else {}
        size = train_args.get("imgsz", 640)
        logger.info("production model %s loaded (version %s, sha256 %s)", ws.production_model, version, sha[:12])
        return cls(root=ws.root, path=ws.production_model, version=version, sha256=sha, model=model,
                   sidecar=ws.production_sidecar, imgsz=size if isinstance(size, int) else 640, _stamp=stamp)

    def changed(self) -> bool:
        """True when the production model or its sidecar was replaced since loading (two stat calls)."""
        return _stamp(self.path, self.sidecar) != self._stamp

    def reload(self) -> "ProductionModel":
        """The production model as it is now (a new object; this one stays usable until dropped)."""
        return ProductionModel.load(self.root)

    @property
    def names(self) -> dict[int, str]:
        names = self.model.names
        return names if isinstance(names, dict) else dict(enumerate(names))

    def detect(self, image: Any, conf: float = 0.25, source: str | None = None, imgsz: int | None = None,
               name: str | None = None) -> dict[str, Any]:
        """Run the model on one image: a memory-bank record (timestamp now, this model's version).

        ``image``: a path, or a decoded frame (numpy array, BGR as OpenCV gives it) with ``name``, the
        path under which the line stores that frame (the record's ``image``).
        """
        if not isinstance(image, (str, Path)) and name is None:
            raise ValueError("detect(frame): give name=, the path where this frame is stored")
        source_arg = str(image) if isinstance(image, (str, Path)) else image
        try:
            result = self.model.predict(source_arg, imgsz=imgsz or self.imgsz, conf=conf, verbose=False)[0]
        except Exception as exc:
            from toolkit.data.dataset.checks import why_undecodable

            # ultralytics fails deep inside (an IndexError for a 32-bit float TIFF): say what the file is
            why = why_undecodable(Path(image)) if isinstance(image, (str, Path)) else None
            if why:
                raise UnreadableImage(f"{image}: {why}") from exc
            raise
        return record_from_result(result, name or str(image), self.names, self.version, source)


class UnreadableImage(ValueError):
    """``detect`` was given an image file that OpenCV (which ultralytics detects with) cannot decode."""


def record_from_result(result: Any, image: str | Path, names: dict[int, str], model_version: str | None,
                       source: str | None = None, timestamp: str | None = None) -> dict[str, Any]:
    """An ultralytics result as a memory-bank record; boxes clipped to the image, rounded."""
    from toolkit.core.reports import utc_now_iso

    height, width = (int(v) for v in result.orig_shape[:2])
    detections = []
    boxes = result.boxes
    for (x1, y1, x2, y2), c, k in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist()):
        x1, y1 = round(max(0.0, x1), 1), round(max(0.0, y1), 1)
        x2, y2 = round(min(float(width), x2), 1), round(min(float(height), y2), 1)
        if x2 > x1 and y2 > y1:
            detections.append({"class": str(names[int(k)]), "confidence": round(float(c), 4), "bbox": [x1, y1, x2, y2]})
    record: dict[str, Any] = {"timestamp": timestamp or utc_now_iso(), "image": str(image)}
    if model_version is not None:
        record["model_version"] = str(model_version)
    if source is not None:
        record["source"] = source
    record.update({"image_width": width, "image_height": height, "detections": detections})
    return record


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars from the detection code
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class MemoryBankWriter:
    """Appends records to a JSONL memory bank or a database URL (see the module docstring)."""

    def __init__(self, target: str | Path, model_version: str | None = None, source: str | None = None) -> None:
        from toolkit.memory.memory_bank_sql import is_database_url, refuse_url_typo

        refuse_url_typo(target)
        self.model_version = None if model_version is None else str(model_version)
        self.source = source
        self._fd: int | None = None
        self._sql = None
        self._lock = None
        self._torn_at: tuple[int, int] | None = None  # our partial line (start, end) if cutting it back failed
        if is_database_url(target):
            from toolkit.memory.memory_bank_sql import SqlAppender

            self.target: str | Path = str(target)
            self._sql = SqlAppender(str(target))
            self.shown = self._sql.loc.shown
            return
        path = Path(target).expanduser().resolve()
        if path.suffix.lower() not in (".jsonl", ".ndjson", ""):
            raise UserError(f"{path.name}: records are appended to a JSONL memory bank (.jsonl) or a database URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.target = self.shown = path
        # O_APPEND: every write lands at the end of the file as it is then, whoever else appends
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        self._fd = os.open(path, flags, 0o666)  # the umask decides (the analyzer may run as another user)
        if os.name == "nt":  # Windows emulates O_APPEND with seek + write: a lock file makes it atomic
            from filelock import FileLock

            self._lock = FileLock(str(path) + ".lock")
        self._end_torn_line(path)

    @classmethod
    def for_workspace(cls, root: str | Path, **kwargs: Any) -> "MemoryBankWriter":
        """The workspace's memory bank: training.yaml ``memory_bank.url``, else memory-bank/detections.jsonl."""
        from toolkit.core.config import Settings

        ws = Workspace.at(root)
        url = Settings.load(ws.training_yaml)["memory_bank.url"] or ""
        if not url:
            return cls(ws.detections, **kwargs)
        from toolkit.memory.memory_bank_sql import is_database_url

        return cls(url if is_database_url(url) or Path(url).is_absolute() else ws.root / url, **kwargs)

    def _end_torn_line(self, path: Path) -> None:
        """A line cut short by a crashed foreign writer must not swallow our first record.

        Checked under the writers' lock: without it, another writer's line still being written
        looks like a cut-off line, and the repair newline would leave an empty line after it."""
        with self._exclusive():
            try:
                with open(path, "rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    if fh.tell() == 0:
                        return
                    fh.seek(-1, os.SEEK_END)
                    last = fh.read(1)
            except OSError:
                return
            if last != b"\n":
                logger.warning("%s ends in a cut-off line; starting a new line after it", path)
                self._write_unlocked(b"\n")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The writers' lock: a lock file on Windows (its O_APPEND is seek + write), else an
        advisory flock on the log itself (readers never wait for it)."""
        if self._lock is not None:
            with self._lock:
                yield
            return
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _write(self, data: bytes) -> None:
        with self._exclusive():
            if self._torn_at is not None:  # a cut-back that failed last time: end that line first
                self._repair_own_torn_line()
            if self._ends_mid_line():  # another process died mid-line while we were open: never glue onto it
                logger.warning("%s ends in a cut-off line (another writer stopped mid-line); starting a new line "
                               "after it", self.target)
                data = b"\n" + data
            self._write_unlocked(data)

    def _ends_mid_line(self) -> bool:
        """Whether the file's last byte is not a newline (checked under the writers' lock, before each line)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        try:
            with open(self.target, "rb") as fh:
                fh.seek(size - 1)
                return fh.read(1) not in (b"\n", b"")
        except OSError:
            return False

    def _write_unlocked(self, data: bytes) -> None:
        """One system call per line; a line cut short (disk full, a quota) is cut back at once.

        Under the writers' lock nobody appends between our start and our end, so truncating the
        file to where our line began removes exactly our partial bytes; the next record then starts
        on a clean line, days later included (a detection service keeps its writer open).
        """
        start = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
        except OSError:
            self._cut_back(start)
            raise
        if written != len(data):  # disk full mid-write
            self._cut_back(start)
            raise OSError(f"{self.target}: only {written} of {len(data)} bytes written (disk full?); "
                          "the partial line was removed, the record was not stored")

    def _cut_back(self, start: int) -> None:
        end = os.fstat(self._fd).st_size
        try:
            if end > start:
                os.ftruncate(self._fd, start)  # shrinking needs no free space
            self._torn_at = None
        except OSError as exc:
            logger.warning("%s: could not remove a partial line (%s); it is ended before the next record",
                           self.target, exc)
            self._torn_at = (start, end)

    def _repair_own_torn_line(self) -> None:
        """Cut back our own partial line if nothing was appended after it, else end it with a newline."""
        (start, end), self._torn_at = self._torn_at, None
        if os.fstat(self._fd).st_size == end:
            try:
                os.ftruncate(self._fd, start)
                return
            except OSError:
                pass
        with open(self.target, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                os.write(self._fd, b"\n")

    def prepare(self, record: dict[str, Any], model_version: str | None = None) -> dict[str, Any]:
        """The record as it will be stored: version, source filled in; checked (BadRecord if not valid)."""
        if not isinstance(record, dict):
            raise BadRecord(f"a record must be a dict, got {type(record).__name__}")
        out = dict(record)
        version = model_version if model_version is not None else self.model_version
        if out.get("model_version") is None and version is not None:
            out["model_version"] = str(version)
        if out.get("source") is None and self.source is not None:
            out["source"] = self.source
        if "timestamp" not in out:
            from toolkit.core.reports import utc_now_iso

            out["timestamp"] = utc_now_iso()
        try:  # what is written is what the reader gets back: validate the JSON form
            line = json.dumps(out, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise BadRecord(f"record cannot be written as JSON: {exc}") from None
        parsed = json.loads(line)
        validate_record(parsed)
        return parsed

    def append(self, records: dict[str, Any] | Iterable[dict[str, Any]], model_version: str | None = None) -> int:
        """Append one record or several; returns how many. All are checked before any is written."""
        batch = [records] if isinstance(records, dict) else list(records)
        prepared = [self.prepare(r, model_version) for r in batch]
        if not prepared:
            return 0
        if self._sql is not None:
            return self._sql.append(prepared)
        for record in prepared:  # one write per line: each line whole, even if a later one fails
            self._write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        return len(prepared)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._sql is not None:
            self._sql.close()
            self._sql = None

    def __enter__(self) -> "MemoryBankWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- scan: run the production model over a folder and log what it sees --------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def scan_folder(workspace, folder: Path, model_path: Path, bank: str | Path, batch: int = 16,
                conf: float = 0.25, imgsz: int | None = None) -> int:
    """Run ``model_path`` over every image under ``folder``; append one record per image to ``bank``.

    ``bank`` is a JSONL file or a database URL; records go through the detection system's writer
    (below). Records follow the schema: timestamp (scan time, UTC), image
    (absolute path), model_version (the production version when ``model_path`` is the production
    model), source "scan", image_width/height, detections. ``imgsz`` defaults to the size the
    model was trained at. Unreadable images are logged and skipped. Returns the records appended.
    """
    from toolkit.core.offline import load_yolo
    from toolkit.core.progress import progress_bar

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

"""File primitives that protect the user's data: hashing, atomic writes, verified copies.

Every file written here gets the mode the umask allows (0644 with umask 022), like a file made
with ``open()``: the detection service that reads the production model often runs as another user.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it (no plain getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _new_temp(dest: Path) -> Path:
    """An empty temp file next to ``dest`` with the mode a plain ``open(dest, "w")`` would give.

    ``mkstemp`` creates files readable by their owner only (0600); a model or report renamed from
    it would stay unreadable for the detection service running as another user. The temp file is
    given 0666 minus the umask instead, as any other new file (0644 with the usual umask 022).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_replace_from(tmp: Path, dest: Path) -> None:
    # fsync before rename so a power cut leaves either the old or the new file, never half of one.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(dest)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        _atomic_replace_from(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line (a single write, so concurrent readers never see half)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")


def atomic_copy(src: str | Path, dest: str | Path, expected_sha256: str | None = None) -> str:
    """Copy ``src`` to ``dest`` atomically and return the copy's sha256.

    The copy is hashed before it replaces ``dest``; with ``expected_sha256`` a mismatch raises
    ``OSError`` and ``dest`` is left as it was.
    """
    tmp_path, digest = copy_to_temp(src, dest, expected_sha256)
    commit_temp(tmp_path, dest)
    return digest


def copy_to_temp(src: str | Path, dest: str | Path, expected_sha256: str | None = None) -> tuple[Path, str]:
    """Copy ``src`` into a new temp file next to ``dest``; return it and its sha256 (verified when expected).

    The first half of ``atomic_copy``, for callers that do something between the copy and the
    rename (``commit_temp``). The temp file is removed on any failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(dest)
    try:
        shutil.copyfile(src, tmp_path)
        digest = sha256_file(tmp_path)
        if expected_sha256 is not None and digest != expected_sha256:
            raise OSError(f"copy of {src} does not match its expected sha256 ({digest[:12]} != {expected_sha256[:12]})")
        return tmp_path, digest
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def commit_temp(tmp: Path, dest: str | Path) -> None:
    """Rename a temp file of ``copy_to_temp`` onto ``dest`` (fsynced first, atomic)."""
    try:
        _atomic_replace_from(Path(tmp), Path(dest))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

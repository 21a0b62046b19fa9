"""File primitives that protect the user's data: hashing, atomic writes, verified copies."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


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
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _atomic_replace_from(Path(tmp), dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        shutil.copyfile(src, tmp_path)
        digest = sha256_file(tmp_path)
        if expected_sha256 is not None and digest != expected_sha256:
            raise OSError(f"copy of {src} does not match its expected sha256 ({digest[:12]} != {expected_sha256[:12]})")
        _atomic_replace_from(tmp_path, dest)
        return digest
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise

"""Version numbers, archive names, the kind of a file on disk, and the shape of registry.json.

The registry (``toolkit.promotion.registry``) trusts only regular files of its own (``lstat``: a
link is never an archive, never production's only copy) and refuses a registry.json of the wrong
shape with one "restore" line.
"""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from toolkit.core.errors import UserError

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")
ARCHIVE_RE = re.compile(r"^yolov8_v(\d+\.\d+)\.pt$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_version(text: str) -> tuple[int, int]:
    match = _VERSION_RE.match(str(text).strip().lstrip("v"))
    if not match:
        raise UserError(f"version {text!r} is not of the form MAJOR.MINOR (e.g. 1.2)")
    return int(match.group(1)), int(match.group(2))


def next_version(current: str | None, major: bool = False) -> str:
    """1.0 -> 1.1 -> 1.2; ``major``: 1.2 -> 2.0. No current version: 1.0."""
    if current is None:
        return "1.0"
    maj, minor = parse_version(current)
    return f"{maj + 1}.0" if major else f"{maj}.{minor + 1}"


def is_regular(path: Path) -> bool:
    """A regular file of its own (``lstat``: a symlink is not one, even to a regular file)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def not_regular_kind(path: Path) -> str:
    """'a link to X' / 'a folder' / 'not a regular file' for a path that exists but is not a file of its own."""
    if path.is_symlink():
        return f"a link to {os.readlink(path)}"
    return "a folder" if path.is_dir() else "not a regular file"


def damaged(path: Path, why: str) -> UserError:
    return UserError(f"{path} is damaged ({why}); restore registry.json from a backup - "
                     "the archived models next to it are intact")


def check_shape(path: Path, data: Any) -> dict[str, Any]:
    """The registry as written by this module, or the one 'restore registry.json' error."""
    if not isinstance(data, dict):
        raise damaged(path, f"a JSON {type(data).__name__} instead of an object")
    versions, events = data.setdefault("versions", []), data.setdefault("events", [])
    if not isinstance(versions, list) or not isinstance(events, list):
        raise damaged(path, "'versions' and 'events' must be lists")
    seen = set()
    for i, v in enumerate(versions):
        if not (isinstance(v, dict) and isinstance(v.get("version"), str) and isinstance(v.get("file"), str)
                and isinstance(v.get("sha256"), str) and _SHA_RE.match(v["sha256"])
                and _VERSION_RE.match(v["version"]) and Path(v["file"]).name == v["file"]):
            raise damaged(path, f"versions[{i}] lacks a valid version, file or sha256")
        if v["version"] in seen:
            raise damaged(path, f"version {v['version']} is listed twice")
        seen.add(v["version"])
    for i, e in enumerate(events):
        if not (isinstance(e, dict) and isinstance(e.get("action"), str) and isinstance(e.get("version"), str)):
            raise damaged(path, f"events[{i}] lacks an action or version")
    quarantined = data.get("quarantined", [])
    if not (isinstance(quarantined, list) and all(isinstance(q, dict) and isinstance(q.get("sha256"), str)
                                                    for q in quarantined)):
        raise damaged(path, "'quarantined' is not a list of kept files")
    pending = data.get("pending")
    if pending is not None:
        new = pending.get("entry") if isinstance(pending, dict) else None
        if not (isinstance(pending, dict) and isinstance(pending.get("action"), str)
                and isinstance(pending.get("sha256"), str)
                and (new is None or (isinstance(new, dict) and new.get("sha256") == pending["sha256"]
                                     and isinstance(new.get("version"), str) and _VERSION_RE.match(new["version"])
                                     and new.get("file") == f"yolov8_v{new['version']}.pt"))):
            raise damaged(path, "'pending' is not an operation record")
    return data

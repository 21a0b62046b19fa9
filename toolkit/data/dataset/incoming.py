"""Batches waiting in ``training/incoming/`` and the fingerprint that says whether one changed."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from toolkit.data.dataset.manifest import load_manifest
from toolkit.core.layout import Workspace


def batch_fingerprint(folder: str | Path) -> str:
    """sha256 of the relative path, size and mtime of every file under ``folder``: a changed,
    added or removed file changes it, reading no image."""
    digest = hashlib.sha256()

    def walk(path: str, rel: str) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = f"{rel}{entry.name}"
            try:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, name + "/")
                    continue
                st = entry.stat()
            except OSError:
                continue
            digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))

    walk(str(folder), "")
    return digest.hexdigest()


def incoming_batches(workspace: Workspace) -> list[Path]:
    """Sub-folders of ``training/incoming/`` (hidden ones and ``_``-prefixed ones are skipped)."""
    if not workspace.incoming.is_dir():
        return []
    return sorted(p for p in workspace.incoming.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")))


def pending_incoming_batches(workspace: Workspace) -> list[Path]:
    """Sub-folders of ``training/incoming/`` whose current fingerprint no manifest batch has."""
    manifest = load_manifest(workspace)
    seen = {b.get("fingerprint") for b in (manifest or {}).get("batches", [])}
    return [p for p in incoming_batches(workspace) if batch_fingerprint(p) not in seen]

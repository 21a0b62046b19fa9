"""The managed folders: file names, staged copies, the commit that makes them visible, strays.

An import never writes into ``images/<split>/`` or ``labels/<split>/`` directly. Its copies go
to a staging folder (``training/datasets/.staging/<stamp>-<pid>/``, same layout); the manifest
that lists them is written (the commit); then they are renamed into the split folders (same
file system: no data is copied twice). A run killed before the commit leaves only its staging
folder, one killed after it leaves files the committed manifest lists. The next writer, holding
the workspace lock, finishes the second and removes the first (``recover_staging``) before
anything reads the dataset, so a killed import leaves nothing visible.

Disk full: the space an import needs is checked before the first copy; a write that still
fails for lack of space removes every staged file and stops with one line naming the path and
the space needed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

from toolkit.data.dataset.checks import CheckedImage
from toolkit.data.images import apply_orientation
from toolkit.data.dataset.manifest import save_manifest, write_split_lists
from toolkit.core.errors import UserError
from toolkit.data.labels.yolo import yolo_label_text
from toolkit.data.labels.source import Problem
from toolkit.core.layout import SPLITS, Workspace
from toolkit.core.reports import timestamp

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MANAGED_NAME = re.compile(r"^.+-[0-9a-f]{8}(-\d+)?\.[A-Za-z0-9]+$")  # what managed_name() writes
# errno values that mean "no room": the disk, a quota, or a file-size limit (RLIMIT_FSIZE)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_BLOCK = 4096  # files take whole blocks: a 300-byte label costs 4 KiB on ext4 and tmpfs


# --------------------------------------------------------------------------- names

def managed_name(source: Path, sha256: str, suffix: str | None = None, n: int = 1) -> str:
    """``<stem>-<8 hex of content hash>[-n]<suffix>``: unique across batches, readable, traceable
    (the manifest maps it back to the original path)."""
    stem = _SAFE.sub("_", source.stem).strip("._") or "image"
    return f"{stem[:80]}-{sha256[:8]}{f'-{n}' if n > 1 else ''}{(suffix or source.suffix).lower()}"


def iter_managed_files(workspace: Workspace) -> Iterable[Path]:
    for split in SPLITS:
        for folder in (workspace.images_dir(split), workspace.labels_dir(split)):
            if folder.is_dir():
                yield from (p for p in folder.iterdir() if p.is_file())


def _listed(manifest: dict | None) -> set[str]:
    """Every file (image and label) the manifest lists, relative to training/datasets/."""
    out: set[str] = set()
    for e in (manifest or {}).get("images", []):
        out.add(e["file"])
        out.add(e["label"])
    return out


# --------------------------------------------------------------------------- space

def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def space_needed(tasks: Sequence[tuple[CheckedImage, dict]], manifest_bytes: int) -> int:
    """Bytes an import will take: every copy (a re-encoded JPEG at quality 95 may grow: counted
    twice), every label, in whole blocks, and two copies of the manifest."""
    total = 2 * (manifest_bytes + _BLOCK)
    for checked, _ in tasks:
        size = checked.size * (2 if checked.reencode else 1)
        total += -(-size // _BLOCK) * _BLOCK + _BLOCK
    return total


def _free_bytes(folder: Path) -> int:
    """Free space of the file system that holds (or will hold) ``folder``."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _free_inodes(folder: Path) -> int | None:
    """Files the file system can still create (None: unknown, e.g. Windows)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_favail if st.f_files else None  # f_files 0: the file system does not count inodes


def no_space_message(path: Path | str, needed: int, folder: Path) -> str:
    free = _free_bytes(folder)
    inodes = _free_inodes(folder)
    if inodes is not None and inodes < 16 and free >= needed:
        return (f"no space left writing {path}: the file system of {folder} can hold no more files (out of "
                f"inodes: {inodes} left) although {_human(free)} are free; delete files there (or move the "
                "workspace to a file system with more inodes) and rerun (nothing was imported)")
    if free >= needed:
        return (f"no space left writing {path} although the import needs {_human(needed)} and {_human(free)} "
                f"are free on {folder}: a quota or a file-size limit? Raise it and rerun (nothing was imported)")
    return (f"no space left writing {path}: the import needs {_human(needed)} on {folder}, {_human(free)} free; "
            f"free at least {_human(needed - free)} there and rerun (nothing was imported)")


def check_free_space(workspace: Workspace, needed: int) -> None:
    """Refuse, before the first copy, an import the disk cannot hold."""
    folder = workspace.datasets
    free = _free_bytes(folder)
    if needed > free:
        raise UserError(f"not enough space on {folder}: the import needs {_human(needed)}, {_human(free)} free; "
                        f"free at least {_human(needed - free)} there and rerun (nothing was imported)")


# --------------------------------------------------------------------------- writing one copy

def _write_file(dest: Path, payload: bytes) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class NoSpace(Exception):
    """A write failed for lack of space (the disk, a quota or a file-size limit)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def write_copy(task: tuple[CheckedImage, dict], dest_root: Path) -> tuple[dict | None, Problem | None]:
    """Copy (or re-encode) one validated image under ``dest_root`` and write its label; the source
    is only read.

    No temp file + rename per file (that doubled the cost on ext4): ``dest_root`` is the import's
    staging folder, which nobody reads. A plain copy is done by the OS (sendfile); that it is
    the file that was checked is ensured by its size and nanosecond mtime, unchanged since the
    check. A write that fails for lack of space removes what it wrote and raises ``NoSpace``.
    """
    checked, info = task
    image_dest, label_dest = dest_root / info["file"], dest_root / info["label"]
    try:
        return _write_copy(checked, info, image_dest, label_dest)
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        failed = image_dest if not label_dest.exists() else label_dest
        for p in (image_dest, label_dest):
            p.unlink(missing_ok=True)
        raise NoSpace(failed) from None


def _write_copy(checked: CheckedImage, info: dict, image_dest: Path, label_dest: Path):
    src = checked.source.image
    changed = Problem(src, "the file changed while it was being imported; rerun to import its new content")
    entry = {k: v for k, v in info.items() if k != "rows"}
    if checked.reencode:
        import cv2
        import numpy as np

        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != checked.sha256:
            return None, changed
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        img = apply_orientation(img, checked.orientation)
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_dest.suffix in (".jpg", ".jpeg") else []
        ok, buf = cv2.imencode(image_dest.suffix, img, params)
        if not ok:
            return None, Problem(src, f"could not re-encode the copy as {image_dest.suffix}")
        _write_file(image_dest, buf.tobytes())
        entry["stored_sha256"] = hashlib.sha256(buf).hexdigest()
    else:
        st = src.stat()
        if (st.st_size, st.st_mtime_ns) != (checked.size, checked.mtime_ns):
            return None, changed
        shutil.copyfile(src, image_dest)
    _write_file(label_dest, yolo_label_text(info["rows"]).encode("utf-8"))
    return entry, None


# --------------------------------------------------------------------------- staging and commit

class Staging:
    """The folder an import writes its copies to; nothing in it is part of the dataset."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.root = workspace.dataset_staging / f"{timestamp()}-{os.getpid()}"

    def make_folders(self) -> None:
        for split in SPLITS:
            for kind in ("images", "labels"):
                (self.root / kind / split).mkdir(parents=True, exist_ok=True)

    def write(self, tasks: Sequence[tuple[CheckedImage, dict]], needed: int,
              map_fn: Callable) -> tuple[list[dict], list[Problem]]:
        """Write every copy (``map_fn(fn, tasks)`` runs them, e.g. on a thread pool); the copies'
        manifest entries and the problems of the files that changed meanwhile."""
        try:
            self.make_folders()
            written = map_fn(lambda task: write_copy(task, self.root), tasks)
        except NoSpace as exc:
            message = no_space_message(exc.path, needed, self.workspace.datasets)  # before discard() frees space
            self.discard()
            raise UserError(message) from None
        except OSError as exc:
            message = no_space_message(exc.filename or self.root, needed, self.workspace.datasets)
            self.discard()
            if exc.errno in NO_SPACE:
                raise UserError(message) from None
            raise
        except BaseException:
            self.discard()
            raise
        added = [entry for entry, problem in written if problem is None]
        return added, [problem for _, problem in written if problem is not None]

    def publish(self, entries: Sequence[dict]) -> None:
        """After the commit: move the staged copies into the split folders. A split folder that is
        still empty is replaced by the staged one (one rename instead of one per file)."""
        datasets = self.workspace.datasets
        whole: set[str] = set()
        for kind in ("images", "labels"):
            for split in SPLITS:
                staged, target = self.root / kind / split, datasets / kind / split
                if not staged.is_dir() or not any(staged.iterdir()):
                    continue
                try:
                    target.rmdir()  # only when it is empty
                except FileNotFoundError:
                    target.parent.mkdir(parents=True, exist_ok=True)
                except OSError:
                    continue
                os.rename(staged, target)
                whole.add(f"{kind}/{split}")
        for e in entries:
            for rel in (e["file"], e["label"]):
                if rel.rsplit("/", 1)[0] not in whole:
                    os.replace(self.root / rel, datasets / rel)
        for split in SPLITS:
            self.workspace.images_dir(split).mkdir(parents=True, exist_ok=True)
            self.workspace.labels_dir(split).mkdir(parents=True, exist_ok=True)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()  # .staging/ itself, when no other staging folder is left
        except OSError:
            pass


def commit_manifest(workspace: Workspace, manifest: dict, staging: Staging, added: Sequence[dict], needed: int) -> None:
    """Write the manifest that lists the staged copies (the commit), then make them visible."""
    try:
        save_manifest(workspace, manifest)
    except OSError as exc:  # not committed: the staged copies go
        message = no_space_message(workspace.manifest, needed, workspace.datasets)  # measured before they go
        staging.discard()
        if exc.errno in NO_SPACE:
            raise UserError(message) from None
        raise
    try:
        staging.publish(added)
    except OSError as exc:
        raise UserError(f"the import was committed but its copies could not be moved into {workspace.datasets} "
                        f"({exc.strerror or exc}); rerun dataset_preparer.py to finish it") from None


def recover_staging(workspace: Workspace, manifest: dict | None) -> list[str]:
    """Finish or undo the imports a killed run left in ``.staging/``: a staged file the committed
    manifest lists is moved into place, every other one is removed. Call holding the lock."""
    from toolkit.data.dataset.manifest import stale_history

    stale = stale_history(workspace, manifest)
    for path in stale:  # the history copy of a version whose commit never happened
        path.unlink(missing_ok=True)
        logger.warning("removed %s, left by an import interrupted before its commit", path)
    staging = workspace.dataset_staging
    if not staging.is_dir():
        return [f"removed {p.name}: an interrupted import never committed that version" for p in stale]
    listed = _listed(manifest)
    moved = removed = 0
    for folder in sorted(p for p in staging.iterdir()):
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                rel = path.relative_to(folder).as_posix()
                dest = workspace.datasets / rel
                if rel in listed and not dest.exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, dest)
                    moved += 1
                else:
                    removed += 1
        shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    notes = []
    if moved:
        notes.append(f"an interrupted import was finished: {moved} committed file(s) moved into the dataset")
    if removed:
        notes.append(f"an interrupted import was undone: {removed} uncommitted file(s) removed from {staging}")
    for note in notes:
        logger.warning(note)
    return notes


def settle_dataset(workspace: Workspace, data_yaml: Path | None = None) -> list[str]:
    """Before the managed dataset is read (training, evaluation): finish or undo an interrupted
    import and regenerate the split lists (and dataset.yaml) from the manifest. Call holding the
    lock. Nothing is done for another data yaml (``--data``) or a workspace without a manifest
    (a dataset laid out by hand)."""
    from toolkit.data.dataset.manifest import load_manifest

    if data_yaml is not None and Path(data_yaml).resolve() != workspace.dataset_yaml.resolve():
        return []
    manifest = load_manifest(workspace)
    notes = recover_staging(workspace, manifest)
    if manifest is not None:
        write_split_lists(workspace, manifest)
    return notes


# --------------------------------------------------------------------------- strays

def set_aside_unmanaged(workspace: Workspace, manifest: dict | None) -> list[str]:
    """Files in the managed folders that no manifest lists (put there by hand, or left by an
    older version's crash) are moved aside, so ultralytics never trains on an unvalidated file;
    nothing is deleted. A move that fails (a full disk) puts back what it moved."""
    listed = {(workspace.datasets / rel).resolve() for rel in _listed(manifest)}
    strays = [p for p in iter_managed_files(workspace) if p.resolve() not in listed]
    if not strays:
        return []
    foreign = [p for p in strays if not _MANAGED_NAME.match(p.name)]
    if manifest is None and foreign:
        # Not ours (no manifest, not our names): a dataset someone put there by hand.
        raise UserError(f"{workspace.datasets} already holds {len(foreign)} file(s) that no manifest lists; move "
                        "them out and import them with --source (add --keep-split to keep their split)")
    aside = workspace.datasets / "unmanaged" / timestamp()
    moved: list[tuple[Path, Path]] = []
    try:
        for p in strays:
            dest = aside / p.relative_to(workspace.datasets)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
            moved.append((p, dest))
    except OSError as exc:
        for p, dest in reversed(moved):
            os.replace(dest, p)
        shutil.rmtree(aside, ignore_errors=True)
        try:
            aside.parent.rmdir()  # unmanaged/ itself, when it holds nothing else
        except OSError:
            pass
        raise UserError(f"cannot set aside {len(strays)} file(s) that no manifest lists in {workspace.datasets} "
                        f"({exc.strerror or exc}); free space there or move them out by hand, then rerun") from None
    note = f"{len(strays)} file(s) in the managed folders were not in the manifest; moved to {aside}"
    logger.warning(note)
    return [note]

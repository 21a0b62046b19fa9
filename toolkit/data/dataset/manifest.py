"""The manifest (``training/datasets/manifest.json``): the managed dataset's memory and its commit.

Per image: content hash, perceptual hash, original path, batch, split, boxes per class; per
batch: its fingerprint. Every change writes a new version (``manifests/v0003.json`` keeps the
old ones). Writing ``manifest.json`` is the commit of an import: what it does not list is not
part of the dataset, and training and evaluation read exactly the images it lists (the split
lists ``train.txt``/``val.txt``/``test.txt`` are generated from it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from toolkit.core.errors import UserError
from toolkit.core.files import atomic_write_text
from toolkit.core.layout import SPLITS, Workspace

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = 1


def load_manifest(workspace: Workspace) -> dict | None:
    """The current manifest, or None when nothing was ever imported."""
    path = workspace.manifest
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); restore it from {workspace.datasets / 'manifests'}") from None
    data.setdefault("images", [])
    data.setdefault("batches", [])
    data.setdefault("classes", [])
    data.setdefault("version", 0)
    return data


def empty_manifest(classes: Sequence[str]) -> dict:
    return {"schema": MANIFEST_SCHEMA, "version": 0, "classes": list(classes), "images": [], "batches": []}


def manifest_history_path(workspace: Workspace, version: int) -> Path:
    return workspace.datasets / "manifests" / f"v{version:04d}.json"


def manifest_text(manifest: dict) -> str:
    """JSON with one image / batch per line: diff-able and greppable, and written by the C encoder
    (``indent=`` would fall back to the slow pure-Python one: seconds for 100k images)."""
    head = {k: v for k, v in manifest.items() if k not in ("images", "batches")}
    parts = ["{"]
    parts += [f"  {json.dumps(k)}: {json.dumps(v, default=str)}," for k, v in head.items()]
    for key in ("batches", "images"):
        rows = [f"    {json.dumps(r, default=str, ensure_ascii=False)}" for r in manifest.get(key, [])]
        parts.append(f'  "{key}": [' + ("\n" + ",\n".join(rows) + "\n  ]" if rows else "]")
                     + ("," if key == "batches" else ""))
    parts.append("}")
    return "\n".join(parts) + "\n"


def save_manifest(workspace: Workspace, manifest: dict) -> Path:
    """Write the manifest and its versioned copy (the copy first: manifest.json is the commit)."""
    text = manifest_text(manifest)
    history = manifest_history_path(workspace, int(manifest["version"]))
    atomic_write_text(history, text)
    try:
        atomic_write_text(workspace.manifest, text)
    except BaseException:  # not committed: no history copy of a version that never was
        history.unlink(missing_ok=True)
        raise
    return workspace.manifest


def stale_history(workspace: Workspace, manifest: dict | None) -> list[Path]:
    """``manifests/vNNNN.json`` newer than the committed manifest: left by an import killed before its commit."""
    folder = workspace.datasets / "manifests"
    if not folder.is_dir():
        return []
    current = int((manifest or {}).get("version") or 0)
    stale = []
    for path in folder.glob("v*.json"):
        digits = path.stem[1:]
        if digits.isdigit() and int(digits) > current:
            stale.append(path)
    return sorted(stale)


def split_counts(manifest: dict | None, classes: Sequence[str]) -> dict:
    """Images per split, and images / boxes per class and split, from a manifest."""
    images = {s: 0 for s in SPLITS}
    class_images = {c: {s: 0 for s in SPLITS} for c in classes}
    class_boxes = {c: {s: 0 for s in SPLITS} for c in classes}
    background = {s: 0 for s in SPLITS}
    for entry in (manifest or {}).get("images", []):
        split = entry["split"]
        images[split] += 1
        boxes = entry.get("boxes") or {}
        if not boxes:
            background[split] += 1
        for cls, n in boxes.items():
            class_images.setdefault(cls, {s: 0 for s in SPLITS})[split] += 1
            class_boxes.setdefault(cls, {s: 0 for s in SPLITS})[split] += n
    return {"images": images, "class_images": class_images, "class_boxes": class_boxes, "background": background}


def split_list_text(manifest: dict, split: str) -> str:
    """The images of ``split`` the manifest lists, one per line, relative to the list's folder
    (``./images/...``: ultralytics and the evaluator both read a leading ``./`` that way)."""
    return "".join(f"./{f}\n" for f in sorted(e["file"] for e in manifest["images"] if e["split"] == split))


def write_split_lists(workspace: Workspace, manifest: dict) -> None:
    """``train.txt``/``val.txt``/``test.txt`` from the manifest, and a dataset.yaml that reads
    them: training and evaluation see exactly the images the manifest lists, never a file that
    merely lies in a split folder."""
    from toolkit.core.datafile import read_class_names, write_dataset_yaml

    for split in SPLITS:
        path, text = workspace.split_list(split), split_list_text(manifest, split)
        try:
            same = path.read_text(encoding="utf-8") == text
        except OSError:
            same = False
        if not same:
            atomic_write_text(path, text)
    yaml_ok = False
    if workspace.dataset_yaml.exists():
        import yaml

        from toolkit.core.yaml_safe import load_yaml_text

        try:
            data = load_yaml_text(workspace.dataset_yaml.read_text(encoding="utf-8")) or {}
            yaml_ok = all(data.get(s) == workspace.split_list(s).name for s in SPLITS)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            yaml_ok = False
    if not yaml_ok:
        names = (read_class_names(workspace.dataset_yaml) if workspace.dataset_yaml.exists()
                 else list(manifest.get("classes") or []))
        write_dataset_yaml(workspace, names, manifest.get("version"))

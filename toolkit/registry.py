"""Versioned production models: archive, promote, roll back - atomically and verified.

``training/models/registry.json`` lists every model that was ever in production, each archived
as an immutable ``training/models/yolov8_v<version>.pt`` with its sha256. Which version is in
production is never stored as a separate pointer that could disagree with reality: it is the
registry entry whose sha256 matches ``ROOT/yolov8_model.pt`` (the sidecar ``yolov8_model.json``
is written for the detection system's benefit and regenerated from the registry).

Order of writes in a promotion, chosen so a crash at any point leaves a usable state:
archive copy (verified) -> registry entry -> atomic replace of yolov8_model.pt -> sidecar -> history.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.files import append_jsonl, atomic_copy, atomic_write_json, sha256_file
from toolkit.layout import Workspace
from toolkit.reports import utc_now_iso

logger = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


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


@dataclass
class Registry:
    workspace: Workspace
    data: dict[str, Any]

    @classmethod
    def load(cls, workspace: Workspace) -> "Registry":
        path = workspace.registry
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); restore it from a backup - "
                                "the archived models next to it are intact") from None
        else:
            data = {}
        data.setdefault("versions", [])
        data.setdefault("events", [])
        return cls(workspace, data)

    def save(self) -> None:
        atomic_write_json(self.workspace.registry, self.data)

    @property
    def versions(self) -> list[dict[str, Any]]:
        return self.data["versions"]

    def entry(self, version: str) -> dict[str, Any] | None:
        wanted = parse_version(version)
        return next((v for v in self.versions if parse_version(v["version"]) == wanted), None)

    def entry_by_sha(self, sha256: str) -> dict[str, Any] | None:
        return next((v for v in self.versions if v["sha256"] == sha256), None)

    def latest_version(self) -> str | None:
        if not self.versions:
            return None
        return max((v["version"] for v in self.versions), key=parse_version)

    def archive_path(self, version: str) -> Path:
        return self.workspace.models / f"yolov8_v{version}.pt"

    def production_entry(self) -> dict[str, Any] | None:
        """The registry entry of the model in ``yolov8_model.pt`` now (None: unregistered or absent)."""
        if not self.workspace.production_model.exists():
            return None
        return self.entry_by_sha(sha256_file(self.workspace.production_model))

    def verify_archive(self, entry: dict[str, Any]) -> Path:
        path = self.workspace.models / entry["file"]
        if not path.exists():
            raise UserError(f"archived model of version {entry['version']} is missing ({path}); it cannot be used")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise UserError(f"archived model {path.name} does not match its recorded sha256 "
                            f"({actual[:12]} != {entry['sha256'][:12]}): it was changed after archiving; "
                            "refusing to use it")
        return path

    # --- changes ------------------------------------------------------------------------------

    def _archive(self, model: Path, version: str, **fields: Any) -> dict[str, Any]:
        if self.entry(version) is not None:
            raise UserError(f"version {version} is already in the registry; use another version")
        expected = sha256_file(model)
        dest = self.archive_path(version)
        if dest.exists():
            raise UserError(f"{dest} already exists but is not in the registry; move it away and rerun")
        atomic_copy(model, dest, expected_sha256=expected)
        entry = {"version": version, "file": dest.name, "sha256": expected, "registered_at": utc_now_iso(), **fields}
        self.versions.append(entry)
        self.save()
        return entry

    def register_existing_production(self) -> dict[str, Any] | None:
        """A production model found without a registry entry is archived first (version from its sidecar, else 1.0)."""
        ws = self.workspace
        if not ws.production_model.exists():
            return None
        current = self.production_entry()
        if current is not None:
            return current
        version = None
        if ws.production_sidecar.exists():
            try:
                version = json.loads(ws.production_sidecar.read_text()).get("version")
                parse_version(version)
            except (json.JSONDecodeError, UserError, TypeError, AttributeError):
                version = None
        if version is None or self.entry(version) is not None:
            version = "1.0" if not self.versions else next_version(self.latest_version())
        from toolkit.offline import model_class_names

        classes = model_class_names(ws.production_model, ws.cache / "ultralytics")
        entry = self._archive(ws.production_model, version, parent=None, source="existing production model",
                              classes=classes, metrics={}, reasons=["registered as found in production"])
        self._event("register", version)
        self._write_sidecar(entry)
        logger.info("registered the existing production model as version %s", version)
        return entry

    def promote(self, model: Path, *, major: bool = False, metrics: dict | None = None,
                reasons: list[str] | None = None, dataset_version: Any = None, run_dir: str | None = None,
                source: str = "pipeline", classes: list[str] | None = None) -> dict[str, Any]:
        """Archive ``model`` as the next version and make it production (atomic replace)."""
        model = Path(model)
        parent = self.production_entry()
        version = next_version(self.latest_version(), major=major)
        entry = self._archive(model, version, parent=parent["version"] if parent else None, source=source,
                              metrics=metrics or {}, reasons=reasons or [], dataset_version=dataset_version,
                              run_dir=run_dir, classes=classes)
        self._install(entry)
        self._event("promote", version, previous=parent["version"] if parent else None)
        return entry

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Restore an archived version (default: the one before the current production)."""
        current = self.production_entry()
        if version is None:
            target_version = self._previous_production(current["version"] if current else None)
            if target_version is None:
                raise UserError("there is no earlier production version to roll back to "
                                "(see --status for the versions in the registry)")
        else:
            target_version = version
        target = self.entry(target_version)
        if target is None:
            known = ", ".join(v["version"] for v in self.versions) or "none"
            raise UserError(f"version {target_version} is not in the registry (known: {known})")
        if current is not None and current["version"] == target["version"]:
            raise UserError(f"version {target['version']} is already in production")
        self._install(target)
        self._event("rollback", target["version"], previous=current["version"] if current else None)
        return target

    def _previous_production(self, current: str | None) -> str | None:
        """The version that was in production just before ``current`` became production."""
        installed = [e for e in self.data["events"] if e["action"] in ("promote", "rollback", "register")]
        for event in reversed(installed):
            if event["version"] == current and event.get("previous"):
                return event["previous"]
        # fall back to the version just below the current one
        older = [v["version"] for v in self.versions
                 if current is None or parse_version(v["version"]) < parse_version(current)]
        return max(older, key=parse_version) if older else None

    def _install(self, entry: dict[str, Any]) -> None:
        archive = self.verify_archive(entry)
        atomic_copy(archive, self.workspace.production_model, expected_sha256=entry["sha256"])
        self._write_sidecar(entry)

    def _write_sidecar(self, entry: dict[str, Any]) -> None:
        sidecar = {"version": entry["version"], "sha256": entry["sha256"], "classes": entry.get("classes"),
                   "metrics": entry.get("metrics", {}), "promoted_at": utc_now_iso(),
                   "archive": str(self.workspace.models / entry["file"])}
        atomic_write_json(self.workspace.production_sidecar, sidecar)

    def _event(self, action: str, version: str, previous: str | None = None) -> None:
        self.data["events"].append({"action": action, "version": version, "previous": previous, "at": utc_now_iso()})
        self.save()


def append_history(workspace: Workspace, record: dict[str, Any]) -> None:
    """One record per pipeline run in ``memory-bank/training_history.jsonl``."""
    append_jsonl(workspace.training_history, record)


def read_history(workspace: Workspace, last: int = 10) -> list[dict[str, Any]]:
    path = workspace.training_history
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records[-last:]

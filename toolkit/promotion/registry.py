"""Versioned production models: archive, promote, roll back - atomically, verified, recoverable.

``training/models/registry.json`` lists every model that was ever in production, each archived
as an immutable ``training/models/yolov8_v<version>.pt`` with its sha256. Which version is in
production is never stored as a separate pointer that could disagree with reality: it is the
registry entry whose sha256 matches ``ROOT/yolov8_model.pt`` (the sidecar ``yolov8_model.json``
is written for the detection system's benefit and regenerated from the registry).

What holds, whatever step a run is killed at:
- ``yolov8_model.pt`` is never replaced unless its current bytes are archived first (sha256
  verified): an unregistered production model is registered as a version, a registered one whose
  archive went missing is archived again; when that is impossible the step is refused.
- One model (sha256) is one version: promoting a model that is already archived reuses its version.
- Every change is announced in the registry (``pending``) before its first write; the next run
  (``recover``, under the workspace lock) finishes what can be finished and drops the rest:
  an archive renamed but not registered is registered, a production model that was replaced gets
  its sidecar and event, temp files of a killed copy are removed.

Order of writes in a promotion: pending -> archive copy (temp, verified, renamed) -> registry
entry -> production (temp, verified, atomic rename) -> sidecar -> event (pending cleared).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from toolkit.core.errors import UserError
from toolkit.core.files import atomic_write_json, commit_temp, copy_to_temp, sha256_file
from toolkit.core.layout import Workspace
from toolkit.core.reports import utc_now_iso
from toolkit.core.run_history import stale_report_temps
from toolkit.promotion.versions import (ARCHIVE_RE, check_shape, damaged, is_regular, next_version, not_regular_kind,
                                        parse_version)

logger = logging.getLogger(__name__)

_INSTALLS = ("register", "promote", "rollback")

# Tests only: SIGKILL this process at a named step (real kill, real recovery). Never set in use.
KILL_ENV = "TOOLKIT_TEST_KILL_AT"


def _step(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        logger.debug("test hook: killing the process at step %s", name)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


@dataclass
class Registry:
    workspace: Workspace
    data: dict[str, Any]
    # what this object's recover() finished for a killed run: [{action, version}]
    finished: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, workspace: Workspace) -> "Registry":
        path = workspace.registry
        if path.exists():
            try:
                data = json.loads(path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError:
                raise damaged(path, "not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise damaged(path, f"not valid JSON: {exc}") from None
            data = check_shape(path, data)
        else:
            data = {"versions": [], "events": []}
        return cls(workspace, data)

    def save(self) -> None:
        atomic_write_json(self.workspace.registry, self.data)

    @property
    def versions(self) -> list[dict[str, Any]]:
        return self.data["versions"]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.data["events"]

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
        if not path.exists() and not path.is_symlink():
            raise UserError(f"archived model of version {entry['version']} is missing ({path}); it cannot be used")
        if not is_regular(path):
            raise UserError(f"archived model {path} is {not_regular_kind(path)}, not a copy of its own; refusing to "
                            f"use it - restore {path.name} from a backup (training_pipeline.py --root "
                            f"{self.workspace.root} --status lists every archive)")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise UserError(f"archived model {path.name} does not match its recorded sha256 "
                            f"({actual[:12]} != {entry['sha256'][:12]}): it was changed after archiving; "
                            "refusing to use it")
        return path

    def _free_version(self, major: bool = False) -> str:
        """The next version whose number and archive file are both unused."""
        version = next_version(self.latest_version(), major=major)
        while self.entry(version) is not None or self.archive_path(version).exists():
            version = next_version(version)
        return version

    # --- the history of production --------------------------------------------------------------

    def production_lineage(self) -> list[str]:
        """The versions that were production, oldest first; a rollback to the one below steps back.

        Replays the events: a promotion or registration goes on top; a rollback to the version just
        below the top takes the top off (so ``--rollback`` twice goes two steps back, not back and
        forth); a rollback to any other version goes on top. Versions that hold one model (two
        entries with one sha256, written by an older toolkit) count as the first of them.
        """
        sha_of = {v["version"]: v["sha256"] for v in self.versions}
        stack: list[str] = []
        for event in self.events:
            if event.get("action") not in _INSTALLS:
                continue
            version = self._canonical(event["version"], sha_of)
            if event["action"] == "rollback" and len(stack) >= 2 and stack[-2] == version:
                stack.pop()
            elif not stack or stack[-1] != version:
                stack.append(version)
        return stack

    def _canonical(self, version: str, sha_of: dict[str, str]) -> str:
        entry = self.entry_by_sha(sha_of[version]) if version in sha_of else None
        return entry["version"] if entry else version

    def previous_production(self, current: str | None) -> str | None:
        """The version that was in production before ``current`` (None: there was none)."""
        lineage = self.production_lineage()
        if current is not None:
            current = self._canonical(current, {v["version"]: v["sha256"] for v in self.versions})
        if current is not None and lineage and lineage[-1] == current:
            return lineage[-2] if len(lineage) >= 2 else None
        if current is not None and current in lineage:
            index = len(lineage) - 1 - lineage[::-1].index(current)
            return lineage[index - 1] if index >= 1 else None
        return lineage[-1] if lineage and lineage[-1] != current else None

    # --- recovery of interrupted runs ----------------------------------------------------------

    def leftover_temp_files(self) -> list[Path]:
        ws = self.workspace
        found = list(ws.root.glob(f".{ws.production_model.name}.*.tmp"))
        found += list(ws.root.glob(f".{ws.production_sidecar.name}.*.tmp"))
        if ws.models.is_dir():
            found += list(ws.models.glob(".yolov8_v*.pt.*.tmp")) + list(ws.models.glob(f".{ws.registry.name}.*.tmp"))
            found += list(self.quarantine_dir.glob(".yolov8_model.*.pt.*.tmp"))
        found += stale_report_temps(ws)
        return sorted(found)

    def unregistered_archives(self) -> list[Path]:
        if not self.workspace.models.is_dir():
            return []
        files = {v["file"] for v in self.versions}
        return sorted(p for p in self.workspace.models.glob("yolov8_v*.pt")
                      if ARCHIVE_RE.match(p.name) and p.name not in files and is_regular(p))

    def recover(self) -> list[str]:
        """Finish or undo what a killed run left; call it holding the workspace lock. Returns what was done.

        Temp files of a killed copy are removed; a pending operation is finished when production
        already holds its model (sidecar, event), else dropped; an archive file that no entry names
        is registered; a registered production's missing archive is made again; the sidecar is rewritten
        when it does not describe production.
        """
        done: list[str] = []
        for tmp in self.leftover_temp_files():
            tmp.unlink(missing_ok=True)
            done.append(f"removed {tmp.name}, left by an interrupted copy")
        pending = self.data.get("pending")
        if pending:
            done += self._finish_pending(pending)
        for path in self.unregistered_archives():
            done += self._adopt_archive(path)
        # a registered production whose archive went missing is archived again at once (an unregistered
        # one is registered where the pipeline first needs it, and always before anything replaces it)
        if self.production_entry() is not None:
            try:
                before = len(self.events)
                self.ensure_production_archived()
                done += [f"archived production version {e['version']} again (its archive was missing)"
                         for e in self.events[before:]]
            except UserError as exc:  # an archive with other bytes: refused where a replace is asked
                logger.debug("%s", exc)
        current = self.production_entry()
        if current is not None and self._sidecar_disagrees(current):
            self._write_sidecar(current)
            done.append(f"rewrote {self.workspace.production_sidecar.name} for version {current['version']}")
        for line in done:
            logger.info("recovery: %s", line)
        return done

    def _finish_pending(self, pending: dict[str, Any]) -> list[str]:
        done = []
        action, sha = pending["action"], pending["sha256"]
        new = pending.get("entry")
        if new and self.entry(new["version"]) is None:
            archive = self.workspace.models / new["file"]
            if archive.exists() and sha256_file(archive) == sha and self.entry_by_sha(sha) is None:
                self.versions.append(new)
                done.append(f"registered version {new['version']} (archived by an interrupted {action})")
        entry = self.entry_by_sha(sha)
        production = self.workspace.production_model
        if entry is not None and production.exists() and sha256_file(production) == sha:
            self._write_sidecar(entry)
            last = self.events[-1] if self.events else None
            if not (last and last["action"] == action and last["version"] == entry["version"]):
                event = {"action": action, "version": entry["version"], "previous": pending.get("previous"),
                         "at": utc_now_iso(), "note": "finished by recovery"}
                if pending.get("run"):
                    event["run"] = pending["run"]
                self.events.append(event)
            self.finished.append({"action": action, "version": entry["version"]})
            done.append(f"finished the interrupted {action}: version {entry['version']} is in production")
        else:
            done.append(f"undid the interrupted {action} of version {pending.get('version')}: "
                        "production was not replaced")
        self.data.pop("pending", None)
        self.save()
        return done

    def _adopt_archive(self, path: Path) -> list[str]:
        """An archive file that no entry names (a run killed before registering it, an old toolkit)."""
        sha = sha256_file(path)
        version = ARCHIVE_RE.match(path.name).group(1)
        if self.entry_by_sha(sha) is not None or self.entry(version) is not None:
            logger.debug("%s is not registered: its model or its version number already is; left alone", path.name)
            return []
        self.versions.append({"version": version, "file": path.name, "sha256": sha, "registered_at": utc_now_iso(),
                              "parent": None, "source": "archive found unregistered", "classes": None,
                              "metrics": {}, "reasons": ["registered as found in training/models"]})
        self.save()
        return [f"registered {path.name} as version {version} (it was archived but not registered)"]

    def _sidecar_disagrees(self, entry: dict[str, Any]) -> bool:
        try:
            sidecar = json.loads(self.workspace.production_sidecar.read_text(encoding="utf-8"))
            return sidecar.get("version") != entry["version"] or sidecar.get("sha256") != entry["sha256"]
        except (OSError, ValueError, AttributeError):
            return True

    # --- changes ------------------------------------------------------------------------------

    def _begin(self, action: str, sha: str, version: str, previous: str | None,
               entry: dict[str, Any] | None = None, run: str | None = None) -> None:
        self.data["pending"] = {"action": action, "sha256": sha, "version": version, "previous": previous,
                                "entry": entry, "at": utc_now_iso()}
        if run:
            self.data["pending"]["run"] = run
        try:
            self.save()
        except OSError as exc:
            self.data.pop("pending", None)
            raise UserError(f"cannot write {self.workspace.registry} ({exc}); nothing was changed - "
                            "free space or fix the permissions of training/models and rerun") from None
        _step(f"{action}_pending")

    @contextlib.contextmanager
    def _refusal_clears_pending(self) -> Iterator[None]:
        """A step refused before production was replaced (disk full, a model that does not load) leaves no
        'pending' behind: nothing is left for the next run to finish or undo."""
        try:
            yield
        except UserError:
            if self.data.pop("pending", None) is not None:
                try:
                    self.save()
                except OSError as exc:  # the next run drops it (production was not replaced)
                    logger.debug("could not clear the pending record: %s", exc)
            raise

    def _end(self, action: str, version: str, previous: str | None, run: str | None = None) -> None:
        event = {"action": action, "version": version, "previous": previous, "at": utc_now_iso()}
        if run:  # the pipeline run that did it: its history line is written by the next run if it was killed
            event["run"] = run
        self.events.append(event)
        self.data.pop("pending", None)
        self.save()

    def _store_archive(self, source: Path, entry: dict[str, Any], step: str) -> None:
        """Copy ``source`` to the entry's archive file, verified against its sha256 before the rename."""
        dest = self.workspace.models / entry["file"]
        try:
            tmp, _ = copy_to_temp(source, dest, expected_sha256=entry["sha256"])
            _step(f"{step}_archive_temp")
            commit_temp(tmp, dest)
        except OSError as exc:
            raise UserError(f"cannot archive {source.name} as {dest} ({exc}); nothing was replaced - "
                            "free space or fix the permissions of training/models and rerun") from None
        _step(f"{step}_archived")

    def ensure_production_archived(self) -> dict[str, Any] | None:
        """Make sure the bytes now in ``yolov8_model.pt`` are archived (sha256 verified); return their entry.

        Called before anything replaces production. Unregistered: archived and registered as a
        version (the sidecar's version when it describes these bytes, else the next free one).
        Registered but its archive is missing: archived again from production. An archive that
        exists with other bytes is not overwritten: the step is refused.
        """
        ws = self.workspace
        if not ws.production_model.exists():
            return None
        sha = sha256_file(ws.production_model)
        entry = self.entry_by_sha(sha)
        if entry is not None:
            archive = ws.models / entry["file"]
            if archive.is_symlink() or (archive.exists() and not is_regular(archive)):
                if archive.is_dir():
                    raise UserError(f"production (version {entry['version']}) is not safely archived: {archive} is "
                                    "a folder; move it away (production is then archived again) and rerun - "
                                    "nothing was replaced")
                # a link is no copy: production may be its only copy. It is archived again as a file of its
                # own (the rename replaces the link itself, never what it points to) before anything else.
                logger.warning("the archive of production version %s is %s, not a copy of its own; archiving "
                               "production again", entry["version"], not_regular_kind(archive))
                self._store_archive(ws.production_model, entry, "rearchive")
                self.events.append({"action": "rearchive", "version": entry["version"], "at": utc_now_iso(),
                                    "note": "its archive was a link"})
                self.save()
                return entry
            if archive.exists():
                if sha256_file(archive) != sha:
                    raise UserError(f"production (version {entry['version']}) is not safely archived: {archive} "
                                    "holds other bytes than its recorded sha256; move that file away (production "
                                    "is then archived again) and rerun - nothing was replaced")
                return entry
            logger.warning("the archive of production version %s was missing; archiving it again", entry["version"])
            self._store_archive(ws.production_model, entry, "rearchive")
            self.events.append({"action": "rearchive", "version": entry["version"], "at": utc_now_iso()})
            self.save()
            return entry
        return self._register_production(sha)

    def _register_production(self, sha: str) -> dict[str, Any]:
        ws = self.workspace
        version = None
        try:
            sidecar = json.loads(ws.production_sidecar.read_text(encoding="utf-8"))
            if sidecar.get("sha256") in (None, sha):
                version = sidecar.get("version")
                parse_version(version)
        except (OSError, ValueError, UserError, TypeError, AttributeError):
            version = None
        if version is None or self.entry(version) is not None or self.archive_path(version).exists():
            version = self._free_version()
        from toolkit.core.offline import model_class_names

        try:
            classes = model_class_names(ws.production_model, ws.ultralytics_config)
        except UserError as exc:  # not a model: its bytes are kept, but it never becomes a version
            self.quarantine_production(sha, str(exc))
            return None
        lineage = self.production_lineage()
        previous = lineage[-1] if lineage else None
        entry = {"version": version, "file": self.archive_path(version).name, "sha256": sha,
                 "registered_at": utc_now_iso(), "parent": None, "source": "existing production model",
                 "classes": classes, "metrics": {}, "reasons": ["registered as found in production"]}
        with self._refusal_clears_pending():
            self._begin("register", sha, version, previous, entry)
            self._store_archive(ws.production_model, entry, "register")
        self.versions.append(entry)
        self.save()
        self._write_sidecar(entry)
        self._end("register", version, previous)
        logger.info("registered the production model found in %s as version %s", ws.root, version)
        return entry

    # --- a production file that is not a model: kept for forensics, never a version ---------------

    @property
    def quarantine_dir(self) -> Path:
        return self.workspace.models / "quarantine"

    def quarantine_path(self, sha: str) -> Path:
        return self.quarantine_dir / f"yolov8_model.{sha[:16]}.pt"

    def quarantined(self, sha: str) -> Path | None:
        """The verified forensic copy of the bytes ``sha`` (None: there is none)."""
        path = self.quarantine_path(sha)
        return path if is_regular(path) and sha256_file(path) == sha else None

    def quarantine_production(self, sha: str, why: str) -> Path:
        """Copy a ``yolov8_model.pt`` that does not load into ``training/models/quarantine/`` (verified).

        Its bytes are kept for whoever investigates, outside the version list: it gets no version and
        can never be installed again. Production may then be replaced by a version that loads.
        """
        dest = self.quarantine_path(sha)
        if self.quarantined(sha) is None:
            try:
                tmp, _ = copy_to_temp(self.workspace.production_model, dest, expected_sha256=sha)
                _step("quarantine_temp")
                commit_temp(tmp, dest)
            except OSError as exc:
                raise UserError(f"{self.workspace.production_model} does not load as a model and cannot be kept "
                                f"as {dest} ({exc}); nothing was replaced - free space or fix the permissions "
                                "of training/models and rerun") from None
            records = self.data.setdefault("quarantined", [])
            records.append({"file": f"quarantine/{dest.name}", "sha256": sha, "at": utc_now_iso(),
                            "why": why[:300]})
            self.save()
            logger.warning("%s does not load as a model (%s); its bytes are kept as %s for investigation - "
                           "it gets no version and is never installed", self.workspace.production_model.name,
                           why, dest)
        return dest

    def register_existing_production(self) -> dict[str, Any] | None:
        """A production model found without a registry entry is archived first (version from its sidecar, else 1.0)."""
        self.recover()
        return self.ensure_production_archived()

    def promote(self, model: Path, *, major: bool = False, metrics: dict | None = None,
                reasons: list[str] | None = None, dataset_version: Any = None, run_dir: str | None = None,
                source: str = "pipeline", classes: list[str] | None = None,
                forced: str | None = None, run: str | None = None) -> dict[str, Any]:
        """Archive ``model`` (a new version, or its existing one) and make it production (atomic replace).

        ``forced``: why a rule was overridden (a first model below ``min_first_map`` with --force);
        ``--status`` mentions it for as long as that version is production.
        """
        model = Path(model)
        self.recover()
        parent = self.ensure_production_archived()
        previous = parent["version"] if parent else None
        sha = sha256_file(model)
        entry = self.entry_by_sha(sha)
        if entry is not None:
            if entry["version"] == previous:
                logger.info("the candidate is version %s, already in production: nothing to do", previous)
                return entry
            logger.info("the candidate is version %s (same sha256): that version is promoted again", entry["version"])
            with self._refusal_clears_pending():
                self._begin("promote", sha, entry["version"], previous, run=run)
                if not is_regular(self.workspace.models / entry["file"]):
                    self._store_archive(model, entry, "promote")
                self._install(entry)
        else:
            version = self._free_version(major=major)
            entry = {"version": version, "file": self.archive_path(version).name, "sha256": sha,
                     "registered_at": utc_now_iso(), "parent": previous, "source": source,
                     "metrics": metrics or {}, "reasons": reasons or [], "dataset_version": dataset_version,
                     "run_dir": run_dir, "classes": classes}
            if forced:
                entry["forced"] = forced
            with self._refusal_clears_pending():
                self._begin("promote", sha, version, previous, entry, run=run)
                self._store_archive(model, entry, "promote")
                self.versions.append(entry)
                self.save()
                _step("promote_registered")
                self._install(entry)
        self._end("promote", entry["version"], previous, run=run)
        return entry

    def rollback(self, version: str | None = None, run: str | None = None) -> dict[str, Any]:
        """Restore an archived version (default: the production before the current one)."""
        self.recover()
        current = self.ensure_production_archived()
        if version is None:
            target_version = self.previous_production(current["version"] if current else None)
            if target_version is None:
                raise UserError("there is no earlier production version to roll back to "
                                "(see --status for the versions; --rollback VERSION restores a given one)")
        else:
            target_version = version
        target = self.entry(target_version)
        if target is None:
            known = ", ".join(v["version"] for v in self.versions) or "none"
            raise UserError(f"version {target_version} is not in the registry (known: {known})")
        if current is not None and current["sha256"] == target["sha256"]:
            raise UserError(f"version {target['version']} is already in production")
        self.verify_archive(target)
        previous = current["version"] if current else None
        with self._refusal_clears_pending():
            self._begin("rollback", target["sha256"], target["version"], previous, run=run)
            self._install(target)
        self._end("rollback", target["version"], previous, run=run)
        return target

    def _install(self, entry: dict[str, Any]) -> None:
        """Replace production with the entry's archive: temp copy verified, then one atomic rename."""
        archive = self.verify_archive(entry)
        production = self.workspace.production_model
        current = sha256_file(production) if production.exists() else None
        if current is not None:  # the invariant, checked at the last moment: a verified copy of its own
            kept = self.entry_by_sha(current)
            copy = self.workspace.models / kept["file"] if kept else self.quarantined(current)
            if copy is None or not is_regular(copy) or sha256_file(copy) != current:
                raise UserError(f"{production} is not archived as a file of its own; refusing to replace it")
        self._require_loads(archive, entry["version"])
        try:
            tmp, _ = copy_to_temp(archive, production, expected_sha256=entry["sha256"])
            _step("install_temp")
            commit_temp(tmp, production)
        except OSError as exc:
            raise UserError(f"cannot write {production} ({exc}); production is unchanged") from None
        _step("installed")
        self._write_sidecar(entry)
        _step("sidecar_written")

    def _require_loads(self, archive: Path, version: str) -> None:
        """Nothing that does not load as a model is ever installed as production."""
        from toolkit.core.offline import model_class_names

        try:
            model_class_names(archive, self.workspace.ultralytics_config)
        except UserError as exc:
            raise UserError(f"version {version} ({archive.name}) does not load as a model ({exc}); it is never "
                            "installed - choose another version (--status lists them)") from None

    def _write_sidecar(self, entry: dict[str, Any]) -> None:
        sidecar = {"version": entry["version"], "sha256": entry["sha256"], "classes": entry.get("classes"),
                   "metrics": entry.get("metrics", {}), "promoted_at": utc_now_iso(),
                   "archive": str(self.workspace.models / entry["file"])}
        atomic_write_json(self.workspace.production_sidecar, sidecar)

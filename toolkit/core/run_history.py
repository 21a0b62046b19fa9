"""The run history (``memory-bank/training_history.jsonl``) and what a killed run leaves behind there.

One record per pipeline run or rollback. A run killed after it changed production never wrote its
own record: ``record_interrupted_runs`` writes it from the registry's events (they name the run).
A killed report writer's temp files (``training/reports/.<report>.<random>.tmp``) are found by
``stale_report_temps`` for the registry's recovery to remove.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from toolkit.core.files import append_jsonl
from toolkit.core.layout import Workspace

logger = logging.getLogger(__name__)

# Reports of the stages that hold the workspace lock: a temp file of theirs found under the lock is
# left by a killed writer. The analyzer writes without the lock: its temp files count once old.
_LOCKED_REPORTS = ("pipeline_", "compare_", "prepare_", "train_", "setup_")
_STALE_TEMP_S = 3600


def stale_report_temps(workspace: Workspace) -> list[Path]:
    """``training/reports/.<report>.<random>.tmp`` left by a killed report writer (call holding the lock)."""
    if not workspace.reports.is_dir():
        return []
    now, found = time.time(), []
    for path in workspace.reports.glob(".*.tmp"):
        try:
            old = now - path.lstat().st_mtime > _STALE_TEMP_S
        except OSError:
            continue
        if path.name[1:].startswith(_LOCKED_REPORTS) or old:
            found.append(path)
    return found


def record_interrupted_runs(registry) -> list[dict[str, Any]]:
    """A history line for each run that changed production but was killed before writing its own.

    Promotions and rollbacks of the pipeline carry the run's stamp in their registry event; an event
    whose run has no history line gets one now (decision 'promoted' or 'rollback'), saying so.
    """
    runs = {e["run"]: e for e in registry.events if e.get("run") and e["action"] in ("promote", "rollback")}
    if not runs:
        return []
    logged = {r.get("run") for r in read_history(registry.workspace, last=len(runs) + 1000)}
    added = []
    for stamp, event in runs.items():
        if stamp in logged:
            continue
        entry = registry.entry(event["version"])
        record = {"run": stamp, "finished_at": event["at"],
                  "decision": "promoted" if event["action"] == "promote" else "rollback",
                  "production": {"version": event["version"], "path": str(registry.workspace.production_model),
                                 "sha256": entry["sha256"] if entry else None},
                  "from_version": event.get("previous"),
                  "note": "this run was interrupted after production was replaced; recorded by the next run"}
        append_history(registry.workspace, record)
        logger.info("recovery: wrote the history line of run %s (%s version %s), which was interrupted",
                    stamp, record["decision"], event["version"])
        added.append(record)
    return added


def append_history(workspace: Workspace, record: dict[str, Any]) -> None:
    """One record per pipeline run in ``memory-bank/training_history.jsonl`` (URL passwords masked)."""
    from toolkit.core.redact import mask_values

    append_jsonl(workspace.training_history, mask_values(record))


def read_history(workspace: Workspace, last: int = 10) -> list[dict[str, Any]]:
    path = workspace.training_history
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[-last:]

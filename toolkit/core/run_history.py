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


def _marker(workspace: Workspace, stamp: str) -> Path:
    return workspace.root / "training" / f".pipeline-running-{stamp}.json"


def mark_running(workspace: Workspace, stamp: str, started: str) -> None:
    """A marker that run ``stamp`` is under way; ``clear_running`` removes it once its history line is
    written. A marker the next run finds is a run killed without a word (SIGKILL, power loss)."""
    from toolkit.core.files import atomic_write_json

    try:
        atomic_write_json(_marker(workspace, stamp), {"run": stamp, "started_at": started})
    except OSError as exc:  # the run goes on; only a kill would go unrecorded
        logger.debug("no run marker: %s", exc)


def clear_running(workspace: Workspace, stamp: str) -> None:
    _marker(workspace, stamp).unlink(missing_ok=True)


def _record_killed_runs(workspace: Workspace, current: str | None, logged: set) -> list[dict[str, Any]]:
    """A history line for each run killed before it could write one (its marker is left), naming the run
    folders it left without a ``summary.json`` (kept: ``train_yolov8.py --resume`` can continue them)."""
    from datetime import datetime

    added = []
    for marker in sorted((workspace.root / "training").glob(".pipeline-running-*.json")):
        stamp = marker.name[len(".pipeline-running-"):-len(".json")]
        if stamp == current:
            continue
        try:
            started = str(json.loads(marker.read_text(encoding="utf-8")).get("started_at") or "")
            since = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        except (OSError, ValueError, AttributeError):
            started, since = "", 0.0
        if stamp not in logged:
            runs = workspace.runs
            half = sorted(str(d) for d in (runs.iterdir() if runs.is_dir() else ())
                          if d.is_dir() and not (d / "summary.json").exists() and d.stat().st_mtime >= since - 1)
            record = {"run": stamp, "started_at": started or None, "finished_at": None, "decision": "interrupted",
                      "error": "killed before it finished (no clean stop: SIGKILL, power loss or a crash); "
                               "nothing was promoted by it; recorded by the next run",
                      "unfinished_run_dirs": half}
            append_history(workspace, record)
            logger.warning("run %s was killed before it finished; its history line is written now%s", stamp,
                           f" (unfinished run folders, kept for --resume: {', '.join(half)})" if half else "")
            added.append(record)
        marker.unlink(missing_ok=True)
    return added


def record_interrupted_runs(registry, current: str | None = None) -> list[dict[str, Any]]:
    """A history line for each run that changed production but was killed before writing its own, and
    for each run killed before it changed anything (its marker is left; ``current``: this run's stamp).

    Promotions and rollbacks of the pipeline carry the run's stamp in their registry event; an event
    whose run has no history line gets one now (decision 'promoted' or 'rollback'), saying so.
    """
    runs = {e["run"]: e for e in registry.events if e.get("run") and e["action"] in ("promote", "rollback")}
    if not runs:
        logged = {r.get("run") for r in read_history(registry.workspace, last=1000)}
        return _record_killed_runs(registry.workspace, current, logged)
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
        logged.add(stamp)
    return added + _record_killed_runs(registry.workspace, current, logged)


def append_history(workspace: Workspace, record: dict[str, Any]) -> None:
    """One record per pipeline run in ``memory-bank/training_history.jsonl`` (URL passwords masked)."""
    from toolkit.core.redact import mask_values

    append_jsonl(workspace.training_history, mask_values(record))


# a measured training's fields and their ranges: what the estimates and ``auto`` compute with
_TIMING_NUMBERS = {"s_per_image_epoch": (0.0, 3600.0), "setup_seconds": (0.0, 1e7), "seconds": (0.0, 1e8),
                   "epoch_seconds": (0.0, 1e8)}
_TIMING_INTEGERS = {"imgsz": (32, 8192), "epochs": (0, 100_000), "train_images": (0, 10 ** 9),
                    "val_images": (0, 10 ** 9)}
_ROUTES = ("finetune", "scratch", "path")
_warned: set[tuple[str, int, int]] = set()


def _number(value: Any, lo: float, hi: float, integer: bool = False) -> bool:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return False
    return math.isfinite(value) and lo <= value <= hi


def history_problem(record: Any) -> str | None:
    """Why a history line cannot be used (None: it can): the fields later runs compute with are checked."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    trainings = record.get("trainings")
    if trainings is not None:
        if not isinstance(trainings, list):
            return "'trainings' is not a list"
        for k, t in enumerate(trainings):
            if not isinstance(t, dict):
                return f"trainings[{k}] is not an object"
            for key, (lo, hi) in _TIMING_NUMBERS.items():
                if key in t and not _number(t[key], lo, hi):
                    return f"trainings[{k}].{key} = {str(t[key])[:40]!r} is not a number in {lo:g}..{hi:g}"
            for key, (lo, hi) in _TIMING_INTEGERS.items():
                if key in t and not _number(t[key], lo, hi, integer=True):
                    return f"trainings[{k}].{key} = {str(t[key])[:40]!r} is not a whole number in {lo}..{hi}"
            for key in ("arch", "device"):
                if key in t and not isinstance(t[key], str):
                    return f"trainings[{k}].{key} is not a text"
    routes = record.get("routes")
    if routes is not None:
        if not isinstance(routes, dict) or routes.get("winner") not in _ROUTES or \
                not isinstance(routes.get("val") or {}, dict):
            return "'routes' is not {winner, metric, val} of a 'both' run"
        if any(v is not None and not _number(v, 0.0, 1.0) for v in (routes.get("val") or {}).values()):
            return "'routes.val' holds a score outside 0..1"
    return None


def read_history(workspace: Workspace, last: int = 10) -> list[dict[str, Any]]:
    """The last ``last`` usable records. A line that is not JSON, not an object, or whose timings or routes
    are out of range (a negative or NaN speed, an imgsz of "abc") is skipped with a warning naming the
    file and the line: one poisoned line must not make every later estimate negative or every run fail."""
    path = workspace.training_history
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = history_problem(record)
        except (json.JSONDecodeError, RecursionError) as exc:
            problem = f"not JSON ({str(exc)[:60]})"
        if problem is None:
            records.append(record)
            continue
        key = (str(path), number, len(line))
        if key not in _warned:   # read several times a run: said once
            _warned.add(key)
            logger.warning("%s line %d skipped: %s (fix or delete that line)", path, number, problem)
    return records[-last:]

"""Where and how every stage writes its report: ``training/reports/<stage>_<stamp>.{json,md}``."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.cli import to_jsonable
from toolkit.files import atomic_write_json, atomic_write_text
from toolkit.layout import Workspace


def timestamp() -> str:
    """UTC stamp for file names, sortable, unique to the second (plus microseconds)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_path(workspace: Workspace, stage: str, stamp: str | None = None) -> Path:
    """The JSON path of a new report of ``stage``; the markdown twin has the same stem."""
    return workspace.reports / f"{stage}_{stamp or timestamp()}.json"


def write_report(json_path: Path, data: Any, markdown: str | None = None) -> Path:
    """Write the JSON report (and its markdown twin when given); return the JSON path."""
    atomic_write_json(json_path, to_jsonable(data))
    if markdown is not None:
        atomic_write_text(json_path.with_suffix(".md"), markdown)
    return json_path


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

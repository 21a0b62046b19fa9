"""Where and how every stage writes its report: ``training/reports/<stage>_<stamp>.{json,md}``."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit.core.cli import to_jsonable
from toolkit.core.files import atomic_write_json, atomic_write_text
from toolkit.core.layout import Workspace


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


# Markdown punctuation that can change how a user's string renders (emphasis, links, images, code,
# table cells, headings), and HTML, which markdown passes through: a class name or a file path
# must show as the text it is, as the HTML report does with html.escape.
# Only what can take effect is escaped, so a report read as plain text stays readable: "]" where a
# link or image would start ("](" or "]["), ">" and "&" only as HTML (a "<" in the text) or at the start.
_MD_SPECIAL = re.compile(r"([\\`*|~#]|\](?=[(\[]))")
# "_" only at a word edge: snake_case_names render as they are (GFM ignores intraword underscores)
_MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md(value: Any) -> str:
    """A user string (class name, path, reason) as markdown text that renders literally, on one line."""
    text = " ".join(str(value).splitlines())
    if "<" in text or "&" in text:
        text = "".join(_HTML.get(ch, ch) for ch in text)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    if text.startswith(">"):  # a block quote
        text = "\\" + text
    return _MD_UNDERSCORE.sub(r"\\_", text)


def md_code(value: Any, table: bool = False) -> str:
    """A user string as an inline code span (paths): fenced with more backticks than it contains.

    Inside a code span markdown shows everything literally (HTML too); only a newline or the
    fence could break out, so newlines become spaces and the fence is longer than any backtick run.
    In a table cell (``table=True``) a ``|`` would still end the cell: it is escaped there.
    """
    text = " ".join(str(value).splitlines())
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; every cell that is not a number is escaped with ``md``."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, int):
            return str(v)
        return md(v)

    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

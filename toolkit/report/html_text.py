"""Building blocks of the HTML report: escaping, numbers and times in words, tables, notes, images.

Every value that reaches the page goes through ``esc`` (or is an ``Html`` built here), so a class
name or a path from the user's files cannot inject markup.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Iterable

NOT_RUN = "not run in this run"
MAX_ROWS = 25                       # long lists (rejected files, history) are cut with a note
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # a picture bigger than this is linked by name, not embedded
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}


class Html(str):
    """Markup made here (already safe): left as it is by ``esc``."""


def esc(value: Any) -> str:
    if isinstance(value, Html):
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, (dict, list, tuple)):
        return html.escape(plain(value), quote=True)
    return html.escape(str(value), quote=True)


# Field names of the registry and the stages as a person reads them (the promotion table, nested figures).
FIELD_WORDS = {"registered_at": "registered", "promoted_at": "promoted", "run_dir": "run folder", "path": "file",
               "map50": "mAP50", "map50_95": "mAP50-95", "sha256": "sha256", "parent": "previous version",
               "dataset_version": "dataset version", "imgsz": "image size (px)", "ms_per_image": "ms per image",
               "source": "from", "split": "split", "major": "new major version"}
ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]00:?00)?$")


def field_words(key: Any) -> str:
    return FIELD_WORDS.get(str(key), str(key).replace("_", " "))


def when_text(value: Any) -> Any:
    """An ISO UTC timestamp as '2026-12-04 20:22 UTC'; anything else as it is."""
    match = ISO_TIME.match(value) if isinstance(value, str) else None
    if not match:
        return value
    return f"{match.group(1)} {match.group(2)}" + (" UTC" if match.group(3) else "")


def plain(value: Any, digits: int = 3) -> str:
    """Nested values as a person reads them: ``map50 0.786, map50_95 0.453``, floats rounded
    (a raw JSON dump showed 16 decimals in the promotion table)."""
    if isinstance(value, dict):
        return ", ".join(f"{field_words(k)} {plain(v, digits)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v, digits) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    if value is None:
        return "-"
    return str(when_text(value))


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def as_number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def seconds_text(value: Any) -> str:
    s = as_number(value)
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m // 60}h{m % 60:02d}m{sec:02d}s" if m >= 60 else f"{m}m{sec:02d}s"


def html_table(headers: Iterable[Any], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric and not isinstance(cell, Html) else ""
            cells.append(f"<td{cls}>{fmt(cell) if i in numeric else esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(pairs: Iterable[tuple[Any, Any]]) -> str:
    rows = [f"<tr><th>{esc(k)}</th><td>{fmt(v) if isinstance(v, float) else esc(v)}</td></tr>"
            for k, v in pairs if v is not None and v != "" and v != [] and v != {}]
    return f"<table><tbody>{''.join(rows)}</tbody></table>" if rows else ""


def path_cell(value: Any) -> Html:
    """A path that may wrap only after a folder separator (``<wbr>``), never inside a name."""
    if not value:
        return Html("-")
    text = esc(str(value))
    return Html('<span class="path">' + re.sub(r"([/\\])", r"\1<wbr>", text) + "</span>")


def hash_cell(value: Any) -> Html:
    """A sha256 (one 64-letter word, no names in it): it may wrap anywhere."""
    return Html(f'<span class="hash">{esc(value)}</span>') if value else Html("-")


def plural(n: Any, word: str, many: str | None = None) -> str:
    """'1 version', '2 versions', '0 versions'."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def interval_text(ci: Any, signed: bool = False) -> str | None:
    """A 95% interval as every page writes it: ``[+0.144, +0.242]`` for a gain or a drop (signed, as
    the gain itself), ``[0.61, 0.80]`` for a value; None when there is none."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = as_number(ci[0]), as_number(ci[1])
    if lo is None or hi is None:
        return None
    return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"[{lo:.3f}, {hi:.3f}]"


def bullet_list(items: Iterable[Any]) -> str:
    items = [i for i in items if i not in (None, "")]
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>" if items else ""


def note(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def cut_note(total: int) -> str:
    return note(f"... and {total - MAX_ROWS} more (see the JSON report)") if total > MAX_ROWS else ""


def stage_missing(stage: Any) -> str | None:
    """The note for a stage that did not run (None when it did)."""
    if not stage:
        return NOT_RUN
    if isinstance(stage, dict) and set(stage) <= {"skipped", "reason"} and stage.get("skipped"):
        return f"skipped in this run: {stage['skipped']}"
    if not isinstance(stage, dict):
        return f"{NOT_RUN} ({stage})"
    return None


def data_uri(path: Any) -> str | None:
    """The picture at ``path`` as a data URI, or None when it is missing, unknown or too big."""
    try:
        p = Path(str(path))
        mime = IMAGE_TYPES.get(p.suffix.lower())
        if mime is None or not p.is_file() or p.stat().st_size > MAX_IMAGE_BYTES:
            return None
        return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode('ascii')}"
    except OSError:
        return None


def image_tag(path: Any, caption: str) -> str:
    uri = data_uri(path)
    if uri is None:
        return note(f"{caption}: picture not found or not embeddable ({path})")
    return (f'<figure><img class="chart" src="{uri}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")

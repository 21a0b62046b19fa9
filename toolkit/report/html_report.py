"""One self-contained HTML page per pipeline run: priorities, dataset, training curves,
comparison, per-class chart, decision, versions.

No network is ever needed to read it: the CSS is inline, charts are inline SVG drawn here, and
pictures (the comparator's chart, analyzer plots) are embedded as base64 data URIs. A
Content-Security-Policy forbids the page to load anything else. Every string that comes from
data (paths, class names, reasons) is HTML-escaped.

Usage:
    from toolkit.report.html_report import write_pipeline_report
    write_pipeline_report(workspace.reports / "pipeline_<stamp>.html", data)

``data`` is the pipeline's JSON result plus extras; every part is optional (a stage that did
not run shows "not run in this run"). Its keys: title, generated_at, root, decision, reasons,
production {version, path, sha256}, previous_version, dry_run, timings {stage: s},
stages {analyze, prepare, train, compare, promote}, images {caption: path}, history [...].
"""
from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from toolkit.core.cli import to_jsonable
from toolkit.core.files import atomic_write_text

logger = logging.getLogger(__name__)

SECTION_IDS = ("summary", "priorities", "dataset", "training", "comparison", "chart", "decision", "versions")
NOT_RUN = "not run in this run"
MAX_ROWS = 25                       # long lists (rejected files, history) are cut with a note
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # a picture bigger than this is linked by name, not embedded
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
# Okabe-Ito colours: told apart by colour-blind readers and in greyscale print (with the markers).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
METRICS = (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("precision", "precision"), ("recall", "recall"))

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1b1b1b;background:#fff;
 max-width:1100px;margin:0 auto;padding:1.2em 1.5em 3em;line-height:1.45}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#555;font-size:.9em}.muted{color:#666;font-style:italic}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold}.path{font-family:ui-monospace,Consolas,monospace;font-size:.9em;word-break:break-all}
.decision{display:inline-block;font-size:2.4em;font-weight:800;letter-spacing:.06em;padding:.1em .5em;
 border:3px solid;border-radius:.2em;margin:.2em 0}
.promoted{color:#00693e;border-color:#00693e}.kept{color:#8a5300;border-color:#8a5300}
.skipped,.unknown{color:#555;border-color:#777}
.banner{background:#fff4d6;border:1px solid #e0b84a;padding:.4em .8em;margin:.6em 0}
figure{margin:.6em 0 1.2em}figcaption{font-size:.9em;color:#444}
svg{max-width:100%;height:auto}img.chart{max-width:100%;border:1px solid #ddd}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


class _Html(str):
    """Markup made here (already safe): left as it is by ``_esc``."""


def _esc(value: Any) -> str:
    if isinstance(value, _Html):
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, (dict, list, tuple)):
        return html.escape(_plain(value), quote=True)
    return html.escape(str(value), quote=True)


# Field names of the registry and the stages as a person reads them (the promotion table, nested figures).
FIELD_WORDS = {"registered_at": "registered", "promoted_at": "promoted", "run_dir": "run folder", "path": "file",
               "map50": "mAP50", "map50_95": "mAP50-95", "sha256": "sha256", "parent": "previous version",
               "dataset_version": "dataset version", "imgsz": "image size (px)", "ms_per_image": "ms per image",
               "source": "from", "split": "split", "major": "new major version"}
_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(Z|[+-]00:?00)?$")


def _words(key: Any) -> str:
    return FIELD_WORDS.get(str(key), str(key).replace("_", " "))


def _when(value: Any) -> Any:
    """An ISO UTC timestamp as '2026-12-04 20:22 UTC'; anything else as it is."""
    match = _ISO_TIME.match(value) if isinstance(value, str) else None
    if not match:
        return value
    return f"{match.group(1)} {match.group(2)}" + (" UTC" if match.group(3) else "")


def _plain(value: Any, digits: int = 3) -> str:
    """Nested values as a person reads them: ``map50 0.786, map50_95 0.453``, floats rounded
    (a raw JSON dump showed 16 decimals in the promotion table)."""
    if isinstance(value, dict):
        return ", ".join(f"{_words(k)} {_plain(v, digits)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v, digits) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    if value is None:
        return "-"
    return str(_when(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _esc(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _seconds(value: Any) -> str:
    s = _num(value)
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m // 60}h{m % 60:02d}m{sec:02d}s" if m >= 60 else f"{m}m{sec:02d}s"


def _table(headers: Iterable[Any], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i in numeric and not isinstance(cell, _Html) else ""
            cells.append(f"<td{cls}>{_fmt(cell) if i in numeric else _esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(pairs: Iterable[tuple[Any, Any]]) -> str:
    rows = [f"<tr><th>{_esc(k)}</th><td>{_fmt(v) if isinstance(v, float) else _esc(v)}</td></tr>"
            for k, v in pairs if v is not None and v != "" and v != [] and v != {}]
    return f"<table><tbody>{''.join(rows)}</tbody></table>" if rows else ""


def _path(value: Any) -> _Html:
    return _Html(f'<span class="path">{_esc(value)}</span>') if value else _Html("-")


def _list(items: Iterable[Any]) -> str:
    items = [i for i in items if i not in (None, "")]
    return "<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>" if items else ""


def _note(text: str) -> str:
    return f'<p class="muted">{_esc(text)}</p>'


def _cut_note(total: int) -> str:
    return _note(f"... and {total - MAX_ROWS} more (see the JSON report)") if total > MAX_ROWS else ""


def _stage_missing(stage: Any) -> str | None:
    """The note for a stage that did not run (None when it did)."""
    if not stage:
        return NOT_RUN
    if isinstance(stage, dict) and set(stage) <= {"skipped", "reason"} and stage.get("skipped"):
        return f"skipped in this run: {stage['skipped']}"
    if not isinstance(stage, dict):
        return f"{NOT_RUN} ({stage})"
    return None


def _data_uri(path: Any) -> str | None:
    """The picture at ``path`` as a data URI, or None when it is missing, unknown or too big."""
    try:
        p = Path(str(path))
        mime = IMAGE_TYPES.get(p.suffix.lower())
        if mime is None or not p.is_file() or p.stat().st_size > MAX_IMAGE_BYTES:
            return None
        return f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode('ascii')}"
    except OSError:
        return None


def _image(path: Any, caption: str) -> str:
    uri = _data_uri(path)
    if uri is None:
        return _note(f"{caption}: picture not found or not embeddable ({path})")
    return (f'<figure><img class="chart" src="{uri}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


# ---------------------------------------------------------------------------------------------- charts
def line_chart_svg(series: dict[str, list[tuple[float, float | None]]], title: str, y_label: str,
                   y_max: float | None = None, width: int = 720, height: int = 300) -> str:
    """An inline SVG line chart, one polyline (with markers) per series; None values leave gaps."""
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None]
    if not points:
        return _note(f"{title}: no values to draw")
    left, right, top, bottom = 56, 150, 28, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [x for x, _ in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    ys = [y for _, y in points]
    y0 = min(0.0, min(ys))
    y1 = y_max if y_max is not None and max(ys) <= y_max else max(ys)
    y1 = y1 if y1 > y0 else y0 + 1
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y: top + ph - (y - y0) / (y1 - y0) * ph  # noqa: E731
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_esc(title)}" font-size="14" font-family="sans-serif">',
           f'<text x="{left}" y="16" font-weight="bold">{_esc(title)}</text>']
    for i in range(6):
        v = y0 + (y1 - y0) * i / 5
        y = sy(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    step = max(1, math.ceil((max(xs) - min(xs)) / 8))  # whole epochs, at most about nine ticks
    x_ticks = list(range(int(math.floor(min(xs))), int(math.ceil(max(xs))) + 1, step))
    for v in x_ticks:
        out.append(f'<text x="{sx(v):.1f}" y="{top + ph + 16}" text-anchor="middle">{v:.0f}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">epoch</text>'
               f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{_esc(y_label)}</text>")
    for n, (name, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        runs, run = [], []
        for x, y in pts:
            if y is None:
                runs, run = runs + [run] if run else runs, []
            else:
                run.append(f"{sx(x):.1f},{sy(y):.1f}")
        runs += [run] if run else []
        for r in runs:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(r)}"/>')
        if len(pts) <= 40:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.8" fill="{colour}"/>'
                    for x, y in pts if y is not None]
        ly = top + 10 + 18 * n
        out.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 34}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="3"/><text x="{left + pw + 40}" y="{ly + 4}">{_esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart_svg(categories: list[str], series: dict[str, list[float | None]], title: str,
                  y_label: str = "AP50", width: int = 820, height: int = 320) -> str:
    """An inline SVG grouped bar chart (one group per category, one bar per series), values 0..1."""
    values = [v for vals in series.values() for v in vals if v is not None]
    if not categories or not values:
        return _note(f"{title}: no values to draw")
    left, right, top, bottom = 56, 20, 46, 64
    pw, ph = width - left - right, height - top - bottom
    y1 = max(1.0, max(values))
    group = pw / len(categories)
    bar = group * 0.8 / max(1, len(series))
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_esc(title)}" font-size="14" font-family="sans-serif">',
           f'<text x="{left}" y="16" font-weight="bold">{_esc(title)}</text>']
    for i in range(6):
        v = y1 * i / 5
        y = top + ph - v / y1 * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for n, (name, vals) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        for c, v in enumerate(vals):
            if v is None:
                continue
            x = left + c * group + group * 0.1 + n * bar
            h = max(0.0, v) / y1 * ph
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                       f'fill="{colour}"><title>{_esc(name)} {_esc(categories[c])}: {v:.3f}</title></rect>')
        lx = left + n * 190
        out.append(f'<rect x="{lx}" y="24" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{lx + 17}" y="34">{_esc(name)}</text>')
    for c, name in enumerate(categories):
        out.append(f'<text x="{left + (c + 0.5) * group:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{_esc(name)}</text>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
               f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f"{_esc(y_label)}</text></svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- epochs
def epoch_records(train: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-epoch records of a training stage: its ``epochs`` list, else ``run_dir/epochs.jsonl``,
    else ultralytics' ``run_dir/results.csv``; each flattened to epoch, metrics and losses."""
    raw = train.get("epochs")
    if not isinstance(raw, list):
        raw = []
        run_dir = Path(str(train["run_dir"])) if train.get("run_dir") else None
        if run_dir is not None and (run_dir / "epochs.jsonl").is_file():
            for line in (run_dir / "epochs.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed run
        elif run_dir is not None and (run_dir / "results.csv").is_file():
            raw = _results_csv(run_dir / "results.csv")
    records = []
    for rec in raw:
        if not isinstance(rec, dict) or _num(rec.get("epoch")) is None:
            continue
        flat = {k: v for k, v in rec.items() if k != "losses"}
        if isinstance(rec.get("losses"), dict):
            flat.update({k: v for k, v in rec["losses"].items() if k not in flat})
        records.append(flat)
    return sorted(records, key=lambda r: _num(r["epoch"]))


def _results_csv(path: Path) -> list[dict[str, Any]]:
    names = {"metrics/mAP50(B)": "map50", "metrics/mAP50-95(B)": "map50_95", "metrics/precision(B)": "precision",
             "metrics/recall(B)": "recall", "train/box_loss": "box_loss", "train/cls_loss": "cls_loss",
             "train/dfl_loss": "dfl_loss", "epoch": "epoch"}
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        rec = {names[k.strip()]: _num(v) for k, v in row.items() if k and k.strip() in names}
        if rec.get("epoch") is not None:
            out.append(rec)
    # ultralytics counts epochs from 1 in results.csv since 8.1; older files start at 0
    if out and min(r["epoch"] for r in out) == 0:
        for r in out:
            r["epoch"] += 1
    return out


# ---------------------------------------------------------------------------------------------- sections
def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _summary(data: dict[str, Any]) -> str:
    decision = str(data.get("decision") or "unknown")
    cls = decision if decision in ("promoted", "kept", "skipped") else "unknown"
    prod = data.get("production") or {}
    parts = []
    if data.get("dry_run"):
        parts.append('<p class="banner">Dry run: nothing was changed; this page says what would happen.</p>')
    none_yet = decision == "kept" and not prod.get("sha256") and not prod.get("version")
    parts.append(f'<div class="decision {cls}">{"NO MODEL PROMOTED" if none_yet else _esc(decision.upper())}</div>')
    line = ("Production model: none yet" if none_yet else
            f"Production model: version <b>{_esc(prod.get('version'))}</b>")
    if data.get("previous_version") not in (None, "") and data.get("previous_version") != prod.get("version"):
        line += f" (was {_esc(data['previous_version'])})"
    parts.append(f"<p>{line}</p>")
    parts.append(_list(data.get("reasons") or []) or _note("no reasons given"))
    timings = data.get("timings") or {}
    if isinstance(timings, dict) and timings:
        total = sum(v for v in (_num(t) for t in timings.values()) if v is not None)
        parts.append("<h3>Time per stage</h3>" + _table(
            ["stage", "time"], [[k, _seconds(v)] for k, v in timings.items()] + [[_Html("<b>total</b>"),
                                                                                 _seconds(total)]]))
    return "".join(parts)


def _priorities(stage: dict[str, Any]) -> str:
    parts = [_note("From the memory bank as it was at the start of this run, before this run's import and "
                   "training: what to label next, not how the new model does."),
             _kv_table([("memory-bank records", stage.get("records")), ("skipped records", stage.get("skipped_records")),
                        ("images exported for labelling", stage.get("exported")),
                        ("report", _path(stage.get("report")) if stage.get("report") else None)])]
    prios = [p for p in stage.get("priorities") or [] if isinstance(p, dict)]
    if prios:
        parts.append("<h3>Classes to work on, most urgent first</h3>" + _table(
            ["#", "class", "score", "images needed", "why"],
            [[i + 1, p.get("class"), _num(p.get("score")), p.get("images_needed"),
              _Html("; ".join(_esc(r) for r in (p.get("reasons") or [])) or "-")] for i, p in enumerate(prios)],
            numeric=(2,)))
    else:
        parts.append(_note("no priorities: the memory bank gave no reason to favour a class"))
    classes = stage.get("classes")
    if isinstance(classes, dict) and classes:
        infos = [info if isinstance(info, dict) else {} for info in classes.values()]
        keys = [k for k in dict.fromkeys(k for info in infos for k in info)  # scalar columns only
                if all(info.get(k) is None or isinstance(info.get(k), (int, float, str)) for info in infos)
                and any(info.get(k) is not None for info in infos)][:8]
        if keys:
            parts.append("<h3>Per-class figures from the memory bank</h3>" + _table(
                ["class"] + [k.replace("_", " ") for k in keys], [[name] + [(info or {}).get(k) for k in keys] for name, info in classes.items()],
                numeric=range(1, len(keys) + 1)))
    plots = stage.get("plots")  # the analyzer's own charts: a list of paths or {caption: path}
    if isinstance(plots, (list, tuple)):
        plots = {_plot_caption(p): p for p in plots}
    if isinstance(plots, dict) and plots:
        parts.append("<h3>The analyzer's charts</h3>" + _images(plots))
    return "".join(parts)


# The analyzer names its charts <report stem>_<kind>.png; a person reads what the chart shows.
PLOT_CAPTIONS = {
    "confidence": "Confidence of the detections per class; the shaded band is where the model is unsure.",
    "weekly": "Week by week: mean confidence (top) and detections per 100 images (bottom) per class.",
    "reviewed": "Precision and recall per class, measured against the operators' reviewed labels.",
}


def _plot_caption(path: Any) -> str:
    stem = Path(str(path)).stem
    kind = stem.rsplit("_", 1)[-1]
    return PLOT_CAPTIONS.get(kind, stem.replace("_", " "))


def _dataset(stage: dict[str, Any]) -> str:
    images = stage.get("images") or {}
    parts = [_kv_table([("dataset version", stage.get("dataset_version")), ("images added", stage.get("added")),
                        ("duplicates left out", stage.get("duplicates")),
                        ("report", _path(stage.get("report")) if stage.get("report") else None)])]
    if isinstance(images, dict) and images:
        total = sum(v for v in (_num(n) for n in images.values()) if v is not None)
        parts.append("<h3>Images per split</h3>" + _table(
            ["split", "images"], [[k, v] for k, v in images.items()] + [["total", int(total)]], numeric=(1,)))
    boxes = stage.get("boxes_per_class") or {}
    if isinstance(boxes, dict) and boxes:
        parts.append("<h3>Boxes per class</h3>" + _table(["class", "boxes"], list(boxes.items()), numeric=(1,)))
    rejected = [r for r in stage.get("rejected") or [] if isinstance(r, dict)]
    parts.append(f"<h3>Rejected files ({len(rejected)})</h3>")
    parts.append(_table(["file", "reason"], [[_path(r.get("path")), r.get("reason")] for r in rejected[:MAX_ROWS]])
                 + _cut_note(len(rejected)) if rejected else _note("none"))
    return "".join(parts)


def _training(stage: dict[str, Any]) -> str:
    metrics = stage.get("metrics") or {}
    done, planned = stage.get("epochs_completed"), stage.get("epochs_planned")
    parts = [_kv_table([("epochs", f"{done} of {planned}" if planned else done), ("stopped", stage.get("stop_reason")),
                        ("time", _seconds(stage.get("seconds")) if stage.get("seconds") is not None else None),
                        ("started from", stage.get("start_from")), ("device", stage.get("device")),
                        ("run folder", _path(stage.get("run_dir")) if stage.get("run_dir") else None),
                        ("best weights", _path(stage.get("best")) if stage.get("best") else None)])]
    if isinstance(metrics, dict) and metrics:
        parts.append("<h3>Best weights on the validation split</h3>" + _table(
            [label for _, label in METRICS], [[_num(metrics.get(k)) for k, _ in METRICS]], numeric=range(4)))
    parts.append(_list(stage.get("notes") or []))
    try:
        records = epoch_records(stage)
    except OSError as exc:
        records = []
        parts.append(_note(f"could not read the epoch log: {exc}"))
    if not records:
        parts.append(_note("no per-epoch records found: no training curves"))
        return "".join(parts)
    xs = [_num(r["epoch"]) for r in records]
    metric_series = {label: [(x, _num(r.get(k))) for x, r in zip(xs, records)]
                     for k, label in METRICS if any(_num(r.get(k)) is not None for r in records)}
    parts.append("<figure>" + line_chart_svg(metric_series, "Validation metrics per epoch", "value", y_max=1.0)
                 + "<figcaption>Measured on the validation split after each epoch.</figcaption></figure>")
    loss_keys = [k for k in ("box_loss", "cls_loss", "dfl_loss") if any(_num(r.get(k)) is not None for r in records)]
    if loss_keys:
        parts.append("<figure>" + line_chart_svg({k: [(x, _num(r.get(k))) for x, r in zip(xs, records)]
                                                  for k in loss_keys}, "Training losses per epoch", "loss")
                     + "<figcaption>Lower is better; a rising validation metric matters more.</figcaption></figure>")
    return "".join(parts)


def _model_label(model: dict[str, Any], index: int) -> str:
    role = model.get("role") or ("production" if index == 0 else f"candidate {index}")
    name = Path(str(model.get("path") or "")).name
    return f"{role} ({name})" if name else str(role)


def _comparison(stage: dict[str, Any]) -> str:
    models = [m for m in stage.get("models") or [] if isinstance(m, dict)]
    parts = [_kv_table([("split", stage.get("split")), ("images", stage.get("images")),
                        ("winner", _path(stage.get("winner")) if stage.get("winner") else None),
                        ("report", _path(stage.get("report")) if stage.get("report") else None)])]
    if not models:
        return "".join(parts) + _note("no models were evaluated")
    winner = str(stage.get("winner") or "")
    rows = []
    for i, m in enumerate(models):
        gain, ci = _num(m.get("gain")), m.get("ci95")
        ci_text = f"[{_fmt(_num(ci[0]))}, {_fmt(_num(ci[1]))}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "-"
        mark = " (winner)" if winner and str(m.get("path")) == winner else ""
        rows.append([f"{m.get('role') or ('production' if i == 0 else 'candidate')}{mark}", _path(m.get("path")),
                     *[_num(m.get(k)) for k, _ in METRICS],
                     f"{gain:+.3f}" if gain is not None else "-", ci_text,
                     f"{_num(m.get('ms_per_image')):.1f}" if _num(m.get("ms_per_image")) is not None else "-",
                     f"{m['imgsz']} px" if m.get("imgsz") else "-",
                     f"{m['trained_imgsz']} px" if m.get("trained_imgsz") else "-"])
    parts.append("<h3>Models on the same held-out images</h3>" + _table(
        ["model", "file", *[label for _, label in METRICS], "gain", "95% interval", "ms / image", "scored at",
         "trained at"], rows, numeric=(2, 3, 4, 5)))
    names = _class_names(models)
    if names:
        labels = [_model_label(m, i) for i, m in enumerate(models)]
        body = []
        for name in names:
            vals = [_num(((m.get("per_class") or {}).get(name) or {}).get("ap50")) for m in models]
            best = max((v for v in vals if v is not None), default=None)
            cells = "".join(f'<td class="num{" best" if v is not None and v == best and len(models) > 1 else ""}">'
                            f"{_fmt(v) if v is not None else '-'}</td>" for v in vals)
            body.append(f"<tr><td>{_esc(name)}</td>{cells}</tr>")
        head = "".join(f"<th>{_esc(label)}</th>" for label in labels)
        parts.append("<h3>AP50 per class</h3><table><thead><tr><th>class</th>" + head
                     + f"</tr></thead><tbody>{''.join(body)}</tbody></table>")
        parts.append(_operating_point(models, names))
    return "".join(parts)


def _operating_point(models: list[dict[str, Any]], names: list[str]) -> str:
    """Per class: recall (1 - escape rate) and false calls per image at the line's confidence."""
    scored = [(i, m) for i, m in enumerate(models) if isinstance(m.get("operating_point"), dict)]
    if not scored:
        return ""

    def cell(value: Any, ci: Any) -> str:
        if _num(value) is None:
            return "-"
        interval = f" [{_fmt(_num(ci[0]))}, {_fmt(_num(ci[1]))}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
        return f"{_fmt(_num(value))}{interval}"

    rows = []
    for name in names:
        row: list[Any] = [name]
        for _, m in scored:
            c = (m["operating_point"].get("per_class") or {}).get(name) or {}
            row += [cell(c.get("recall"), c.get("recall_ci95")),
                    cell(c.get("false_calls_per_image"), c.get("false_calls_ci95"))]
        rows.append(row)
    conf = _num(scored[0][1]["operating_point"].get("conf"))
    headers = ["class"] + [f"{_model_label(m, i)} {what}" for i, m in scored for what in ("recall", "false calls / image")]
    return (f"<h3>At the line's confidence ({_fmt(conf, 2)}): recall and false calls per class</h3>"
            + _table(headers, rows) + _note("recall = 1 - escape rate; 95% bootstrap intervals in brackets"))


def _class_names(models: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for m in models:
        for name in (m.get("per_class") or {}) if isinstance(m.get("per_class"), dict) else ():
            if name not in names:
                names.append(name)
    return names


def _chart(stage: dict[str, Any]) -> str:
    chart = stage.get("chart")
    if chart and _data_uri(chart):
        return _image(chart, "AP50 per class on the test split (comparator's chart)")
    models = [m for m in stage.get("models") or [] if isinstance(m, dict)]
    names = _class_names(models)
    if not names:
        return _note("no per-class results to draw")
    series = {_model_label(m, i): [_num(((m.get("per_class") or {}).get(n) or {}).get("ap50")) for n in names]
              for i, m in enumerate(models)}
    return "<figure>" + bar_chart_svg(names, series, "AP50 per class") + "</figure>"


def _decision(data: dict[str, Any], stages: dict[str, Any]) -> str:
    decision = str(data.get("decision") or "unknown")
    cls = decision if decision in ("promoted", "kept", "skipped") else "unknown"
    parts = [f'<p>Outcome: <span class="decision {cls}" style="font-size:1.3em">{_esc(decision)}</span> '
             '(the reasons are listed in the summary at the top)</p>']
    compare = stages.get("compare")
    verdict = compare.get("decision") if isinstance(compare, dict) else None
    if isinstance(verdict, dict) and verdict:
        ci = verdict.get("ci95")
        parts.append("<h3>The comparator's verdict</h3>" + _kv_table([
            ("promote", verdict.get("promote")), ("metric", verdict.get("metric")),
            ("gain", f"{_num(verdict['gain']):+.3f}" if _num(verdict.get("gain")) is not None else None),
            ("95% interval", f"[{_fmt(_num(ci[0]))}, {_fmt(_num(ci[1]))}]"
             if isinstance(ci, (list, tuple)) and len(ci) == 2 else None)]))
        extra = [r for r in verdict.get("reasons") or [] if r not in (data.get("reasons") or [])]
        parts.append(_list(extra))
    promote = stages.get("promote")
    parts.append("<h3>Promotion</h3>")
    missing = _stage_missing(promote)
    parts.append(_note(missing) if missing else _kv_table(
        [(_words(k), _path(v) if k in ("path", "file", "run_dir") else _when(v)) for k, v in promote.items()
         if k != "reasons"]))
    return "".join(parts)


def _versions(data: dict[str, Any]) -> str:
    prod = data.get("production") or {}
    parts = ["<h3>Production model</h3>" + (_kv_table([
        ("version", prod.get("version")), ("file", _path(prod.get("path")) if prod.get("path") else None),
        ("sha256", _Html(f'<span class="path">{_esc(prod.get("sha256"))}</span>') if prod.get("sha256") else None),
        ("previous version", data.get("previous_version"))]) or _note("no production model"))]
    history = [h for h in data.get("history") or [] if isinstance(h, dict)]
    parts.append(f"<h3>History ({len(history)} versions)</h3>")
    if not history:
        return "".join(parts) + _note("no versions recorded yet")
    rows = []
    for h in list(reversed(history))[:MAX_ROWS]:  # newest first
        metrics = h.get("metrics") if isinstance(h.get("metrics"), dict) else {}
        current = (prod.get("sha256") and h.get("sha256") == prod.get("sha256")) or (
            not prod.get("sha256") and prod.get("version") and h.get("version") == prod.get("version"))
        rows.append([_Html(f"<b>{_esc(h.get('version'))}</b> (production)") if current else h.get("version"),
                     _when(h.get("promoted_at") or h.get("registered_at")),
                     _Html(f'<span class="path">{_esc(str(h.get("sha256") or "")[:12]) or "-"}</span>'),
                     h.get("dataset_version"), _scored_on(metrics), _num(metrics.get("map50")),
                     _num(metrics.get("map50_95")),
                     "this run: see the summary" if h.get("reasons") and h.get("reasons") == data.get("reasons")
                     else _Html("; ".join(_esc(r) for r in (h.get("reasons") or [])) or "-")])
    # each import grows the test split: figures of different dataset versions come from different images
    splits = {(_scored_on(h.get("metrics") if isinstance(h.get("metrics"), dict) else {}), h.get("dataset_version"))
              for h in history if _scored_on(h.get("metrics") if isinstance(h.get("metrics"), dict) else {}) != "-"}
    caveat = _note("Caution: these figures were measured on different test images (each import adds to the "
                   "test split: see 'dataset') or at different sizes (see 'scored on'), so they are not "
                   "comparable with each other; the comparison section above scores both models on the same "
                   "images.") if len(splits) > 1 else ""
    return "".join(parts) + _table(["version", "promoted", "sha256", "dataset", "scored on", "mAP50", "mAP50-95",
                                    "reasons"], rows, numeric=(5, 6)) + caveat + _cut_note(len(history))


def _scored_on(metrics: dict[str, Any]) -> str:
    """Which images a version's figures come from: "test split, 640 px" (validation figures of a
    first model and test figures of a comparison must not pass for the same thing)."""
    if not metrics.get("map50") and not metrics.get("map50_95"):
        return "-"
    split = metrics.get("split")
    where = f"{split} split" if split else "unrecorded split"
    return f"{where}, {metrics['imgsz']} px" if metrics.get("imgsz") else where


def _images(images: dict[str, Any]) -> str:
    return "".join(_image(path, str(caption)) for caption, path in images.items())


def render_pipeline_report(data: dict[str, Any]) -> str:
    """The whole HTML page for one pipeline run (a string; nothing is written)."""
    data = to_jsonable(data) if isinstance(data, dict) else {}
    stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    title = str(data.get("title") or "Retraining run")

    def stage_section(sid: str, heading: str, stage_key: str, render: Callable[[dict[str, Any]], str]) -> str:
        missing = _stage_missing(stages.get(stage_key))
        return _section(sid, heading, _note(missing) if missing else _safe(render, stages[stage_key], sid))

    sections = [
        _section("summary", "Summary", _safe(_summary, data, "summary")),
        stage_section("priorities", "Priorities from the memory bank", "analyze", _priorities),
        stage_section("dataset", "Dataset changes", "prepare", _dataset),
        stage_section("training", "Training", "train", _training),
        stage_section("comparison", "Comparison with production", "compare", _comparison),
        stage_section("chart", "Per-class chart", "compare", _chart),
        _section("decision", "Decision", _safe(lambda d: _decision(d, stages), data, "decision")),
        _section("versions", "Versions", _safe(_versions, data, "versions")),
    ]
    images = data.get("images")
    if isinstance(images, dict) and images:
        sections.append(_section("images", "More charts", _safe(_images, images, "images")))
    meta = " &middot; ".join(x for x in (
        f"generated {_esc(data['generated_at'])}" if data.get("generated_at") else "",
        f'workspace <span class="path">{_esc(data["root"])}</span>' if data.get("root") else "") if x)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # Nothing may load from anywhere: the page is read offline, on plant PCs without internet.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<header><h1>{_esc(title)}</h1><p class=\"meta\">{meta}</p></header>\n"
        + "\n".join(sections) + "\n</body></html>\n")


def _safe(render: Callable[[Any], str], value: Any, sid: str) -> str:
    # One odd field must not cost the whole page (the run it reports on may have promoted already).
    try:
        return render(value)
    except Exception as exc:  # noqa: BLE001 - reported on the page and in the log
        logger.warning("HTML report: section %s could not be drawn: %s", sid, exc, exc_info=True)
        return _note(f"this section could not be drawn: {type(exc).__name__}: {exc}")


def write_pipeline_report(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the run's page to ``path`` atomically (folders made as needed); return the path."""
    path = Path(path)
    atomic_write_text(path, render_pipeline_report(data))
    return path

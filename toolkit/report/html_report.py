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

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from toolkit.core.cli import to_jsonable
from toolkit.core.files import atomic_write_text
from toolkit.core.layout import PYTHON_WORD
from toolkit.report.html_text import (MAX_ROWS, Html, as_number, bullet_list, cut_note, data_uri, esc, field_words, fmt,
                                      hash_cell, html_table, image_tag, interval_text, kv_table, note, path_cell, plural,
                                      seconds_text, stage_missing, when_text)
from toolkit.report.route_words import ROUTE_HOW, ROUTE_NAMES, route_words
from toolkit.report.svg_charts import bar_chart_svg, line_chart_svg

logger = logging.getLogger(__name__)

SECTION_IDS = ("summary", "priorities", "dataset", "training", "comparison", "chart", "decision", "versions", "next")
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
td.best{font-weight:bold}.path,.hash{font-family:ui-monospace,Consolas,monospace;font-size:.9em}
.path{word-break:normal;overflow-wrap:normal}.hash{word-break:break-all}
.decision{display:inline-block;font-size:2.4em;font-weight:800;letter-spacing:.06em;padding:.1em .5em;
 border:3px solid;border-radius:.2em;margin:.2em 0}
.promoted{color:#00693e;border-color:#00693e}.kept{color:#8a5300;border-color:#8a5300}
.flagged{color:#8a4b00;border-color:#f0a000;background:#fff1c9}
.banner.spec{background:#fff1c9;border:2px solid #f0a000}
.skipped,.unknown{color:#555;border-color:#777}
.banner{background:#fff4d6;border:1px solid #e0b84a;padding:.4em .8em;margin:.6em 0}
figure{margin:.6em 0 1.2em}figcaption{font-size:.9em;color:#444}
svg{max-width:100%;height:auto}img.chart{max-width:100%;border:1px solid #ddd}
code.cmd{font-family:ui-monospace,Consolas,monospace;font-size:.9em;background:#f4f4f4;padding:0 .2em}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


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
        if not isinstance(rec, dict) or as_number(rec.get("epoch")) is None:
            continue
        flat = {k: v for k, v in rec.items() if k != "losses"}
        if isinstance(rec.get("losses"), dict):
            flat.update({k: v for k, v in rec["losses"].items() if k not in flat})
        records.append(flat)
    return sorted(records, key=lambda r: as_number(r["epoch"]))


def _results_csv(path: Path) -> list[dict[str, Any]]:
    names = {"metrics/mAP50(B)": "map50", "metrics/mAP50-95(B)": "map50_95", "metrics/precision(B)": "precision",
             "metrics/recall(B)": "recall", "train/box_loss": "box_loss", "train/cls_loss": "cls_loss",
             "train/dfl_loss": "dfl_loss", "epoch": "epoch"}
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        rec = {names[k.strip()]: as_number(v) for k, v in row.items() if k and k.strip() in names}
        if rec.get("epoch") is not None:
            out.append(rec)
    # ultralytics counts epochs from 1 in results.csv since 8.1; older files start at 0
    if out and min(r["epoch"] for r in out) == 0:
        for r in out:
            r["epoch"] += 1
    return out


# ---------------------------------------------------------------------------------------------- sections
def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def _badge(data: dict[str, Any]) -> tuple[str, str]:
    """(css class, words) of the decision: a forced or below-spec promotion is amber, never the green
    of a plain approval; below spec names the classes."""
    decision = str(data.get("decision") or "unknown")
    cls = decision if decision in ("promoted", "kept", "skipped") else "unknown"
    below = [str(c) for c in data.get("below_spec") or []]
    words = decision.upper() + (" (FORCED)" if data.get("forced") and decision == "promoted" else "")
    if below:
        words += " - BELOW SPEC"
    if decision == "promoted" and (below or data.get("forced")):
        cls = "flagged"
    return cls, words


def _summary(data: dict[str, Any]) -> str:
    decision = str(data.get("decision") or "unknown")
    cls, words = _badge(data)
    prod = data.get("production") or {}
    parts = []
    if data.get("dry_run"):
        parts.append('<p class="banner">Dry run: nothing was changed; this page says what would happen.</p>')
    none_yet = decision == "kept" and not prod.get("sha256") and not prod.get("version")
    parts.append(f'<div class="decision {cls}">{"NO MODEL PROMOTED" if none_yet else esc(words)}</div>')
    below = [str(c) for c in data.get("below_spec") or []]
    if below:
        which = "the promoted model" if decision == "promoted" else "production"
        parts.append(f'<p class="banner spec">Not fit for the line yet: {which} is below the line\'s spec '
                     f"(promotion.min_recall) for <b>{esc(', '.join(below))}</b> - too many of those defects "
                     "escape at the line's confidence. The spec table under 'Comparison with production' gives "
                     "each class's recall and the confidence at which the spec would be met.</p>")
    if data.get("forced") and decision == "promoted":
        parts.append('<p class="banner spec">Forced: this model went into production because --force overrode a '
                     "promotion rule, not because the comparator approved it.</p>")
    line = ("Production model: none yet" if none_yet else
            f"Production model: version <b>{esc(prod.get('version'))}</b>")
    if data.get("previous_version") not in (None, "") and data.get("previous_version") != prod.get("version"):
        line += f" (was {esc(data['previous_version'])})"
    parts.append(f"<p>{line}</p>")
    parts.append(bullet_list(data.get("reasons") or []) or note("no reasons given"))
    timings = data.get("timings") or {}
    if isinstance(timings, dict) and timings:
        total = sum(v for v in (as_number(t) for t in timings.values()) if v is not None)
        parts.append("<h3>Time per stage</h3>" + html_table(
            ["stage", "time"], [[k, seconds_text(v)] for k, v in timings.items()] + [[Html("<b>total</b>"),
                                                                                 seconds_text(total)]]))
    return "".join(parts)


def _priorities(stage: dict[str, Any]) -> str:
    parts = [note("From the memory bank as it was at the start of this run, before this run's import and "
                   "training: what to label next, not how the new model does."),
             kv_table([("memory-bank records", stage.get("records")), ("skipped records", stage.get("skipped_records")),
                        ("images exported for labelling", stage.get("exported")),
                        ("report", path_cell(stage.get("report")) if stage.get("report") else None)])]
    prios = [p for p in stage.get("priorities") or [] if isinstance(p, dict)]
    if prios:
        parts.append("<h3>Classes to work on, most urgent first</h3>" + html_table(
            ["#", "class", "score", "images needed", "why"],
            [[i + 1, p.get("class"), as_number(p.get("score")), p.get("images_needed"),
              Html("; ".join(esc(r) for r in (p.get("reasons") or [])) or "-")] for i, p in enumerate(prios)],
            numeric=(2,)))
    else:
        parts.append(note("no priorities: the memory bank gave no reason to favour a class"))
    classes = stage.get("classes")
    if isinstance(classes, dict) and classes:
        infos = [info if isinstance(info, dict) else {} for info in classes.values()]
        keys = [k for k in dict.fromkeys(k for info in infos for k in info)  # scalar columns only
                if all(info.get(k) is None or isinstance(info.get(k), (int, float, str)) for info in infos)
                and any(info.get(k) is not None for info in infos)][:8]
        if keys:
            parts.append("<h3>Per-class figures from the memory bank</h3>" + html_table(
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
    parts = [kv_table([("dataset version", stage.get("dataset_version")), ("images added", stage.get("added")),
                        ("duplicates left out", stage.get("duplicates")),
                        ("report", path_cell(stage.get("report")) if stage.get("report") else None)])]
    if isinstance(images, dict) and images:
        total = sum(v for v in (as_number(n) for n in images.values()) if v is not None)
        parts.append("<h3>Images per split</h3>" + html_table(
            ["split", "images"], [[k, v] for k, v in images.items()] + [["total", int(total)]], numeric=(1,)))
    boxes = stage.get("boxes_per_class") or {}
    if isinstance(boxes, dict) and boxes:
        parts.append("<h3>Boxes per class</h3>" + html_table(["class", "boxes"], list(boxes.items()), numeric=(1,)))
    rejected = [r for r in stage.get("rejected") or [] if isinstance(r, dict)]
    parts.append(f"<h3>Rejected files ({plural(len(rejected), 'file')})</h3>")
    parts.append(html_table(["file", "reason"], [[path_cell(r.get("path")), r.get("reason")] for r in rejected[:MAX_ROWS]])
                 + cut_note(len(rejected)) if rejected else note("none"))
    return "".join(parts)


def _training(stage: dict[str, Any]) -> str:
    routes = _routes(stage)
    parts = [f"<p>{esc(route_words(stage.get('strategy')))}</p>"] if isinstance(stage.get("strategy"), dict) else []
    details = (stage.get("strategy") or {}).get("reason") if isinstance(stage.get("strategy"), dict) else None
    if details:
        parts.append(note(f"The toolkit's reasoning: {details}"))
    if len(routes) > 1:
        return "".join(parts) + _both_routes(stage, routes)
    return "".join(parts) + _one_run(stage)


def _routes(stage: dict[str, Any]) -> list[dict[str, Any]]:
    strategy = stage.get("strategy")
    rows = strategy.get("candidates") if isinstance(strategy, dict) else None
    return [r for r in rows or [] if isinstance(r, dict)]


def _one_run(stage: dict[str, Any]) -> str:
    metrics = stage.get("metrics") or {}
    done, planned = stage.get("epochs_completed"), stage.get("epochs_planned")
    parts = [kv_table([("epochs", f"{done} of {planned}" if planned else done), ("stopped", stage.get("stop_reason")),
                        ("time", seconds_text(stage.get("seconds")) if stage.get("seconds") is not None else None),
                        ("started from", stage.get("start_from")), ("device", stage.get("device")),
                        ("run folder", path_cell(stage.get("run_dir")) if stage.get("run_dir") else None),
                        ("best weights", path_cell(stage.get("best")) if stage.get("best") else None)])]
    if isinstance(metrics, dict) and metrics:
        parts.append("<h3>Best weights on the validation split</h3>" + html_table(
            [label for _, label in METRICS], [[as_number(metrics.get(k)) for k, _ in METRICS]], numeric=range(4)))
    parts.append(bullet_list(stage.get("notes") or []))
    parts.append(_curves(stage))
    return "".join(parts)


def _both_routes(stage: dict[str, Any], routes: list[dict[str, Any]]) -> str:
    """Every route of a 'both' run: its time, epochs and scores side by side, then each one's curves."""
    metric = (stage.get("strategy") or {}).get("metric") or "map50_95"
    label = {"map50_95": "mAP50-95", "map50": "mAP50"}.get(metric, metric)
    rows = []
    for r in routes:
        val, test = r.get("val") or {}, r.get("test") or {}
        outcome = ("promoted" if r.get("promoted") else "chosen on validation" if r.get("chosen_on_val")
                   else "not chosen")
        rows.append([ROUTE_NAMES.get(r.get("route"), r.get("route")), ROUTE_HOW.get(r.get("route"), "-"),
                     r.get("epochs"), seconds_text(r.get("seconds")), as_number(val.get(metric)),
                     as_number(test.get("map50_95")) if test else None, outcome, path_cell(r.get("run_dir"))])
    total = sum(v for v in (as_number(r.get("seconds")) for r in routes) if v is not None)
    parts = ["<h3>The models trained</h3>" + html_table(
        ["route", "what it is", "epochs", "time", f"validation {label}", "test mAP50-95", "outcome", "run folder"],
        rows, numeric=(2, 4, 5)),
        note(f"Training time of both: {seconds_text(total)} (the summary's train stage also counts the "
             "preparation around them). Only the model chosen on the validation split meets production on the "
             "test split.")]
    parts.append(bullet_list(stage.get("notes") or []))
    shown = str(stage.get("run_dir") or "")
    for r in routes:
        name = ROUTE_NAMES.get(r.get("route"), r.get("route"))
        data = stage if shown and str(r.get("run_dir")) == shown else {"run_dir": r.get("run_dir")}
        parts.append(f"<h3>Curves of the {esc(name)} model</h3>" + _curves(data))
    return "".join(parts)


def _curves(stage: dict[str, Any]) -> str:
    try:
        records = epoch_records(stage)
    except OSError as exc:
        return note(f"could not read the epoch log: {exc}")
    if not records:
        return note("no per-epoch records found: no training curves")
    parts = []
    xs = [as_number(r["epoch"]) for r in records]
    metric_series = {label: [(x, as_number(r.get(k))) for x, r in zip(xs, records)]
                     for k, label in METRICS if any(as_number(r.get(k)) is not None for r in records)}
    parts.append("<figure>" + line_chart_svg(metric_series, "Validation metrics per epoch", "value", y_max=1.0)
                 + "<figcaption>Measured on the validation split after each epoch.</figcaption></figure>")
    loss_keys = [k for k in ("box_loss", "cls_loss", "dfl_loss") if any(as_number(r.get(k)) is not None for r in records)]
    if loss_keys:
        parts.append("<figure>" + line_chart_svg({k: [(x, as_number(r.get(k))) for x, r in zip(xs, records)]
                                                  for k in loss_keys}, "Training losses per epoch", "loss")
                     + "<figcaption>Lower is better; a rising validation metric matters more.</figcaption></figure>")
    return "".join(parts)


def _model_label(model: dict[str, Any], index: int) -> str:
    role = model.get("role") or ("production" if index == 0 else f"candidate {index}")
    name = Path(str(model.get("path") or "")).name
    return f"{role} ({name})" if name else str(role)


def _comparison(stage: dict[str, Any]) -> str:
    models = [m for m in stage.get("models") or [] if isinstance(m, dict)]
    parts = [kv_table([("split", stage.get("split")), ("images", stage.get("images")),
                        ("winner", path_cell(stage.get("winner")) if stage.get("winner") else None),
                        ("report", path_cell(stage.get("report")) if stage.get("report") else None)])]
    if not models:
        return "".join(parts) + note("no models were evaluated")
    winner = str(stage.get("winner") or "")
    rows = []
    for i, m in enumerate(models):
        gain = as_number(m.get("gain"))
        ci_text = interval_text(m.get("ci95"), signed=True) or "-"
        mark = " (winner)" if winner and str(m.get("path")) == winner else ""
        rows.append([f"{m.get('role') or ('production' if i == 0 else 'candidate')}{mark}", path_cell(m.get("path")),
                     *[as_number(m.get(k)) for k, _ in METRICS],
                     f"{gain:+.3f}" if gain is not None else "-", ci_text,
                     f"{as_number(m.get('ms_per_image')):.1f}" if as_number(m.get("ms_per_image")) is not None else "-",
                     f"{m['imgsz']} px" if m.get("imgsz") else "-",
                     f"{m['trained_imgsz']} px" if m.get("trained_imgsz") else "-"])
    parts.append("<h3>Models on the same held-out images</h3>" + html_table(
        ["model", "file", *[label for _, label in METRICS], "gain", "95% interval", "ms / image", "scored at",
         "trained at"], rows, numeric=(2, 3, 4, 5)))
    names = _class_names(models)
    if names:
        labels = [_model_label(m, i) for i, m in enumerate(models)]
        body = []
        for name in names:
            vals = [as_number(((m.get("per_class") or {}).get(name) or {}).get("ap50")) for m in models]
            best = max((v for v in vals if v is not None), default=None)
            cells = "".join(f'<td class="num{" best" if v is not None and v == best and len(models) > 1 else ""}">'
                            f"{fmt(v) if v is not None else '-'}</td>" for v in vals)
            body.append(f"<tr><td>{esc(name)}</td>{cells}</tr>")
        head = "".join(f"<th>{esc(label)}</th>" for label in labels)
        parts.append("<h3>AP50 per class</h3><table><thead><tr><th>class</th>" + head
                     + f"</tr></thead><tbody>{''.join(body)}</tbody></table>")
        parts.append(_operating_point(models, names))
        parts.append(_spec_table(models, names))
    return "".join(parts)


def _spec_table(models: list[dict[str, Any]], names: list[str]) -> str:
    """Per class: the line's spec, each model's recall against it, and conf_for_spec."""
    scored = [(i, m) for i, m in enumerate(models) if isinstance(m.get("conf_for_spec"), dict)]
    if not scored:
        return ""
    rows = []
    for name in names:
        need = as_number((scored[0][1].get("min_recall") or {}).get(name))
        row: list[Any] = [name, fmt(need, 2) if need is not None else "-"]
        for _, m in scored:
            recall = as_number((((m.get("operating_point") or {}).get("per_class") or {}).get(name) or {}).get("recall"))
            at = m["conf_for_spec"].get(name)
            below = name in (m.get("below_spec") or [])
            row += [Html(f"<b>{fmt(recall)} below</b>") if below else (fmt(recall) if recall is not None else "-"),
                    f"{fmt(as_number(at.get('conf')))} ({fmt(as_number(at.get('false_calls_per_image')), 2)} false "
                    "calls / image)" if isinstance(at, dict) else "no confidence reaches it"]
        rows.append(row)
    headers = ["class", "spec (min recall)"] + [f"{_model_label(m, i)} {what}" for i, m in scored
                                                for what in ("recall", "spec met at confidence")]
    return ("<h3>The line's spec: recall each class must reach at the line's confidence</h3>"
            + html_table(headers, rows) + note("'spec met at confidence' (conf_for_spec): the highest confidence at "
                                               "which the class's recall reaches its spec on this split"))


def _operating_point(models: list[dict[str, Any]], names: list[str]) -> str:
    """Per class: recall (1 - escape rate) and false calls per image at the line's confidence."""
    scored = [(i, m) for i, m in enumerate(models) if isinstance(m.get("operating_point"), dict)]
    if not scored:
        return ""

    def cell(value: Any, ci: Any) -> str:
        if as_number(value) is None:
            return "-"
        interval = interval_text(ci)
        return f"{fmt(as_number(value))} {interval}" if interval else fmt(as_number(value))

    rows = []
    for name in names:
        row: list[Any] = [name]
        for _, m in scored:
            c = (m["operating_point"].get("per_class") or {}).get(name) or {}
            row += [cell(c.get("recall"), c.get("recall_ci95")),
                    cell(c.get("false_calls_per_image"), c.get("false_calls_ci95"))]
        rows.append(row)
    conf = as_number(scored[0][1]["operating_point"].get("conf"))
    headers = ["class"] + [f"{_model_label(m, i)} {what}" for i, m in scored for what in ("recall", "false calls / image")]
    return (f"<h3>At the line's confidence ({fmt(conf, 2)}): recall and false calls per class</h3>"
            + html_table(headers, rows) + note("recall = 1 - escape rate; 95% bootstrap intervals in brackets"))


def _class_names(models: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for m in models:
        for name in (m.get("per_class") or {}) if isinstance(m.get("per_class"), dict) else ():
            if name not in names:
                names.append(name)
    return names


def _chart(stage: dict[str, Any]) -> str:
    chart = stage.get("chart")
    if chart and data_uri(chart):
        return image_tag(chart, "AP50 per class on the test split (comparator's chart)")
    models = [m for m in stage.get("models") or [] if isinstance(m, dict)]
    names = _class_names(models)
    if not names:
        return note("no per-class results to draw")
    series = {_model_label(m, i): [as_number(((m.get("per_class") or {}).get(n) or {}).get("ap50")) for n in names]
              for i, m in enumerate(models)}
    return "<figure>" + bar_chart_svg(names, series, "AP50 per class") + "</figure>"


def _decision(data: dict[str, Any], stages: dict[str, Any]) -> str:
    cls, words = _badge(data)
    parts = [f'<p>Outcome: <span class="decision {cls}" style="font-size:1.3em">{esc(words.lower())}</span> '
             '(the reasons are listed in the summary at the top)</p>']
    compare = stages.get("compare")
    verdict = compare.get("decision") if isinstance(compare, dict) else None
    if isinstance(verdict, dict) and verdict:
        parts.append("<h3>The comparator's verdict</h3>" + kv_table([
            ("promote", verdict.get("promote")), ("metric", verdict.get("metric")),
            ("gain", f"{as_number(verdict['gain']):+.3f}" if as_number(verdict.get("gain")) is not None else None),
            ("95% interval of the gain", interval_text(verdict.get("ci95"), signed=True))]))
        extra = [r for r in verdict.get("reasons") or [] if r not in (data.get("reasons") or [])]
        parts.append(bullet_list(extra))
    promote = stages.get("promote")
    parts.append("<h3>Promotion</h3>")
    missing = stage_missing(promote)
    parts.append(note(missing) if missing else kv_table(
        [(field_words(k), path_cell(v) if k in ("path", "file", "run_dir") else when_text(v)) for k, v in promote.items()
         if k != "reasons"]))
    return "".join(parts)


def _versions(data: dict[str, Any]) -> str:
    prod = data.get("production") or {}
    parts = ["<h3>Production model</h3>" + (kv_table([
        ("version", prod.get("version")), ("file", path_cell(prod.get("path")) if prod.get("path") else None),
        ("sha256", hash_cell(prod.get("sha256")) if prod.get("sha256") else None),
        ("previous version", data.get("previous_version"))]) or note("no production model"))]
    history = [h for h in data.get("history") or [] if isinstance(h, dict)]
    parts.append(f"<h3>History ({plural(len(history), 'version')})</h3>")
    if not history:
        return "".join(parts) + note("no versions recorded yet")
    rows = []
    for h in list(reversed(history))[:MAX_ROWS]:  # newest first
        metrics = h.get("metrics") if isinstance(h.get("metrics"), dict) else {}
        current = (prod.get("sha256") and h.get("sha256") == prod.get("sha256")) or (
            not prod.get("sha256") and prod.get("version") and h.get("version") == prod.get("version"))
        rows.append([Html(f"<b>{esc(h.get('version'))}</b> (production)") if current else h.get("version"),
                     when_text(h.get("promoted_at") or h.get("registered_at")),
                     hash_cell(str(h.get("sha256") or "")[:12]),
                     h.get("dataset_version"), _scored_on(metrics), as_number(metrics.get("map50")),
                     as_number(metrics.get("map50_95")),
                     "this run: see the summary" if h.get("reasons") and h.get("reasons") == data.get("reasons")
                     else Html("; ".join(esc(r) for r in (h.get("reasons") or [])) or "-")])
    # each import grows the test split: figures of different dataset versions come from different images
    splits = {(_scored_on(h.get("metrics") if isinstance(h.get("metrics"), dict) else {}), h.get("dataset_version"))
              for h in history if _scored_on(h.get("metrics") if isinstance(h.get("metrics"), dict) else {}) != "-"}
    caveat = note("Caution: these figures were measured on different test images (each import adds to the "
                   "test split: see 'dataset') or at different sizes (see 'scored on'), so they are not "
                   "comparable with each other; the comparison section above scores both models on the same "
                   "images.") if len(splits) > 1 else ""
    return "".join(parts) + html_table(["version", "promoted", "sha256", "dataset", "scored on", "mAP50", "mAP50-95",
                                    "reasons"], rows, numeric=(5, 6)) + caveat + cut_note(len(history))


def _scored_on(metrics: dict[str, Any]) -> str:
    """Which images a version's figures come from: "test split, 640 px" (validation figures of a
    first model and test figures of a comparison must not pass for the same thing)."""
    if not metrics.get("map50") and not metrics.get("map50_95"):
        return "-"
    split = metrics.get("split")
    where = f"{split} split" if split else "unrecorded split"
    return f"{where}, {metrics['imgsz']} px" if metrics.get("imgsz") else where


_COMMAND = re.compile(rf"{PYTHON_WORD} \S.*?(?=; |$)")


def _next_steps(data: dict[str, Any]) -> str:
    """What to do now: the run's own Next: lines (complete commands), one item each."""
    steps = [str(x) for x in data.get("next_steps") or [] if x]
    if not steps and data.get("root"):
        from toolkit.core.layout import command

        steps = [f"versions and past runs: {command('training_pipeline.py', data['root'], '--status')}"]
    if not steps:
        return note("no next steps recorded for this run")
    items = []
    for step in steps:
        for part in re.split(rf"; (?=[^;]*{PYTHON_WORD} )", re.sub(r"^Next:\s*", "", step.strip())):
            out, last = [], 0
            for match in _COMMAND.finditer(part):
                out.append(esc(part[last:match.start()]))
                out.append('<code class="cmd">' + re.sub(r"([/\\])", r"\1<wbr>", esc(match.group(0))) + "</code>")
                last = match.end()
            out.append(esc(part[last:]))
            items.append("<li>" + "".join(out) + "</li>")
    return "<ul>" + "".join(items) + "</ul>" + note("Each command works as written, from any folder.")


def _images(images: dict[str, Any]) -> str:
    return "".join(image_tag(path, str(caption)) for caption, path in images.items())


def render_pipeline_report(data: dict[str, Any]) -> str:
    """The whole HTML page for one pipeline run (a string; nothing is written)."""
    data = to_jsonable(data) if isinstance(data, dict) else {}
    stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    title = str(data.get("title") or "Retraining run")

    def stage_section(sid: str, heading: str, stage_key: str, render: Callable[[dict[str, Any]], str]) -> str:
        missing = stage_missing(stages.get(stage_key))
        return _section(sid, heading, note(missing) if missing else _safe(render, stages[stage_key], sid))

    sections = [
        _section("summary", "Summary", _safe(_summary, data, "summary")),
        stage_section("priorities", "Priorities from the memory bank", "analyze", _priorities),
        stage_section("dataset", "Dataset changes", "prepare", _dataset),
        stage_section("training", "Training", "train", _training),
        stage_section("comparison", "Comparison with production", "compare", _comparison),
        stage_section("chart", "Per-class chart", "compare", _chart),
        _section("decision", "Decision", _safe(lambda d: _decision(d, stages), data, "decision")),
        _section("versions", "Versions", _safe(_versions, data, "versions")),
        _section("next", "Next steps", _safe(_next_steps, data, "next")),
    ]
    images = data.get("images")
    if isinstance(images, dict) and images:
        sections.append(_section("images", "More charts", _safe(_images, images, "images")))
    meta = " &middot; ".join(x for x in (
        f"generated {esc(data['generated_at'])}" if data.get("generated_at") else "",
        f'workspace <span class="path">{esc(data["root"])}</span>' if data.get("root") else "") if x)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # Nothing may load from anywhere: the page is read offline, on plant PCs without internet.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p class=\"meta\">{meta}</p></header>\n"
        + "\n".join(sections) + "\n</body></html>\n")


def _safe(render: Callable[[Any], str], value: Any, sid: str) -> str:
    # One odd field must not cost the whole page (the run it reports on may have promoted already).
    try:
        return render(value)
    except Exception as exc:  # noqa: BLE001 - reported on the page and in the log
        logger.warning("HTML report: section %s could not be drawn: %s", sid, exc, exc_info=True)
        return note(f"this section could not be drawn: {type(exc).__name__}: {exc}")


def write_pipeline_report(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the run's page to ``path`` atomically (folders made as needed); return the path."""
    path = Path(path)
    atomic_write_text(path, render_pipeline_report(data))
    return path

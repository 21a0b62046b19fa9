"""Read the memory bank: what the production model is weak at, and which images to label next.

Reads ROOT/memory-bank/detections.jsonl (or --memory-bank PATH: JSONL, a JSON array, CSV or
SQLite, Parquet; see memory-bank/README.md), skipping malformed records with their line numbers, and
reports per class: detections, confidence distribution, share in the uncertain band, trend per
week and per model version, and - on images an operator reviewed - precision, recall, wrong-class
confusions and missed defects. Classes are ranked by a documented priority score
(toolkit/memory/analysis.py) with reasons in words and an estimate of the images each one needs.

--export N copies the N most useful images to training/to_label/<stamp>/ with YOLO pre-labels
from the detections and selection.csv (why each was chosen), and writes the reviewed images as a
labelled batch into training/incoming/reviewed_<stamp>/ for dataset_preparer.py.
--scan DIR first runs the production model over a folder of images and appends one record per
image to the memory bank, so a user with no detection history still gets priorities and an export.

Usage:
    python training_analyzer.py --root D:/inspection
    python training_analyzer.py --root D:/inspection --since 2026-03-01 --export 200
    python training_analyzer.py --root ./ws --memory-bank exports/line3.csv --model-version 1.0 --json
    python training_analyzer.py --root ./ws --scan D:/unlabelled --export 50
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.core.cli import add_options, build_parser, config_from_args, run_main
from toolkit.core.config import Settings, option, resolve_config, setting
from toolkit.core.errors import UserError
from toolkit.core.layout import Workspace, command, require_workspace
from toolkit.core.lock import holds_workspace_lock

logger = logging.getLogger(__name__)

LIST_CAP = 200  # lists in the result are capped; their counts stay exact


@dataclass(frozen=True)
class AnalyzeConfig:
    root: Path
    memory_bank: Path | str | None = option(
        "--memory-bank", "memory bank: a .jsonl, .json, .csv, .parquet or SQLite file, or a database URL "
        "postgresql://user@host:5432/db?table=detections (password from PGPASSWORD or .pgpass); default "
        "training.yaml memory_bank.url, else ROOT/memory-bank/detections.jsonl", metavar="PATH|URL")
    since: str | None = option("--since", "only records from this date (2026-03-01) or ISO timestamp on")
    until: str | None = option("--until", "only records up to this date (inclusive) or ISO timestamp")
    model_version: str | None = option("--model-version", "only records of this production model version")
    uncertain: tuple[float, float] | None = setting("analyzer.uncertain")
    export: int = option("--export", "copy N images to label to training/to_label/<stamp>/ (and reviewed "
                         "images to incoming/); 0: analyse only", default=0, type=int, metavar="N")
    scan: Path | None = option("--scan", "first run the production model over these images and log them to "
                               "the memory bank", type=Path, metavar="DIR")
    scan_model: Path | None = option("--scan-model", "model for --scan and the selection's embeddings (default: "
                                     "ROOT/yolov8_model.pt)", type=Path)
    iou_match: float | None = setting("analyzer.iou_match")
    selection: str | None = setting("analyzer.selection")
    scan_batch: int = option("--scan-batch", "images per inference batch for --scan", default=16, type=int)
    scan_conf: float = option("--scan-conf", "lowest confidence --scan logs", default=0.25, type=float)


@dataclass(frozen=True)
class AnalyzeResult:
    memory_bank: Path | str                     # a database URL is shown with its password masked
    format: str
    records: int
    skipped_records: int
    malformed: tuple[dict[str, Any], ...]       # first LIST_CAP of {line, reason}
    filtered_out: int
    uncertain: tuple[float, float]
    iou_match: float
    reviewed_images: int
    weeks: tuple[str, ...]
    model_versions: tuple[str, ...]
    classes: dict[str, dict[str, Any]]
    priorities: tuple[dict[str, Any], ...]
    exported: int
    export_dir: Path | None
    incoming_batch: Path | None
    reviewed_exported: int
    near_duplicates_skipped: int
    selection: dict[str, Any]                   # mode, candidates, groups, quotas, embedding cost
    missing_images: tuple[str, ...]             # first LIST_CAP
    missing_images_count: int
    refused_images: tuple[str, ...]             # first LIST_CAP "path: why" (not image files: never opened)
    refused_images_count: int
    scanned: int | None
    report: Path
    plots: tuple[Path, ...]
    root: Path | None = None                    # the workspace (the Next: line's --root)
    set_up: bool = True                         # the workspace has a dataset file or a production model
    export_requested: int = 0                   # --export N


MAX_SCAN_BATCH = 1024   # images per inference batch: more only exhausts memory


def resolve(config: AnalyzeConfig, workspace: Workspace, settings: Settings | None = None) -> tuple[AnalyzeConfig, Settings]:
    """The config with the band and IoU filled in (flags > training.yaml > defaults), checked."""
    config, settings = resolve_config(config, settings or Settings.load(workspace.training_yaml))
    if config.export < 0:
        raise UserError("--export must be 0 or a positive number of images")
    if not 1 <= config.scan_batch <= MAX_SCAN_BATCH:
        raise UserError(f"--scan-batch must be 1 to {MAX_SCAN_BATCH} images per inference batch, got {config.scan_batch}")
    return config, settings


def known_classes(workspace: Workspace) -> list[str]:
    """Model order of the classes: dataset.yaml, else the production sidecar; [] if neither."""
    from toolkit.core.datafile import read_class_names

    if workspace.dataset_yaml.exists():
        try:
            return read_class_names(workspace.dataset_yaml)
        except UserError as exc:
            logger.warning("%s", exc)
    sidecar = _read_sidecar(workspace)
    names = sidecar.get("classes")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
    return [str(n) for n in names] if isinstance(names, list) else []


def _read_sidecar(workspace: Workspace) -> dict[str, Any]:
    import json

    if not workspace.production_sidecar.exists():
        return {}
    try:
        data = json.loads(workspace.production_sidecar.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        logger.warning("cannot read %s; going on without it", workspace.production_sidecar)
        return {}


def dataset_instances(workspace: Workspace, names: list[str]) -> dict[str, int] | None:
    """Training instances per class of the managed dataset (manifest, else YOLO labels); None if none."""
    return dataset_counts(workspace, names)[0]


def dataset_counts(workspace: Workspace, names: list[str]) -> tuple[dict[str, int] | None, int]:
    """(training instances per class, training images) of the managed dataset: manifest, else YOLO
    labels of the train split; (None, 0) if neither."""
    import json

    if workspace.manifest.exists():
        try:
            manifest = json.loads(workspace.manifest.read_text(encoding="utf-8"))
            counts: dict[str, int] = {str(c): 0 for c in manifest.get("classes", [])}
            images = manifest.get("images", [])
            has_split = any(isinstance(i, dict) and "split" in i for i in images)
            n_images = 0
            for item in images:
                if not isinstance(item, dict) or (has_split and item.get("split") != "train"):
                    continue
                n_images += 1
                for name, n in (item.get("boxes") or {}).items():
                    counts[str(name)] = counts.get(str(name), 0) + int(n)
            if counts:
                return counts, n_images
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("cannot read %s (%s); counting label files instead", workspace.manifest, exc)
    label_dir = workspace.labels_dir("train")
    if not label_dir.is_dir() or not names:
        return None, 0
    counts = {n: 0 for n in names}
    found = 0
    for txt in label_dir.glob("*.txt"):
        found += 1
        for row in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = row.split()
            if parts and parts[0].isdigit() and int(parts[0]) < len(names):
                counts[names[int(parts[0])]] += 1
    return (counts, found) if found else (None, 0)


def below_spec_of_production(workspace: Workspace, min_recall: Any) -> dict[str, dict[str, Any]]:
    """Classes production's last evaluation found below the line's spec (``min_recall``, the spec in
    force now), with their figures."""
    from toolkit.promotion.spec import judged_now, production_spec

    spec = judged_now(production_spec(workspace), min_recall) if workspace.production_model.is_file() else None
    if not spec:
        return {}
    return {name: {**(spec.get("per_class") or {}).get(name, {}), "operating_conf": spec.get("operating_conf"),
                   "split": spec.get("split"), "run": spec.get("run"), "measured_at": spec.get("measured_at")}
            for name in spec.get("below_spec") or [] if ((spec.get("per_class") or {}).get(name) or {}).get("recall") is not None}


def memory_bank_location(flag: Path | str | None, setting: str | None, workspace: Workspace) -> Path | str:
    """--memory-bank, else training.yaml memory_bank.url (a relative path: under ROOT), else the JSONL.

    A database URL is returned as given (its password, if any, is masked wherever it is shown).
    """
    from toolkit.memory.memory_bank_sql import is_database_url, mask_url, refuse_url_typo

    given = flag if flag not in (None, "") else (setting or None)
    if given is None:
        return workspace.detections
    refuse_url_typo(str(given))
    if is_database_url(given):
        if mask_url(given) != str(given):
            logger.warning("the memory-bank URL holds a password: it is masked in reports and logs, but keep it "
                           "in PGPASSWORD or .pgpass instead (shell history, training.yaml)")
        return str(given).strip()
    path = Path(given).expanduser()
    if flag in (None, "") and not path.is_absolute():
        path = workspace.root / path
    return path.resolve()


@holds_workspace_lock("analyze", when=lambda c: c.export > 0 or c.scan is not None)
def run(config: AnalyzeConfig, settings: Settings | None = None) -> AnalyzeResult:
    from toolkit.memory.analysis_charts import ChartWorker

    with ChartWorker() as charts:  # a helper process loads matplotlib while the bank is read
        return _run(config, settings, charts)


def _run(config: AnalyzeConfig, settings: Settings | None, charts: "ChartWorker") -> AnalyzeResult:
    from toolkit.core.reports import report_path, timestamp
    from toolkit.memory.analysis import analyze_aggregate
    from toolkit.memory.memory_bank import aggregate_memory_bank
    from toolkit.memory.bank_table import parse_date_bound

    # a mistyped --root: one line, nothing written; with --memory-bank the bank is elsewhere and an
    # existing ROOT only receives the reports
    workspace = (Workspace.at(config.root) if config.memory_bank and Path(config.root).is_dir()
                 else require_workspace(config.root, "memory bank not found"))
    config, settings = resolve(config, workspace, settings)
    band, iou = config.uncertain, config.iou_match
    bank_path = memory_bank_location(config.memory_bank, settings["memory_bank.url"], workspace)
    since = parse_date_bound(config.since) if config.since else None
    until = parse_date_bound(config.until, end=True) if config.until else None
    if since is not None and until is not None and since > until:
        raise UserError(f"--since {config.since} is not before --until {config.until}")
    scanned = None
    if config.scan is not None:
        from toolkit.memory.detection_api import scan_folder

        scanned = scan_folder(workspace, Path(config.scan), Path(config.scan_model or workspace.production_model),
                              bank_path, batch=config.scan_batch, conf=config.scan_conf)
    # chunk by chunk: memory holds one chunk, the running figures and the records an export may pick
    bank = aggregate_memory_bank(bank_path, band, iou, since=since, until=until, model_version=config.model_version,
                                 export=config.export, image_root=workspace.memory_bank)
    shown = bank.location or bank_path  # a database URL with its password masked
    logger.info("memory bank %s: %d record(s), %d malformed (skipped), %d outside the filters",
                shown, bank.records, bank.skipped, bank.filtered_out)
    for item in bank.malformed.items[:10]:
        logger.warning("line %d skipped: %s", item["line"], item["reason"])
    names = known_classes(workspace)
    instances, train_images = dataset_counts(workspace, names)
    analysis = analyze_aggregate(bank, instances, names, dataset_images=train_images,
                                 below_spec=below_spec_of_production(workspace, settings["promotion.min_recall"]))

    stamp = timestamp()
    json_path = report_path(workspace, "analyze", stamp)
    plots = charts.submit(analysis, json_path)   # drawn by the helper during the export and the report
    export = None
    embed_model = Path(config.scan_model or workspace.production_model)
    selection, fallback = config.selection, None
    from toolkit.memory.selection import COVERED   # the modes that cluster the production model's embeddings

    if config.export > 0 and selection in COVERED and not embed_model.is_file():
        fallback = (f"analyzer.selection {selection} needs the production model's embeddings and {embed_model} is "
                    "not there: chose by uncertainty instead (put the model in place, or give --scan-model)")
        logger.warning("%s", fallback)
        selection = "uncertainty"
    if config.export > 0:
        from toolkit.memory.analysis import export_for_labelling

        export = export_for_labelling(workspace, bank.candidates, analysis, config.export, stamp,
                                      settings["analyzer.near_duplicate_bits"],
                                      float(settings["analyzer.class_weight_power"]), selection,
                                      int(settings["analyzer.seed"]), _embedder(workspace, embed_model))
        if fallback:
            export.selection["fallback"] = fallback
    result = AnalyzeResult(
        memory_bank=shown, format=bank.fmt, records=bank.records, skipped_records=bank.skipped,
        malformed=tuple(bank.malformed.items), filtered_out=bank.filtered_out, uncertain=band, iou_match=iou,
        reviewed_images=analysis.reviewed_images, weeks=tuple(analysis.weeks), model_versions=tuple(analysis.versions),
        classes=analysis.classes, priorities=tuple(analysis.priorities),
        exported=export.exported if export else 0, export_dir=export.export_dir if export else None,
        incoming_batch=export.incoming_batch if export else None,
        reviewed_exported=export.reviewed_exported if export else 0,
        near_duplicates_skipped=export.near_duplicates if export else 0,
        selection=export.selection if export else {"mode": selection},
        missing_images=tuple(export.missing[:LIST_CAP]) if export else (),
        missing_images_count=len(export.missing) if export else 0,
        refused_images=tuple(export.refused[:LIST_CAP]) if export else (),
        refused_images_count=len(export.refused) if export else 0,
        scanned=scanned, report=json_path, plots=tuple(plots), root=workspace.root,
        set_up=workspace.dataset_yaml.is_file() or workspace.production_model.is_file(),
        export_requested=config.export)
    from toolkit.core.reports import write_report

    write_report(json_path, result, markdown_report(result))
    drawn = tuple(charts.result())
    if drawn != result.plots:  # not what was announced: say what is really there
        result = replace(result, plots=drawn)
        write_report(json_path, result, markdown_report(result))
    return result


def _embedder(workspace: Workspace, model_path: Path):
    """``embed(paths) -> (vectors, info)`` with ``model_path`` (the production model, or --scan-model),
    cached in the workspace (``toolkit.memory.embeddings``); None paths (not openable) get NaN rows."""
    def embed(paths):
        import numpy as np

        from toolkit.memory.embeddings import embed_images

        ok = [i for i, p in enumerate(paths) if p is not None]
        got = embed_images([paths[i] for i in ok], model_path, workspace.cache / "embeddings",
                           workspace.ultralytics_config)
        vectors = np.full((len(paths), got.vectors.shape[1]), np.nan, dtype=np.float32)
        vectors[ok] = got.vectors
        per_1000 = got.seconds_per_1000
        return vectors, {"model": str(model_path), "imgsz": got.imgsz, "images": len(ok), "embedded_now": got.computed,
                         "from_cache": len(ok) - got.computed, "seconds": round(got.seconds, 1),
                         "seconds_per_1000_images": None if per_1000 is None else round(per_1000, 1),
                         "cache": str(got.cache)}
    return embed


def write_plots(analysis, json_path: Path) -> list[Path]:
    """The analysis's charts, drawn in this process (``toolkit.memory.analysis_charts``)."""
    from toolkit.memory.analysis_charts import draw_charts

    return draw_charts(analysis, json_path)


def _selection_line(selection: dict[str, Any]) -> str:
    """The selection mode, what it was based on, and what its picks are worth against random."""
    from toolkit.memory.selection import evidence

    mode = selection.get("mode", "?")
    parts = [evidence(mode)]
    emb = selection.get("embedding")
    if emb:
        parts.append(f"embeddings of {emb['images']} candidate image(s) at imgsz {emb['imgsz']} "
                     f"({emb['embedded_now']} new, {emb['from_cache']} from the cache"
                     + (f", {emb['seconds_per_1000_images']:.0f} s per 1,000 images" if emb.get("seconds_per_1000_images") else "")
                     + ")")
    if selection.get("quotas"):
        parts.append("picks per class group: " + ", ".join(f"{g} {n}" for g, n in selection["quotas"].items() if n))
    if selection.get("fallback"):
        parts.append(selection["fallback"])
    return "; ".join(parts)


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def markdown_report(result: AnalyzeResult) -> str:
    from toolkit.core.reports import markdown_table, md, md_code

    lo, hi = result.uncertain
    lines = ["# Memory-bank analysis", "",
             f"- memory bank: {md_code(result.memory_bank)} ({md(result.format)})",
             f"- records analysed: {result.records}; malformed and skipped: {result.skipped_records}; "
             f"outside the filters: {result.filtered_out}",
             f"- reviewed images: {result.reviewed_images}; uncertain band: {lo:.2f}-{hi:.2f}; "
             f"IoU match: {result.iou_match:.2f}",
             f"- weeks: {result.weeks[0]} to {result.weeks[-1]}" if result.weeks else "- weeks: none",
             f"- model versions: {md(', '.join(result.model_versions)) or 'none'}", ""]
    if result.scanned is not None:
        lines += [f"Scanned {result.scanned} image(s) with the production model first.", ""]
    lines += ["## Priorities", ""]
    rows = [[i + 1, p["class"], p["score"], p["images_needed"], "; ".join(p["reasons"])]
            for i, p in enumerate(result.priorities[:MAX_TABLE_CLASSES])]
    if len(result.priorities) > MAX_TABLE_CLASSES:
        rows.append(["...", f"{len(result.priorities) - MAX_TABLE_CLASSES} more (all in the JSON report)", "", "", ""])
    lines += [markdown_table(["rank", "class", "score", "images needed", "reasons"], rows), ""]
    lines += ["## Per class", ""]
    rows = []
    ranked = sorted(result.classes.items(), key=lambda item: -item[1]["detections"])
    shown, rest = ranked[:MAX_TABLE_CLASSES], ranked[MAX_TABLE_CLASSES:]
    for name, s in (shown if rest else result.classes.items()):
        rev = s["reviewed"]
        rows.append([name, s["detections"], s["images"], _fmt(s["mean_confidence"]),
                     _fmt(s["uncertain_share"], "{:.0%}"), _fmt(rev["precision"]), _fmt(rev["recall"]),
                     rev["tp"], rev["fp"], rev["fn"],
                     ", ".join(f"{k}: {v}" for k, v in s["confusions"].items()) or "-",
                     "-" if s["dataset_instances"] is None else s["dataset_instances"]])
    if rest:  # a table linear in what a person reads: the largest classes, then the others summed
        rows.append([f"others ({len(rest)} classes, all in the JSON report)", sum(s["detections"] for _, s in rest),
                     "", "", "", "", "", *(sum(s["reviewed"][k] for _, s in rest) for k in ("tp", "fp", "fn")), "", ""])
    lines += [markdown_table(["class", "detections", "images", "mean conf", "uncertain", "precision", "recall",
                              "tp", "fp", "fn", "detected as", "dataset instances"], rows), ""]
    if result.exported or result.export_dir or result.incoming_batch:
        lines += ["## Export", "",
                  f"- {result.exported} image(s) to label in {md_code(result.export_dir)} (selection.csv says why)",
                  (f"- {result.reviewed_exported} reviewed image(s) as a labelled batch in {md_code(result.incoming_batch)}"
                   if result.incoming_batch else "- no reviewed images: no labelled batch was written"),
                  f"- chosen by: {md(_selection_line(result.selection))}",
                  f"- near-duplicates skipped: {result.near_duplicates_skipped}; missing image files: "
                  f"{result.missing_images_count}; refused (not image files): {result.refused_images_count}", ""]
        lines += [f"  - missing: {md_code(m)}" for m in result.missing_images[:20]]
        lines += [f"  - refused: {md_code(m)}" for m in result.refused_images[:20]]
        lines.append("")
    if result.malformed:
        lines += ["## Malformed records (skipped)", ""]
        lines += [f"- line {m['line']}: {md(m['reason'])}" for m in result.malformed[:50]]
        if result.skipped_records > 50:
            lines.append(f"- ... {result.skipped_records - 50} more (all in the JSON report, up to {LIST_CAP})")
        lines.append("")
    for plot in result.plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    return "\n".join(lines)


MAX_TABLE_CLASSES = 50   # rows of the markdown tables by name; more classes: the largest, then "others"


def describe(result: AnalyzeResult) -> str:
    lines = [f"Analysed {result.records} record(s) from {result.memory_bank} "
             f"({result.skipped_records} malformed skipped, {result.reviewed_images} reviewed)"]
    if result.scanned is not None:
        lines.append(f"  scanned {result.scanned} image(s) into the memory bank first")
    lines.append("Priorities (label these classes first):")
    for p in result.priorities[:10]:
        lines.append(f"  {p['score']:6.1f}  {p['class']}: ~{p['images_needed']} image(s)")
        lines += [f"          - {r}" for r in p["reasons"]]
    if result.export_dir:
        lines.append(f"Exported {result.exported} image(s) to label: {result.export_dir}")
        lines.append(f"  chosen by: {_selection_line(result.selection)}")
    if result.incoming_batch:
        lines.append(f"Reviewed images as a labelled batch: {result.incoming_batch} "
                     "(already in training/incoming/: the next import takes it)")
    if result.missing_images_count:
        lines.append(f"  {result.missing_images_count} image file(s) not found (listed in the report)")
    if result.refused_images_count:
        lines.append(f"  {result.refused_images_count} path(s) refused: not image files, never opened (listed in the report)")
    lines.append(f"Report: {result.report}")
    lines += next_steps(result)
    return "\n".join(lines)


def next_steps(result: AnalyzeResult) -> list[str]:
    """After an export: the step that needs a person, then the command that takes it from there."""
    if result.root is None or not (result.export_dir or result.incoming_batch or result.export_requested):
        return []
    ws = Workspace.at(result.root)
    steps = []
    if not (result.export_dir or result.incoming_batch):
        steps.append(f"Exported no image: none of the {result.records} record(s) ranked as worth labelling "
                     "(see the priorities above); label images of your own instead, in a folder under "
                     f"{ws.incoming} (YOLO, Pascal VOC or COCO)")
    if result.export_dir:
        steps.append(f"By hand: label the {result.exported} image(s) in {result.export_dir} (check and correct "
                     "the YOLO pre-labels in its labels/ folder; classes.txt names the classes), then move that "
                     f"folder into {ws.incoming}")
    if not result.set_up:  # no dataset file and no production model: setup needs the class names
        steps.append("Once, before the first import: set the workspace up with these classes: "
                     + command("setup_training.py", ws.root, "--classes", ",".join(result.classes)))
    steps.append(f"Next: import, train, compare and promote: {command('training_pipeline.py', ws.root)}")
    return steps


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="training_analyzer.py")
    add_options(parser, AnalyzeConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_main(args, lambda a: run(config_from_args(AnalyzeConfig, a)), describe)


if __name__ == "__main__":
    raise SystemExit(main())

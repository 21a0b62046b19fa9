"""Import labelled batches into the managed dataset: validate, de-duplicate, split, version.

Reads YOLO (images/ + labels/, side-by-side .txt, or a data yaml), Pascal VOC XML and COCO JSON
(CVAT, Label Studio) and turns them into one ultralytics dataset under training/datasets/
with a manifest. Source files are only read: the dataset holds validated copies.

- Every image is fully decoded and its labels checked; an image with any bad label is left out
  whole, and every problem is one line {path, reason} in the result and the report.
- An exact duplicate (same bytes) of an image already managed is not added again; near-duplicates
  (perceptual hash) always share one split.
- Split per class (default 80/10/10 from training.yaml); an image keeps its split forever, so a
  test image never becomes a training image. --keep-split keeps the split a source carries.
- Each change raises the dataset version; old manifests stay in training/datasets/manifests/.

Decisions worth knowing:
- EXIF orientation: the copy is written upright (re-encoded without the tag) and the labels are
  taken as drawn on the upright image, as labelling tools and ultralytics show it; a VOC/COCO size
  that matches only the un-rotated pixels gets the image rejected.
- Repeated identical boxes are kept (ultralytics drops the repeat) and reported as warnings;
  NEU-DET has three. The same bytes twice in one batch: dropped if the labels agree too, else both
  kept as near-duplicates (NEU-DET's patches_101 / patches_105).
- Without dataset.yaml the classes come from the source: COCO category order, the YOLO names
  list, and VOC names sorted (NEU-DET's six names then get the ids every NEU model uses).
- Re-running on an unchanged batch (same files, sizes and mtimes, same options) reads nothing.

Usage:
    python dataset_preparer.py --source D:/new_batch                 # format detected
    python dataset_preparer.py --source ../shared/datasets/NEU-DET --format voc
    python dataset_preparer.py --incoming                            # every new batch in training/incoming/
    python dataset_preparer.py --source export/ --keep-split --map scratch=scratches
    python dataset_preparer.py --source D:/new_batch --check         # validate only, change nothing
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from toolkit.core.cli import add_options, build_parser, config_from_args, run_main
from toolkit.core.layout import command
from toolkit.core.config import Settings, option, resolve_config, setting
from toolkit.core.datafile import read_class_names, write_dataset_yaml
from toolkit.data.dataset.groups import group_keys
from toolkit.data.dataset.incoming import batch_fingerprint, pending_incoming_batches
from toolkit.data.dataset.manifest import empty_manifest, load_manifest, split_counts, write_split_lists
from toolkit.data.dataset.parallel import check_images, default_workers, parallel_map
from toolkit.data.dataset.plan import plan_import, resolve_classes
from toolkit.data.dataset.store import (Staging, check_free_space, commit_manifest, recover_staging, set_aside_unmanaged,
                                   space_needed)
from toolkit.core.errors import UserError
from toolkit.data.labels.read import read_source
from toolkit.data.labels.source import SourceBatch, SourceImage
from toolkit.core.layout import SPLITS, Workspace, require_workspace
from toolkit.core.lock import holds_workspace_lock
from toolkit.core.progress import progress_enabled
from toolkit.core.reports import markdown_table, md, md_code, report_path, utc_now_iso, write_report

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


# --------------------------------------------------------------------------- settings

def parse_class_map(pairs: Sequence) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or ():
        if isinstance(pair, str):
            old, sep, new = pair.partition("=")
            if not sep:
                raise UserError(f"--map {pair!r}: write it as old=new, e.g. --map scratch=scratches")
        else:
            old, new = pair
        old, new = str(old).strip(), str(new).strip()
        if not old or not new:
            raise UserError(f"--map {pair!r}: both names are needed, e.g. --map scratch=scratches")
        out[old] = new
    return out


def parse_split(text: str | None) -> dict[str, float] | None:
    """``80/10/10``, ``0.8,0.1,0.1`` or ``train=0.7,val=0.2,test=0.1`` -> ratios."""
    if text is None:
        return None
    parts = [p for p in text.replace("/", ",").split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            ratios = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        elif len(parts) == 3:
            ratios = dict(zip(SPLITS, (float(p) for p in parts)))
        else:
            raise ValueError
    except ValueError:
        raise UserError(f"--split {text[:100]!r}: give three numbers for train/val/test, e.g. --split 80/10/10") from None
    return ratios


def _ratios(value: Mapping[str, Any]) -> dict[str, float]:
    """Ratios of any scale (80/10/10, 8:1:1) as shares that add up to 1."""
    bad = [k for k in value if k not in SPLITS]
    if bad:
        raise UserError(f"--split: unknown split(s) {bad}; use train, val and test")
    ratios = {s: float(value.get(s, 0) or 0) for s in SPLITS}
    if any(v < 0 for v in ratios.values()) or ratios["train"] <= 0:
        raise UserError(f"--split {ratios}: ratios must be >= 0 and train > 0")
    total = sum(ratios.values())
    return {s: v / total for s, v in ratios.items()}


def split_shares_of(text: str) -> dict[str, float]:
    """The --split flag as shares: ``80/10/10`` -> {train: 0.8, val: 0.1, test: 0.1}."""
    return _ratios(parse_split(text))


FORMATS = ("auto", "yolo", "voc", "coco")


@dataclass(frozen=True)
class PrepareConfig:
    root: Path
    source: Path | None = option("--source", "a labelled batch: a folder, a data yaml or a COCO .json", type=Path,
                                 exclusive="source")
    fmt: str = option("--format", "label format of the source", default="auto", choices=FORMATS)
    incoming: bool = option("--incoming", "import every new sub-folder of training/incoming/ "
                            "(what happens without --source)", default=False, exclusive="source")
    keep_split: bool = option("--keep-split", "keep the train/val/test split the source carries "
                              "(folders or data yaml)", default=False)
    check: bool = option("--check", "validate and report only; change nothing", default=False)
    class_map: tuple = option("--map", "rename a source class to a dataset class, e.g. --map scratch=scratches "
                              "(repeatable)", default=(), repeat=True, metavar="OLD=NEW")
    split: Mapping[str, float] | None = setting("dataset.split", parse=split_shares_of)
    max_bad_fraction: float | None = setting("dataset.max_bad_fraction")
    workers: int | None = option("--workers", "parallel checks (default: CPU cores, at most 8)", type=int)
    near_duplicate_bits: int | None = setting("dataset.near_duplicate_bits")
    group_by: str | None = setting("dataset.group_by")
    # checks on: auto (forked processes on Linux for big batches), thread, process
    executor: str = "auto"


@dataclass(frozen=True)
class PrepareResult:
    dataset_version: int | None
    images: dict[str, int]              # managed images per split (after this run)
    boxes_per_class: dict[str, int]     # managed boxes per class (after this run)
    added: int
    duplicates: int
    rejected: tuple[dict, ...]          # [{path, reason}], one per problem
    report: Path | None
    batches: tuple[str, ...] = ()       # the batch folders read
    background_images: int = 0
    classes: tuple[str, ...] = ()
    added_per_split: dict[str, int] = field(default_factory=dict)
    duplicate_files: tuple[dict, ...] = ()   # [{path, duplicate_of, kind}]
    near_duplicates: tuple[dict, ...] = ()   # new images placed beside a near-duplicate
    groups: tuple[dict, ...] = ()            # lots of dataset.group_by among the new images: split, images
    warnings: tuple[dict, ...] = ()          # accepted, but worth a look (EXIF, repeated boxes)
    difficult_boxes: int = 0
    formats: dict[str, str] = field(default_factory=dict)  # batch folder -> what was found
    changed: bool = False
    check_only: bool = False
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    small_defects: dict = field(default_factory=dict)  # toolkit/data/box_sizes.py at training.imgsz
    first_run: dict | None = None                      # the first run's command and estimate (toolkit/model/first_run.py)


# --------------------------------------------------------------------------- report

def _markdown(result: PrepareResult, counts: dict, classes: Sequence[str], bad_by_batch: Mapping) -> str:
    lines = [f"# Dataset preparation{' (check only: nothing changed)' if result.check_only else ''}", "",
             f"- dataset version: {result.dataset_version}", f"- added: {result.added} "
             f"({', '.join(f'{s} {n}' for s, n in result.added_per_split.items())})",
             f"- duplicates (not added): {result.duplicates}", f"- rejected problems: {len(result.rejected)}",
             f"- background images (no defect): {result.background_images}",
             f"- difficult boxes imported (kept): {result.difficult_boxes}", ""]
    for src, what in result.formats.items():
        bad, total = bad_by_batch.get(src, (0, 0))
        lines.append(f"- batch {md_code(src)}: {md(what)}; bad {bad} of {total}")
    lines += ["", "## Images per class and split (managed dataset)", ""]
    rows = []
    for c in classes:
        ci, cb = counts["class_images"].get(c, {}), counts["class_boxes"].get(c, {})
        total = sum(ci.values()) or 1
        rows.append([c, *(ci.get(s, 0) for s in SPLITS), *(f"{100 * ci.get(s, 0) / total:.0f}%" for s in SPLITS),
                     sum(cb.values())])
    rows.append(["(background)", *(counts["background"][s] for s in SPLITS), "", "", "", 0])
    rows.append(["all images", *(counts["images"][s] for s in SPLITS), "", "", "", sum(result.boxes_per_class.values())])
    lines.append(markdown_table(["class", *SPLITS, *(f"{s} %" for s in SPLITS), "boxes"], rows))

    def listing(title: str, items: Sequence[dict], keys: Sequence[str], limit: int = 200) -> None:
        lines.extend([f"## {title} ({len(items)})", ""])
        if items:
            lines.append(markdown_table(list(keys), [[str(i.get(k, "")) for k in keys] for i in items[:limit]]))
            if len(items) > limit:
                lines.append(f"... and {len(items) - limit} more (see the JSON report)\n")
        lines.append("")

    listing("Rejected", result.rejected, ("path", "reason"))
    listing("Duplicates", result.duplicate_files, ("path", "kind", "duplicate_of"))
    listing("Near-duplicates placed together", result.near_duplicates, ("path", "split", "near"))
    if result.groups:
        listing("Lots kept in one split (dataset.group_by)", result.groups, ("group", "split", "images"))
    listing("Warnings", result.warnings, ("path", "reason"))
    if result.small_defects.get("at_risk"):
        lines += ["## Small defects", "", md(result.small_defects["words"]), "",
                  markdown_table(["class", "boxes", "median short side px", f"share under {result.small_defects['min_side_px']:.0f} px", "imgsz showing 90%"],
                                 [[c["class"], c["boxes"], c["median_px"], f"{c['share_small']:.0%}",
                                   c["suggested_imgsz"] or f"none up to {c['max_imgsz']}"]
                                  for c in result.small_defects["classes"]]), ""]
    if result.notes:
        lines += ["## Notes", "", *(f"- {md(n)}" for n in result.notes), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run

class _Bar:
    def __init__(self, progress: Progress | None, stage: str, total: int) -> None:
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0
        self.tqdm = None
        if progress is None and progress_enabled() and total:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, desc=stage, unit="img", leave=False, file=sys.stderr)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.tqdm is not None:
            self.tqdm.update(n)
        elif self.progress is not None:
            self.progress(self.stage, self.done, self.total)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _check_source_path(workspace: Workspace, source: Path) -> None:
    datasets = workspace.datasets.resolve()
    if source == datasets or datasets in source.parents:
        raise UserError(f"--source {source} is inside the managed dataset; give the folder of a new batch")
    if source in datasets.parents:
        raise UserError(f"--source {source} contains the managed dataset ({datasets}); give the batch folder itself")


def _import_key(config: PrepareConfig, class_map: Mapping[str, str], classes: Sequence[str] | None) -> str:
    """What, besides the files, decides an import's outcome; a batch with the same fingerprint and
    key was imported exactly so before and is skipped without being read again."""
    what = {"fmt": config.fmt, "keep_split": config.keep_split, "map": sorted(class_map.items()),
            "classes": list(classes or [])}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _sources(config: PrepareConfig, workspace: Workspace, notes: list[str]) -> list[Path]:
    if config.source is not None and config.incoming:
        raise UserError("give either --source or --incoming, not both")
    if config.source is not None:
        source = Path(config.source).expanduser().resolve()
        if not source.exists():  # at once: nothing is read, imported or locked for a mistyped path
            raise UserError(f"source {source} does not exist; check the --source path")
        _check_source_path(workspace, source)
        return [source]
    if not workspace.incoming.is_dir():
        notes.append(f"no folder {workspace.incoming}: nothing to import (run setup_training.py, then drop batches there)")
        return []
    loose = [p for p in workspace.incoming.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        notes.append(f"{len(loose)} file(s) lie directly in {workspace.incoming} and are not read: "
                     "put each batch in its own sub-folder")
    pending = pending_incoming_batches(workspace)
    if not pending:
        notes.append(f"no new batch in {workspace.incoming}")
    return pending


@dataclass(frozen=True)
class _Options:
    """Settings of one import, resolved once (defaults < training.yaml < flags)."""

    ratios: dict[str, float]
    max_bad: float
    bits: int
    class_map: dict[str, str]
    workers: int
    group_by: str = ""


MAX_WORKERS = 64   # parallel checks: more processes than that only exhaust memory and process slots


def _resolve_options(config: PrepareConfig, workspace: Workspace, settings: Settings | None) -> _Options:
    # A split given here names every share (a missing one is 0), checked like training.yaml's.
    if config.workers is not None and not 1 <= config.workers <= MAX_WORKERS:
        raise UserError(f"--workers must be 1 to {MAX_WORKERS} parallel checks, got {config.workers}")
    config, _ = resolve_config(config, settings or Settings.load(workspace.training_yaml))
    return _Options(ratios=config.split, max_bad=config.max_bad_fraction, bits=config.near_duplicate_bits,
                    class_map=parse_class_map(config.class_map), workers=config.workers or default_workers(),
                    group_by=config.group_by or "")


class _Clock:
    """Seconds per phase of the run (``timings`` in the result)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = self.lap = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.lap, 3)
        self.lap = now


@holds_workspace_lock("prepare")
def run(config: PrepareConfig, progress: Progress | None = None, settings: Settings | None = None) -> PrepareResult:
    """Import the source (or the new batches of training/incoming/) into the managed dataset.

    ``settings``: the resolved settings of a pipeline run (default: read training.yaml)."""
    clock = _Clock()
    workspace = require_workspace(config.root)  # a mistyped --root: one line, nothing written
    options = _resolve_options(config, workspace, settings)
    notes: list[str] = []
    manifest = load_manifest(workspace)
    if not config.check:
        notes += recover_staging(workspace, manifest)  # a killed import: finished or undone
    todo = _changed_sources(config, workspace, manifest, options, notes)
    clock("fingerprint")
    batches, classes, new_classes = _read_batches(config, workspace, manifest, todo, options, notes)
    current = manifest or empty_manifest(classes)
    to_check, already = _unchanged_files(batches, current)
    clock("read")
    checked = _check(to_check, options, config.executor, progress)
    clock("check")
    batch_ids = [(batch, f"b{len(current['batches']) + 1 + i:04d}") for i, batch in enumerate(batches)]
    lots: dict[Path, str] = {}
    for batch in batches:  # dataset.group_by: the lot of each image
        keys, lot_notes = group_keys(batch.root, [item.image for item in batch.images], options.group_by)
        lots.update(keys)
        notes += lot_notes
    plan = plan_import(batch_ids, checked, already, current, classes, options.class_map, options.ratios,
                       options.bits, config.keep_split, lots)
    notes += plan.notes
    too_bad = _too_bad(plan, options.max_bad)
    clock("plan")
    version = current["version"] if manifest else None
    added: list[dict] = []
    changed = False
    if config.check or too_bad:
        added = plan.entries  # what an import would add (reported; nothing written)
        current = dict(current, images=current["images"] + added)
    elif batches:
        current, added, changed = _import(config, workspace, manifest, current, plan, batch_ids, todo, classes,
                                          new_classes, options, progress, clock, notes)
        version = current["version"]
    if not config.check:
        _write_data_files(workspace, manifest, current if not too_bad else manifest, classes, version, changed)
    clock("manifest")
    result = _result(config, current, classes, version, 0 if too_bad else len(added), added, plan, batches, changed,
                     notes, clock)
    if not config.check and not too_bad and current.get("images"):
        result = _fit_checks(workspace, settings, result)
    result = _write_report(config, workspace, result, current, classes, plan)
    if too_bad:
        raise _too_bad_error(too_bad, plan, options.max_bad, result.report)
    logger.info("%s %d, duplicates %d, problems %d (%.1f s)",
                "check only, nothing changed: an import would add" if config.check else
                f"dataset version {result.dataset_version}: added", result.added, result.duplicates,
                len(result.rejected), result.seconds)
    return result


def _changed_sources(config: PrepareConfig, workspace: Workspace, manifest: dict | None, options: _Options,
                     notes: list[str]) -> list[tuple[Path, str]]:
    """The sources to read, with their fingerprints: a batch imported before with the same files
    and options is skipped without being read again."""
    known_classes = _known_classes(workspace, manifest)
    key = _import_key(config, options.class_map, known_classes)
    done_before = {(b.get("fingerprint"), b.get("settings")): b for b in (manifest or {}).get("batches", [])}
    todo: list[tuple[Path, str]] = []
    for source in _sources(config, workspace, notes):
        fp = batch_fingerprint(source if source.is_dir() else source.parent)
        before = done_before.get((fp, key))
        if before is not None and not config.check:
            notes.append(f"{source}: unchanged since it was imported as batch {before['id']} "
                         f"({before.get('imported_at')}): nothing to do")
            continue
        todo.append((source, fp))
    return todo


def _known_classes(workspace: Workspace, manifest: dict | None) -> list[str] | None:
    return (read_class_names(workspace.dataset_yaml) if workspace.dataset_yaml.exists()
            else (manifest or {}).get("classes") or None)


def _read_batches(config: PrepareConfig, workspace: Workspace, manifest: dict | None, todo: Sequence[tuple[Path, str]],
                  options: _Options, notes: list[str]) -> tuple[list[SourceBatch], list[str], bool]:
    """Read the labels of every source; the dataset's classes and whether they are new."""
    batches = [read_source(source, config.fmt) for source, _ in todo]
    for batch in batches:
        if config.keep_split and not batch.has_split:
            raise UserError(f"--keep-split: {batch.root} carries no train/val/test split (folders or data yaml); "
                            "drop --keep-split to split it by class")
        if batch.has_split and not config.keep_split:
            notes.append(f"{batch.root} carries its own split; ignored (pass --keep-split to keep it)")
        notes += [f"{batch.root.name}: {n}" for n in batch.notes]
    if not batches:
        return batches, list(_known_classes(workspace, manifest) or []), False
    classes, new_classes = resolve_classes(workspace, manifest, batches, options.class_map)
    missing = sorted({v for v in options.class_map.values() if v not in classes})
    if missing:
        raise UserError(f"--map target(s) {missing} are not dataset classes ({', '.join(classes)})")
    return batches, classes, new_classes


def _unchanged_files(batches: Sequence[SourceBatch], current: dict) -> tuple[list[SourceImage], dict[Path, dict]]:
    """Images to check, and those imported before from the same path with the same size and
    mtime (not read again)."""
    by_source = {e["source"]: e for e in current["images"]}
    already: dict[Path, dict] = {}
    to_check: list[SourceImage] = []
    for batch in batches:
        for item in batch.images:
            entry = by_source.get(str(item.image))
            if entry is not None:
                try:
                    st = item.image.stat()
                    if st.st_size == entry.get("source_size") and st.st_mtime_ns == entry.get("source_mtime_ns"):
                        already[item.image] = entry
                        continue
                except OSError:
                    pass
            to_check.append(item)
    return to_check, already


def _check(items: Sequence[SourceImage], options: _Options, executor: str,
           progress: Progress | None) -> dict[Path, Any]:
    bar = _Bar(progress, "check", len(items))
    try:
        return {r.source.image: r for r in check_images(items, options.workers, executor, bar)}
    finally:
        bar.close()


def _too_bad(plan: Any, max_bad: float) -> list[str]:
    return [f"{src}: {bad} of {total} files bad ({bad / total:.0%})"
            for src, (bad, total) in plan.bad_by_batch.items() if total and bad / total > max_bad]


def _import(config: PrepareConfig, workspace: Workspace, manifest: dict | None, current: dict, plan: Any,
            batch_ids: Sequence[tuple[SourceBatch, str]], todo: Sequence[tuple[Path, str]], classes: list[str],
            new_classes: bool, options: _Options, progress: Progress | None, clock: _Clock,
            notes: list[str]) -> tuple[dict, list[dict], bool]:
    """Stage the copies, commit the manifest that lists them, move them into the split folders."""
    manifest_bytes = workspace.manifest.stat().st_size if workspace.manifest.exists() else 0
    needed = space_needed(plan.tasks, manifest_bytes + 700 * len(plan.tasks))
    check_free_space(workspace, needed)
    notes += set_aside_unmanaged(workspace, manifest)
    staging = Staging(workspace)
    bar = _Bar(progress, "copy", len(plan.tasks))
    try:
        # File creation waits on the disk, not the CPU: twice the threads keep it busy.
        added, changed_meanwhile = staging.write(
            plan.tasks, needed, lambda fn, tasks: parallel_map(fn, tasks, 2 * options.workers, "thread", bar))
    finally:
        bar.close()
    plan.rejected.extend(changed_meanwhile)
    clock("copy")
    if hasattr(os, "sync"):
        os.sync()  # the copies reach the disk before the manifest that lists them
    clock("sync")
    per_batch = {bid: sum(e["batch"] == bid for e in added) for _, bid in batch_ids}
    key = _import_key(config, options.class_map, classes)  # as the next run will compute it
    records = [{"id": bid, "source": str(batch.root), "fingerprint": fp, "settings": key,
                "imported_at": utc_now_iso(), "format": batch.fmt, "added": per_batch[bid],
                "rejected": plan.bad_by_batch[str(batch.root)][0], "files": plan.bad_by_batch[str(batch.root)][1]}
               for (batch, bid), (_, fp) in zip(batch_ids, todo)]
    changed = bool(added) or new_classes or manifest is None
    updated = dict(current, classes=list(classes), images=current["images"] + added,
                   batches=current["batches"] + records, updated_at=utc_now_iso())
    if changed:
        updated["version"] = int(current["version"]) + 1
    commit_manifest(workspace, updated, staging, added, needed)
    return updated, added, changed


def _write_data_files(workspace: Workspace, manifest_before: dict | None, committed: dict | None, classes: list[str],
                      version: int | None, changed: bool) -> None:
    """The split lists of the committed manifest (what training and evaluation read) and dataset.yaml."""
    if committed is not None and workspace.manifest.exists():
        write_split_lists(workspace, committed)
    if changed or (manifest_before is not None and not workspace.dataset_yaml.exists()):
        write_dataset_yaml(workspace, classes, version)


def _result(config: PrepareConfig, current: dict, classes: list[str], version: int | None, n_added: int,
            added: Sequence[dict], plan: Any, batches: Sequence[SourceBatch], changed: bool, notes: list[str],
            clock: _Clock) -> PrepareResult:
    counts = split_counts(current, classes)
    return PrepareResult(
        dataset_version=version, images=counts["images"],
        boxes_per_class={c: sum(counts["class_boxes"].get(c, {}).values()) for c in classes},
        added=n_added, duplicates=len(plan.duplicates), rejected=tuple(p.as_dict() for p in plan.rejected),
        report=None, batches=tuple(str(b.root) for b in batches),
        background_images=sum(counts["background"].values()), classes=tuple(classes),
        added_per_split={s: sum(e["split"] == s for e in added) if n_added else 0 for s in SPLITS},
        duplicate_files=tuple(plan.duplicates), near_duplicates=tuple(plan.near), groups=tuple(plan.groups),
        warnings=tuple(p.as_dict() for p in plan.warnings), difficult_boxes=plan.difficult,
        formats={str(b.root): b.description for b in batches}, changed=changed, check_only=config.check,
        notes=tuple(notes), seconds=round(time.perf_counter() - clock.start, 3), timings=clock.timings)


def _fit_checks(workspace: Workspace, settings: Settings | None, result: PrepareResult) -> PrepareResult:
    """Defects too small for the training size (named now, at import), and the first run's estimate."""
    from toolkit.model.fit import AUTO_IMGSZ, is_auto, small_defects
    from toolkit.model.first_run import first_run_hint

    settings = settings or Settings.load(workspace.training_yaml)
    imgsz = settings["training.imgsz"]
    check = small_defects(workspace, AUTO_IMGSZ if is_auto(imgsz) else int(imgsz))
    if check.get("words"):
        logger.warning("%s", check["words"])
    return replace(result, small_defects=check, first_run=first_run_hint(workspace, settings) if result.changed else None)


def _write_report(config: PrepareConfig, workspace: Workspace, result: PrepareResult, current: dict,
                  classes: list[str], plan: Any) -> PrepareResult:
    if config.check and not workspace.reports.is_dir():
        return result
    path = report_path(workspace, "prepare-check" if config.check else "prepare")
    result = replace(result, report=path)
    write_report(path, result, _markdown(result, split_counts(current, classes), classes, plan.bad_by_batch))
    return result


def _too_bad_error(too_bad: Sequence[str], plan: Any, max_bad: float, report: Path | None) -> UserError:
    first = "; ".join(f"{p.path.name}: {p.reason}" for p in plan.rejected[:3])
    return UserError(f"stopped, nothing imported: {'; '.join(too_bad)}, more than max_bad_fraction "
                     f"{max_bad:.0%} (first problems: {first}); fix the batch or raise dataset.max_bad_fraction"
                     + (f" - full list in {report}" if report else ""))


# --------------------------------------------------------------------------- CLI

def _per_file(problems: Sequence[dict]) -> str:
    """'8 in 5 files' when a file has several (a bad label line per box): the count a user can act on."""
    files = len({p["path"] for p in problems})
    return str(len(problems)) if files == len(problems) else f"{len(problems)} in {files} file(s)"


def describe(result: PrepareResult) -> str:
    head = "Check only, nothing changed. An import would add" if result.check_only else "Added"
    lines = [f"{head} {result.added} image(s): " + ", ".join(f"{s} {n}" for s, n in result.added_per_split.items()),
             f"  duplicates not added: {result.duplicates};  problems: {_per_file(result.rejected)};  "
             f"warnings: {_per_file(result.warnings)}",
             f"  dataset version {result.dataset_version}: " + ", ".join(f"{s} {n}" for s, n in result.images.items())
             + f" images; {sum(result.boxes_per_class.values())} boxes; {result.background_images} background"]
    for r in result.rejected[:10]:
        lines.append(f"  rejected {r['path']}: {r['reason']}")
    if len(result.rejected) > 10:
        lines.append(f"  ... {len(result.rejected) - 10} more in the report")
    for n in result.notes:
        lines.append(f"  note: {n}")
    if result.small_defects.get("words"):
        lines.append(f"  {result.small_defects['words']}")
    if result.report:
        lines.append(f"  report: {result.report}")
        if result.changed and not result.check_only:  # ROOT/training/reports/prepare_<stamp>.json
            from toolkit.model.first_run import hint_lines

            lines += hint_lines(result.first_run) or [
                f"Next: train, compare and promote: {command('training_pipeline.py', Path(result.report).parents[2])}"]
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="dataset_preparer.py")
    add_options(parser, PrepareConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_main(args, lambda a: run(config_from_args(PrepareConfig, a)), describe)


if __name__ == "__main__":
    raise SystemExit(main())

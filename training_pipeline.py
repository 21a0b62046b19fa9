"""The whole retraining loop in one process: analyze -> setup -> prepare -> train -> compare -> promote.

Run it by hand, from train.bat, or every night from a scheduler. It promotes the new model to
ROOT/yolov8_model.pt only when the comparator approved it on the held-out test split; the old
model stays archived in training/models/ and comes back with --rollback. It never prompts.

Usage:
    python training_pipeline.py --demo                          # try everything on synthetic data
    python training_pipeline.py --root D:/inspection            # new batches from training/incoming/
    python training_pipeline.py --root D:/inspection --source D:/labelled/batch7 --format voc
    python training_pipeline.py --root D:/inspection --if-new-data --json   # nightly (exit 0 either way)
    python training_pipeline.py --root D:/inspection --candidate //gpu-server/runs/best.pt
    python training_pipeline.py --root D:/inspection --status
    python training_pipeline.py --root D:/inspection --rollback        # back to the previous version
    python training_pipeline.py --root D:/inspection --dry-run         # say what would happen, about how long
    python training_pipeline.py --root D:/inspection --strategy both   # fine-tune and scratch; the better on val is the candidate

Exit codes: 0 whether the model was promoted, kept or the run skipped (the JSON says which);
1 a failure (production is left untouched; rerunning is safe); 2 a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from toolkit.core.cli import FILE_ONLY, add_options, build_parser, config_from_args, run_main, to_jsonable
from toolkit.core.layout import command
from toolkit.core.config import Settings, option, resolve_config, setting
from toolkit.core.errors import Interrupted, UserError, WorkspaceBusy
from toolkit.core.files import sha256_file
from toolkit.core.layout import Workspace, is_workspace, require_workspace
from toolkit.core.lock import workspace_lock
from toolkit.promotion.registry import Registry
from toolkit.promotion.registry_check import registry_notes, registry_problems
from toolkit.promotion.spec import judged_now, production_spec, spec_record
from toolkit.core.run_history import (append_history, clear_running, mark_running, read_history,
                                      record_interrupted_runs)
from toolkit.core.reports import report_path, timestamp, utc_now_iso, write_report

logger = logging.getLogger(__name__)

STAGES = ("analyze", "setup", "prepare", "train", "compare", "promote")
_WHAT, _DATA, _TRAIN = "what to run (default: the full pipeline)", "data and model", "training and scoring (default: training/configs/training.yaml)"


@dataclass(frozen=True)
class PipelineConfig:
    root: Path
    source: Path | None = option("--source", "a labelled batch to import (else the new batches in "
                                 "training/incoming/)", type=Path, group=_DATA)
    fmt: str = option("--format", "label format of --source", default="auto", choices=("auto", "yolo", "voc", "coco"),
                      group=_DATA)
    candidate: Path | None = option("--candidate", "skip training: evaluate this .pt and promote it if it wins",
                                    type=Path, group=_DATA)
    if_new_data: bool = option("--if-new-data", "end at once (decision 'skipped') when no new batch arrived "
                               "since the last run", default=False, group=_DATA)
    dry_run: bool = option("--dry-run", "say what would happen and change nothing", default=False, group=_WHAT)
    major: bool = option("--major", "promote as a new major version (1.4 -> 2.0)", default=False, group=_DATA)
    force: bool = option("--force", "promote a first model (no production yet) even below "
                         "promotion.min_first_map", default=False, group=_DATA)
    analyze: bool = option("--no-analyze", "skip the memory-bank analysis", default=True, group=_DATA)
    # one flag, every stage that uses the setting: the settings object carries it to each of them
    start_from: str | None = setting("training.start_from", group=_TRAIN,
                                     help="starting point: production | scratch | PATH to a .pt; "
                                          "given, it overrides the strategy")
    strategy: str | None = setting("training.strategy", group=_TRAIN)
    epochs: int | None = setting("training.epochs", group=_TRAIN)
    imgsz: int | None = setting("training.imgsz", group=_TRAIN,
                                help="image size the model trains at; it is scored at that size too "
                                     "unless training.yaml sets evaluation.imgsz")
    batch: int | None = setting("training.batch", "evaluation.batch", group=_TRAIN,
                                help="images per batch, for training and for scoring")
    device: str | None = setting("training.device", "evaluation.device", group=_TRAIN,
                                 help="cpu | 0 | 0,1,2,3 for training and scoring; not set: GPU 0 if there is one, "
                                      "else cpu")
    time_limit: float | None = setting("training.time_limit", group=_TRAIN,
                                       help="hours the training may take: it stops cleanly at the first epoch end "
                                            "that would pass them (best.pt kept; two routes trained one after the other share them; "
                                            "0: no limit)")
    compare_subset: int | None = option("--compare-subset", "compare on the first N test images only (quick checks)",
                                        type=int, metavar="N", group=_TRAIN)


@dataclass(frozen=True)
class PipelineResult:
    decision: str                       # "promoted" | "kept" | "skipped"
    production: dict[str, Any]          # {version, path, sha256}
    stages: dict[str, Any]
    report: Path | None
    reasons: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    dry_run: bool = False
    html_report: Path | None = None
    log: Path | None = None
    # classes of the model in production after this run whose recall at promotion.operating_conf is
    # under promotion.min_recall (the line's spec); promoted anyway when better than what ran
    below_spec: tuple[str, ...] = ()
    forced: bool = False                # promoted only because --force overrode a rule


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class _StageRunner:
    """Runs the stages in order, one log line each: ``[3/6] train ... 4m12s``."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    def _prefix(self, name: str) -> str:
        return f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}"

    def run(self, name: str, fn: Callable[[], Any], outcome: Callable[[Any], str] = lambda r: "done") -> Any:
        logger.info("%s ...", self._prefix(name))
        start = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.results[name] = result
        logger.info("%s: %s (%s)", self._prefix(name), outcome(result), _fmt_seconds(self.timings[name]))
        return result

    def skip(self, name: str, why: str) -> None:
        self.results[name] = {"skipped": why}
        logger.info("%s: skipped - %s", self._prefix(name), why)


def production_info(workspace: Workspace, registry: Registry | None = None) -> dict[str, Any]:
    if not workspace.production_model.exists():
        return {"version": None, "path": str(workspace.production_model), "sha256": None}
    registry = registry or Registry.load(workspace)
    entry = registry.production_entry()
    return {"version": entry["version"] if entry else None, "path": str(workspace.production_model),
            "sha256": sha256_file(workspace.production_model)}


def _pending_batches(workspace: Workspace) -> list[Path]:
    from toolkit.data.dataset.incoming import pending_incoming_batches

    return pending_incoming_batches(workspace) if workspace.incoming.exists() else []


def _needs_setup(workspace: Workspace) -> bool:
    return not (workspace.dataset_yaml.exists() and workspace.training_yaml.exists()
                and all(p.exists() for p in workspace.tree()))


def load_settings(config: PipelineConfig, ws: Workspace) -> tuple[PipelineConfig, Settings]:
    """training.yaml read once for the whole run, the pipeline's flags laid on top: every stage
    gets this one object, so a flag reaches each stage that uses its setting."""
    return resolve_config(config, Settings.load(ws.training_yaml))


def plan(config: PipelineConfig, settings: Settings | None = None) -> dict[str, Any]:
    """What a run would do, computed without changing anything (``--dry-run``)."""
    ws = Workspace.at(config.root)
    if settings is None:
        config, settings = load_settings(config, ws)
    pending = [str(p) for p in _pending_batches(ws)]
    new_data = bool(config.source) or bool(pending)
    train_plan = None if config.candidate or (config.if_new_data and not new_data) else _training_plan(
        config, settings, ws, read_only=True, pending=[Path(p) for p in pending] + ([Path(config.source)] if config.source else []),
        pilot=True)
    steps = {
        "analyze": "run" if config.analyze and _has_memory_bank(ws, settings) else "skip (no memory bank)",
        "setup": "run" if _needs_setup(ws) else "skip (workspace ready)",
        "prepare": (f"import {config.source}" if config.source else
                    f"import {len(pending)} new batch(es) from training/incoming" if pending else "skip (no new batch)"),
        "train": ("skip (--candidate given)" if config.candidate else
                  f"{train_plan.describe(checks=False)} at {train_plan.imgsz} px, {config.epochs} epochs"
                  f"{train_plan.check_words()}" if train_plan else ""),
        "compare": ("evaluate the candidate (with two routes: the one better on the validation split) vs "
                    "production on the test split: mAP, per-class AP50, per-class recall at confidence "
                    f"{settings['promotion.operating_conf']} (promotion.operating_conf) against the line's spec "
                    f"(promotion.min_recall {_spec_words(settings['promotion.min_recall'])}), speed"
                    if ws.production_model.exists() else
                    "score the candidate on the test split (no production model yet), per-class recall against "
                    f"the line's spec (promotion.min_recall {_spec_words(settings['promotion.min_recall'])})"),
        "promote": ("promote if the comparator approves" if ws.production_model.exists() else
                    "make it version 1.0 if it reaches promotion.min_first_map"),
    }
    if config.if_new_data and not new_data:
        steps = {name: "skip (no new data)" for name in STAGES}
    fit = {"estimate_s": train_plan.estimate_s, "total_s": round(train_plan.total_s(), 1), "budget_s": train_plan.budget_s,
           "fit_time_h": train_plan.fit_time_h, "imgsz": train_plan.imgsz,
           "small_defects": train_plan.small_defects,
           "pilot": any(n.startswith("pilot:") for n in train_plan.estimate_notes)} if train_plan else {}
    return {"new_batches": pending, "new_data": new_data, "steps": steps, "production": production_info(ws), **fit}


def _spec_words(min_recall: Any) -> str:
    if isinstance(min_recall, dict):
        return ", ".join(f"{name} {value:g}" for name, value in min_recall.items())
    return f"{min_recall:g}"


def _nothing_new(config: PipelineConfig, ws: Workspace) -> bool:
    """A nightly run (--if-new-data) with no batch to import: it ends at once, wherever it runs."""
    return config.if_new_data and config.source is None and not _pending_batches(ws)


def preflight(config: PipelineConfig) -> Workspace:
    """What can be checked before anything is written (no lock, log or history in a wrong folder)."""
    ws = Workspace.at(config.root)
    if config.candidate is not None:
        if not Path(config.candidate).is_file():
            raise UserError(f"--candidate {config.candidate}: file not found (give the path of a trained .pt)")
        if Path(config.candidate).suffix.lower() != ".pt":
            raise UserError(f"--candidate {config.candidate}: not a .pt checkpoint; give a YOLOv8 model saved "
                            "by ultralytics (e.g. a run's weights/best.pt)")
    if not ws.root.is_dir() or (not is_workspace(ws) and not _nothing_new(config, ws)):
        require_workspace(ws.root)  # one line naming what a workspace holds
    return ws


def run(config: PipelineConfig) -> PipelineResult:
    ws = preflight(config)
    config, settings = load_settings(config, ws)
    if config.dry_run:
        the_plan = plan(config, settings)
        return PipelineResult("skipped", the_plan["production"], {"plan": the_plan}, None,
                              ("dry run: nothing was changed",), dry_run=True)
    if not is_workspace(ws):  # a nightly run in a folder not set up yet: nothing to do, nothing written
        return PipelineResult("skipped", production_info(ws), {name: {"skipped": "no new data"} for name in STAGES},
                              None, ("no new labelled batch since the last run",))

    try:
        with workspace_lock(ws):
            return _run_with_history(config, ws, settings)
    except WorkspaceBusy as exc:
        if not config.if_new_data:
            raise
        # a nightly run finds another run at work: not a failure; the next night looks again
        return PipelineResult("skipped", production_info(ws), {name: {"skipped": "workspace busy"} for name in STAGES},
                              None, (f"{exc}; this --if-new-data run ends here, the next one looks again",))


def _run_with_history(config: PipelineConfig, ws: Workspace, settings: Settings) -> PipelineResult:
    started, start = utc_now_iso(), time.perf_counter()
    stamp = timestamp()
    runner = _StageRunner()
    before = production_info(ws)
    mark_running(ws, stamp, started)  # a run killed without a word gets its history line from the next one
    try:
        return _finish_run(config, ws, settings, runner, stamp, started, start, before)
    finally:
        clear_running(ws, stamp)


def _finish_run(config: PipelineConfig, ws: Workspace, settings: Settings, runner, stamp: str, started: str,
                start: float, before: dict) -> PipelineResult:
    try:
        the_run = _Run(config, ws, settings, runner, stamp=stamp)
        result = _run_locked(the_run, stamp)
    except KeyboardInterrupt as exc:
        after = production_info(ws)
        append_history(ws, {"run": stamp, "started_at": started, "finished_at": utc_now_iso(),
                            "decision": "interrupted", "error": "interrupted by the user (Ctrl-C or a stop signal)",
                            "production": after, "timings": runner.timings})
        resume = getattr(exc, "resume", None)
        what = ("nothing was promoted" if after.get("sha256") == before.get("sha256") else
                f"production had already become {_production_words(after)}")
        raise Interrupted(
            f"interrupted by the user; {what}. The next pipeline run starts its training over (what "
            "was imported stays imported)"
            + (f"; to continue the interrupted training instead: {resume} (its Next: line says how to score "
               "and promote it)" if resume else ""), resume) from None
    except BaseException as exc:
        append_history(ws, {"run": stamp, "started_at": started, "finished_at": utc_now_iso(),
                            "decision": "failed", "error": f"{type(exc).__name__}: {exc}",
                            "production": production_info(ws), "timings": runner.timings})
        raise
    append_history(ws, {"run": stamp, "started_at": started, "finished_at": utc_now_iso(),
                        "seconds": round(time.perf_counter() - start, 1), "decision": result.decision,
                        "reasons": list(result.reasons), "production": result.production,
                        "below_spec": list(result.below_spec), "forced": result.forced,
                        "dataset_version": _get(result.stages.get("prepare"), "dataset_version"),
                        "scores": _scores(result.stages.get("compare")),
                        "candidate": _get(result.stages.get("train"), "best") or (str(config.candidate) if config.candidate else None),
                        "strategy": _get(_get(result.stages.get("train"), "strategy"), "strategy"),
                        **_history_extras(the_run),
                        "report": str(result.report) if result.report else None, "timings": result.timings})
    return result


def _scores(compared: Any) -> list[dict[str, Any]]:
    """Role, model and headline metrics of each model the comparator scored (for the history and --status)."""
    models = _get(compared, "models") or []
    split, images = _get(compared, "split"), _get(compared, "images")
    return [{"role": m.get("role"), "path": m.get("path"), "map50": m.get("map50"), "map50_95": m.get("map50_95"),
             "sha256": m.get("sha256"), **({"spec": spec_record(m, split, images)} if m.get("min_recall") else {})}
            for m in models if isinstance(m, dict)]


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


@dataclass
class _Run:
    """What one pipeline run hands from stage to stage: one config, one settings object."""

    config: PipelineConfig
    ws: Workspace
    settings: Settings
    runner: _StageRunner
    pending: list[Path] = field(default_factory=list)
    candidate: Path | None = None
    compared: Any = None
    registry: Registry | None = None
    trained: Any = None                    # toolkit.model.training.TrainedRoutes: one run per route of the strategy
    notes: list[str] = field(default_factory=list)  # reasons added to the comparator's (the strategy, candidates)
    stamp: str = ""                        # the run's stamp: its promotion event names it (history after a kill)


@dataclass(frozen=True)
class Stage:
    name: str
    skip: Callable[[_Run], str | None]      # why the stage is skipped in this run, None: run it
    run: Callable[[_Run], Any]
    outcome: Callable[[Any], str]


def _analyze(r: _Run) -> Any:
    import training_analyzer

    return training_analyzer.run(training_analyzer.AnalyzeConfig(root=r.ws.root), settings=r.settings)


def _setup(r: _Run) -> Any:
    import setup_training

    return setup_training.run(setup_training.SetupConfig(root=r.ws.root), settings=r.settings)


def _prepare(r: _Run) -> Any:
    import dataset_preparer

    c = r.config
    return dataset_preparer.run(dataset_preparer.PrepareConfig(root=r.ws.root, source=c.source, fmt=c.fmt,
                                                               incoming=c.source is None), settings=r.settings)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _training_plan(config: PipelineConfig, settings: Settings, ws: Workspace, read_only: bool = False,
                   pending: list[Path] = (), pilot: bool = False):
    """Which route(s) the train stage trains (``training.strategy`` / ``--strategy``), and why.

    ``pending``: batches not imported yet (a dry run): their images count, at the train share.
    ``pilot``: time a pilot first where no measured run matches (toolkit/model/pilot.py).
    """
    from toolkit.model.planning import plan_training

    waiting = sum(1 for folder in pending for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    share = float(settings["dataset.split"].get("train", 0.8))
    return plan_training(ws, settings.section("training"), strategy=config.strategy, start_from=config.start_from,
                         read_only=read_only, extra_train_images=int(waiting * share), pilot=pilot)


def _train(r: _Run) -> Any:
    from toolkit.model.planning import TrainedRoutes, pick_route

    the_plan = _training_plan(r.config, r.settings, r.ws, pilot=True)
    logger.info("training plan: %s", the_plan.describe())
    if the_plan.small_defects.get("words"):
        r.notes.append(the_plan.small_defects["words"])
    if the_plan.fit_time_h:
        r.notes.append(f"time budget: the estimate (about {_fmt_seconds(the_plan.total_s())}) passed it, so the "
                       f"run was fitted to it with ultralytics' time argument ({the_plan.fit_time_h} h)")
    runs = _train_routes(r, the_plan)
    choice = the_plan.choice
    metric = str(r.settings["promotion.metric"] or "map50_95")
    chosen, scores, why = pick_route(runs, metric) if len(runs) > 1 else (None, {}, "")
    if chosen:
        logger.info("%s", why)
    r.trained = TrainedRoutes(choice.requested, choice.strategy, choice.reason, dict(choice.evidence), runs,
                              the_plan.describe(), chosen=chosen, metric=metric, val_scores=scores, pick_reason=why)
    r.candidate = Path(runs[chosen or next(iter(runs))].best)
    shown = runs[chosen] if chosen else next(iter(runs.values()))
    # the stage's result: the run the report shows (the one chosen on val, after the comparison the promoted one)
    return {**to_jsonable(shown), "strategy": r.trained.summary()}


def _train_routes(r: _Run, the_plan) -> dict:
    """One run per route: one after the other (sharing a time limit), or at the same time on a GPU
    with spare CPU cores (``the_plan.concurrent``), each with its share of the data workers."""
    import train_yolov8

    routes = the_plan.choice.routes
    limit = the_plan.time_limit_per_route()

    def one(route: str, workers: int | None = None):
        fit = the_plan.fit_time_h.get(route)
        return train_yolov8.run(train_yolov8.TrainConfig(
            root=r.ws.root, name="pipeline" if len(routes) == 1 else f"pipeline-{route}",
            start_from=the_plan.starts[route], time_limit=limit, workers=workers, imgsz=the_plan.imgsz,
            extra={"time": fit} if fit else ()), settings=r.settings)

    if not the_plan.concurrent:
        return {route: one(route) for route in routes}
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.model.training import ultralytics_output

    logger.info("training %s at the same time: %s", " and ".join(routes), the_plan.concurrency)
    # one redirection around both runs: each run's own redirection then saves and restores the same streams
    with ultralytics_output(show_progress=False), ThreadPoolExecutor(max_workers=len(routes)) as pool:
        futures = {route: pool.submit(one, route, the_plan.concurrent_workers) for route in routes}
        return {route: futures[route].result() for route in routes}


def _history_extras(r: _Run | None) -> dict:
    """What later runs learn from: the route chosen on val (a 'both' run) and every run's measured speed."""
    trained = r.trained if r is not None else None
    if trained is None:
        return {}
    timings = [{"route": route, **run.timing} for route, run in trained.runs.items() if getattr(run, "timing", None)]
    return {"routes": trained.history_record(), "trainings": timings}


def _trained_outcome(res: dict) -> str:
    return "; ".join(f"{c['route']}: {c['epochs']} epochs, val mAP50 {c['val'].get('map50') or 0:.3f}"
                     for c in res["strategy"]["candidates"])


def _after_compare(r: _Run) -> None:
    """The train stage's result and the reasons say which route was chosen on val, and how it fared on test."""
    trained, compared = r.trained, r.compared
    summary = trained.summary(compared)
    winner = trained.route_of(compared.winner) if compared.decision["promote"] else None
    shown = trained.runs[winner or trained.chosen or next(iter(trained.runs))]
    r.runner.results["train"] = {**to_jsonable(shown), "strategy": summary}
    r.notes.append(f"training: {trained.reason}")
    if len(trained.runs) > 1:
        r.notes.append(f"route: {trained.pick_reason}")
        for c in summary["candidates"]:
            val = (c["val"] or {}).get(trained.metric)
            test = (c["test"] or {}).get("map50_95")
            line = f"candidate {c['route']} ({c['path']}): val {trained.metric} {'n/a' if val is None else f'{val:.3f}'}"
            if c["chosen_on_val"]:
                line += (f", chosen on val; test mAP50-95 {'n/a' if test is None else f'{test:.3f}'}, "
                         f"{'passes' if c['passes'] else 'does not pass'} the rules against production"
                         f"{', promoted' if c['promoted'] else ''}")
            else:
                line += ", not chosen on val (not scored on test)"
            r.notes.append(line)


def _compare(r: _Run) -> Any:
    import model_comparator

    if r.candidate is None:
        r.candidate = Path(r.config.candidate).resolve()
    production = r.ws.production_model if r.ws.production_model.exists() else None
    r.registry = Registry.load(r.ws)
    if production is not None:
        r.registry.register_existing_production()
    candidates = tuple(Path(p) for p in r.trained.candidates.values()) if r.trained else (r.candidate,)
    config = model_comparator.CompareConfig(root=r.ws.root, production=production, candidates=candidates,
                                            subset=r.config.compare_subset, force=r.config.force)
    r.compared = model_comparator.run(config, settings=r.settings)
    if r.trained is not None:
        _after_compare(r)
    return r.compared


def _promote(r: _Run) -> Any:
    compared, config, ws = r.compared, r.config, r.ws
    cand = next(m for m in compared.models if Path(m["path"]).resolve() == Path(compared.winner).resolve())
    from toolkit.core.offline import model_class_names

    classes = model_class_names(cand["path"], ws.ultralytics_config)  # must load before it goes live
    metrics = {k: cand[k] for k in ("map50", "map50_95", "precision", "recall") if k in cand}
    # the history must say which images, at which size, these figures come from
    metrics.update(split=compared.split, imgsz=cand.get("imgsz"))
    if cand.get("min_recall"):  # the line's spec as measured here: --status and the analyzer read it
        metrics["spec"] = spec_record(cand, compared.split, compared.images)
    results = r.runner.results
    dataset_version = _get(results.get("prepare"), "dataset_version") or _get(compared, "dataset_version")
    return r.registry.promote(
        Path(cand["path"]), major=config.major, metrics=metrics, reasons=list(compared.decision["reasons"]),
        dataset_version=dataset_version, run_dir=_get(results.get("train"), "run_dir"), classes=classes,
        source="pipeline" if config.candidate is None else f"candidate {config.candidate}",
        forced=_forced(compared, cand, r.settings), run=r.stamp)


def _forced(compared: Any, cand: dict[str, Any], settings: Settings) -> str | None:
    """Why a first model went live below promotion.min_first_map (--force), for --status to say; else None."""
    decision = compared.decision
    if not decision.get("first_model"):
        return None
    metric, floor = decision.get("metric", "map50_95"), float(settings["promotion.min_first_map"])
    value = cand.get(metric)
    if value is None or float(value) >= floor:
        return None
    return f"{metric} {float(value):.3f} below promotion.min_first_map {floor:.3f}, promoted with --force"


def _has_memory_bank(ws: Workspace, settings: Settings) -> bool:
    """The default JSONL exists, or training.yaml names a memory bank (a file or a database URL)."""
    return ws.detections.exists() or bool(settings["memory_bank.url"])


def _top_priority(result: Any) -> str:
    return f"{result.records} records, top priority: {result.priorities[0]['class'] if result.priorities else 'none'}"


PIPELINE: tuple[Stage, ...] = (
    Stage("analyze", lambda r: None if r.config.analyze and _has_memory_bank(r.ws, r.settings)
          else "no memory bank" if r.config.analyze else "--no-analyze", _analyze, _top_priority),
    Stage("setup", lambda r: None if _needs_setup(r.ws) else "workspace ready", _setup,
          lambda res: f"{len(res.created)} item(s) created"),
    Stage("prepare", lambda r: None if r.config.source or r.pending else "no new batch", _prepare,
          lambda res: f"dataset v{res.dataset_version}: +{res.added} images, {len(res.rejected)} rejected"),
    Stage("train", lambda r: f"candidate given: {Path(r.config.candidate).resolve()}" if r.config.candidate else None,
          _train, _trained_outcome),
    Stage("compare", lambda r: None, _compare,
          lambda res: "candidate approved" if res.decision["promote"] else "candidate not approved"),
    Stage("promote", lambda r: None if r.compared.decision["promote"] else "the comparator did not approve the candidate",
          _promote, lambda e: f"version {e['version']} is now in production"),
)


def _run_locked(r: _Run, stamp: str) -> PipelineResult:
    registry = Registry.load(r.ws)
    registry.recover()  # finish or undo what a killed promotion/rollback left, before anything else
    record_interrupted_runs(registry, current=stamp)
    r.pending = _pending_batches(r.ws)
    if r.config.if_new_data and not r.config.source and not r.pending:
        logger.info("no new batch in %s since the last run: nothing to do", r.ws.incoming)
        for name in STAGES:
            r.runner.skip(name, "no new data")
        return _finish(r, stamp, "skipped", ["no new labelled batch since the last run"])
    for stage in PIPELINE:
        why = stage.skip(r)
        if why is None:
            r.runner.run(stage.name, lambda stage=stage: stage.run(r), stage.outcome)
        else:
            r.runner.skip(stage.name, why)
    reasons = list(r.compared.decision["reasons"]) + r.notes
    if not r.compared.decision["promote"]:
        return _finish(r, stamp, "kept", reasons)
    return _finish(r, stamp, "promoted", reasons, previous_version=r.runner.results["promote"].get("parent"))


def _finish(r: _Run, stamp: str, decision: str, reasons: list[str], previous_version: str | None = None) -> PipelineResult:
    ws, runner = r.ws, r.runner
    registry = Registry.load(ws)
    production = production_info(ws, registry)
    json_path = report_path(ws, "pipeline", stamp)
    stages = {name: to_jsonable(value) for name, value in runner.results.items()}
    verdict = r.compared.decision if r.compared is not None else {}
    below = list(r.compared.below_spec) if r.compared is not None and production.get("sha256") else []
    forced = decision == "promoted" and bool(verdict.get("forced"))
    data = {"title": f"Retraining run {stamp}", "generated_at": utc_now_iso(), "root": str(ws.root),
            "decision": decision, "reasons": reasons, "production": production, "stages": stages,
            "timings": runner.timings, "history": registry.versions,
            "previous_version": previous_version, "below_spec": below, "forced": forced}
    result = PipelineResult(decision, production, stages, json_path, tuple(reasons), dict(runner.timings),
                            below_spec=tuple(below), forced=forced)
    first = decision == "kept" and production.get("sha256") is None
    data["next_steps"] = [line.strip() for line in _next_lines(result, ws.root, first)]
    html_path = json_path.with_suffix(".html")
    try:
        from toolkit.report.html_report import write_pipeline_report

        write_pipeline_report(html_path, data)
    except Exception as exc:  # a report failure must not undo a promotion that already happened
        logger.warning("could not write the HTML report: %s", exc)
        html_path = None
    data["html_report"] = str(html_path) if html_path else None
    write_report(json_path, data, _markdown(data))
    # the terminal shows the decision once, from the result; the log file keeps it too
    logger.info("decision: %s - production: %s", "no model promoted - there is no production model yet" if first
                else decision_words(decision, below, forced), _production_words(production), extra=FILE_ONLY)
    return replace(result, html_report=html_path)


def _markdown(data: dict[str, Any]) -> str:
    from toolkit.core.reports import markdown_table, md

    lines = [f"# {md(data['title'])}", "", f"**Decision: {md(decision_words(data['decision'], data.get('below_spec'), data.get('forced')))}** - production "
             f"{md(_production_words(data['production']))}", ""]
    lines += [f"- {md(r)}" for r in data["reasons"]] + [""]
    lines.append(markdown_table(["stage", "seconds"], [[k, v] for k, v in data["timings"].items()]))
    return "\n".join(lines)


# --- status and rollback -------------------------------------------------------------------------

def status(root: Path) -> dict[str, Any]:
    """Production, versions, last runs, and a check of production vs registry vs sidecar vs archives.

    Read-only: it changes nothing (a run in progress is not disturbed); each problem found comes
    with the command that repairs it.
    """
    ws = require_workspace(root)  # --status of a mistyped --root is no 'all consistent'
    registry = Registry.load(ws)
    production = production_info(ws, registry)
    sidecar = None
    if ws.production_sidecar.exists():
        try:
            sidecar = json.loads(ws.production_sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sidecar = {"error": "unreadable"}
    problems = registry_problems(registry)
    spec = production_spec(ws, production["sha256"]) if production["sha256"] else None
    if spec:  # against the spec in training.yaml now, which may have changed since that evaluation
        try:
            spec = judged_now(spec, Settings.load(ws.training_yaml)["promotion.min_recall"])
        except UserError:  # a broken training.yaml: --status still reports, with the spec as measured
            pass
    return {"root": str(ws.root), "production": production, "sidecar": sidecar, "spec": spec,
            "previous_version": registry.previous_production(production["version"]),
            "ok": not problems, "problems": problems, "notes": registry_notes(registry),
            "versions": registry.versions, "events": registry.events[-10:],
            "last_runs": read_history(ws, last=10),
            "pending_batches": [str(p) for p in _pending_batches(ws)] if ws.incoming.exists() else []}


def rollback(root: Path, version: str | None) -> dict[str, Any]:
    """Put an archived version back into production (default: the previous production, from history)."""
    ws = require_workspace(root)
    with workspace_lock(ws, what="rollback"):
        registry = Registry.load(ws)
        registry.recover()
        record_interrupted_runs(registry)
        finished = [f for f in registry.finished if f["action"] == "rollback"]
        if finished and (version is None or registry.entry(version) == registry.entry(finished[-1]["version"])):
            # the killed rollback this command repeats was finished by the recovery: one step, not two
            production = production_info(ws, registry)
            note = (f"the interrupted rollback to version {finished[-1]['version']} was finished; not stepping "
                    f"back further (run --rollback again to go one more version back)")
            logger.info("%s", note)
            return {"decision": "rollback", "production": production, "from_version": None, "note": note}
        stamp = timestamp()
        sha_before = sha256_file(ws.production_model) if ws.production_model.exists() else None
        before = registry.ensure_production_archived()
        entry = registry.rollback(version, run=stamp)
        production = production_info(ws, registry)
        kept = registry.quarantined(sha_before) if sha_before and before is None else None
        record = {"run": stamp, "finished_at": utc_now_iso(), "decision": "rollback",
                  "from_version": before["version"] if before else None, "production": production}
        if kept is not None:
            record["replaced_unloadable"] = str(kept)
        append_history(ws, record)
    came_from = before["version"] if before else None
    logger.info("%s: version %s is in production again", _direction(came_from, entry["version"]), entry["version"])
    result = {"decision": "rollback", "production": production, "from_version": came_from}
    if kept is not None:
        result["kept_unloadable"] = str(kept)
    return result


def _direction(from_version: str | None, to_version: str) -> str:
    """'rolled back' to an older version, 'rolled forward' to a newer one (undoing a rollback)."""
    from toolkit.promotion.versions import parse_version

    try:
        forward = from_version is not None and parse_version(to_version) > parse_version(from_version)
    except UserError:
        forward = False
    return "rolled forward" if forward else "rolled back"


def describe(result: Any) -> str:
    if isinstance(result, PipelineResult):
        if result.dry_run:
            steps = result.stages["plan"]["steps"]
            head = ("Dry run (nothing changed but the history, which keeps the pilot's timing):"
                    if result.stages["plan"].get("pilot") else "Dry run (nothing changed):")
            return head + "\n" + "\n".join(f"  {k:8s} {v}" for k, v in steps.items())
        root = Path(result.production["path"]).parent
        first = result.decision == "kept" and result.production.get("sha256") is None
        lines = [_headline(result) if first else
                 f"Decision: {decision_words(result.decision, result.below_spec, result.forced)}",
                 f"Production model: none yet ({result.production['path']} does not exist)" if first and
                 not Path(result.production["path"]).exists() else
                 f"Production model: {result.production['path']} ({_production_words(result.production)})"]
        lines += [f"  - {r}" for r in result.reasons]
        lines += _next_lines(result, root, first)
        if result.html_report:
            lines.append(f"Report: {result.html_report}")
        elif result.report:
            lines.append(f"Report: {result.report}")
        return "\n".join(lines)
    if "versions" in result:
        return _describe_status(result)
    if result.get("note"):
        return f"Production is version {result['production']['version']}: {result['note']}"
    if result.get("kept_unloadable"):
        was = f"the file there did not load as a model; its bytes are kept as {result['kept_unloadable']}"
    else:
        was = f"was version {result['from_version']}" if result.get("from_version") else "was not registered"
    now = result['production']['version']
    verb = _direction(result.get("from_version"), now)
    lines = [f"Production is now version {now} ({was}): {verb} - version {now} restored from its archive"]
    if result.get("from_version"):
        lines.append(f"Next: to go back to version {result['from_version']}: "
                     f"{command('training_pipeline.py', Path(result['production']['path']).parent, '--rollback', result['from_version'])}")
    return "\n".join(lines)


def decision_words(decision: str, below_spec=(), forced: bool = False) -> str:
    """'PROMOTED', 'PROMOTED (FORCED)', 'PROMOTED - BELOW SPEC (short, open)', 'KEPT - BELOW SPEC (..)':
    a forced or below-spec promotion never reads like a plain approval."""
    words = decision.upper() + (" (FORCED)" if forced else "")
    return words + (f" - BELOW SPEC ({', '.join(below_spec)})" if below_spec else "")


def _best_candidate(result: PipelineResult) -> dict[str, Any] | None:
    """The best-scoring candidate of the comparison (what --force would have promoted), if any."""
    compared = result.stages.get("compare") or {}
    metric = (compared.get("decision") or {}).get("metric", "map50_95")
    candidates = [m for m in compared.get("models") or [] if m.get("role") == "candidate" and m.get(metric) is not None]
    return max(candidates, key=lambda m: m[metric]) if candidates else None


def _headline(result: PipelineResult) -> str:
    """No production model and the first candidate below the bar: say what happened, in those words."""
    compared = result.stages.get("compare") or {}
    metric = (compared.get("decision") or {}).get("metric", "map50_95")
    bar = ((compared.get("settings") or {}).get("promotion") or {}).get("min_first_map")
    best = _best_candidate(result)
    if best is None or bar is None:
        return "Decision: NO MODEL PROMOTED (there is no production model yet)"
    label = {"map50_95": "mAP50-95", "map50": "mAP50"}.get(metric, metric)
    return (f"Decision: NO MODEL PROMOTED - the first candidate scored {label} {best[metric]:.3f}, below "
            f"promotion.min_first_map {bar:.3f}")


def _next_lines(result: PipelineResult, root: Path, first: bool) -> list[str]:
    """Complete commands for what the user most likely does next."""
    if first:
        best = _best_candidate(result)
        if best is None:
            return ["Next: no production model yet - train longer (training.epochs in "
                    "training/configs/training.yaml) or on more images, then: "
                    f"{command('training_pipeline.py', root)}"]
        return [f"Next: no production model yet - promote this candidate anyway: "
                f"{command('training_pipeline.py', root, '--candidate', best['path'], '--force')}",
                "      or train longer (training.epochs in training/configs/training.yaml) or on more images, then: "
                f"{command('training_pipeline.py', root)}"]
    previous = (result.stages.get("promote") or {}).get("parent") if isinstance(result.stages.get("promote"), dict) else None
    if result.decision == "promoted":
        return [f"Next: versions and past runs: {command('training_pipeline.py', root, '--status')}"
                + (f"; back to version {previous}: {command('training_pipeline.py', root, '--rollback', previous)}"
                   if previous else "")]
    if result.decision == "kept":
        return [f"Next: production is unchanged; versions and past runs: "
                f"{command('training_pipeline.py', root, '--status')}"]
    return []


def _production_words(production: dict[str, Any]) -> str:
    """'version 1.2', 'not registered yet' or 'none yet' - never 'version None'."""
    if production.get("version"):
        return f"version {production['version']}"
    return "none yet" if not production.get("sha256") else "not registered yet"


def _describe_status(result: dict[str, Any]) -> str:
    prod = result["production"]
    if prod["sha256"] is None:
        lines = [f"Production: none yet ({prod['path']} does not exist); the first promoted model becomes version 1.0"]
    elif prod["version"] is None:
        lines = [f"Production: {prod['path']} (sha256 {prod['sha256'][:12]}), not registered yet"]
    else:
        lines = [f"Production: {prod['path']} version {prod['version']} (sha256 {prod['sha256'][:12]})"]
    if prod["sha256"] is not None:
        lines.append(_spec_status(result.get("spec")))
    if result.get("previous_version"):
        lines.append(f"--rollback would restore version {result['previous_version']} (the previous production)")
    lines.append("Versions:")
    current = prod["version"]
    lines += [f"  {v['version']:6s} {v['sha256'][:12]} {v.get('registered_at', '')} {v.get('source', '')}"
              f"{'   <- production' if v['version'] == current else ''}"
              for v in result["versions"]] or ["  (none registered yet)"]
    lines.append("Checks: " + ("all consistent (production, registry, sidecar, archives)" if result["ok"] else
                               f"{len(result['problems'])} problem(s)"))
    lines += [f"  - {p['problem']}: {p['fix']}" for p in result["problems"]]
    lines += [f"Note: {n}" for n in result.get("notes") or []]
    lines.append("Last runs:")
    lines += [f"  {_describe_run(r)}" for r in result["last_runs"]] or ["  (none yet)"]
    return "\n".join(lines)


def _spec_status(spec: dict[str, Any] | None) -> str:
    """Production's gap to the line's spec, from its last evaluation (history, else sidecar)."""
    if not spec:
        return ("Spec: not measured yet (the next comparison measures each class's recall at "
                "promotion.operating_conf against promotion.min_recall)")
    when = f"{spec.get('split') or 'test'} split" + (f", {spec['images']} images" if spec.get("images") else "")
    when += f", run {spec['run']}" if spec.get("run") else (f", {spec['measured_at']}" if spec.get("measured_at") else "")
    conf = spec.get("operating_conf")
    below = spec.get("below_spec") or []
    if not below:
        return f"Spec: production meets the line's spec: every class's recall at confidence {conf:.2f} reaches it ({when})"
    gaps = []
    for name in below:
        c = (spec.get("per_class") or {}).get(name) or {}
        gap = f"{name} {c.get('recall', 0):.2f} of {c.get('min_recall', 0):.2f} (gap {c.get('min_recall', 0) - c.get('recall', 0):.2f}"
        gap += (f"; met at confidence {c['conf_for_spec']:.3f}, {c['false_calls_per_image']:.2f} false calls/image)"
                if c.get("conf_for_spec") is not None else
                "; the spec changed since: the next comparison says where it is met)" if c.get("spec_changed") else
                "; no confidence reaches it)")
        gaps.append(gap)
    return (f"Spec: production is BELOW the line's spec for {len(below)} class(es), recall at confidence "
            f"{conf:.2f} vs promotion.min_recall ({when}): " + "; ".join(gaps))


def _describe_run(record: dict[str, Any]) -> str:
    """One history record: time, decision, production version after it, run, headline metric."""
    version = (record.get("production") or {}).get("version")
    parts = [str(record.get("finished_at") or record.get("started_at") or "?"), f"{record.get('decision', '?'):9s}",
             f"production {version}" if version else "no production yet", f"run {record.get('run', '?')}"]
    scores = {s.get("role"): s for s in record.get("scores") or [] if isinstance(s, dict)}
    cand, prod = scores.get("candidate"), scores.get("production")
    if cand and cand.get("map50_95") is not None:
        text = f"candidate mAP50-95 {cand['map50_95']:.3f}"
        if prod and prod.get("map50_95") is not None:
            text += f" vs production {prod['map50_95']:.3f}"
        parts.append(text)
    if record.get("forced"):
        parts.append("FORCED")
    if record.get("below_spec"):
        parts.append(f"BELOW SPEC ({', '.join(record['below_spec'])})")
    if record.get("from_version"):
        parts.append(f"from {record['from_version']}")
    if record.get("error"):
        parts.append(str(record["error"])[:120])
    return "  ".join(parts)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="training_pipeline.py")
    what = parser.add_argument_group(_WHAT)
    what.add_argument("--demo", action="store_true",
                      help="run the whole loop on synthetic data in a demo workspace (--root; default: ./demo, the "
                           "folder demo in the current folder)")
    what.add_argument("--status", action="store_true", help="show the production version, versions and last runs")
    what.add_argument("--rollback", nargs="?", const="previous", metavar="VERSION",
                      help="restore an archived version (default: the previous one), after checking its sha256")
    add_options(parser, PipelineConfig)
    return parser


@contextlib.contextmanager
def _log_file(root: Path) -> Iterator[Path | None]:
    """Everything logged during the run also goes to training/logs/pipeline_<stamp>.log (URL passwords masked)."""
    from toolkit.core.redact import MaskingFormatter

    ws = Workspace.at(root)
    if not ws.root.is_dir():
        yield None
        return
    ws.logs.mkdir(parents=True, exist_ok=True)
    path = ws.logs / f"pipeline_{timestamp()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield path
    except Exception as exc:  # the one-line error main() prints on stderr, in the log file too
        handler.handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, "failed: %s: %s",
                                         (type(exc).__name__, exc), None))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _demo_stages():
    """The stage scripts the demo drives to make its first model."""
    import dataset_preparer
    import setup_training
    import train_yolov8

    from toolkit.workflow.demo import DemoStages

    return DemoStages(setup=lambda **kw: setup_training.run(setup_training.SetupConfig(**kw)),
                      prepare=lambda **kw: dataset_preparer.run(dataset_preparer.PrepareConfig(**kw)),
                      train=lambda **kw: train_yolov8.run(train_yolov8.TrainConfig(**kw)))


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if sum(bool(x) for x in (args.demo, args.status, args.rollback)) > 1:
        parser.error("choose one of --demo, --status, --rollback")

    def execute(a: argparse.Namespace) -> Any:
        if a.demo:
            from toolkit.workflow.demo import check_demo_root, demo_root, prepare_demo

            root = demo_root(a.root)
            check_demo_root(root)
            root.mkdir(parents=True, exist_ok=True)
            with _log_file(root):
                return run(PipelineConfig(root=prepare_demo(root, _demo_stages())))
        root = Workspace.at(a.root).root
        if a.status:
            return status(root)
        if a.rollback:
            return rollback(root, None if a.rollback == "previous" else a.rollback)
        config = config_from_args(PipelineConfig, a, source=a.source.resolve() if a.source else None,
                                  candidate=a.candidate.resolve() if a.candidate else None)
        ws = preflight(config)  # a wrong folder gets no log file
        if a.dry_run or not is_workspace(ws):
            return run(config)
        with _log_file(root):
            return run(config)

    return run_main(args, execute, describe)


if __name__ == "__main__":
    raise SystemExit(main())

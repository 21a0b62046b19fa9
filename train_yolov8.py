"""Train or fine-tune the YOLOv8 defect model on the managed dataset, offline, and leave a readable run.

Starting point (--from): "production" fine-tunes ROOT/yolov8_model.pt (the default when it
exists), "scratch" builds the architecture of training.yaml (training.arch), a PATH starts from
any .pt checkpoint (e.g. an earlier run's weights/best.pt).

Training always uses the whole managed dataset (old + new images, training/configs/dataset.yaml),
never the new images alone: a model fine-tuned only on new images forgets what it knew about the
old ones (catastrophic forgetting), so its score on the fixed test split drops.

Settings: built-in defaults < training/configs/training.yaml (section training:) < flags; any
other ultralytics argument with --set key=value (checked against ultralytics' own list).
A dataset whose classes differ from the starting model's is an error showing both lists, unless
--new-classes is given: then the class layers of the head start afresh and the rest is kept.

Each run gets its own folder training/runs/<UTC stamp>-<name>/ (never overwritten): settings.yaml
(the resolved settings), epochs.jsonl (one record per epoch: losses, precision, recall, mAP50,
mAP50-95, lr, seconds, ETA), weights/best.pt and last.pt, summary.json, report.md + curves.png.
On a terminal ultralytics shows its progress bars; otherwise (scheduled runs) the log has one
line per epoch. Nothing is downloaded or waited on: the run works with no network.

Usage:
    python train_yolov8.py --root D:/inspection                       # fine-tune production
    python train_yolov8.py --root ./ws --from scratch --epochs 150 --imgsz 640
    python train_yolov8.py --root ./ws --device 0,1,2,3 --batch 64    # 4 GPUs (one training process per GPU)
    python train_yolov8.py --root ./ws --time-limit 6 --name nightly  # stop cleanly after 6 hours
    python train_yolov8.py --root ./ws --set lr0=0.005 --set cos_lr=true
    python train_yolov8.py --root ./ws --resume                       # continue the last interrupted run
    python train_yolov8.py --root ./ws --from training/runs/<run>/weights/best.pt   # train further
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.core.cli import add_options, build_parser, config_from_args, run_main, to_jsonable
from toolkit.core.layout import command
from toolkit.core.config import Settings, check_value, option, resolve_config, setting
from toolkit.core.datafile import read_data_yaml
from toolkit.data.dataset.store import settle_dataset
from toolkit.core.errors import Interrupted, UserError
from toolkit.core.files import atomic_write_json, atomic_write_text
from toolkit.core.layout import Workspace, require_workspace, run_weights
from toolkit.core.lock import holds_workspace_lock
from toolkit.model import machine as mc
from toolkit.model import training as tr
logger = logging.getLogger(__name__)

# Settings a resumed run may change (ultralytics keeps the checkpoint's values for the others).
_RESUME_ALLOWED = ("device", "workers", "batch", "patience", "time_limit")


@dataclass(frozen=True)
class TrainConfig:
    root: Path
    start_from: str | Path | None = setting("training.start_from")
    data: Path | None = option("--data", "ultralytics data yaml (default: the managed dataset)", type=Path)
    epochs: int | None = setting("training.epochs")
    imgsz: int | None = setting("training.imgsz")
    batch: int | None = setting("training.batch")
    device: str | None = setting("training.device")
    workers: int | None = setting("training.workers")
    patience: int | None = setting("training.patience")
    seed: int | None = setting("training.seed")
    time_limit: float | None = setting("training.time_limit")
    name: str | None = option("--name", "run folder suffix: training/runs/<stamp>-NAME (default: train)")
    # --set pairs: ("lr0=0.01",) or (("lr0", 0.01),) or a dict
    extra: Any = option("--set", "any other ultralytics training argument, e.g. --set lr0=0.005 (repeatable)",
                        default=(), repeat=True, metavar="KEY=VALUE")
    new_classes: bool = option("--new-classes", "allow a dataset whose classes differ from the starting "
                               "model's (the class layers of the head start afresh)", default=False)
    # True/"last" = the newest interrupted run
    resume: str | Path | bool | None = option("--resume", "continue the last interrupted run, or the run folder "
                                              "RUN, from its last epoch", nargs="?", const="last", metavar="RUN")


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    epochs_completed: int
    epochs_planned: int
    metrics: dict            # map50, map50_95, precision, recall of best.pt on the val split
    seconds: float           # wall time of this call
    start_from: str          # the checkpoint or architecture yaml the run started from
    start_mode: str          # production | scratch | path | resume
    classes: tuple[str, ...]
    stopped_early: bool
    stop_reason: str         # completed | early_stopping | time_limit | time_budget
    resumed: bool
    device: str
    data: Path
    report: Path
    notes: tuple[str, ...] = field(default_factory=tuple)
    timing: dict = field(default_factory=dict)  # seconds per image-epoch on this machine (later estimates)


# ----------------------------------------------------------------------------- settings
def resolve_start(workspace: Workspace, start_from: str, arch: str) -> tuple[str, str]:
    """``(mode, model)``: mode production | scratch | path; model a .pt path or a yaml name."""
    value = (start_from or "").strip()
    if value == "":
        value = "production" if workspace.production_model.exists() else "scratch"
    if value == "production":
        if not workspace.production_model.exists():
            raise UserError(f"--from production: no production model at {workspace.production_model}; "
                            "use --from scratch or --from PATH.pt")
        return "production", str(workspace.production_model)
    if value == "scratch":
        arch = str(arch).strip()
        if arch.lower().endswith(".pt"):  # pretrained weights the user has (COCO yolov8n.pt, a sister line's model)
            path = Path(arch).expanduser()
            path = path if path.is_absolute() else workspace.root / path
            if not path.is_file():
                raise UserError(f"training.arch {arch}: no such file; put the .pt there (the toolkit downloads "
                                "nothing) or use an architecture yaml such as yolov8n.yaml")
            return "pretrained", str(path.resolve())
        if not arch.endswith((".yaml", ".yml")):
            raise UserError(f"training.arch {arch!r} in training.yaml must be an architecture yaml such as "
                            "yolov8n.yaml or a .pt on disk")
        return "scratch", arch
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists():
        path = workspace.root / path
    if not path.is_file():
        raise UserError(f"--from {start_from}: no such file; give production, scratch or the path of a .pt checkpoint")
    if path.suffix != ".pt":
        raise UserError(f"--from {start_from}: expected a .pt checkpoint (or production / scratch)")
    return "path", str(path.resolve())


def _check_dataset(data: Path) -> list[str]:
    if not data.is_file():
        raise UserError(f"no dataset file at {data}; run setup_training.py and dataset_preparer.py first "
                        "(or pass --data DATA.yaml)")
    spec, classes = read_data_yaml(data)  # the toolkit's one YAML reader: alias bombs refused
    base = Path(spec.get("path") or data.parent)
    if not base.is_absolute():
        base = (data.parent / base).resolve()
    for split in ("train", "val"):
        entry = spec.get(split)
        if not entry:
            raise UserError(f"{data} has no '{split}:' entry; regenerate it with dataset_preparer.py")
        folder = Path(entry) if Path(entry).is_absolute() else base / entry
        if (folder.is_dir() and not any(p.is_file() for p in folder.iterdir())
                or folder.is_file() and not folder.read_text(encoding="utf-8").strip()):  # an empty split list
            raise UserError(f"the {split} split has no images ({folder}); import labelled images with "
                            "dataset_preparer.py first")
    return classes


def _names(model) -> list[str]:
    names = model.names
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


# ----------------------------------------------------------------------------- run
@holds_workspace_lock("train")
def run(config: TrainConfig, settings: Settings | None = None) -> TrainResult:
    """Train one run (or resume one) and return what the next stage needs.

    ``settings``: the resolved settings of a pipeline run (default: read training.yaml)."""
    # a mistyped --root: one line, nothing written (with --data the dataset is elsewhere and ROOT only
    # receives the runs and reports)
    workspace = Workspace.at(config.root) if config.data else require_workspace(config.root)
    from toolkit.core.offline import prepare_ultralytics

    if config.resume not in (None, False):
        prepare_ultralytics(workspace.ultralytics_config)  # also keeps its notices off stdout
        return _resume(workspace, config)

    config, settings = resolve_config(config, settings or Settings.load(workspace.training_yaml))
    ts = settings.section("training")
    data = Path(config.data).expanduser().resolve() if config.data else workspace.dataset_yaml
    settle_dataset(workspace, data)  # train on the images the manifest lists (an interrupted import finished/undone)
    classes = _check_dataset(data)
    prepare_ultralytics(workspace.ultralytics_config)  # after the checks: a wrong --root is left untouched
    mode, start = resolve_start(workspace, ts["start_from"], ts["arch"])
    name = tr.check_run_name(config.name or "train")
    extra = tr.parse_extra(config.extra)

    from toolkit.core.offline import load_yolo

    notes: list[str] = []
    model = load_yolo(start, workspace.ultralytics_config)  # safe loading: no code from the file runs
    reinit_head = False
    if mode != "scratch":
        model_classes = _names(model)
        if model_classes != classes:
            if not config.new_classes and mode != "pretrained":  # training.arch weights: a new head is the point
                raise UserError(f"the dataset's classes {classes} differ from the starting model's {model_classes} "
                                f"({start}); fix the dataset, or pass --new-classes to train a new class head")
            reinit_head = True
            notes.append(f"new classes: {model_classes} -> {classes}; the class layers of the head were "
                         "re-initialised, backbone, neck and box layers kept from the starting model")
        elif config.new_classes:
            notes.append("--new-classes ignored: the dataset has the starting model's classes")

    machine = mc.detect_machine()
    resolved, machine_notes = mc.resolve_machine_settings(ts, machine)
    notes.extend(machine_notes)
    from toolkit.model.fit import resolve_imgsz, small_defects

    imgsz, imgsz_note = resolve_imgsz(workspace, ts, machine, resolved["device"])  # training.imgsz: auto
    if imgsz_note:
        notes.append(imgsz_note)
    if data == workspace.dataset_yaml:  # the managed dataset: are its defects visible at this size?
        check = small_defects(workspace, imgsz)
        if check.get("words"):
            notes.append(check["words"])
            logger.warning("%s", check["words"])
    args: dict[str, Any] = tr.ultralytics_train_args(data, ts, imgsz, resolved)
    args.update(extra)
    tr.validate_ultralytics_args(args, extra)
    time_limit = ts["time_limit"]
    if time_limit and "," in str(args["device"] or ""):
        # several GPUs: ultralytics trains in DDP worker processes, where the toolkit's callbacks do not
        # run; its own 'time' budget stops the run instead (it also fits the epochs to the time)
        args["time"], time_limit = time_limit, 0.0
        notes.append("several GPUs: --time-limit passed to ultralytics as its 'time' budget (epochs fitted to it)")
    run_dir = tr.new_run_dir(workspace.runs, name)
    args.update({"project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True})
    saved = {"toolkit": {"start_mode": mode, "start_from": start, "data": str(data), "classes": classes,
                         "new_classes": bool(reinit_head), "time_limit": time_limit,
                         "name": name, "machine": machine.describe(), "training": ts},
             "ultralytics": args}
    import yaml

    atomic_write_text(run_dir / tr.SETTINGS_NAME, yaml.safe_dump(to_jsonable(saved), sort_keys=False))
    logger.info("training run %s: from %s (%s), %d epochs at imgsz %d, %d classes", run_dir, start, mode,
                args["epochs"], args["imgsz"], len(classes))
    for note in notes:
        logger.info(note)
    return _train(model, args, run_dir, saved["toolkit"], resumed=False, notes=notes, reinit_head=reinit_head)


def _resume(workspace: Workspace, config: TrainConfig) -> TrainResult:
    given = [f for f in ("start_from", "data", "epochs", "imgsz", "seed", "name") if getattr(config, f) is not None]
    if config.new_classes or tr.parse_extra(config.extra):
        given.append("new_classes" if config.new_classes else "extra")
    if given:
        raise UserError(f"--resume continues a run with its own settings; drop {', '.join(given)} "
                        f"(a resumed run may change only {', '.join(_RESUME_ALLOWED)}), or start a new run")
    run_dir = tr.resolve_resume_dir(workspace.runs, config.resume)
    from toolkit.core.yaml_safe import load_yaml_text

    settings_file = run_dir / tr.SETTINGS_NAME
    saved = load_yaml_text(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    toolkit_saved = dict(saved.get("toolkit") or {})
    last = run_weights(run_dir, "last")
    from toolkit.core.offline import load_yolo

    try:
        model = load_yolo(last, workspace.ultralytics_config)  # safe loading: no code from the file runs
    except UserError as exc:
        raise UserError(f"{exc}; to start afresh: a new run with --from {last}") from None
    ckpt = model.ckpt or {}
    done = int(ckpt.get("epoch", -1)) + 1
    planned = int((ckpt.get("train_args") or {}).get("epochs", 0))
    if ckpt.get("optimizer") is None or done >= planned:
        raise UserError(f"run {run_dir.name} is finished ({done} epochs), nothing to resume; to train further "
                        f"start a new run with --from {run_weights(run_dir)}")
    dropped = tr.truncate_epochs(run_dir / tr.EPOCHS_NAME, done)
    if dropped:
        logger.debug("dropped %d epoch record(s) past last.pt's epoch %d", dropped, done)
    args: dict[str, Any] = {"resume": True, "save_dir": str(run_dir)}
    data = toolkit_saved.get("data") or (saved.get("ultralytics") or {}).get("data")
    if data:
        args["data"] = data
    for key in ("device", "workers", "batch", "patience"):
        value = getattr(config, key)
        if value is not None:
            args[key] = check_value(f"training.{key}", value, f"--{key}")
    if config.time_limit is not None:
        toolkit_saved["time_limit"] = check_value("training.time_limit", config.time_limit, "--time-limit")
    toolkit_saved.setdefault("classes", _names(model))
    toolkit_saved.setdefault("start_from", str(last))
    toolkit_saved["start_mode"] = f"resume of {toolkit_saved.get('start_mode', 'a run')}"
    logger.info("resuming run %s after epoch %d of %d", run_dir.name, done, planned)
    return _train(model, args, run_dir, toolkit_saved, resumed=True, notes=[f"resumed after epoch {done}"],
                  reinit_head=False, epochs_done=done)


def _train(model, args: dict, run_dir: Path, info: dict, resumed: bool, notes: list[str],
           reinit_head: bool, epochs_done: int = 0) -> TrainResult:
    from toolkit.core.progress import progress_enabled

    show = progress_enabled() or logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    monitor = tr.EpochMonitor(run_dir / tr.EPOCHS_NAME, time_limit_hours=float(info.get("time_limit") or 0),
                              reinit_class_head=reinit_head, epochs_done=epochs_done)
    monitor.attach(model)
    t0 = time.time()
    try:
        with tr.ultralytics_output(show_progress=show), tr.sigterm_as_interrupt():
            returned = model.train(**args)
    except KeyboardInterrupt:
        if not run_weights(run_dir, "last").is_file():  # nothing saved yet: nothing to continue
            raise Interrupted(f"training interrupted before its first epoch was saved (run {run_dir}); "
                              "nothing to continue: start the run again") from None
        resume = command("train_yolov8.py", run_dir.parent.parent.parent, "--resume", run_dir)
        of = f" of {monitor.planned_epochs}" if monitor.planned_epochs else ""
        raise Interrupted(f"training interrupted after epoch {monitor.last_epoch}{of} "
                          f"(saved in {run_weights(run_dir, 'last')}); continue it with: {resume}", resume) from None
    seconds = time.time() - t0
    trainer = getattr(model, "trainer", None)

    records = tr.read_epochs(run_dir / tr.EPOCHS_NAME)
    if not records:  # DDP: the callbacks ran in ultralytics' worker processes; use its results.csv
        records = tr.epochs_from_results_csv(run_dir / "results.csv")
        if records:
            atomic_write_text(run_dir / tr.EPOCHS_NAME, "".join(json.dumps(r) + "\n" for r in records))
    metrics = monitor.final_metrics
    if metrics is None:
        results = getattr(returned, "results_dict", returned if isinstance(returned, dict) else None)
        metrics = tr.metrics_from_ultralytics(results)
    epochs_completed = max(monitor.last_epoch, records[-1]["epoch"] if records else 0)
    epochs_planned = int(getattr(trainer, "epochs", 0) or args.get("epochs") or monitor.planned_epochs)
    if monitor.stopped_by_time:
        reason = "time_limit"
    elif (trainer is not None and getattr(trainer.args, "time", None)) or args.get("time"):
        reason = "time_budget"
    elif epochs_completed < epochs_planned:
        reason = "early_stopping"
        notes.append(f"early stopping: no improvement for {monitor.patience} epochs after epoch {monitor.best_epoch}")
    else:
        reason = "completed"
    if reason == "time_limit":
        notes.append(f"time limit of {info.get('time_limit')} h reached: stopped after epoch {epochs_completed}")
    best = run_weights(run_dir)
    last = run_weights(run_dir, "last")
    if not best.is_file():
        raise UserError(f"training ended without a best.pt in {run_dir / 'weights'}; see the log above")
    device = str(getattr(trainer, "device", "") or args.get("device") or "")
    result = TrainResult(
        run_dir=run_dir, best=best, last=last, epochs_completed=int(epochs_completed),
        epochs_planned=epochs_planned, metrics=metrics, seconds=round(seconds, 2),
        start_from=str(info.get("start_from")), start_mode=str(info.get("start_mode")),
        classes=tuple(info.get("classes") or ()), stopped_early=reason != "completed", stop_reason=reason,
        resumed=resumed, device=device, data=Path(str(info.get("data") or args.get("data"))),
        report=run_dir / tr.REPORT_NAME, notes=tuple(notes),
        timing=_timing(model, trainer, args, records, seconds, resumed) or {})
    summary = to_jsonable(result)
    curves = tr.plot_curves(records, run_dir / tr.CURVES_NAME)
    atomic_write_text(result.report, tr.report_markdown(summary, records, curves.name if curves else None))
    atomic_write_json(run_dir / tr.SUMMARY_NAME, summary)  # written last: its presence marks the run finished
    logger.info("run finished (%s): %d epochs, best mAP50 %s mAP50-95 %s -> %s", reason, epochs_completed,
                _fmt(metrics.get("map50")), _fmt(metrics.get("map50_95")), best)
    return result


def _timing(model, trainer, args: dict, records: list[dict], seconds: float, resumed: bool) -> dict | None:
    """This run's seconds per image-epoch on this machine, for later estimates (None: not measurable).

    A resumed run is left out: its first epochs ran in another session.
    """
    if resumed or trainer is None:
        return None
    try:
        train_images = len(trainer.train_loader.dataset)
        val_images = len(trainer.test_loader.dataset) if getattr(trainer, "test_loader", None) else 0
    except (AttributeError, TypeError):
        return None
    arch = ((getattr(model.model, "yaml", None) or {}).get("yaml_file")) or args.get("model") or "yolov8n.yaml"
    return mc.measured_timing(arch=arch, imgsz=int(args["imgsz"]), device=str(args.get("device") or "cpu"),
                              machine=mc.detect_machine(), train_images=train_images, val_images=val_images,
                              epoch_times=[float(r.get("seconds") or 0.0) for r in records], seconds=seconds)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def describe(result: TrainResult) -> str:
    m = result.metrics
    lines = [f"Training run {result.run_dir}",
             f"  from:    {result.start_from} ({result.start_mode})",
             f"  epochs:  {result.epochs_completed}/{result.epochs_planned} ({result.stop_reason}) "
             f"in {tr.format_duration(result.seconds)} on {result.device or 'auto'}",
             f"  best:    {result.best}",
             f"  val:     mAP50 {_fmt(m.get('map50'))}  mAP50-95 {_fmt(m.get('map50_95'))}  "
             f"P {_fmt(m.get('precision'))}  R {_fmt(m.get('recall'))}",
             f"  report:  {result.report}"]
    lines += [f"  note:    {n}" for n in result.notes]
    root = result.run_dir.parent.parent.parent
    lines.append(f"Next: compare it with production on the test split (changes nothing): "
                 f"{command('model_comparator.py', root, '--candidates', result.best)}")
    lines.append(f"      score it and make it production (version 1.0 when there is none yet) if it passes the "
                 f"promotion rules: {command('training_pipeline.py', root, '--candidate', result.best)}")
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="train_yolov8.py")
    add_options(parser, TrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_main(args, lambda a: run(config_from_args(TrainConfig, a)), describe)


if __name__ == "__main__":
    raise SystemExit(main())

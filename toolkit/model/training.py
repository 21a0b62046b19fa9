"""The machinery around one ultralytics training run, kept out of ``train_yolov8.py``.

- run folders ``training/runs/<stamp>-<name>/``, never overwritten, and finding the run to resume;
- ``--set key=value`` checked against ultralytics' own argument list;
- ``EpochMonitor``: ultralytics callbacks that append one record per epoch to ``RUN/epochs.jsonl``,
  log one line per epoch, and stop the run cleanly at the time limit;
- the quiet mode for scheduled runs (ultralytics' banners off, its stdout moved to stderr so
  ``--json`` stays one clean object) and SIGTERM turned into a clean interruption;
- the curves picture and the markdown report of a run.

The machine, its settings and the time estimate are in ``toolkit/model/machine.py``; the choice of a
training strategy and the pipeline's plan in ``toolkit/model/planning.py``.

Nothing here imports torch or ultralytics at module level: ``--help`` stays instant.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from toolkit.core.errors import UserError
from toolkit.core.files import append_jsonl, atomic_write_text
from toolkit.core.layout import run_weights

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
SETTINGS_NAME = "settings.yaml"
EPOCHS_NAME = "epochs.jsonl"
REPORT_NAME = "report.md"
CURVES_NAME = "curves.png"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Ultralytics arguments the toolkit sets itself: --set may not change them (a flag exists, or
# changing them would break the run folder / resume contract).
OWN_FLAGS = {
    "epochs": "--epochs", "imgsz": "--imgsz", "batch": "--batch", "device": "--device",
    "workers": "--workers", "patience": "--patience", "seed": "--seed", "name": "--name",
    "data": "the managed dataset (or TrainConfig.data)", "model": "--from", "resume": "--resume",
    "pretrained": "--from", "project": "the workspace layout", "exist_ok": "the workspace layout",
    "save_dir": "the workspace layout", "mode": "this script", "task": "this script",
    "cfg": "training.yaml",
}

# Ultralytics arguments whose toolkit default differs from ultralytics' own, with the reason.
# plots: ultralytics' plots (labels.jpg, train/val batch mosaics, confusion matrix, PR curves,
# results.png) cost time outside the epoch loop - on CPU, 2 epochs of 60 NEU images at imgsz 64:
# 6.8 s with plots vs 3.8 s without (README.md, "Overhead"); the run's own report.md +
# curves.png cover the same ground. ``--set plots=true`` brings them back.
TOOLKIT_ULTRALYTICS_DEFAULTS = {"plots": False}


def ultralytics_train_args(data: str | Path, ts: Mapping[str, Any], imgsz: int,
                           resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``YOLO.train`` from the training settings: one place for a run and its pilot."""
    return {"data": str(data), "epochs": int(ts.get("epochs") or 1), "imgsz": int(imgsz), **resolved,
            "patience": ts.get("patience", 100), "seed": ts.get("seed", 0), "cache": ts.get("cache") or False,
            "optimizer": ts.get("optimizer", "auto"), **TOOLKIT_ULTRALYTICS_DEFAULTS, **(ts.get("augment") or {})}

# ultralytics metric names -> the toolkit's (DESIGN.md) names
_METRIC_KEYS = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
}


# ----------------------------------------------------------------------------- run folders
def check_run_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '-', '_' or '.', at most 64 characters "
                        "(it becomes part of a folder name)")
    return name


def new_run_dir(runs: Path, name: str) -> Path:
    """Create and return ``runs/<UTC stamp>-<name>``; a clash adds ``-2``, ``-3``: never overwrites."""
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{check_run_name(name)}"
    for i in range(1, 1000):
        candidate = runs / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new run folder in {runs}: too many runs named {base}")


def run_is_finished(run_dir: Path) -> bool:
    """A run is finished when it wrote its summary (completed, early-stopped or time-limited)."""
    return (run_dir / SUMMARY_NAME).is_file()


def resolve_resume_dir(runs: Path, requested: str | Path | bool | None) -> Path:
    """The run folder ``--resume [RUN]`` continues; ``True``/``"last"`` = the newest interrupted run.

    ``requested`` may be a run folder, its ``weights/last.pt``, or a run name under ``runs``.
    A finished run, or one that died before its first epoch was saved, is a ``UserError`` that
    says what to do instead.
    """
    if requested in (True, None, "", "last"):
        candidates = sorted((p for p in runs.glob("*") if p.is_dir()), key=lambda p: p.name, reverse=True) \
            if runs.is_dir() else []
        for run_dir in candidates:
            if run_weights(run_dir, "last").is_file() and not run_is_finished(run_dir):
                return run_dir.resolve()
        finished = [p for p in candidates if run_is_finished(p)]
        if finished:
            raise UserError(f"no interrupted run to resume in {runs}: the latest run {finished[0].name} is finished; "
                            f"to train further start a new run with --from {run_weights(finished[0])}")
        raise UserError(f"no interrupted run to resume in {runs}; start a new run without --resume")
    path = Path(requested).expanduser()
    if not path.exists() and (runs / str(requested)).exists():
        path = runs / str(requested)
    if path.is_file() and path == run_weights(path.parent.parent, "last"):
        path = path.parent.parent
    path = path.resolve()
    if not path.is_dir():
        raise UserError(f"--resume {requested}: no such run folder (runs are in {runs})")
    if run_is_finished(path):
        raise UserError(f"run {path.name} is finished, nothing to resume; to train further start a new run "
                        f"with --from {path / 'weights' / 'best.pt'}")
    if not run_weights(path, "last").is_file():
        raise UserError(f"run {path.name} stopped before its first epoch was saved (no weights/last.pt); "
                        "start a new run instead")
    return path


# ----------------------------------------------------------------------------- settings
def parse_extra(extra: Any) -> dict[str, Any]:
    """``TrainConfig.extra`` (``"k=v"`` strings, ``(k, v)`` pairs or a mapping) to a dict."""
    from toolkit.core.config import parse_set_pairs

    if not extra:
        return {}
    if isinstance(extra, Mapping):
        return dict(extra)
    result: dict[str, Any] = {}
    for item in extra:
        if isinstance(item, str):
            result.update(parse_set_pairs([item]))
        else:
            key, value = item
            result[str(key)] = value
    return result


def validate_ultralytics_args(args: Mapping[str, Any], from_set: Mapping[str, Any]) -> None:
    """Check ``--set`` keys against ultralytics' argument list and all values with its own checks."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg

    for key in from_set:
        if key in OWN_FLAGS:
            raise UserError(f"--set {key}={from_set[key]}: the toolkit sets '{key}' itself; use {OWN_FLAGS[key]} instead")
        if key not in DEFAULT_CFG_DICT:
            import difflib

            close = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"--set {key}={from_set[key]}: '{key}' is not an ultralytics training argument{hint}; "
                            "see https://docs.ultralytics.com/modes/train/#train-settings")
    try:
        get_cfg(overrides={k: v for k, v in args.items() if k != "model"})
    except (TypeError, ValueError, SyntaxError) as exc:
        raise UserError(f"invalid training argument: {exc}") from None


# ----------------------------------------------------------------------------- monitoring
def metrics_from_ultralytics(values: Mapping[str, Any] | None) -> dict[str, float | None]:
    """``{"metrics/mAP50(B)": ..}`` (trainer.metrics / results_dict) -> ``{"map50": ..}``."""
    values = values or {}
    return {ours: (float(values[theirs]) if values.get(theirs) is not None else None)
            for theirs, ours in _METRIC_KEYS.items()}


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EpochMonitor:
    """Ultralytics callbacks: ``epochs.jsonl``, one log line per epoch, the time limit.

    Attach it to one ``YOLO`` object per run (``attach``): the callbacks live on that object
    only, so a second run in the same process starts clean.
    """

    def __init__(self, epochs_path: Path, time_limit_hours: float = 0.0, log_level: int = logging.INFO,
                 reinit_class_head: bool = False, epochs_done: int = 0):
        self.epochs_path = Path(epochs_path)
        self.time_limit_s = float(time_limit_hours or 0) * 3600.0
        self.log_level = log_level
        self.reinit_class_head = reinit_class_head
        self.started = time.time()
        self.epochs_this_session = 0
        self.epoch_trained = False
        self.last_epoch = int(epochs_done)  # 1-based number of the last epoch done (a resumed run: its last.pt's)
        self.planned_epochs = 0
        self.start_epoch = 0
        self.final_metrics: dict[str, float | None] | None = None
        self.stopped_by_time = False
        self.best_epoch: int | None = None
        self.patience: float | None = None
        self.head_reinitialised = False

    def attach(self, model) -> None:
        model.add_callback("on_pretrain_routine_end", self.on_pretrain_routine_end)
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        model.add_callback("on_train_batch_end", self.on_train_batch_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    # -- callbacks (each receives the ultralytics trainer)
    def on_pretrain_routine_end(self, trainer) -> None:
        if self.reinit_class_head and not trainer.resume:
            reinitialise_class_head(trainer)
            self.head_reinitialised = True

    def on_train_start(self, trainer) -> None:
        self.started = time.time()
        self.start_epoch = int(trainer.start_epoch)
        self.planned_epochs = int(trainer.epochs)
        self.last_epoch = max(self.last_epoch, self.start_epoch)  # a resumed run: its epochs done before

    def on_train_epoch_end(self, trainer) -> None:
        self.epoch_trained = True

    def on_train_batch_end(self, trainer) -> None:
        # A first epoch longer than the whole limit: stop between batches (ultralytics then
        # validates, saves last.pt / best.pt and ends the run as for its own 'time' argument).
        if self.time_limit_s and time.time() - self.started > self.time_limit_s:
            self.stopped_by_time = True
            trainer.stop = True

    def on_fit_epoch_end(self, trainer) -> None:
        if not self.epoch_trained:
            # ultralytics' final validation of best.pt calls this hook once more, with no epoch trained
            self.final_metrics = metrics_from_ultralytics(trainer.metrics)
            return
        self.epoch_trained = False
        epoch = int(trainer.epoch) + 1
        self.epochs_this_session += 1
        self.last_epoch = epoch
        self.planned_epochs = int(trainer.epochs)
        now = time.time()
        elapsed = now - self.started
        mean_epoch = elapsed / self.epochs_this_session
        remaining = max(self.planned_epochs - epoch, 0)
        if self.time_limit_s and not trainer.stop and remaining and elapsed + mean_epoch > self.time_limit_s:
            # the next epoch would end past the limit: stop now, at an epoch boundary
            self.stopped_by_time = True
            trainer.stop = True
        if trainer.stop:
            remaining = 0
        stopper = getattr(trainer, "stopper", None)
        if stopper is not None:
            self.best_epoch = getattr(stopper, "best_epoch", None)
            self.patience = getattr(stopper, "patience", None)
        losses = {}
        if trainer.tloss is not None:
            losses = {k.split("/", 1)[-1]: float(v) for k, v in trainer.label_loss_items(trainer.tloss).items()}
        metrics = metrics_from_ultralytics(trainer.metrics)
        lr = getattr(trainer, "lr", None) or {}
        record = {
            "epoch": epoch,
            "epochs": self.planned_epochs,
            "losses": losses,
            **metrics,
            "fitness": float(trainer.fitness) if trainer.fitness is not None else None,
            "lr": float(next(iter(lr.values()))) if lr else None,
            "seconds": round(float(trainer.epoch_time or 0.0), 3),
            "elapsed_seconds": round(elapsed, 3),
            "eta_seconds": round(mean_epoch * remaining, 1),
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        append_jsonl(self.epochs_path, record)
        logger.log(self.log_level, "epoch %d/%d  box %.3f cls %.3f  P %.3f R %.3f  mAP50 %.3f mAP50-95 %.3f  %s  ETA %s",
                   epoch, self.planned_epochs, losses.get("box_loss", float("nan")), losses.get("cls_loss", float("nan")),
                   *(metrics[k] if metrics[k] is not None else float("nan")
                     for k in ("precision", "recall", "map50", "map50_95")),
                   format_duration(record["seconds"]), format_duration(record["eta_seconds"]))


def reinitialise_class_head(trainer) -> None:
    """Fresh class-score layers in the Detect head (box layers and backbone keep their weights).

    Ultralytics already re-initialises them when the number of classes changes (their shapes no
    longer match); with the same number of classes but other names, the old layers would carry
    the old classes' meaning, so they are reset here too.
    """
    from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

    model = unwrap_model(trainer.model)
    head = model.model[-1]
    for i, branch in enumerate(head.cv3):
        conv = branch[-1]
        conv.reset_parameters()
        stride = float(head.stride[i]) if len(head.stride) > i else 8.0 * 2 ** i
        conv.bias.data[: head.nc] = math.log(5 / head.nc / (640 / stride) ** 2)  # ultralytics' bias prior
    trainer.ema = ModelEMA(trainer.model)
    logger.info("new classes: the class layers of the detection head start afresh; backbone, neck and box "
                "layers keep the starting model's weights")


def read_epochs(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: drop it
                continue
    return records


def truncate_epochs(path: Path, last_epoch: int) -> int:
    """Keep the records of epochs ``<= last_epoch`` (the ones last.pt holds); return how many were dropped.

    After an interruption the resumed run starts at last.pt's epoch + 1, so any record past it
    would be written twice.
    """
    records = read_epochs(path)
    kept = [r for r in records if int(r.get("epoch", 0)) <= last_epoch]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


def epochs_from_results_csv(csv_path: Path) -> list[dict]:
    """Epoch records from ultralytics' ``results.csv`` (the DDP case, where callbacks run in workers)."""
    if not Path(csv_path).is_file():
        return []
    records = []
    with open(csv_path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip(): v for k, v in row.items() if k}
            try:
                epoch = int(float(row["epoch"]))
            except (KeyError, ValueError):
                continue
            losses = {k.split("/", 1)[1]: float(v) for k, v in row.items() if k.startswith("train/")}
            metrics = metrics_from_ultralytics({k: float(v) for k, v in row.items() if k in _METRIC_KEYS})
            lr = next((float(v) for k, v in row.items() if k.startswith("lr/")), None)
            records.append({"epoch": epoch, "losses": losses, **metrics, "lr": lr,
                            "elapsed_seconds": float(row.get("time", 0) or 0)})
    return records


# ----------------------------------------------------------------------------- quiet / signals
@contextlib.contextmanager
def ultralytics_output(show_progress: bool) -> Iterator[None]:
    """Route ultralytics' output to stderr; with ``show_progress=False`` only its warnings remain.

    Ultralytics logs and draws its progress bars on stdout, which must hold nothing but the
    ``--json`` object. Everything is restored on exit (the pipeline trains several times).
    """
    from ultralytics.utils import LOGGER

    handlers = [h for h in LOGGER.handlers if type(h) is logging.StreamHandler]  # not pytest's or a caller's
    streams = [h.stream for h in handlers]
    level = LOGGER.level
    try:
        for h in handlers:
            h.stream = sys.stderr  # no setStream: it flushes the old stream, which may be closed
        if not show_progress:
            LOGGER.setLevel(logging.WARNING)  # also disables ultralytics' TQDM bars
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, s in zip(handlers, streams):
            h.stream = s
        LOGGER.setLevel(level)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler ending the task) interrupts like Ctrl+C, so the run can say how to resume."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- report
def plot_curves(records: list[dict], png: Path) -> Path | None:
    """Losses and validation metrics per epoch in one picture; ``None`` when there is nothing to draw."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in records for k in (r.get("losses") or {})}):
        ax_loss.plot(epochs, [(r.get("losses") or {}).get(key) for r in records], marker=".", label=key)
    ax_loss.set_title("training losses")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend(fontsize=8)
    for key, label in (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("precision", "precision"), ("recall", "recall")):
        values = [r.get(key) for r in records]
        ax_map.plot(epochs, [v if v is not None else float("nan") for v in values], marker=".", label=label)
    ax_map.set_title("validation")
    ax_map.set_xlabel("epoch")
    ax_map.set_ylim(0, 1)
    ax_map.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def report_markdown(summary: Mapping[str, Any], records: list[dict], curves: str | None) -> str:
    from toolkit.core.reports import markdown_table, md, md_code

    m = summary.get("metrics") or {}

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"# Training run {md(Path(str(summary['run_dir'])).name)}",
        "",
        f"- started from: {md_code(summary.get('start_from'))} ({md(summary.get('start_mode'))})",
        f"- dataset: {md_code(summary.get('data'))}  ({len(summary.get('classes') or [])} classes: "
        f"{md(', '.join(summary.get('classes') or []))})",
        f"- epochs: {summary.get('epochs_completed')} of {summary.get('epochs_planned')} "
        f"({summary.get('stop_reason')}); {format_duration(summary.get('seconds'))} on {summary.get('device') or 'auto'}",
        f"- best model: {md_code(summary.get('best'))}",
        f"- validation of best.pt: mAP50 {num(m.get('map50'))}, mAP50-95 {num(m.get('map50_95'))}, "
        f"precision {num(m.get('precision'))}, recall {num(m.get('recall'))}",
    ]
    for note in summary.get("notes") or []:
        lines.append(f"- {md(note)}")
    lines.append("")
    if curves:
        lines += [f"![training curves]({curves})", ""]
    if records:
        rows = [[r.get("epoch"), *((r.get("losses") or {}).get(k) for k in ("box_loss", "cls_loss", "dfl_loss")),
                 r.get("precision"), r.get("recall"), r.get("map50"), r.get("map50_95"),
                 format_duration(r.get("seconds"))] for r in records]
        rows = [[("" if v is None else v) for v in row] for row in rows]
        lines += ["## Epochs", "", markdown_table(
            ["epoch", "box loss", "cls loss", "dfl loss", "P", "R", "mAP50", "mAP50-95", "time"], rows)]
    best = summary.get("best")
    if best and len(Path(best).parents) > 4:  # ROOT/training/runs/<run>/weights/best.pt
        from toolkit.core.layout import command

        root = Path(best).parents[4]
        lines += [f"Next: compare it with the production model on the test split: "
                  f"{md_code(command('model_comparator.py', root, '--candidates', best))}; score and promote it: "
                  f"{md_code(command('training_pipeline.py', root, '--candidate', best))}", ""]
    return "\n".join(lines)

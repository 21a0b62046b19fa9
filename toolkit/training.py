"""The machinery around one ultralytics training run, kept out of ``train_yolov8.py``.

- run folders ``training/runs/<stamp>-<name>/``, never overwritten, and finding the run to resume;
- ``--set key=value`` checked against ultralytics' own argument list;
- ``EpochMonitor``: ultralytics callbacks that append one record per epoch to ``RUN/epochs.jsonl``,
  log one line per epoch, and stop the run cleanly at the time limit;
- the quiet mode for scheduled runs (ultralytics' banners off, its stdout moved to stderr so
  ``--json`` stays one clean object) and SIGTERM turned into a clean interruption;
- the curves picture and the markdown report of a run;
- device-aware defaults (``workers`` / ``batch`` / ``device`` left at "auto" resolved from the
  machine), a rough time estimate for ``--dry-run``, and the choice of a training strategy
  (``finetune`` / ``scratch`` / ``both`` / ``auto``) from evidence, with its reason.

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
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from toolkit.errors import UserError
from toolkit.files import append_jsonl, atomic_write_text
from toolkit.layout import run_weights

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
    from toolkit.config import parse_set_pairs

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
            raise UserError(f"--set {key}=...: the toolkit sets '{key}' itself; use {OWN_FLAGS[key]} instead")
        if key not in DEFAULT_CFG_DICT:
            import difflib

            close = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"--set {key}=...: '{key}' is not an ultralytics training argument{hint}; "
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
                 reinit_class_head: bool = False):
        self.epochs_path = Path(epochs_path)
        self.time_limit_s = float(time_limit_hours or 0) * 3600.0
        self.log_level = log_level
        self.reinit_class_head = reinit_class_head
        self.started = time.time()
        self.epochs_this_session = 0
        self.epoch_trained = False
        self.last_epoch = 0           # 1-based number of the last epoch logged
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
    from toolkit.reports import markdown_table, md, md_code

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
    lines += [f"Next: compare {md_code(summary.get('best'))} with the production model on the test split "
              "(model_comparator.py).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the machine
@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float


@dataclass(frozen=True)
class Machine:
    """What device-aware defaults look at: CPU cores this process may use, and the CUDA GPUs."""

    cores: int
    gpus: tuple[Gpu, ...] = ()

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.cores} CPU cores, no CUDA GPU"
        names = ", ".join(f"{g.name} ({g.memory_gb:.0f} GB)" for g in self.gpus)
        return f"{self.cores} CPU cores, {len(self.gpus)} CUDA GPU(s): {names}"


def detect_machine() -> Machine:
    """The cores usable by this process (its CPU affinity where the OS has one) and the CUDA GPUs."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    gpus: list[Gpu] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append(Gpu(str(props.name), props.total_memory / 1024 ** 3))
    except Exception as exc:  # a broken CUDA setup trains on the CPU, as ultralytics would
        logger.debug("no CUDA GPU usable: %s", exc)
    return Machine(cores=max(1, int(cores)), gpus=tuple(gpus))


def _is_auto(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "auto")


def _device_indices(device: str, machine: Machine) -> list[int]:
    text = str(device).strip().lower()
    if text in ("cpu", "mps"):
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"training.device {device!r}: use cpu, a GPU number such as 0, or several like 0,1") from None


# Batch 64 is ultralytics' nominal batch size (nbs): at 64 it accumulates no gradients and its
# optimiser steps as documented; it is what the H100 figures of issue 11 used (YOLOv8n at 640 uses
# a few GB). Larger architectures or small GPUs get ultralytics' AutoBatch (-1), which measures
# the largest batch that fits 60% of the GPU's memory.
_GPU_BATCH = 64
_GPU_BATCH_MIN_GB = 16.0
_GPU_WORKERS_MAX = 8  # ultralytics' default; the H100 figures used 8 of 16 cores


def resolve_machine_settings(ts: Mapping[str, Any], machine: Machine) -> tuple[dict[str, Any], list[str]]:
    """``device`` / ``workers`` / ``batch`` of the training settings, "auto" resolved from the machine.

    Returns the three values and one note per value that was chosen here (what and why).
    A value the user set is kept as it is.
    """
    notes: list[str] = []
    device = ts.get("device")
    if _is_auto(device):
        device = "0" if machine.gpus else "cpu"
        notes.append(f"device auto -> {device} ({machine.describe()})")
    device = str(device).strip()
    indices = _device_indices(device, machine)
    for i in indices:
        if i >= len(machine.gpus):
            raise UserError(f"training.device {device!r}: this machine has {len(machine.gpus)} CUDA GPU(s); "
                            "use cpu, or a GPU number it has")
    used = [machine.gpus[i] for i in indices]

    workers = ts.get("workers")
    if _is_auto(workers):
        if not used:
            workers = 0
            notes.append("workers auto -> 0 (on a CPU ultralytics loads the data in the training process)")
        else:
            per_gpu = machine.cores // len(used)
            workers = max(1, min(_GPU_WORKERS_MAX, per_gpu - 1))
            notes.append(f"workers auto -> {workers} per GPU ({machine.cores} cores for {len(used)} GPU(s), "
                         f"one core left to the training process, at most {_GPU_WORKERS_MAX})")
    batch = ts.get("batch")
    if _is_auto(batch):
        arch = Path(str(ts.get("arch") or "yolov8n.yaml")).stem.lower()
        small_arch = arch.endswith(("n", "s"))
        if not used:
            batch = 16
            notes.append("batch auto -> 16 (CPU)")
        elif small_arch and min(g.memory_gb for g in used) >= _GPU_BATCH_MIN_GB:
            batch = _GPU_BATCH * len(used)
            notes.append(f"batch auto -> {batch} ({_GPU_BATCH} per GPU: ultralytics' nominal batch, fits "
                         f"{arch} on a GPU of {_GPU_BATCH_MIN_GB:.0f} GB or more)")
        elif len(used) == 1:
            batch = -1
            notes.append(f"batch auto -> -1 (ultralytics AutoBatch measures what fits {used[0].name})")
        else:
            batch = 16 * len(used)
            notes.append(f"batch auto -> {batch} (16 per GPU; AutoBatch works on one GPU only)")
    try:
        workers = int(workers)
        share = isinstance(batch, float) and 0 < batch < 1  # ultralytics: a share of the GPU's memory
        batch = float(batch) if share else int(batch)
    except (TypeError, ValueError):
        raise UserError(f"training.workers {workers!r} / training.batch {batch!r}: use a whole number or auto") from None
    return {"device": device, "workers": workers, "batch": batch}, notes


# ----------------------------------------------------------------------------- time estimate
# Seconds per training image and epoch at 640 px for YOLOv8n (validation of a tenth as many images
# included), measured:
#  - GPU: one H100, 1440 images, batch 64, workers 8: 141 s for 50 epochs (issue 11) -> 1.84 ms;
#  - CPU: this project's 2-core build machine, imgsz 160 and 320 (time grows with imgsz squared,
#    measured 4.05x from 160 to 320): 0.49 core-seconds per image at 640.
# Other GPUs and CPUs differ: the estimate is "about", for planning a night, not a promise.
_GPU_S_PER_IMAGE_640 = 1.84e-3
_CPU_CORE_S_PER_IMAGE_640 = 0.49
_ARCH_COST = {"n": 1.0, "s": 2.5, "m": 6.5, "l": 13.0, "x": 20.0}  # ~ training FLOPs relative to n (8.7 GFLOPs)
_SETUP_S = {"gpu": 15.0, "cpu": 10.0}


def estimate_train_seconds(train_images: int, epochs: int, imgsz: int, device: str, machine: Machine,
                           arch: str = "yolov8n.yaml", val_images: int = 0) -> float:
    """About how long one training run takes (seconds), from image count, epochs, imgsz, device."""
    stem = Path(str(arch)).stem.lower()
    scale = _ARCH_COST.get(stem[-1:] if stem.startswith("yolov8") else "n", 1.0) * (float(imgsz) / 640.0) ** 2
    images = max(0, int(train_images)) + 0.5 * max(0, int(val_images)) / 3.0  # val: inference only
    indices = _device_indices(device, machine)
    if indices:
        per_epoch = images * _GPU_S_PER_IMAGE_640 * scale / max(1, len(indices))
        setup = _SETUP_S["gpu"]
    else:
        per_epoch = images * _CPU_CORE_S_PER_IMAGE_640 * scale / max(1, machine.cores)
        setup = _SETUP_S["cpu"]
    return setup + per_epoch * max(0, int(epochs))


# ----------------------------------------------------------------------------- strategy
STRATEGIES = ("auto", "finetune", "scratch", "both")

# auto picks scratch when the training set grew at least this much since the data production was
# trained on. Evidence (issue 11, one H100, NEU-DET): production trained on 720 images; with the
# training set doubled (2.0x), fine-tuning it reached 0.755 / 0.434 test mAP50 / mAP50-95 and a
# retrain from scratch 0.786 / 0.453. Growth below 1.5x is unmeasured: fine-tuning, the cheaper
# route, is the default there.
GROWTH_FOR_SCRATCH = 1.5


@dataclass(frozen=True)
class StrategyEvidence:
    production: bool                        # a production model exists to fine-tune
    classes_changed: bool | None = None     # the dataset's classes differ from production's (None: unknown)
    train_images: int = 0                   # training images now
    train_images_at_production: int | None = None  # when production was trained (None: not recorded)
    production_dataset_version: Any = None
    estimate_finetune_s: float | None = None
    estimate_scratch_s: float | None = None
    time_budget_s: float = 0.0              # training.time_limit in seconds; 0: none

    @property
    def growth(self) -> float | None:
        if not self.train_images_at_production:
            return None
        return self.train_images / self.train_images_at_production


@dataclass(frozen=True)
class StrategyChoice:
    requested: str
    strategy: str                           # finetune | scratch | both
    routes: tuple[str, ...]                 # the runs to train, in order
    reason: str
    evidence: dict = field(default_factory=dict)


def check_strategy(value: Any) -> str:
    text = str(value or "auto").strip().lower()
    if text not in STRATEGIES:
        raise UserError(f"training.strategy {value!r}: use one of {', '.join(STRATEGIES)}")
    return text


def _fits(seconds: float | None, budget: float) -> bool:
    return not budget or seconds is None or seconds <= budget


def choose_strategy(requested: Any, ev: StrategyEvidence) -> StrategyChoice:
    """The routes to train, and why: ``requested`` is finetune | scratch | both | auto."""
    requested = check_strategy(requested)
    evidence = {"production": ev.production, "classes_changed": ev.classes_changed,
                "train_images": ev.train_images, "train_images_at_production": ev.train_images_at_production,
                "production_dataset_version": ev.production_dataset_version,
                "growth": round(ev.growth, 3) if ev.growth is not None else None,
                "estimate_finetune_s": ev.estimate_finetune_s, "estimate_scratch_s": ev.estimate_scratch_s,
                "time_budget_s": ev.time_budget_s}

    def pick(strategy: str, reason: str) -> StrategyChoice:
        routes = ("finetune", "scratch") if strategy == "both" else (strategy,)
        return StrategyChoice(requested, strategy, routes, reason, evidence)

    if requested in ("finetune", "both") and not ev.production:
        return pick("scratch", f"strategy {requested}, but there is no production model to fine-tune: scratch only")
    if requested != "auto":
        return pick(requested, f"strategy {requested} (set in training.yaml or --strategy)")
    if not ev.production:
        return pick("scratch", "auto: no production model to fine-tune")
    if ev.classes_changed:
        return pick("scratch", "auto: the dataset's classes differ from the production model's, "
                               "so its class head does not fit; training from scratch")
    budget = float(ev.time_budget_s or 0)
    growth = ev.growth
    if growth is None:
        both = (ev.estimate_finetune_s or 0) + (ev.estimate_scratch_s or 0)
        if _fits(both, budget):
            return pick("both", "auto: how much the data grew since production was trained is not recorded "
                                "(no dataset version in the registry); training both and letting the comparator "
                                "promote the better passing one")
        return pick("finetune", f"auto: growth since production unknown and both routes (about "
                                f"{format_duration(both)}) exceed the time budget of {format_duration(budget)}; "
                                "fine-tuning, the cheaper route")
    grew = f"the training set grew {growth:.2f}x since production's dataset (v{ev.production_dataset_version}: " \
           f"{ev.train_images_at_production} -> {ev.train_images} images)"
    if growth >= GROWTH_FOR_SCRATCH:
        if _fits(ev.estimate_scratch_s, budget):
            return pick("scratch", f"auto: {grew}, at least {GROWTH_FOR_SCRATCH}x: a retrain from scratch beat "
                                   "fine-tuning when NEU-DET's data doubled (H100: 0.786/0.453 vs 0.755/0.434)")
        return pick("finetune", f"auto: {grew}, but a scratch run (about {format_duration(ev.estimate_scratch_s)}) "
                                f"exceeds the time budget of {format_duration(budget)}; fine-tuning")
    return pick("finetune", f"auto: {grew}, below {GROWTH_FOR_SCRATCH}x: fine-tuning production (cheaper)")


def _train_images_in_manifest(manifest: Mapping[str, Any]) -> int:
    return sum(1 for e in manifest.get("images") or () if e.get("split") == "train")


def gather_evidence(workspace, ts: Mapping[str, Any], machine: Machine, device: str,
                    read_only: bool = False, extra_train_images: int = 0) -> StrategyEvidence:
    """What ``auto`` decides from, read from the workspace.

    ``read_only`` (``--dry-run``): the production model's classes only from its registry entry,
    never by loading it (loading prepares ultralytics' settings folder in the workspace).
    ``extra_train_images``: training images not imported yet (a dry run counts pending batches).
    """
    from toolkit.datafile import read_class_names

    production = workspace.production_model.exists()
    train_dir = workspace.images_dir("train")
    train_now = sum(1 for p in train_dir.iterdir() if p.is_file()) if train_dir.is_dir() else 0
    val_dir = workspace.images_dir("val")
    val_now = sum(1 for p in val_dir.iterdir() if p.is_file()) if val_dir.is_dir() else 0
    if workspace.manifest.is_file():
        try:
            train_now = _train_images_in_manifest(json.loads(workspace.manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as exc:
            logger.debug("manifest unreadable (%s): counting the image files", exc)
    train_now += max(0, int(extra_train_images))
    classes_changed = None
    at_production = None
    version = None
    if production:
        from toolkit.offline import model_class_names
        from toolkit.registry import Registry

        try:
            entry = Registry.load(workspace).production_entry() or {}
        except Exception as exc:
            logger.debug("registry unreadable: %s", exc)
            entry = {}
        try:
            dataset_classes = read_class_names(workspace.dataset_yaml) if workspace.dataset_yaml.is_file() else None
            model_classes = entry.get("classes")
            if not model_classes and not read_only:
                model_classes = model_class_names(workspace.production_model, workspace.ultralytics_config)
            if dataset_classes is not None and model_classes:
                classes_changed = list(dataset_classes) != list(model_classes)
        except Exception as exc:  # the training step reports an unreadable model with its own message
            logger.debug("could not compare classes: %s", exc)
        version = entry.get("dataset_version")
        if version is not None and str(version).isdigit():
            from toolkit.dataset.manifest import manifest_history_path

            old = manifest_history_path(workspace, int(version))
            try:
                at_production = _train_images_in_manifest(json.loads(old.read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError):
                at_production = None
    epochs, imgsz, arch = int(ts.get("epochs") or 0), int(ts.get("imgsz") or 640), str(ts.get("arch") or "yolov8n.yaml")
    estimate = estimate_train_seconds(train_now, epochs, imgsz, device, machine, arch, val_now)
    return StrategyEvidence(production=production, classes_changed=classes_changed, train_images=train_now,
                            train_images_at_production=at_production or None, production_dataset_version=version,
                            estimate_finetune_s=round(estimate, 1) if production else None,
                            estimate_scratch_s=round(estimate, 1),
                            time_budget_s=float(ts.get("time_limit") or 0) * 3600.0)


# ----------------------------------------------------------------------------- a training plan
ROUTE_START = {"finetune": "production", "scratch": "scratch"}
NIGHT_S = 8 * 3600.0  # a run longer than this does not fit in a night


@dataclass(frozen=True)
class TrainingPlan:
    """What the pipeline's train stage will do: the strategy choice, the machine settings, the estimate."""

    choice: StrategyChoice
    machine: str
    device: str
    workers: int
    batch: int
    starts: dict                    # route -> start_from given to train_yolov8 (production | scratch | PATH)
    estimate_s: dict                # route -> about how many seconds
    notes: tuple[str, ...] = ()
    time_limit_h: float = 0.0

    def describe(self) -> str:
        runs = ", ".join(f"{r} (about {format_duration(self.estimate_s.get(r))})" for r in self.choice.routes)
        text = (f"strategy {self.choice.requested} -> {self.choice.strategy}: train {runs} on {self.device}, "
                f"workers {self.workers}, batch {self.batch} ({self.machine}); {self.choice.reason}")
        total = sum(v for v in self.estimate_s.values() if v)
        if total > NIGHT_S and not self.time_limit_h:
            text += (f"; about {format_duration(total)} in all, more than a night: set training.time_limit "
                     "(hours; the run stops cleanly with its best epoch) or a smaller imgsz")
        return text


def plan_training(workspace, ts: Mapping[str, Any], strategy: Any = None, start_from: Any = None,
                  machine: Machine | None = None, read_only: bool = False,
                  extra_train_images: int = 0) -> TrainingPlan:
    """The routes to train and why, from ``training.strategy`` (or ``strategy``) and the workspace.

    An explicit ``start_from`` (``--from``) trains that one starting point: the strategy is not used.
    Nothing in the workspace is changed (``--dry-run`` calls this too).
    """
    machine = machine or detect_machine()
    resolved, notes = resolve_machine_settings(ts, machine)
    requested = check_strategy(strategy if strategy not in (None, "") else ts.get("strategy", "auto"))
    ev = gather_evidence(workspace, ts, machine, resolved["device"], read_only=read_only,
                         extra_train_images=extra_train_images)
    explicit = str(start_from).strip() if start_from not in (None, "") else ""
    if explicit:
        route = {"production": "finetune", "scratch": "scratch"}.get(explicit, "path")
        choice = StrategyChoice(requested, route, (route,), f"--from {explicit} given: that starting point only "
                                f"(strategy {requested} not used)", {})
        starts = {route: explicit}
    else:
        choice = choose_strategy(requested, ev)
        starts = {r: ROUTE_START[r] for r in choice.routes}
    estimate = {r: (ev.estimate_finetune_s if r == "finetune" else ev.estimate_scratch_s) for r in choice.routes}
    return TrainingPlan(choice=choice, machine=machine.describe(), device=resolved["device"],
                        workers=resolved["workers"], batch=resolved["batch"], starts=starts,
                        estimate_s={r: (v if v is not None else ev.estimate_scratch_s) for r, v in estimate.items()},
                        notes=tuple(notes), time_limit_h=float(ts.get("time_limit") or 0))


@dataclass(frozen=True)
class TrainedRoutes:
    """The runs the pipeline's train stage made, one per route, with the strategy that chose them."""

    requested: str
    strategy: str
    reason: str
    evidence: dict
    runs: dict                      # route -> train_yolov8.TrainResult, in training order
    plan: str = ""

    @property
    def candidates(self) -> dict:
        return {route: Path(r.best) for route, r in self.runs.items()}

    def route_of(self, path: str | Path) -> str | None:
        target = Path(path).resolve()
        return next((route for route, best in self.candidates.items() if best.resolve() == target), None)

    def summary(self, compared: Any = None) -> dict:
        """The strategy and every candidate with its route, and (after the comparison) its test score."""
        entries = {str(Path(m["path"]).resolve()): m for m in (getattr(compared, "models", None) or ())}
        verdicts = {str(Path(v["path"]).resolve()): v
                    for v in ((getattr(compared, "decision", None) or {}).get("candidates") or ())}
        winner = getattr(compared, "winner", None)
        promote = bool((getattr(compared, "decision", None) or {}).get("promote"))
        rows = []
        for route, run in self.runs.items():
            key = str(Path(run.best).resolve())
            entry, verdict = entries.get(key) or {}, verdicts.get(key) or {}
            rows.append({"route": route, "path": str(run.best), "run_dir": str(run.run_dir),
                         "start_from": str(run.start_from), "epochs": run.epochs_completed,
                         "seconds": run.seconds, "val": dict(run.metrics),
                         "test": {k: entry.get(k) for k in ("map50", "map50_95", "precision", "recall")} if entry else None,
                         "passes": verdict.get("passes"),
                         "promoted": bool(promote and winner and Path(winner).resolve() == Path(key))})
        return {"requested": self.requested, "strategy": self.strategy, "reason": self.reason,
                "evidence": self.evidence, "plan": self.plan, "candidates": rows}

"""Know the machine before the first run: a pilot of a few real training iterations of this dataset.

The built-in table (``machine.estimate_train_seconds``) was measured elsewhere; on a new machine it
was 3.3x and 8.8x off. So, with no measured run of the same architecture, imgsz and device in the
workspace's history, the plan (``--dry-run`` and the pipeline's train stage) first times a pilot:

- the real dataset (its full training list: the dataset scan and the label cache cost what they
  will cost), the planned imgsz, batch, workers, device, augmentation and starting model;
- the first ``PILOT_BATCHES`` training batches, or ``PILOT_ITER_S`` seconds of them, then one
  validation pass over ``PILOT_VAL_BATCHES`` validation batches; with the model's setup this keeps
  a pilot to about a minute;
- from it: the setup time (call -> first batch), seconds per training image (the batches after the
  first, which also starts the data loader) and per validation image.

The record it leaves in the history (``pilot: true``) has the fields of a real run's timing, so the
estimate reads it the same way: per epoch, the training images plus one validation pass; fixed, the
setup plus the final validation of best.pt. A real run of the same settings replaces it.

An epoch of fewer than ``PILOT_MIN_BATCHES`` batches is not piloted: the pilot would be most of an
epoch, which the first real run times as well.
"""
from __future__ import annotations

import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Mapping

from toolkit.model.machine import Machine, device_key, work_images

logger = logging.getLogger(__name__)

PILOT_BATCHES = 20        # training batches timed at most (after the first)
PILOT_ITER_S = 30.0       # ... or this many seconds of training iterations, whichever comes first
PILOT_VAL_BATCHES = 2     # validation batches (ultralytics validates at twice the training batch)
PILOT_MIN_BATCHES = 8     # fewer batches per epoch: no pilot (the first run is about as short)


def pilot_worthwhile(train_images: int, batch: Any) -> bool:
    """At least ``PILOT_MIN_BATCHES`` batches per epoch (AutoBatch -1 / a share: assumed so)."""
    try:
        size = int(batch)
    except (TypeError, ValueError):
        size = 16
    size = size if size > 0 else 16
    return int(train_images) >= PILOT_MIN_BATCHES * size


class _Clock:
    """Ultralytics callbacks that time the pilot and stop it after a few batches."""

    def __init__(self, max_batches: int, max_seconds: float):
        self.max_batches, self.max_seconds = max_batches, max_seconds
        self.train_start = self.epoch_start = self.iter_end = self.val_end = None
        self.batch_ends: list[float] = []
        self.batch_size = 0

    def attach(self, model) -> None:
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_epoch_start", self.on_train_epoch_start)
        model.add_callback("on_train_batch_end", self.on_train_batch_end)
        model.add_callback("on_train_epoch_end", self.on_train_epoch_end)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def on_train_start(self, trainer) -> None:
        self.train_start = time.perf_counter()
        self.batch_size = int(getattr(trainer, "batch_size", 0) or 0)

    def on_train_epoch_start(self, trainer) -> None:
        if self.epoch_start is None:
            self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer) -> None:
        now = time.perf_counter()
        self.batch_ends.append(now)
        if len(self.batch_ends) > self.max_batches or now - self.epoch_start > self.max_seconds:
            trainer.stop = True

    def on_train_epoch_end(self, trainer) -> None:
        if self.iter_end is None:
            self.iter_end = time.perf_counter()
        trainer.stop = True  # one (partial) epoch is all a pilot trains

    def on_fit_epoch_end(self, trainer) -> None:
        if self.val_end is None:
            self.val_end = time.perf_counter()


def _pilot_data(workspace, folder: Path, val_count: int) -> Path:
    """A data yaml: the managed training list as it is, the first ``val_count`` validation images."""
    import yaml

    from toolkit.core.datafile import read_class_names

    names = read_class_names(workspace.dataset_yaml)
    base = workspace.split_list("train").parent
    val_lines = [line.strip() for line in workspace.split_list("val").read_text(encoding="utf-8").splitlines()
                 if line.strip()][:val_count]
    val_list = folder / "val.txt"
    val_list.write_text("".join(f"{(base / line).resolve()}\n" for line in val_lines), encoding="utf-8")
    data = {"path": str(base.resolve()), "train": str(workspace.split_list("train").resolve()),
            "val": str(val_list.resolve()), "names": dict(enumerate(names))}
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_pilot(workspace, start_model: str, arch: str, ts: Mapping[str, Any], resolved: Mapping[str, Any],
              machine: Machine, val_images: int) -> dict[str, Any] | None:
    """Time a few real training iterations of this dataset at the planned settings (see the module).

    ``start_model``: what the run starts from (production, a yaml, the user's .pt); ``arch``: the
    architecture name the record is kept under; ``resolved``: device / workers / batch for this
    machine. Returns the timing record (None when the pilot could not run; the reason is logged).
    """
    from toolkit.core.offline import load_yolo
    from toolkit.model.training import ultralytics_output, ultralytics_train_args

    folder = workspace.cache / "pilot"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    batch = resolved["batch"] if isinstance(resolved["batch"], int) and resolved["batch"] > 0 else 16
    val_count = max(1, min(int(val_images), PILOT_VAL_BATCHES * 2 * batch))
    clock = _Clock(PILOT_BATCHES, PILOT_ITER_S)
    started = time.perf_counter()
    try:
        data = _pilot_data(workspace, folder, val_count)
        model = load_yolo(start_model, workspace.ultralytics_config)
        clock.attach(model)
        args = {**ultralytics_train_args(data, ts, int(ts["imgsz"]), resolved),
                "save": False, "val": True, "project": str(folder), "name": "run", "exist_ok": True}
        t0 = time.perf_counter()
        try:
            with ultralytics_output(show_progress=False):
                model.train(**args)
        except FileNotFoundError as exc:  # save=False: no checkpoint to hand back, the timing is what counts
            if clock.val_end is None:
                raise
            logger.debug("pilot: %s", exc)
        trainer = model.trainer
        train_images = len(trainer.train_loader.dataset)
    except Exception as exc:  # a pilot that cannot run leaves the estimate to the table, and the run reports it
        logger.warning("the pilot could not run (%s: %s); the estimate stays the built-in table's",
                       type(exc).__name__, str(exc)[:200])
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ends = clock.batch_ends
    if clock.train_start is None or clock.iter_end is None or not ends:
        logger.warning("the pilot trained no batch; the estimate stays the built-in table's")
        return None
    intervals = [b - a for a, b in zip([clock.epoch_start] + ends[:-1], ends)]
    timed = intervals[1:] or intervals  # the first batch also starts the data loader
    per_batch = statistics.fmean(timed)
    size = clock.batch_size or batch
    train_s = per_batch / size
    val_s = ((clock.val_end or clock.iter_end) - clock.iter_end) / val_count
    setup = clock.train_start - t0
    n_val = int(val_images)
    epoch_s = train_images * train_s + n_val * val_s
    record = {"arch": arch, "imgsz": int(ts["imgsz"]), "device": device_key(str(resolved["device"]), machine),
              "train_images": train_images, "val_images": n_val, "epochs": 0, "pilot": True,
              "pilot_batches": len(ends), "batch": size, "train_s_per_image": round(train_s, 6),
              "val_s_per_image": round(val_s, 6), "pilot_setup_seconds": round(setup, 3),
              "s_per_image_epoch": epoch_s / work_images(train_images, n_val),
              # the run's fixed cost: its setup, and the final validation of best.pt on the whole val split
              "setup_seconds": round(setup + n_val * val_s, 3),
              "seconds": round(time.perf_counter() - started, 3), "start_from": str(start_model)}
    logger.info("pilot on this machine: %d batches of %d at imgsz %d: %.1f ms per training image, %.1f ms per "
                "validation image, %.1f s setup (%.0f s in all)", len(ends), size, record["imgsz"], train_s * 1000,
                val_s * 1000, setup, record["seconds"])
    return record


# ----------------------------------------------------------------------------- the estimates of a plan
def start_models(workspace, ts: Mapping[str, Any]) -> dict[str, str]:
    """Route -> what it starts from: production for finetune, training.arch (a yaml, or the user's own
    .pt resolved against the workspace) for scratch."""
    starts = {}
    if workspace.production_model.exists():
        starts["finetune"] = str(workspace.production_model)
    arch = str(ts.get("arch") or "yolov8n.yaml").strip()
    if arch.lower().endswith(".pt"):
        path = Path(arch).expanduser()
        arch = str(path if path.is_absolute() else workspace.root / path)
    starts["scratch"] = arch
    return starts


def _record_pilot(workspace, record: dict[str, Any], started: str) -> None:
    from toolkit.core.reports import timestamp, utc_now_iso
    from toolkit.core.run_history import append_history

    append_history(workspace, {"run": timestamp(), "started_at": started, "finished_at": utc_now_iso(),
                               "decision": "pilot", "trainings": [record],
                               "note": "a pilot of a few training iterations timed this machine for the estimate"})


def route_estimates(workspace, ts: Mapping[str, Any], resolved: Mapping[str, Any], machine: Machine,
                    train_images: int, val_images: int, imported_train: int, measured: list,
                    pilot: bool) -> tuple[dict, list[str]]:
    """Route -> ``machine.Estimate`` of one training run, and notes in words.

    ``measured``: the history's timings (a pilot run here is added to it and to the history).
    ``pilot``: may time a pilot where no run or pilot matches (architecture, imgsz, device); a
    workspace another run holds is not piloted (the table stands, and the note says why).
    """
    from toolkit.core.errors import WorkspaceBusy
    from toolkit.core.lock import workspace_lock
    from toolkit.core.reports import utc_now_iso
    from toolkit.model.machine import estimate_train, has_measurement, model_arch

    epochs, imgsz, device = int(ts.get("epochs") or 0), int(ts["imgsz"]), str(resolved["device"])
    starts = start_models(workspace, ts)
    plain = starts["scratch"] if not starts["scratch"].lower().endswith(".pt") else "yolov8n.yaml"
    arches = {route: model_arch(start, workspace.root, fallback=plain) for route, start in starts.items()}
    notes: list[str] = []
    ready = (workspace.dataset_yaml.is_file() and workspace.split_list("train").is_file()
             and workspace.split_list("val").is_file() and val_images > 0)
    for route, start in starts.items():
        if not pilot or has_measurement(measured, arches[route], imgsz, device, machine):
            continue
        if "," in device:
            notes.append("no pilot: on several GPUs ultralytics trains in worker processes, which a pilot cannot "
                         "time (the first run calibrates the estimate)")
            break
        if not ready or not pilot_worthwhile(imported_train, resolved["batch"]):
            notes.append(f"no pilot: {imported_train} training image(s) imported, under {PILOT_MIN_BATCHES} batches "
                         "(the first run times this machine)" if ready else
                         "no pilot: no imported training and validation images to time yet")
            break
        started = utc_now_iso()
        try:
            with workspace_lock(workspace, "pilot"):
                logger.info("no measured %s run at %d px on this machine yet: timing a pilot (about a minute)",
                            arches[route], imgsz)
                record = run_pilot(workspace, start, arches[route], ts, resolved, machine, val_images)
                if record is not None:
                    _record_pilot(workspace, record, started)
        except WorkspaceBusy as exc:
            notes.append(f"no pilot: {exc}")
            break
        if record is None:
            notes.append("no pilot: it could not run (see the log); the estimate is the built-in table's")
            break
        measured.append(record)
        notes.append(f"pilot: {record['pilot_batches']} batches timed in {record['seconds']:.0f} s "
                         f"({record['train_s_per_image'] * 1000:.1f} ms per training image at {imgsz} px, "
                         f"{record['pilot_setup_seconds']:.1f} s setup); recorded in the history")
    estimates = {route: estimate_train(train_images, epochs, imgsz, device, machine, arches[route], val_images,
                                       measured=measured) for route in starts}
    return estimates, notes

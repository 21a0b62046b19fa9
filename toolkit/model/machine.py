"""The machine a run trains on, the settings that fit it, and how long a run takes on it.

- ``detect_machine``: the CPU cores this process may use and the CUDA GPUs;
- ``resolve_machine_settings``: ``device`` / ``workers`` / ``batch`` left at "auto" resolved
  from the machine, with a note per value saying what and why;
- ``estimate_train_seconds``: about how long a training run takes. It comes from this machine's
  own measured runs (``measured_timing`` after each real training, kept in the workspace's
  history): seconds per image-epoch at that architecture, imgsz and device. Only without such
  a record does it fall back to a built-in table, measured elsewhere.

Nothing here imports torch or ultralytics at module level.
"""
from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolkit.core.errors import UserError

logger = logging.getLogger(__name__)


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
# Other GPUs and CPUs differ: this table is only the start; a workspace's own measured runs replace it.
_GPU_S_PER_IMAGE_640 = 1.84e-3
_CPU_CORE_S_PER_IMAGE_640 = 0.49
_ARCH_COST = {"n": 1.0, "s": 2.5, "m": 6.5, "l": 13.0, "x": 20.0}  # ~ training FLOPs relative to n (8.7 GFLOPs)
_SETUP_S = {"gpu": 15.0, "cpu": 10.0}

# Validation passes cost about a sixth of a training pass per image (inference only, no
# backward; half of them at a tenth of the images in the measurements above).
VAL_WEIGHT = 0.5 / 3.0
# How many of the latest matching measured runs an estimate takes the median of.
CALIBRATION_RUNS = 3


def arch_name(arch: Any) -> str:
    """``yolov8n`` for ``yolov8n.yaml``, ``yolov8n.pt`` or a path to one."""
    return Path(str(arch or "yolov8n.yaml")).stem.lower() or "yolov8n"


def model_arch(model: Any, root: str | Path | None = None, fallback: Any = None) -> str:
    """The architecture a training from ``model`` runs: ``yolov8n`` for ``yolov8n.yaml`` and for any
    checkpoint built from it (the user's own weights, production, a run's best.pt), read from the
    file without unpickling it. Measured timings are recorded and looked up under this name.
    A checkpoint whose architecture cannot be read: ``fallback`` (an architecture), else its stem."""
    text = str(model or "yolov8n.yaml").strip()
    if text.lower().endswith(".pt"):
        from toolkit.core.checkpoint_scan import architecture_file

        path = Path(text).expanduser()
        if not path.is_absolute() and root is not None:
            path = Path(root) / path
        found = architecture_file(path) if path.is_file() else None
        if found:
            return arch_name(found)
        if fallback is not None:
            return arch_name(fallback)
    return arch_name(text)


def device_key(device: str, machine: Machine) -> str:
    """What a measured speed belongs to: this CPU (by its cores) or these GPUs (by their names)."""
    indices = _device_indices(device, machine)
    if not indices:
        return f"cpu x{machine.cores}"
    return " + ".join(machine.gpus[i].name if i < len(machine.gpus) else f"gpu{i}" for i in indices)


def work_images(train_images: int, val_images: int = 0) -> float:
    """Image-epochs of one epoch: the training images plus the validation pass's share."""
    return max(0, int(train_images)) + VAL_WEIGHT * max(0, int(val_images))


def measured_timing(*, arch: Any, imgsz: int, device: str, machine: Machine, train_images: int,
                    val_images: int, epoch_times: list[float], seconds: float) -> dict[str, Any] | None:
    """The record one real training leaves for later estimates (None when it measured nothing).

    ``epoch_times``: each epoch's own time (``epochs.jsonl``); their median gives the speed, so
    one epoch slowed by another job on a shared machine does not; ``seconds``: the whole call,
    so what the epochs leave of it is the run's fixed cost (loading, dataset scan, final validation).
    """
    work = work_images(train_images, val_images)
    times = [float(t) for t in epoch_times if t and t > 0]
    if not times or work <= 0:
        return None
    epoch_seconds = sum(times)
    return {"arch": arch_name(arch), "imgsz": int(imgsz), "device": device_key(device, machine),
            "train_images": int(train_images), "val_images": int(val_images), "epochs": len(times),
            "epoch_seconds": round(epoch_seconds, 3), "seconds": round(float(seconds), 3),
            "s_per_image_epoch": statistics.median(times) / work,
            "setup_seconds": round(max(0.0, float(seconds) - epoch_seconds), 3)}


def timings_from_history(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every measured training in the history, oldest first (pipeline records carry ``trainings``)."""
    found = []
    for record in records:
        for t in record.get("trainings") or ():
            rate = t.get("s_per_image_epoch") if isinstance(t, dict) else None
            # a rate that is no positive finite number (a poisoned line) never reaches an estimate
            if isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate) and rate > 0 \
                    and isinstance(t.get("imgsz", 0), int):
                found.append(t)
    return found


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str          # in words: which measurement (or table) it comes from
    setup: float = 0.0  # of which the fixed cost (setup, final validation): what no epoch count changes


def estimate_train(train_images: int, epochs: int, imgsz: int, device: str, machine: Machine,
                   arch: str = "yolov8n.yaml", val_images: int = 0,
                   measured: Iterable[Mapping[str, Any]] = ()) -> Estimate:
    """About how long one training run takes, and what that figure is based on.

    From this machine's own last measured runs of the same architecture on the same device:
    at the same imgsz as measured, else scaled by imgsz squared from the nearest measured size.
    Without such a run, from the built-in table (``estimate_train_seconds``).
    """
    key, name = device_key(device, machine), arch_name(arch)
    work = work_images(train_images, val_images)
    matching = [t for t in measured if t.get("device") == key and t.get("arch") == name]
    same = [t for t in matching if not t.get("pilot")]
    exact = [t for t in same if int(t.get("imgsz") or 0) == int(imgsz)]
    # a real run beats a pilot; a pilot at this size beats a real run scaled from another size
    pilots = [t for t in matching if t.get("pilot") and int(t.get("imgsz") or 0) == int(imgsz)]
    chosen = exact[-CALIBRATION_RUNS:] or pilots[-1:]
    scale = 1.0
    if not chosen and same:
        nearest = min({int(t.get("imgsz") or 0) for t in same}, key=lambda s: abs(s - int(imgsz)))
        chosen = [t for t in same if int(t.get("imgsz") or 0) == nearest][-CALIBRATION_RUNS:]
        scale = (float(imgsz) / nearest) ** 2 if nearest else 1.0
    if chosen:
        rate = statistics.median(float(t["s_per_image_epoch"]) for t in chosen) * scale
        setup = statistics.median(float(t.get("setup_seconds") or 0.0) for t in chosen)
        sizes = sorted({int(t.get("imgsz") or 0) for t in chosen})
        what = ("a pilot of a few training iterations of this dataset" if chosen[0].get("pilot") else
                f"median of the last {len(chosen)} {name} run(s)")
        basis = (f"measured on this machine: {what} on {key} at "
                 f"{', '.join(map(str, sizes))} px, {rate * 1000:.2f} ms per image-epoch"
                 + (f" (scaled by imgsz squared to {imgsz} px)" if scale != 1.0 else "")
                 + f" + {setup:.0f} s fixed cost")
        seconds = setup + rate * work * max(0, int(epochs))
        if math.isfinite(seconds) and seconds >= 0:   # never a negative or NaN estimate
            return Estimate(seconds, basis, setup)
    seconds = estimate_train_seconds(train_images, epochs, imgsz, device, machine, arch, val_images)
    return Estimate(seconds, f"built-in table (no measured {name} run on {key} in this workspace's history yet; "
                             "the first real training calibrates it)",
                    _SETUP_S["gpu" if _device_indices(device, machine) else "cpu"])


def has_measurement(measured: Iterable[Mapping[str, Any]], arch: str, imgsz: int, device: str,
                    machine: Machine) -> bool:
    """A measured run or a pilot of this architecture at this imgsz on this device is in ``measured``."""
    key, name = device_key(device, machine), arch_name(arch)
    return any(t.get("device") == key and t.get("arch") == name and int(t.get("imgsz") or 0) == int(imgsz)
               for t in measured)


def estimate_train_seconds(train_images: int, epochs: int, imgsz: int, device: str, machine: Machine,
                           arch: str = "yolov8n.yaml", val_images: int = 0) -> float:
    """The built-in table's figure (seconds) for one training run, from image count, epochs, imgsz, device."""
    stem = arch_name(arch)
    scale = _ARCH_COST.get(stem[-1:] if stem.startswith("yolov8") else "n", 1.0) * (float(imgsz) / 640.0) ** 2
    images = work_images(train_images, val_images)
    indices = _device_indices(device, machine)
    if indices:
        per_epoch = images * _GPU_S_PER_IMAGE_640 * scale / max(1, len(indices))
        setup = _SETUP_S["gpu"]
    else:
        per_epoch = images * _CPU_CORE_S_PER_IMAGE_640 * scale / max(1, machine.cores)
        setup = _SETUP_S["cpu"]
    return setup + per_epoch * max(0, int(epochs))

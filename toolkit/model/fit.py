"""What the data and the machine allow, for the plan: the size defects need, the budget, the first run.

- ``small_defects``: the small-defect check of the managed dataset at the planned imgsz
  (``toolkit/data/box_sizes.py``): classes with a real share of boxes under 16 px, and a size that
  shows them;
- ``resolve_imgsz``: ``training.imgsz: auto`` -> 640, or the size the check suggests when 640 hides
  a class's defects and the estimated run at that size fits the budget (else 640, and why);
- ``fit_to_budget``: hours of ultralytics' own ``time`` argument per route, when the estimate passes
  the budget (ultralytics then re-plans the epochs and the learning-rate schedule to that time after
  every epoch; its clock starts after the setup and stops before the final validation, so the fixed
  cost is taken off the budget first);
- ``route_labels``: a route's name in words ("from your weights (PATH)" for training.arch: a .pt).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

from toolkit.model.machine import Machine, estimate_train, model_arch, timings_from_history
from toolkit.data.box_sizes import MIN_SIDE_PX

logger = logging.getLogger(__name__)

AUTO_IMGSZ = 640          # ultralytics' default: what auto trains at unless defects need more
NIGHT_S = 8 * 3600.0


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def small_defects(workspace, imgsz: int) -> dict[str, Any]:
    """The small-defect check at ``imgsz`` ({} when there is no managed dataset to read)."""
    from toolkit.core.datafile import read_class_names
    from toolkit.data.box_sizes import small_defect_check

    if not workspace.manifest.is_file() or not workspace.dataset_yaml.is_file():
        return {}
    try:
        return small_defect_check(workspace, read_class_names(workspace.dataset_yaml), int(imgsz))
    except Exception as exc:  # the check informs; it never stops a run
        logger.debug("small-defect check skipped: %s", exc)
        return {}


def resolve_imgsz(workspace, ts: Mapping[str, Any], machine: Machine, device: str) -> tuple[int, str]:
    """``training.imgsz`` as a number, and (for auto) how it was chosen, in words."""
    value = ts.get("imgsz")
    if not is_auto(value):
        return int(value or AUTO_IMGSZ), ""
    check = small_defects(workspace, AUTO_IMGSZ)
    wanted = check.get("suggested_imgsz")
    if not check.get("at_risk"):
        why = (f"no class has 10% of its boxes under {MIN_SIDE_PX:.0f} px there" if check else "no managed dataset to check yet")
        return AUTO_IMGSZ, f"imgsz auto -> {AUTO_IMGSZ} ({why})"
    if not wanted or wanted <= AUTO_IMGSZ:
        return AUTO_IMGSZ, (f"imgsz auto -> {AUTO_IMGSZ}: {', '.join(check['at_risk'])} keep 10% or more of their boxes "
                            f"under {MIN_SIDE_PX:.0f} px even at the images' own size; larger labels or tiles of the images are needed")
    from toolkit.core.run_history import read_history
    from toolkit.model.pilot import start_models

    budget = float(ts.get("time_limit") or 0) * 3600.0 or NIGHT_S
    train, val = _images(workspace, "train"), _images(workspace, "val")
    arch = model_arch(next(iter(start_models(workspace, ts).values())), workspace.root)
    estimate = estimate_train(train, int(ts.get("epochs") or 0), wanted, device, machine, arch, val,
                              measured=timings_from_history(read_history(workspace, last=1000)))
    classes = ", ".join(check["at_risk"])
    if estimate.seconds <= budget:
        return wanted, (f"imgsz auto -> {wanted}: at {AUTO_IMGSZ} px {classes} lose 10% or more of their boxes under "
                        f"{MIN_SIDE_PX:.0f} px, and the run at {wanted} fits the budget (about {_duration(estimate.seconds)} of "
                        f"{_duration(budget)})")
    return AUTO_IMGSZ, (f"imgsz auto -> {AUTO_IMGSZ}: {classes} need imgsz {wanted} to show 90% of their boxes, but the "
                        f"run there (about {_duration(estimate.seconds)}) does not fit the budget of {_duration(budget)}; "
                        f"set training.time_limit higher or fewer epochs to train at {wanted}")


def _images(workspace, split: str) -> int:
    path = workspace.split_list(split)
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError:
        folder = workspace.images_dir(split)
        return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def _duration(seconds: float) -> str:
    from toolkit.model.training import format_duration

    return format_duration(seconds)


def fit_to_budget(estimate_s: Mapping[str, float], setup_s: Mapping[str, float], budget_s: float,
                  concurrent: bool, throughput: float) -> dict[str, float]:
    """Route -> hours for ultralytics' ``time`` when the routes' estimate passes ``budget_s``, else {}."""
    values = {r: float(v or 0) for r, v in estimate_s.items()}
    total = sum(values.values()) / (throughput if concurrent else 1.0)
    if not values or total <= budget_s:
        return {}
    share = budget_s if concurrent else budget_s / len(values)
    # the fixed cost (setup, final validation) runs outside ultralytics' clock; a tenth of the share at least
    return {r: round(max(share - float(setup_s.get(r) or 0), 0.1 * share) / 3600.0, 4) for r in values}


def route_labels(workspace, ts: Mapping[str, Any], starts: Mapping[str, str]) -> dict[str, str]:
    """"from your weights (PATH)" for the scratch route when training.arch is a .pt (it is not scratch)."""
    arch = str(ts.get("arch") or "").strip()
    if starts.get("scratch") == "scratch" and arch.lower().endswith(".pt"):
        path = Path(arch).expanduser()
        return {"scratch": f"from your weights ({path if path.is_absolute() else workspace.root / path})"}
    return {}

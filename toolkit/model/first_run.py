"""The first run's command and estimate, for the ``Next:`` lines of setup and import.

``first_run_hint``: from the plan without a pilot (timing one is the dry run's job; the basis says
whether the figure is this machine's or the built-in table's). Where it is over an hour, a quicker
first try beside it: fewer epochs, and a smaller imgsz when one epoch alone is over half an hour.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from toolkit.model.fit import _duration, _images

logger = logging.getLogger(__name__)

QUICK_FIRST_TRY_S = 3600  # a first run over an hour gets a quicker first try beside it


def first_run_hint(workspace, settings) -> dict[str, Any] | None:
    """The first run's command and estimate (None when nothing is imported yet, or it cannot be planned).

    From the plan without a pilot (that is the dry run's job): the basis says whether the figure is
    this machine's or the built-in table's. Over an hour, ``quick`` is a quicker first try.
    """
    from toolkit.core.layout import command
    from toolkit.model.planning import plan_training

    if _images(workspace, "train") == 0:
        return None
    ts = settings.section("training")
    try:
        plan = plan_training(workspace, ts, read_only=True)
    except Exception as exc:  # a hint never stops the stage that prints it
        logger.debug("no first-run estimate: %s", exc)
        return None
    seconds = plan.total_s()
    hint = {"seconds": round(seconds, 1), "basis": plan.estimate_basis, "imgsz": plan.imgsz,
            "epochs": int(ts.get("epochs") or 0), "command": command("training_pipeline.py", workspace.root),
            "dry_run": command("training_pipeline.py", workspace.root, "--dry-run"), "quick": None}
    if seconds > QUICK_FIRST_TRY_S and hint["epochs"] > 1:
        hint["quick"] = _quick(workspace, ts, plan, seconds)
    return hint


def _quick(workspace, ts: Mapping[str, Any], plan, seconds: float) -> dict[str, Any] | None:
    """Fewer epochs so that the first try takes about an hour; a smaller imgsz too when one epoch is over it."""
    from toolkit.core.layout import command
    from toolkit.model.planning import plan_training

    epochs = int(ts.get("epochs") or 1)
    fixed = sum(float((plan.choice.evidence.get("setup_s") or {}).get(r) or 0) for r in plan.choice.routes)
    per_epoch = max((seconds - fixed) / epochs, 1e-6)
    quick_epochs = max(1, min(epochs - 1, int(QUICK_FIRST_TRY_S // per_epoch)))
    args = ["--epochs", str(quick_epochs)]
    overrides: dict[str, Any] = {"epochs": quick_epochs}
    if per_epoch > QUICK_FIRST_TRY_S / 2 and plan.imgsz >= 128:
        smaller = max(64, (plan.imgsz // 2) // 32 * 32)
        args += ["--imgsz", str(smaller)]
        overrides["imgsz"] = smaller
    try:
        quick = plan_training(workspace, {**ts, **overrides}, read_only=True)
    except Exception:
        return None
    return {"command": command("training_pipeline.py", workspace.root, *args), "seconds": round(quick.total_s(), 1),
            **overrides}


def hint_lines(hint: Mapping[str, Any] | None) -> list[str]:
    """The ``Next:`` words of ``first_run_hint``: the command with its estimate, and the quicker try."""
    if not hint:
        return []
    table = "built-in table" in str(hint.get("basis"))
    where = ("by the built-in table, which can be several times off on a new machine; the dry run times a "
             f"short pilot here first: {hint['dry_run']}" if table else "measured on this machine")
    lines = [f"Next: train, compare and promote (about {_duration(hint['seconds'])} at imgsz {hint['imgsz']}, "
             f"{hint['epochs']} epochs; {where}): {hint['command']}"]
    quick = hint.get("quick")
    if quick:
        what = f"{quick['epochs']} epochs" + (f" at imgsz {quick['imgsz']}" if quick.get("imgsz") else "")
        lines.append(f"      over an hour: a quicker first try ({what}, about {_duration(quick['seconds'])}): "
                     f"{quick['command']}")
    return lines

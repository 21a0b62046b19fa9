"""The line's spec: is a model fit for the line, not only better than the one before it.

``promotion.min_recall`` is the recall each class must reach at ``promotion.operating_conf`` on
the test split (one number, or one per class with ``default`` for the rest). The comparator
measures, per model and class, the recall there and ``conf_for_spec`` (the highest confidence at
which the recall reaches the spec, with the false calls per image at it); this module turns those
figures into the classes below spec and the words that say so, and finds what production's last
evaluation said (for ``--status`` and the analyzer's priorities).

A model below spec that passes the relative gate is still promoted: it is better than what runs.
The flag is information for the plant, never a refusal.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolkit.core.errors import UserError
from toolkit.core.run_history import read_history

logger = logging.getLogger(__name__)

DEFAULT_KEY = "default"  # in a per-class min_recall: the spec of the classes not named
BUILT_IN = 0.5           # template.py's default, for classes a mapping without ``default`` leaves out


def class_specs(min_recall: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """The spec of every class; a UserError when a per-class spec names a class the dataset lacks."""
    if not isinstance(min_recall, Mapping):
        return {n: float(min_recall) for n in names}
    unknown = [k for k in min_recall if k != DEFAULT_KEY and k not in names]
    if unknown:
        raise UserError(f"promotion.min_recall names {', '.join(repr(k) for k in unknown)}, not a class of this "
                        f"dataset ({', '.join(names)}); fix the name in training/configs/training.yaml")
    rest = float(min_recall.get(DEFAULT_KEY, BUILT_IN))
    return {n: float(min_recall.get(n, rest)) for n in names}


def below_spec(entry: Mapping[str, Any], specs: Mapping[str, float]) -> list[str]:
    """Classes whose recall at the operating confidence is under their spec (no instance: not judged)."""
    per_class = (entry.get("operating_point") or {}).get("per_class") or {}
    return [n for n, need in specs.items()
            if (per_class.get(n) or {}).get("recall") is not None and per_class[n]["recall"] < need - 1e-9]


def spec_record(entry: Mapping[str, Any], split: str | None = None, images: int | None = None) -> dict[str, Any]:
    """What the history, the sidecar and ``--status`` keep of one model's spec check (compact)."""
    op = entry.get("operating_point") or {}
    per_class = {}
    for name, need in (entry.get("min_recall") or {}).items():
        at = (entry.get("conf_for_spec") or {}).get(name)
        per_class[name] = {"recall": ((op.get("per_class") or {}).get(name) or {}).get("recall"), "min_recall": need,
                           "conf_for_spec": at["conf"] if at else None,
                           "false_calls_per_image": at["false_calls_per_image"] if at else None}
    return {"operating_conf": op.get("conf"), "split": split, "images": images,
            "below_spec": list(entry.get("below_spec") or []), "per_class": per_class}


def _class_words(name: str, record: Mapping[str, Any]) -> str:
    c = record["per_class"][name]
    text = f"{name} {c['recall']:.2f} (spec {c['min_recall']:.2f}"
    if c.get("conf_for_spec") is not None:
        text += (f"; met at confidence {c['conf_for_spec']:.3f} with {c['false_calls_per_image']:.2f} false "
                 f"{name} calls per image)")
    else:
        best = c.get("max_recall")
        text += "; no confidence reaches it" + (f": at most {best:.2f}" if best is not None else "") + ")"
    return text


_WHY_IN = {"promoted": "Better than what runs, so promoted all the same. ",
           "first": "The first model of this workspace, so promoted all the same. ", "kept": ""}


def spec_words(record: Mapping[str, Any], who: str = "", context: str = "kept") -> str:
    """One line: which classes are below the line's spec and where the spec would be met, or that
    every class meets it. ``record``: ``spec_record`` (``max_recall`` per class where known);
    ``context``: promoted (better than production), first (no production before) or kept."""
    conf = record.get("operating_conf")
    where = f"recall at confidence {conf:.2f} (promotion.operating_conf)"
    where += f" on the {record['split']} split" if record.get("split") else ""
    below = list(record.get("below_spec") or [])
    if not below:
        needs = sorted({c["min_recall"] for c in record["per_class"].values() if c.get("recall") is not None})
        spec = f"{needs[0]:.2f}" if len(needs) == 1 else "each class's promotion.min_recall"
        return f"{who}fit for the line: every class's {where} reaches its spec ({spec})"
    return (f"{who}BELOW the line's spec (promotion.min_recall), {where}: "
            + "; ".join(_class_words(n, record) for n in below) + ". " + _WHY_IN.get(context, "")
            + "To meet it: run the line at those confidences (more false calls), or label more of those "
              "classes (training_analyzer.py counts them as missed)")


def entry_words(entry: Mapping[str, Any], split: str | None, who: str = "", context: str = "kept") -> str:
    """``spec_words`` of one comparison entry (with the most recall each class reaches)."""
    record = spec_record(entry, split)
    for name, c in record["per_class"].items():
        c["max_recall"] = (entry.get("max_recall") or {}).get(name)
    return spec_words(record, who, context)


# ---------------------------------------------------------------------------------- production's last check
def production_spec(workspace, sha256: str | None = None) -> dict[str, Any] | None:
    """The spec check of production's last evaluation: the newest history record that scored the
    production file (by sha256), else its sidecar's figures; None when neither has one.

    The result is ``spec_record``'s plus ``run`` / ``measured_at`` (when and where it comes from).
    """
    sidecar: dict[str, Any] = {}
    if workspace.production_sidecar.is_file():
        try:
            sidecar = json.loads(workspace.production_sidecar.read_text(encoding="utf-8")) or {}
        except (OSError, ValueError):
            sidecar = {}
    if sha256 is None:
        if not workspace.production_model.is_file():
            return None
        from toolkit.core.files import sha256_file

        sha256 = sha256_file(workspace.production_model)
    for record in reversed(read_history(workspace, last=200)):
        for score in record.get("scores") or []:
            if isinstance(score, dict) and score.get("sha256") == sha256 and isinstance(score.get("spec"), dict):
                return {**score["spec"], "run": record.get("run"),
                        "measured_at": record.get("finished_at") or record.get("started_at")}
    spec = (sidecar.get("metrics") or {}).get("spec") if isinstance(sidecar.get("metrics"), dict) else None
    if sidecar.get("sha256") == sha256 and isinstance(spec, dict):
        return {**spec, "run": None, "measured_at": sidecar.get("promoted_at")}
    return None


def judged_now(record: dict[str, Any] | None, min_recall: float | Mapping[str, float]) -> dict[str, Any] | None:
    """``record`` (production's last check) judged against the spec in training.yaml now: the plant
    may have changed it since. A class whose spec changed keeps its measured recall; where the spec
    would be met is then unknown until the next comparison (``conf_for_spec`` None, ``spec_changed``)."""
    if not record or not record.get("per_class"):
        return record
    try:
        specs = class_specs(min_recall, list(record["per_class"]))
    except UserError:
        return record  # a class name the spec misspells: the comparator says so; keep what was measured
    per_class = {}
    for name, c in record["per_class"].items():
        c = dict(c)
        if c.get("min_recall") is None or abs(float(c["min_recall"]) - specs[name]) > 1e-9:
            c.update(min_recall=specs[name], conf_for_spec=None, false_calls_per_image=None, spec_changed=True)
        per_class[name] = c
    below = [n for n, c in per_class.items() if c.get("recall") is not None and c["recall"] < c["min_recall"] - 1e-9]
    return {**record, "per_class": per_class, "below_spec": below}

"""The training routes of a pipeline run in a plant engineer's words: which way(s) the model was
trained (fine-tuned from production, from scratch, or both) and why, for the HTML report.

The toolkit's own reasoning (``stages.train.strategy.reason``, with its figures and setting names)
stays on the page too, as a detail under these words.
"""
from __future__ import annotations

from typing import Any

from toolkit.report.html_text import as_number

ROUTE_NAMES = {"finetune": "fine-tune", "scratch": "from scratch"}
ROUTE_HOW = {"finetune": "the production model, trained further on the old and new images",
             "scratch": "a new model, trained from its architecture's random start"}


def route_words(strategy: Any) -> str:
    """Which way(s) of training this run took, and why, in a plant engineer's words."""
    if not isinstance(strategy, dict):
        return ""
    ev = strategy.get("evidence") if isinstance(strategy.get("evidence"), dict) else {}
    requested, chosen = strategy.get("requested"), strategy.get("chosen")
    rows = [r for r in strategy.get("candidates") or [] if isinstance(r, dict)]
    metric = {"map50_95": "mAP50-95", "map50": "mAP50"}.get(strategy.get("metric"), strategy.get("metric") or "mAP50-95")
    if len(rows) > 1:
        why = ("because both fitted in the time available" if requested == "auto" else
               "because training.strategy (or --strategy) asks for both")
        text = ("Two models were trained, " + why + ": one fine-tuned from the production model (it keeps "
                "what production learned and adds the new images) and one trained from scratch (a fresh start, "
                "which can do better when the images have changed a lot). ")
        scores = {r.get("route"): as_number((r.get("val") or {}).get(strategy.get("metric") or "map50_95"))
                  for r in rows}
        if chosen and all(v is not None for v in scores.values()):
            other = [r for r in scores if r != chosen]
            text += (f"The {ROUTE_NAMES.get(chosen, chosen)} model scored better on the validation images "
                     f"({metric} {scores[chosen]:.3f} against {', '.join(f'{scores[o]:.3f}' for o in other)}), "
                     "so only it was compared with production, on the test images kept for that.")
        return text
    route = rows[0].get("route") if rows else strategy.get("strategy")
    if route == "finetune":
        text = "The production model was fine-tuned: trained further on the old and new images together"
        why = ("; the time available was too short to also train a model from scratch" if requested == "auto"
               else "; training.strategy (or --strategy) asks for fine-tuning")
    else:
        text = "A new model was trained from scratch"
        why = ("; there is no production model to start from" if not ev.get("production") else
               "; the classes changed, so the production model's class layer does not fit them"
               if ev.get("classes_changed") else
               "; training.strategy (or --strategy) asks for training from scratch" if requested != "auto" else
               "; the time available was too short to train both ways, and from scratch did better before")
    return text + why + "."

"""Promotion rules: is a candidate better than production, and why (or why not), in words.

The rules come from the ``promotion:`` section of training.yaml. A candidate passes when
  - its gain on the decision metric (mAP50-95 by default) reaches ``min_gain``,
  - the bootstrap 95% interval of that gain lies above zero (when ``require_significance``),
  - no class's AP50 falls by more than ``max_class_drop``,
  - no class's recall at the line's confidence (``operating_conf``) falls by more than
    ``max_recall_drop``: more escapes of one class refuse a model whatever its mAP,
  - it is at most ``max_slowdown`` times slower than production (median timing rounds); a
    candidate of production's architecture and input size is never refused for speed,
  - and it is not the production file itself.
The winner is the passing candidate with the highest metric; without one, production stays.
The line's spec (``min_recall``, toolkit/promotion/spec.py) is judged too, but never refuses: a
better model below spec goes in, flagged.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from toolkit.core.config import DEFAULTS, check_value
from toolkit.core.errors import UserError

logger = logging.getLogger(__name__)

METRICS = ("map50_95", "map50")
_METRIC_LABEL = {"map50_95": "mAP50-95", "map50": "mAP50"}


def _promotion_default(key: str) -> Any:
    return DEFAULTS["promotion"][key]


@dataclass(frozen=True)
class PromotionRules:
    """training.yaml's ``promotion:`` section; defaults and checks live in toolkit/core/config.py."""

    metric: str = _promotion_default("metric")
    min_gain: float = _promotion_default("min_gain")
    max_class_drop: float = _promotion_default("max_class_drop")
    require_significance: bool = _promotion_default("require_significance")
    bootstrap_resamples: int = _promotion_default("bootstrap_resamples")
    max_slowdown: float = _promotion_default("max_slowdown")
    min_first_map: float = _promotion_default("min_first_map")
    operating_conf: float = _promotion_default("operating_conf")
    max_recall_drop: float = _promotion_default("max_recall_drop")
    min_recall: Any = _promotion_default("min_recall")  # a recall, or {class: recall}: the line's spec

    @classmethod
    def from_settings(cls, promotion: Mapping[str, Any]) -> "PromotionRules":
        """From the ``promotion:`` section of the settings (missing keys: defaults), checked."""
        return cls(**{f.name: check_value(f"promotion.{f.name}", promotion.get(f.name, _promotion_default(f.name)),
                                          "promotion settings") for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Verdict:
    """One candidate judged against production."""

    path: str
    passes: bool
    metric_value: float
    gain: float
    ci95: tuple[float, float] | None
    reasons: tuple[str, ...]          # every failed rule, or why it passes
    regressed_classes: tuple[str, ...]
    speed: str = ""                   # what the slowdown rule found, passed or not


def judge_candidate(production: Mapping[str, Any], candidate: Mapping[str, Any], rules: PromotionRules,
                    ci95: tuple[float, float] | None) -> Verdict:
    """Apply every rule to ``candidate`` (model entries as in the comparison's ``models`` list)."""
    label = _METRIC_LABEL[rules.metric]
    before, after = float(production[rules.metric]), float(candidate[rules.metric])
    gain = after - before
    failures: list[str] = []
    same_file = bool(candidate.get("sha256")) and candidate.get("sha256") == production.get("sha256")
    if same_file:
        failures.append("the candidate is the production model itself (same sha256): there is no gain to promote")
    if gain < rules.min_gain:
        failures.append(f"{label} changed by {gain:+.3f} ({before:.3f} -> {after:.3f}), below the required gain "
                        f"of {rules.min_gain:.3f}")
    if rules.require_significance and not same_file:
        if ci95 is None:
            failures.append("no bootstrap interval of the gain could be computed, and significance is required")
        elif ci95[1] < 0:
            failures.append(f"the candidate is significantly worse: the 95% bootstrap interval of the gain "
                            f"[{ci95[0]:+.3f}, {ci95[1]:+.3f}] lies below zero")
        elif max(before, after) < 0.0005:  # nothing to narrow: neither model finds a defect yet
            failures.append(f"both models score {label} {before:.3f} and {after:.3f}: neither finds the defects on "
                            "the test images yet, so there is no gain to measure - train longer or on more labelled "
                            "images")
        elif ci95[0] <= 0:
            failures.append(f"the gain is not significant: its 95% bootstrap interval [{ci95[0]:+.3f}, {ci95[1]:+.3f}] "
                            "includes zero" + (" (more test images would narrow it)" if ci95[1] > ci95[0] else ""))
    regressed = []
    for name, prod_cls in production.get("per_class", {}).items():
        cand_cls = candidate.get("per_class", {}).get(name) or {}
        old, new = prod_cls.get("ap50"), cand_cls.get("ap50")
        if old is None or new is None:
            continue  # the class has no test instances: nothing to judge
        drop = old - new
        if drop > rules.max_class_drop + 1e-12:
            regressed.append(name)
            failures.append(f"{name} AP50 fell {drop:.3f} ({old:.3f} -> {new:.3f}), more than the allowed "
                            f"{rules.max_class_drop:.2f}")
    recall_failures, recall_ok = _recall_rule(candidate, rules)
    failures += recall_failures
    speed_failure, speed_reason = speed_rule(production, candidate, rules)
    if speed_failure:
        failures.append(speed_failure)
    if failures:
        if gain >= rules.min_gain and not same_file:  # the gain itself, then why it is not enough
            failures.insert(0, f"{label} rose {gain:+.3f} ({before:.3f} -> {after:.3f}), at least the required "
                               f"{rules.min_gain:.3f}")
        return Verdict(str(candidate["path"]), False, after, gain, ci95, tuple(failures), tuple(regressed),
                       speed_failure or speed_reason)
    reasons = [f"{label} rose {gain:+.3f} ({before:.3f} -> {after:.3f}), at least the required {rules.min_gain:.3f}"]
    if ci95 is not None:
        reasons.append(f"the gain is significant: its 95% bootstrap interval [{ci95[0]:+.3f}, {ci95[1]:+.3f}] "
                       "lies above zero" if ci95[0] > 0 else
                       f"95% bootstrap interval of the gain [{ci95[0]:+.3f}, {ci95[1]:+.3f}] (significance not required)")
    reasons.append(f"no class's AP50 fell by more than {rules.max_class_drop:.2f}")
    if recall_ok:
        reasons.append(recall_ok)
    reasons.append(speed_reason)
    return Verdict(str(candidate["path"]), True, after, gain, ci95, tuple(reasons), (), speed_reason)


def decide(production: Mapping[str, Any] | None, verdicts: Sequence[Verdict], rules: PromotionRules,
           candidates: Sequence[Mapping[str, Any]] = (), force: bool = False) -> dict[str, Any]:
    """The comparison's ``decision`` and ``winner`` from the candidates' verdicts.

    Without a production model (a first run) the best candidate by the metric wins when it
    reaches ``min_first_map`` (there is nothing to regress from, and it has been loaded and
    evaluated); below that floor only ``force`` promotes it.
    """
    from toolkit.core.layout import model_names

    label = _METRIC_LABEL[rules.metric]
    if production is None:
        if not candidates:
            raise UserError("nothing to compare: no production model and no --candidates")
        best = max(candidates, key=lambda c: c[rules.metric])
        paths = [str(c["path"]) for c in candidates]
        name, value = dict(zip(paths, model_names(paths)))[str(best["path"])], float(best[rules.metric])
        promote = value >= rules.min_first_map or force
        if value >= rules.min_first_map:
            why = (f"no production model yet: {name} becomes the first ({label} {value:.3f}, at least "
                   f"promotion.min_first_map {rules.min_first_map:.3f})")
        elif force:
            why = (f"no production model yet: {name} becomes the first although its {label} {value:.3f} is below "
                   f"promotion.min_first_map {rules.min_first_map:.3f}, because --force was given")
        else:
            why = (f"no production model yet, and {name} is not good enough to be the first: {label} {value:.3f} "
                   f"is below promotion.min_first_map {rules.min_first_map:.3f} (it detects almost nothing); "
                   "train longer or on more images, or promote this very file anyway with training_pipeline.py's "
                   "--candidate and --force (the Next: line gives the whole command; --force alone trains a new "
                   "model)")
        return {"promote": promote, "winner": str(best["path"]) if promote else None, "metric": rules.metric,
                "gain": None, "ci95": None, "reasons": [why], "candidates": [], "first_model": True,
                "forced": promote and value < rules.min_first_map}
    if not verdicts:
        return {"promote": False, "winner": str(production["path"]), "metric": rules.metric, "gain": None,
                "ci95": None, "reasons": ["no candidate given: production was evaluated only"], "candidates": []}
    passing = [v for v in verdicts if v.passes]
    chosen = max(passing or verdicts, key=lambda v: v.metric_value)
    names = dict(zip([v.path for v in verdicts], model_names([v.path for v in verdicts])))
    many = len(verdicts) > 1
    reasons: list[str] = []
    if passing:
        reasons.append(f"promote {names[chosen.path]}: it passes every promotion rule")
        reasons += list(chosen.reasons)
        for v in verdicts:
            if v is not chosen:
                why = "; ".join(v.reasons) if not v.passes else f"{label} {v.metric_value:.3f} is lower than the winner's"
                reasons.append(f"{names[v.path]} not chosen: {why}")
    else:
        reasons.append("keep production: " + ("no candidate passes the promotion rules" if many
                                              else f"{names[chosen.path]} does not pass the promotion rules"))
        for v in verdicts:
            reasons += [f"{names[v.path]}: {r}" if many else r for r in v.reasons]
    return {"promote": bool(passing), "winner": chosen.path if passing else str(production["path"]),
            "metric": rules.metric, "gain": chosen.gain, "ci95": list(chosen.ci95) if chosen.ci95 else None,
            "reasons": reasons,
            "candidates": [{"path": v.path, "passes": v.passes, "gain": v.gain,
                            "ci95": list(v.ci95) if v.ci95 else None, "regressed_classes": list(v.regressed_classes),
                            "speed": v.speed, "reasons": list(v.reasons)} for v in verdicts]}


def _recall_rule(candidate: Mapping[str, Any], rules: PromotionRules) -> tuple[list[str], str | None]:
    """Failures for classes whose recall at ``operating_conf`` fell more than ``max_recall_drop``;
    else one line that says the rule held (None when the comparison measured no recall)."""
    drops = candidate.get("recall_drop")
    if drops is None:
        return [], None
    conf = rules.operating_conf
    failures = []
    for name, d in drops.items():
        if d["drop"] > rules.max_recall_drop + 1e-12:
            ci = f", 95% interval of the drop [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d.get("ci95") else ""
            failures.append(f"{name} recall at confidence {conf:.2f} fell {d['drop']:.3f} ({d['before']:.3f} -> "
                            f"{d['after']:.3f}{ci}), more than promotion.max_recall_drop {rules.max_recall_drop:.2f}: "
                            f"more {name} defects would escape on the line")
    if failures:
        return failures, None
    return [], (f"no class's recall at confidence {conf:.2f} (the line's operating point) fell by more than "
                f"{rules.max_recall_drop:.2f}")


def _spread(rounds: Sequence[float]) -> str:
    return f"{min(rounds):.1f}-{max(rounds):.1f}"


def speed_rule(production: Mapping[str, Any], candidate: Mapping[str, Any],
               rules: PromotionRules) -> tuple[str | None, str]:
    """``(failure or None, reason)`` of the slowdown rule.

    A candidate with production's architecture (same layers and parameter count) scored at the
    same input size costs the same by construction: its measured times differ only by the load
    of the machine while they were taken, so it is never refused for speed. Otherwise the ratio
    of the two models' median timing rounds is judged, and the reason gives rounds and spread.
    """
    prod_ms, cand_ms = production.get("ms_per_image"), candidate.get("ms_per_image")
    prod_arch, cand_arch = production.get("architecture") or {}, candidate.get("architecture") or {}
    same_arch = bool(prod_arch.get("signature")) and prod_arch.get("signature") == cand_arch.get("signature")
    same_size = production.get("imgsz") is not None and production.get("imgsz") == candidate.get("imgsz")
    measured = ""
    if prod_ms and cand_ms:
        p_rounds, c_rounds = production.get("speed_rounds_ms") or [], candidate.get("speed_rounds_ms") or []
        measured = f"{cand_ms:.1f} vs production {prod_ms:.1f} ms/image"
        if c_rounds and p_rounds:
            measured += (f", median of {len(c_rounds)} interleaved rounds (spread {_spread(c_rounds)} vs "
                         f"{_spread(p_rounds)} ms)")
    if same_arch and same_size:
        return None, (f"same architecture as production ({cand_arch.get('name')}, {cand_arch.get('params')} "
                      f"parameters) at the same input size ({candidate.get('imgsz')} px): the same inference cost by "
                      "construction, so the slowdown rule does not apply" + (f" (measured {measured})" if measured else ""))
    if not (prod_ms and cand_ms):
        return None, "speed was not measured (evaluation speed_images 0): the slowdown rule was not applied"
    ratio = cand_ms / prod_ms
    if ratio > rules.max_slowdown:
        return (f"inference is {ratio:.2f}x as slow as production ({measured}), more than the allowed "
                f"{rules.max_slowdown:.2f}x"), ""
    return None, f"speed {ratio:.2f}x production's, allowed {rules.max_slowdown:.2f}x ({measured})"

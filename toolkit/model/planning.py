"""What the pipeline's train stage will do, and why: the route(s), the machine settings, the estimate.

``training.strategy``: ``finetune`` (production as the start), ``scratch`` (the architecture
yaml), ``both``, or ``auto``. ``auto`` decides from this workspace and this machine:

- no production model, or the dataset's classes differ from its: scratch (nothing to fine-tune);
- both routes fit the time budget (``training.time_limit``, a night when unset) by this
  machine's own estimates: train both; the better on the **validation** split is the candidate
  (the test split only gates it against production);
- only one fits: the route that won this workspace's earlier ``both`` runs (the history's
  ``routes`` records); without such a record, fine-tuning production (the cheaper route), a
  default that ``training.strategy: scratch`` or ``both`` overrides.

On a GPU with enough CPU cores the two routes train at the same time (``TrainingPlan.concurrent``).
Nothing here imports torch or ultralytics at module level.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolkit.core.errors import UserError
from toolkit.model.machine import Machine, detect_machine, resolve_machine_settings, timings_from_history
from toolkit.model.training import format_duration

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "finetune", "scratch", "both")
ROUTE_START = {"finetune": "production", "scratch": "scratch"}
NIGHT_S = 8 * 3600.0  # without training.time_limit, auto plans for a night
# Earlier `both` runs auto reads (the latest ones).
ROUTE_HISTORY_RUNS = 5
# Two trainings at once on one GPU: on an H200 (2026-12-04), three YOLOv8n jobs at once gave about
# 1.4x one job's throughput, data loading being the limit; two are counted at the same 1.4x.
CONCURRENT_THROUGHPUT = 1.4
CONCURRENT_MIN_CORES = 6          # two jobs of at least 2 data workers each, plus their trainers
CONCURRENT_MIN_GPU_GB = 16.0      # two YOLOv8n jobs at batch 64 use a few GB each
CONCURRENT_WORKERS_MAX = 8


@dataclass(frozen=True)
class StrategyEvidence:
    production: bool                        # a production model exists to fine-tune
    classes_changed: bool | None = None     # the dataset's classes differ from production's (None: unknown)
    train_images: int = 0                   # training images now
    train_images_at_production: int | None = None  # when production was trained (None: not recorded)
    production_dataset_version: Any = None
    estimate_finetune_s: float | None = None
    estimate_scratch_s: float | None = None
    estimate_basis: str = ""                # in words: measured on this machine, or the built-in table
    time_budget_s: float = 0.0              # training.time_limit in seconds; 0: none
    route_history: tuple = ()               # earlier `both` runs: {"run", "winner", "metric", "val"}
    concurrent: bool = False                # both routes can train at the same time here
    setup_s: dict = field(default_factory=dict)  # route -> the estimate's fixed cost (setup, final validation)
    estimate_notes: tuple = ()              # the pilot: run, or why not

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


def both_seconds(ev: StrategyEvidence) -> float:
    """About how long training both routes takes: one after the other, or at once on a GPU."""
    total = (ev.estimate_finetune_s or 0.0) + (ev.estimate_scratch_s or 0.0)
    return total / CONCURRENT_THROUGHPUT if ev.concurrent else total


def _history_words(history: tuple) -> tuple[str | None, str]:
    """The route that won most of the earlier `both` runs (ties: the latest winner), in words."""
    if not history:
        return None, ""
    counts = Counter(h["winner"] for h in history)
    top = max(counts.values())
    winner = next(h["winner"] for h in reversed(history) if counts[h["winner"]] == top)
    last = history[-1]
    scores = ", ".join(f"{r} {v:.3f}" for r, v in (last.get("val") or {}).items() if isinstance(v, (int, float)))
    words = (f"{winner} won {counts[winner]} of this workspace's last {len(history)} 'both' run(s) on the "
             f"validation split (latest, run {last.get('run')}: val {last.get('metric', 'map50_95')} {scores})")
    return winner, words


def choose_strategy(requested: Any, ev: StrategyEvidence) -> StrategyChoice:
    """The routes to train, and why: ``requested`` is finetune | scratch | both | auto."""
    requested = check_strategy(requested)
    budget = float(ev.time_budget_s or 0) or NIGHT_S
    budget_words = (f"the time budget of {format_duration(budget)} (training.time_limit)" if ev.time_budget_s
                    else f"a night ({format_duration(NIGHT_S)}; no training.time_limit set)")
    evidence = {"production": ev.production, "classes_changed": ev.classes_changed,
                "train_images": ev.train_images, "train_images_at_production": ev.train_images_at_production,
                "production_dataset_version": ev.production_dataset_version,
                "growth": round(ev.growth, 3) if ev.growth is not None else None,
                "estimate_finetune_s": ev.estimate_finetune_s, "estimate_scratch_s": ev.estimate_scratch_s,
                "estimate_basis": ev.estimate_basis, "time_budget_s": ev.time_budget_s,
                "budget_s": budget, "both_s": round(both_seconds(ev), 1), "concurrent": ev.concurrent,
                "route_history": list(ev.route_history), "setup_s": dict(ev.setup_s),
                "estimate_notes": list(ev.estimate_notes)}

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
    both = both_seconds(ev)
    at_once = " at the same time on the GPU" if ev.concurrent else " one after the other"
    if both <= budget:
        return pick("both", f"auto: both routes fit {budget_words}: about {format_duration(both)}{at_once} "
                            f"({ev.estimate_basis}); training both, the better on the validation split is the "
                            "candidate and only it meets production on the test split")
    over = (f"both routes (about {format_duration(both)}{at_once}, {ev.estimate_basis}) do not fit {budget_words}")
    winner, words = _history_words(ev.route_history)
    estimates = {"finetune": ev.estimate_finetune_s, "scratch": ev.estimate_scratch_s}
    if winner is not None:
        other = "scratch" if winner == "finetune" else "finetune"
        if (estimates[winner] or 0) > budget >= (estimates[other] or 0):
            return pick(other, f"auto: {over}; {words}, but {winner} alone (about "
                               f"{format_duration(estimates[winner])}) does not fit either: {other}")
        return pick(winner, f"auto: {over}; {words}: {winner}")
    return pick("finetune", f"auto: {over}, and this workspace has no earlier 'both' run to learn from: "
                            "fine-tuning production, the cheaper route (the default; set training.strategy to "
                            "scratch, or to both with a longer training.time_limit, to decide otherwise)")


def route_history(records: Iterable[Mapping[str, Any]]) -> tuple:
    """Earlier `both` runs and their winners on the validation split, from the history's ``routes``."""
    found = []
    for record in records:
        routes = record.get("routes")
        if isinstance(routes, dict) and routes.get("winner") in ROUTE_START:
            found.append({"run": record.get("run"), "winner": routes["winner"], "metric": routes.get("metric"),
                          "val": routes.get("val") or {}})
    return tuple(found[-ROUTE_HISTORY_RUNS:])


def _train_images_in_manifest(manifest: Mapping[str, Any]) -> int:
    return sum(1 for e in manifest.get("images") or () if e.get("split") == "train")


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def gather_evidence(workspace, ts: Mapping[str, Any], machine: Machine, device: str,
                    read_only: bool = False, extra_train_images: int = 0,
                    concurrent: bool = False, resolved: Mapping[str, Any] | None = None,
                    pilot: bool = False) -> StrategyEvidence:
    """What ``auto`` decides from, read from the workspace.

    ``read_only`` (``--dry-run``): the production model's classes only from its registry entry,
    never by loading it (loading prepares ultralytics' settings folder in the workspace).
    ``extra_train_images``: training images not imported yet (a dry run counts pending batches).
    ``pilot``: with no measured run of the route's architecture at this imgsz on this device, time
    a pilot first (``toolkit/model/pilot.py``; it is recorded in the history); ``resolved``: the
    device / workers / batch it trains with.
    """
    from toolkit.core.datafile import read_class_names
    from toolkit.core.run_history import read_history

    production = workspace.production_model.exists()
    train_now = _count_files(workspace.images_dir("train"))
    val_now = _count_files(workspace.images_dir("val"))
    if workspace.manifest.is_file():
        try:
            train_now = _train_images_in_manifest(json.loads(workspace.manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError) as exc:
            logger.debug("manifest unreadable (%s): counting the image files", exc)
    imported = train_now
    train_now += max(0, int(extra_train_images))
    classes_changed = None
    at_production = None
    version = None
    if production:
        from toolkit.core.offline import model_class_names
        from toolkit.promotion.registry import Registry

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
            from toolkit.data.dataset.manifest import manifest_history_path

            old = manifest_history_path(workspace, int(version))
            try:
                at_production = _train_images_in_manifest(json.loads(old.read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError):
                at_production = None
    history = read_history(workspace, last=1000)
    from toolkit.model.pilot import route_estimates

    settings = dict(resolved or {"device": device, "workers": 0, "batch": 16})
    estimates, notes = route_estimates(workspace, ts, settings, machine, train_now, val_now, imported,
                                       timings_from_history(history), pilot)
    bases = list(dict.fromkeys(e.basis for e in estimates.values()))
    basis = bases[0] if len(bases) == 1 else "; ".join(f"{r}: {e.basis}" for r, e in estimates.items())
    finetune = estimates.get("finetune")
    return StrategyEvidence(production=production, classes_changed=classes_changed, train_images=train_now,
                            train_images_at_production=at_production or None, production_dataset_version=version,
                            estimate_finetune_s=round(finetune.seconds, 1) if finetune else None,
                            estimate_scratch_s=round(estimates["scratch"].seconds, 1),
                            estimate_basis=basis, time_budget_s=float(ts.get("time_limit") or 0) * 3600.0,
                            route_history=route_history(history), concurrent=concurrent,
                            setup_s={r: round(e.setup, 1) for r, e in estimates.items()}, estimate_notes=tuple(notes))


# ----------------------------------------------------------------------------- a training plan
def concurrency(machine: Machine, device: str, workers: int) -> tuple[bool, int, str]:
    """Whether two routes may train at the same time here, the data workers each then gets, and why.

    On one GPU with spare CPU cores two jobs share the GPU (data loading is the limit, measured on
    an H200: three jobs at once, about 1.4x one job's throughput). On a CPU, or with few cores,
    they would only slow each other down: one after the other.
    """
    text = str(device).strip()
    if not machine.gpus or not text.isdigit():
        return False, workers, "one after the other (no single CUDA GPU to share)"
    gpu = machine.gpus[int(text)] if int(text) < len(machine.gpus) else None
    if gpu is None or gpu.memory_gb < CONCURRENT_MIN_GPU_GB:
        return False, workers, f"one after the other (the GPU has under {CONCURRENT_MIN_GPU_GB:.0f} GB)"
    if machine.cores < CONCURRENT_MIN_CORES:
        return False, workers, f"one after the other ({machine.cores} CPU cores: too few to feed two jobs)"
    each = max(2, min(CONCURRENT_WORKERS_MAX, (machine.cores - 2) // 2))
    return True, each, (f"both at once on {gpu.name}, {each} data workers each ({machine.cores} CPU cores; "
                        f"about {CONCURRENT_THROUGHPUT}x one job's throughput, measured on an H200)")


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
    concurrent: bool = False        # the routes train at the same time (a GPU with spare CPU cores)
    concurrent_workers: int = 0     # data workers of each route when they train at the same time
    concurrency: str = ""           # why (not) at the same time
    estimate_basis: str = ""
    imgsz: int = 0                  # the size it trains at (training.imgsz: auto resolved)
    imgsz_note: str = ""            # how training.imgsz: auto was resolved
    labels: dict = field(default_factory=dict)        # route -> its name in words ("from your weights (PATH)")
    fit_time_h: dict = field(default_factory=dict)    # route -> ultralytics' `time` (hours) fitting it to the budget
    budget_s: float = NIGHT_S
    small_defects: dict = field(default_factory=dict)  # toolkit.data.box_sizes.small_defect_check at imgsz
    estimate_notes: tuple = ()

    def label(self, route: str) -> str:
        return self.labels.get(route, route)

    def total_s(self) -> float:
        total = sum(v for v in self.estimate_s.values() if v)
        return total / CONCURRENT_THROUGHPUT if self.concurrent else total

    def describe(self, checks: bool = True) -> str:
        """The plan in words; ``checks``: with the small-defect check and the imgsz auto note at the end."""
        runs = ", ".join(f"{self.label(r)} (about {format_duration(self.estimate_s.get(r))})" for r in self.choice.routes)
        if self.choice.requested == self.choice.strategy and self.choice.routes == (self.choice.strategy,):
            # chosen by the user: said once ("strategy finetune -> finetune: train finetune ...; strategy finetune")
            text = (f"strategy {self.label(self.choice.strategy)} (training.yaml or --strategy): about "
                    f"{format_duration(self.estimate_s.get(self.choice.strategy))} on {self.device}, "
                    f"workers {self.workers}, batch {self.batch} ({self.machine})")
        else:
            strategy = self.label(self.choice.strategy) if self.choice.strategy in self.labels else self.choice.strategy
            text = (f"strategy {self.choice.requested} -> {strategy}: train {runs} on {self.device}, "
                    f"workers {self.workers}, batch {self.batch} ({self.machine}); {self.choice.reason}")
        if len(self.choice.routes) > 1:
            text += f"; {self.concurrency}"
        if self.estimate_basis and self.estimate_basis not in self.choice.reason:
            text += f"; estimate: {self.estimate_basis}"
        for note in self.estimate_notes:
            text += f"; {note}"
        text += self._budget_words()
        return text + self.check_words() if checks else text

    def check_words(self) -> str:
        """'; imgsz auto -> ...; small defects at imgsz ...' ('' when there is nothing to say)."""
        return "".join(f"; {w}" for w in (self.imgsz_note, self.small_defects.get("words")) if w)

    def _budget_words(self) -> str:
        total = self.total_s()
        if total <= self.budget_s:
            return ""
        budget = (f"training.time_limit ({format_duration(self.budget_s)})" if self.time_limit_h else
                  f"a night ({format_duration(self.budget_s)}; no training.time_limit set)")
        head = f"; about {format_duration(total)} in all, more than {budget}"
        if self.fit_time_h:
            fits = ", ".join(f"{self.label(r)} {h:.2f} h of training" for r, h in self.fit_time_h.items())
            return (head + f": auto fits the run to it with ultralytics' own time argument ({fits}; ultralytics "
                    "scales the epochs and the learning-rate schedule to that time)")
        if self.time_limit_h:
            return head + ": the run stops cleanly at the limit with its best epoch (fewer epochs than planned)"
        return (head + ": set training.time_limit (hours; the run stops cleanly with its best epoch) or a smaller "
                "imgsz or fewer epochs")

    def time_limit_per_route(self) -> float | None:
        """Hours each route may take: the whole limit when they train at once, else a share."""
        if not self.time_limit_h:
            return None
        return self.time_limit_h if self.concurrent else self.time_limit_h / len(self.choice.routes)


def plan_training(workspace, ts: Mapping[str, Any], strategy: Any = None, start_from: Any = None,
                  machine: Machine | None = None, read_only: bool = False,
                  extra_train_images: int = 0, pilot: bool = False) -> TrainingPlan:
    """The routes to train and why, from ``training.strategy`` (or ``strategy``) and the workspace.

    An explicit ``start_from`` (``--from``) trains that one starting point: the strategy is not used.
    Nothing in the workspace is changed (``--dry-run`` calls this too), except that ``pilot`` may time
    a pilot on this machine first and record it in the history (``toolkit/model/pilot.py``).
    ``auto`` fits a run whose estimate passes the budget to it (``fit_time_h``: ultralytics' ``time``).
    """
    machine = machine or detect_machine()
    resolved, notes = resolve_machine_settings(ts, machine)
    requested = check_strategy(strategy if strategy not in (None, "") else ts.get("strategy", "auto"))
    at_once, each, why = concurrency(machine, resolved["device"], resolved["workers"])
    from toolkit.model.fit import resolve_imgsz, small_defects

    imgsz, imgsz_note = resolve_imgsz(workspace, ts, machine, resolved["device"])
    ts = {**ts, "imgsz": imgsz}
    ev = gather_evidence(workspace, ts, machine, resolved["device"], read_only=read_only,
                         extra_train_images=extra_train_images, concurrent=at_once, resolved=resolved, pilot=pilot)
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
    estimate = {r: (v if v is not None else ev.estimate_scratch_s) for r, v in estimate.items()}
    two = len(choice.routes) > 1
    from toolkit.model.fit import fit_to_budget, route_labels

    budget = float(ts.get("time_limit") or 0) * 3600.0 or NIGHT_S
    concurrent = two and at_once
    fit = ({} if explicit or requested != "auto" else
           fit_to_budget(estimate, ev.setup_s, budget, concurrent, CONCURRENT_THROUGHPUT))
    return TrainingPlan(choice=choice, machine=machine.describe(), device=resolved["device"],
                        workers=resolved["workers"], batch=resolved["batch"], starts=starts,
                        estimate_s=estimate, notes=tuple(notes), time_limit_h=float(ts.get("time_limit") or 0),
                        concurrent=concurrent, concurrent_workers=each if concurrent else 0,
                        concurrency=why, estimate_basis=ev.estimate_basis, imgsz=imgsz, imgsz_note=imgsz_note,
                        labels=route_labels(workspace, ts, starts), fit_time_h=fit, budget_s=budget,
                        small_defects=small_defects(workspace, imgsz), estimate_notes=ev.estimate_notes)


# ----------------------------------------------------------------------------- the routes trained
def pick_route(runs: Mapping[str, Any], metric: str) -> tuple[str, dict[str, float | None], str]:
    """The route whose best.pt scored highest on the validation split (``metric``), with every
    route's score and the reason; ties go to the route listed first (fine-tune: the cheaper)."""
    scores = {route: (run.metrics or {}).get(metric) for route, run in runs.items()}
    ranked = [r for r in runs if scores[r] is not None]
    if not ranked:
        first = next(iter(runs))
        return first, scores, f"no validation score for any route: {first}, the first trained, is the candidate"
    best = max(ranked, key=lambda r: (scores[r], -list(runs).index(r)))
    label = {"map50_95": "mAP50-95", "map50": "mAP50"}.get(metric, metric)
    text = ", ".join(f"{r} {scores[r]:.3f}" if scores[r] is not None else f"{r} n/a" for r in runs)
    return best, scores, (f"{best} is the candidate: the best validation {label} of the routes ({text}); the "
                          "test split is kept for the gate against production")


@dataclass(frozen=True)
class TrainedRoutes:
    """The runs the pipeline's train stage made, one per route, with the strategy that chose them.

    With two routes, ``chosen`` is the one picked on the validation split: only it goes to the
    comparator, which gates it against production on the test split.
    """

    requested: str
    strategy: str
    reason: str
    evidence: dict
    runs: dict                      # route -> train_yolov8.TrainResult, in training order
    plan: str = ""
    chosen: str | None = None       # the route picked on the validation split
    metric: str = "map50_95"
    val_scores: dict = field(default_factory=dict)
    pick_reason: str = ""

    @property
    def candidates(self) -> dict:
        """The route(s) that go to the comparator: the chosen one (all of them when none was chosen)."""
        routes = [self.chosen] if self.chosen else list(self.runs)
        return {route: Path(self.runs[route].best) for route in routes}

    def route_of(self, path: str | Path) -> str | None:
        target = Path(path).resolve()
        return next((route for route, run in self.runs.items() if Path(run.best).resolve() == target), None)

    def history_record(self) -> dict | None:
        """What the history keeps for a later ``auto``: which route won on the validation split."""
        if len(self.runs) < 2 or not self.chosen:
            return None
        return {"winner": self.chosen, "metric": self.metric, "val": dict(self.val_scores)}

    def summary(self, compared: Any = None) -> dict:
        """The strategy and every route with its val score, and (after the comparison) the test score."""
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
                         "chosen_on_val": route == self.chosen if self.chosen else None,
                         "test": {k: entry.get(k) for k in ("map50", "map50_95", "precision", "recall")} if entry else None,
                         "passes": verdict.get("passes"),
                         "promoted": bool(promote and winner and Path(winner).resolve() == Path(key))})
        return {"requested": self.requested, "strategy": self.strategy, "reason": self.reason,
                "evidence": self.evidence, "plan": self.plan, "chosen": self.chosen, "metric": self.metric,
                "pick_reason": self.pick_reason, "candidates": rows}

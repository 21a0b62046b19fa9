"""Compare candidate models with the production model on the same held-out split, and decide.

Every model is scored on the same split (default: test) of the managed dataset with identical
settings (imgsz, conf, iou, batch, device), exactly as `ultralytics val` scores it: mAP50,
mAP50-95, precision, recall, and the same per class; speed in ms per image after a warm-up.
How sure the gain is: the test images are redrawn at random 1000+ times (a paired bootstrap:
both models on the same draw, no new inference), and the middle 95% of the gains drawn is the
95% interval of each candidate's gain. The promotion rules of training.yaml (`promotion:`) then
decide, and the reasons say why in words, naming every class that regressed.
A model's evaluation is cached (by its sha256, the dataset version, split and settings), so a
nightly run does not evaluate an unchanged production model again.
Report: training/reports/compare_<time>.json, .md and .png (per-class AP50 side by side).
Nothing is promoted here: training_pipeline.py promotes the winner.

Usage:
    python model_comparator.py --candidates training/runs/20260301-020000-train/weights/best.pt
    python model_comparator.py --root D:/inspection --production old.pt --candidates a.pt b.pt --json
    python model_comparator.py --candidates best.pt --data other/data.yaml --split val --subset 60
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolkit.core.cli import add_options, build_parser, config_from_args, run_main
from toolkit.core.layout import command
from toolkit.core.config import Settings, option, resolve_config, setting
from toolkit.data.dataset.store import settle_dataset
from toolkit.promotion.decision import PromotionRules, decide, judge_candidate
from toolkit.promotion.spec import below_spec, class_specs, entry_words
from toolkit.core.errors import UserError
from toolkit.core.layout import Workspace, model_names, require_workspace
from toolkit.core.lock import holds_workspace_lock
from toolkit.core.progress import progress_bar
from toolkit.core.reports import markdown_table, md, md_code, report_path, timestamp, write_report

logger = logging.getLogger(__name__)

BOOTSTRAP_SEED = 0  # fixed: the same inputs give the same interval, night after night


@dataclass(frozen=True)
class CompareConfig:
    root: Path
    production: Path | None = option("--production", "production model (default: ROOT/yolov8_model.pt)", type=Path)
    candidates: tuple[Path, ...] = option("--candidates", "candidate model(s) to compare with production, e.g. "
                                          "training/runs/<stamp>-train/weights/best.pt", default=(), type=Path,
                                          nargs="+", metavar="PATH")
    data: Path | None = option("--data", "ultralytics data yaml (default: training/configs/dataset.yaml)", type=Path)
    split: str | None = setting("evaluation.split")
    imgsz: int | None = setting("evaluation.imgsz")
    batch: int | None = setting("evaluation.batch")
    conf: float | None = setting("evaluation.conf")
    iou: float | None = setting("evaluation.iou")
    device: str | None = setting("evaluation.device")
    subset: int | None = option("--subset", "score only the first N images of the split (by name): quick checks",
                                type=int, metavar="N")
    resamples: int | None = setting("promotion.bootstrap_resamples")
    speed_images: int | None = setting("evaluation.speed_images")
    speed_rounds: int | None = setting("evaluation.speed_rounds")
    operating_conf: float | None = setting("promotion.operating_conf")
    max_recall_drop: float | None = setting("promotion.max_recall_drop")
    min_recall: float | None = setting("promotion.min_recall")
    use_cache: bool = option("--no-cache", "evaluate every model again, ignoring the evaluation cache", default=True)
    force: bool = option("--force", "approve a first model (no production yet) even below "
                         "promotion.min_first_map", default=False)


@dataclass(frozen=True)
class CompareResult:
    split: str
    images: int
    dataset_version: str
    models: tuple[dict[str, Any], ...]      # production first, then the candidates
    winner: str | None                      # None: no production and no candidate good enough
    decision: dict[str, Any]                # promote, reasons, gain, ci95, metric, candidates
    report: Path
    markdown: Path
    chart: Path | None
    data: Path
    settings: dict[str, Any]
    skipped: tuple[dict[str, str], ...]     # images left out of the split, with the reason
    seconds: float
    # classes of the model that runs after this decision (the winner, else production) whose recall at
    # promotion.operating_conf is under promotion.min_recall; each model's own list is in ``models``
    below_spec: tuple[str, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)  # operating_conf, min_recall per class, model judged


def check_checkpoint_name(path: Path, what: str) -> None:
    """Only YOLOv8 PyTorch checkpoints are scored: anything else is refused before ultralytics sees it."""
    if path.suffix.lower() != ".pt":
        raise UserError(f"{what} {path}: not a .pt checkpoint; give a YOLOv8 model saved by ultralytics "
                        "(a training run's weights/best.pt, or a yolov8_model.pt)")


def _resolve_models(workspace: Workspace, config: CompareConfig) -> tuple[Path | None, list[Path]]:
    candidates = [Path(c).expanduser().resolve() for c in config.candidates]
    for c in candidates:
        if not c.is_file():
            raise UserError(f"candidate model not found: {c}; give the path of a trained .pt (e.g. a run's weights/best.pt)")
        check_checkpoint_name(c, "candidate")
    if config.production is not None:
        production = Path(config.production).expanduser().resolve()
        if not production.is_file():
            raise UserError(f"production model not found: {production}; fix --production or leave it out")
        check_checkpoint_name(production, "--production")
        return production, candidates
    if workspace.production_model.is_file():
        return workspace.production_model, candidates
    if not candidates:
        raise UserError(f"no production model at {workspace.production_model} and no --candidates: nothing to compare")
    logger.info("no production model at %s: scoring the candidates only", workspace.production_model)
    return None, candidates


@holds_workspace_lock("compare")
def run(config: CompareConfig, progress: Callable | None = None, settings: Settings | None = None) -> CompareResult:
    from toolkit.model import evaluation as ev_mod
    from toolkit.core.offline import prepare_ultralytics

    started = time.perf_counter()
    # a mistyped --root: one line, nothing written (with --data the dataset is elsewhere and ROOT only
    # receives the runs and reports)
    workspace = Workspace.at(config.root) if config.data else require_workspace(config.root)
    config, settings = resolve_config(config, settings or Settings.load(workspace.training_yaml))
    eval_settings = ev_mod.EvalSettings.from_settings(settings.section("evaluation"))
    rules = PromotionRules.from_settings(settings.section("promotion"))
    split = config.split
    data_yaml = Path(config.data).expanduser().resolve() if config.data else workspace.dataset_yaml
    production_path, candidate_paths = _resolve_models(workspace, config)
    settle_dataset(workspace, data_yaml)  # score the images the manifest lists, nothing else in the split folders

    data = ev_mod.load_split(data_yaml, split, config.subset)
    specs = class_specs(rules.min_recall, data.names)  # a misspelt class: refused before any inference
    version = ev_mod.dataset_version_of(workspace, data_yaml, data.fingerprint)
    config_dir = workspace.ultralytics_config
    prepare_ultralytics(config_dir)
    paths = ([production_path] if production_path else []) + candidate_paths
    roles = (["production"] if production_path else []) + ["candidate"] * len(candidate_paths)
    # every model is loaded (and its classes checked) before the first long inference pass
    models = [ev_mod.load_model(p, data, eval_settings, config_dir, data_yaml) for p in paths]
    bar = progress or (lambda it, n, name: progress_bar(it, total=n, desc=name))
    evaluations = []
    for model in models:
        evaluations.append(ev_mod.evaluate(model, data, eval_settings, workspace.evaluation_cache, version,
                                           subset=config.subset, use_cache=config.use_cache,
                                           progress=lambda it, n, name=model.path.name: bar(it, n, name)))
    if eval_settings.speed_images:
        logger.info("measuring speed on %d images per model", min(len(data), eval_settings.speed_images))
    speed_rounds = ev_mod.measure_speed_rounds(models, data, eval_settings)
    for ev, rounds in zip(evaluations, speed_rounds):
        ev.ms_per_image = ev_mod.median(rounds)
    entries = [ev_mod.model_entry(ev, role) for ev, role in zip(evaluations, roles)]
    for entry, name in zip(entries, model_names([e["path"] for e in entries])):
        entry["name"] = name  # two runs' best.pt read as RUN/best.pt, never twice the same
    weights = ev_mod.resample_weights(len(data), rules.bootstrap_resamples, seed=BOOTSTRAP_SEED)
    for entry, model, ev, rounds in zip(entries, models, evaluations, speed_rounds):
        entry["trained_imgsz"] = model.trained_imgsz
        entry["architecture"] = model.architecture
        entry["speed_rounds_ms"] = [round(t, 3) for t in rounds]
        entry["operating_point"] = ev_mod.operating_point(ev, rules.operating_conf, weights)
        entry["min_recall"] = dict(specs)
        entry["conf_for_spec"], entry["max_recall"] = ev_mod.conf_for_spec(ev, specs)
        entry["below_spec"] = below_spec(entry, specs)

    verdicts = []
    production_entry = entries[0] if production_path else None
    if production_entry is not None:
        for ev, entry in zip(evaluations[1:], entries[1:]):
            gains = ev_mod.paired_bootstrap(evaluations[0], ev, rules.metric, rules.bootstrap_resamples,
                                            seed=BOOTSTRAP_SEED)
            ci95 = ev_mod.interval95(gains)
            entry["gain"], entry["ci95"] = entry[rules.metric] - production_entry[rules.metric], list(ci95)
            entry["recall_drop"] = ev_mod.recall_drops(evaluations[0], ev, rules.operating_conf, weights)
            verdicts.append(judge_candidate(production_entry, entry, rules, ci95))
    decision = decide(production_entry, verdicts, rules, entries if production_entry is None else (),
                      force=config.force)
    winner = decision.pop("winner")
    judged = _spec_verdict(decision, entries, winner, split)
    decision["reasons"].append(size_reason(entries, eval_settings))
    decision["imgsz"] = {e["name"]: e["imgsz"] for e in entries}
    for line in decision["reasons"]:  # the result (terminal, --json, reports) states them; here only with -v
        logger.debug("  %s", line)

    json_path = report_path(workspace, "compare", timestamp())
    chart = write_chart(json_path.with_suffix(".png"), entries, data.names, split)
    result = CompareResult(
        split=split, images=len(data), dataset_version=version, models=tuple(entries), winner=winner,
        decision=decision, report=json_path, markdown=json_path.with_suffix(".md"), chart=chart,
        data=data_yaml, settings={"evaluation": {**vars(eval_settings)}, "promotion": {**vars(rules)},
                                  "subset": config.subset, "bootstrap_seed": BOOTSTRAP_SEED},
        skipped=data.skipped, seconds=round(time.perf_counter() - started, 2),
        below_spec=tuple(decision["below_spec"]),
        spec={"operating_conf": rules.operating_conf, "min_recall": dict(specs),
              "model": judged["path"] if judged else None})
    write_report(json_path, result, markdown_report(result, data.names))
    return result


def _spec_verdict(decision: dict[str, Any], entries: list[dict[str, Any]], winner: str | None,
                  split: str) -> dict[str, Any] | None:
    """The line's spec of the model that runs after this decision (the winner, else none), into the
    decision: ``below_spec`` and one reason line, right after the verdict when it promotes."""
    judged = next((e for e in entries if winner and e["path"] == winner), None)
    decision["below_spec"] = list(judged["below_spec"]) if judged else []
    if judged is None:
        return None
    name = _name(judged)
    if decision["promote"]:
        context = "first" if decision.get("first_model") else "promoted"
        decision["reasons"].insert(1, entry_words(judged, split, f"{name} is ", context))
    else:
        decision["reasons"].append(entry_words(judged, split, f"production {name} stays, "))
    return judged


def _name(entry: dict[str, Any]) -> str:
    """The model's short name (``RUN/best.pt`` for a training run's weights; see ``model_names``)."""
    return entry.get("name") or model_names([entry["path"]])[0]


def size_reason(entries: list[dict[str, Any]], settings) -> str:
    """Which image size the models were scored at, and why, in words."""
    names = [f"{e['role']} {_name(e)}" for e in entries]
    trained = ", ".join(f"{n} {e['trained_imgsz'] or 'unknown'} px" for n, e in zip(names, entries))
    if settings.imgsz is not None:
        return (f"every model was scored at {settings.imgsz} px, as evaluation.imgsz says "
                f"(trained at: {trained})")
    sizes = {e["imgsz"] for e in entries}
    if len(sizes) == 1:
        return (f"scored at {sizes.pop()} px, the size the models were trained at "
                "(evaluation.imgsz is empty; set it to score at another size)")
    return (f"the models were trained at different sizes ({trained}): each was scored at the size it was "
            "trained at, the size ultralytics runs it at in production; set evaluation.imgsz to score "
            "every model at one size")


def write_chart(path: Path, entries: list[dict[str, Any]], names: tuple[str, ...], split: str = "test") -> Path | None:
    """Per-class AP50 of every model side by side (PNG); None when matplotlib cannot draw."""
    try:
        fig = chart_figure(entries, names, split)
    except ImportError:  # the numbers are in the JSON and markdown anyway
        logger.warning("matplotlib unavailable: no chart written", exc_info=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def chart_figure(entries: list[dict[str, Any]], names: tuple[str, ...], split: str = "test"):
    """The per-class AP50 chart as a matplotlib Figure (not saved)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    import numpy as np

    x = np.arange(len(names))
    width = 0.8 / max(len(entries), 1)
    # constrained layout with the legend outside the axes: it can never cover a bar
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 4.6), layout="constrained")
    ax = fig.subplots()
    for k, entry in enumerate(entries):
        values = [(entry["per_class"].get(n) or {}).get("ap50") or 0.0 for n in names]
        label = f"{entry['role']}: {_name(entry)} (mAP50 {entry['map50']:.3f})"
        bars = ax.bar(x - 0.4 + width * (k + 0.5), values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)  # room for the value labels above a bar at 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("AP50")
    ax.set_title(f"Per-class AP50 on the same {split} images")
    fig.legend(fontsize=8, loc="outside lower center", ncol=min(len(entries), 2))
    return fig


def _setting_words(key: str, value: Any, decision: dict[str, Any]) -> str:
    """An evaluation setting as the report states it: an empty value says what was used instead."""
    if value in (None, ""):
        if key == "imgsz":
            sizes = sorted({v for v in (decision.get("imgsz") or {}).values() if v})
            return f"imgsz as trained ({', '.join(map(str, sizes)) or '?'})"
        return f"{key} auto"
    return f"{key} {value}"


def markdown_report(result: CompareResult, names: tuple[str, ...]) -> str:
    d = result.decision
    verdict = ("PROMOTE" if d["promote"] else "NO MODEL PROMOTED" if d.get("first_model") else
               "KEEP PRODUCTION") + (" - BELOW SPEC" if result.below_spec else "")
    lines = [f"# Model comparison: {verdict}", "",
             f"Split {md_code(result.split)} of {md_code(result.data)}: {result.images} images, dataset version "
             f"{md(result.dataset_version)}.",
             f"Settings: {', '.join(_setting_words(k, v, d) for k, v in result.settings['evaluation'].items())}.", "",
             "| role | model | mAP50 | mAP50-95 | precision | recall | ms/image | cached |", "|---|---|---|---|---|---|---|---|"]
    for m in result.models:
        ms = f"{m['ms_per_image']:.1f}" if m.get("ms_per_image") else "-"
        lines.append(f"| {m['role']} | {md(_name(m))} | {m['map50']:.3f} | {m['map50_95']:.3f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {ms} | {'yes' if m['cached'] else 'no'} |")
    headers = ["class"] + [f"{_name(m)} AP50" for m in result.models]
    rows = [[n] + [(m["per_class"].get(n) or {}).get("ap50") for m in result.models] for n in names]
    rows = [[r[0]] + ["-" if v is None else v for v in r[1:]] for r in rows]
    lines += ["", "## Per-class AP50", "", markdown_table(headers, rows)]
    if result.chart:
        lines += [f"![per-class AP50]({result.chart.name})", ""]
    lines += operating_point_markdown(result, names)
    lines += spec_markdown(result, names)
    lines += ["## Decision", "", f"Winner: {md_code(result.winner)}" if result.winner else "Winner: none", ""]
    if d.get("gain") is not None and d.get("ci95"):
        lines += [f"Gain on {d['metric']}: {d['gain']:+.3f}, 95% bootstrap interval "
                  f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] ({result.settings['promotion']['bootstrap_resamples']} "
                  "paired resamples of the images)", ""]
    lines += [f"- {md(r)}" for r in d["reasons"]]
    if result.skipped:
        lines += ["", "## Images left out", ""] + [f"- {md_code(s['path'])}: {md(s['reason'])}" for s in result.skipped]
    return "\n".join(lines) + "\n"


def _with_interval(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def operating_point_markdown(result: CompareResult, names: tuple[str, ...]) -> list[str]:
    """Per class: recall (1 - escape rate) and false calls per image at the line's confidence."""
    conf = result.settings["promotion"]["operating_conf"]
    models = [m for m in result.models if m.get("operating_point")]
    if not models:
        return []
    headers = ["class"] + [f"{_name(m)} {what}" for m in models for what in ("recall", "false calls/img")]
    rows = []
    for n in names:
        row = [n]
        for m in models:
            c = m["operating_point"]["per_class"].get(n) or {}
            row += [_with_interval(c.get("recall"), c.get("recall_ci95")),
                    _with_interval(c.get("false_calls_per_image"), c.get("false_calls_ci95"))]
        rows.append(row)
    return ["## At the line's confidence", "",
            f"Recall (1 - escape rate) and false calls per image at confidence {conf:.2f} "
            "(promotion.operating_conf), with 95% bootstrap intervals; a class's recall may fall by at most "
            f"promotion.max_recall_drop {result.settings['promotion']['max_recall_drop']:.2f}.", "",
            markdown_table(headers, rows), ""]


def spec_markdown(result: CompareResult, names: tuple[str, ...]) -> list[str]:
    """Per class: the line's spec, each model's recall against it, and the confidence that meets it."""
    models = [m for m in result.models if m.get("conf_for_spec") is not None]
    if not models:
        return []
    conf = result.settings["promotion"]["operating_conf"]
    headers = ["class", "min_recall"] + [f"{Path(m['path']).name} {what}" for m in models
                                         for what in (f"recall at {conf:.2f}", "conf_for_spec (false calls/img)")]
    rows = []
    for n in names:
        row = [n, f"{(result.spec.get('min_recall') or {}).get(n, 0):.2f}"]
        for m in models:
            recall = ((m["operating_point"]["per_class"].get(n) or {}).get("recall"))
            at = m["conf_for_spec"].get(n)
            mark = " BELOW" if n in (m.get("below_spec") or []) else ""
            row += ["-" if recall is None else f"{recall:.3f}{mark}",
                    f"{at['conf']:.3f} ({at['false_calls_per_image']:.2f})" if at else "none reaches it"]
        rows.append(row)
    return ["## The line's spec", "",
            f"Each class must reach promotion.min_recall at confidence {conf:.2f}; conf_for_spec is the highest "
            "confidence at which it does on this split (with that class's false calls per image there).", "",
            markdown_table(headers, rows), ""]


def describe(result: CompareResult) -> str:
    lines = [f"{result.images} {result.split} images (dataset version {result.dataset_version})"]
    width = max([len(_name(m)) for m in result.models] + [28])
    for m in result.models:
        ms = f"{m['ms_per_image']:.1f} ms/img" if m.get("ms_per_image") else ""
        lines.append(f"  {m['role']:<10} {_name(m):<{width}} mAP50 {m['map50']:.3f}  mAP50-95 "
                     f"{m['map50_95']:.3f}  {ms}{'  (cached)' if m['cached'] else ''}")
    d = result.decision
    below = f" - BELOW SPEC ({', '.join(result.below_spec)})" if result.below_spec else ""
    won = next((m for m in result.models if m["path"] == result.winner), None)
    lines.append(("PROMOTE " + (_name(won) if won else Path(result.winner).name) + (" (forced)" if d.get("forced") else "")
                  + below) if d["promote"] else "KEEP production" + below if result.winner else "NOTHING to promote")
    lines += [f"  - {r}" for r in d["reasons"]]
    lines.append(f"Report: {result.report}")
    root = Path(result.report).parents[2]  # ROOT/training/reports/compare_<stamp>.json
    candidates = [m for m in result.models if m["role"] == "candidate"]
    live = _production_sha256(root)
    if d["promote"] and won is not None and live and won.get("sha256") == live:
        lines.append(f"Next: it is already the production model ({Workspace.at(root).production_model}); "
                     f"versions and past runs: {command('training_pipeline.py', root, '--status')}")
    elif d["promote"]:
        under_bar = (d.get("first_model") and won is not None
                     and won[d["metric"]] < result.settings["promotion"]["min_first_map"])
        force = ("--force",) if under_bar else ()  # approved only because --force was given here
        lines.append(f"Next: make it production: "
                     f"{command('training_pipeline.py', root, '--candidate', result.winner, *force)}")
    elif d.get("first_model") and candidates:
        best = max(candidates, key=lambda m: m[d["metric"]])
        lines.append(f"Next: promote it anyway (below the bar): "
                     f"{command('training_pipeline.py', root, '--candidate', best['path'], '--force')}")
    return "\n".join(lines)


def _production_sha256(root: Path) -> str | None:
    """The sha256 of ROOT/yolov8_model.pt, if there is one (a Next: line never offers it again)."""
    from toolkit.core.files import sha256_file

    path = Workspace.at(root).production_model
    try:
        return sha256_file(path) if path.is_file() else None
    except OSError:
        return None


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="model_comparator.py")
    add_options(parser, CompareConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)

    def execute(a: argparse.Namespace) -> CompareResult:
        # ultralytics prints to stdout (e.g. when it creates its settings file at first import):
        # on the command line stdout belongs to --json, so anything printed goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return run(config_from_args(CompareConfig, a))

    return run_main(args, execute, describe)


if __name__ == "__main__":
    raise SystemExit(main())

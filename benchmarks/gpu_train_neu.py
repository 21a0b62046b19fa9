"""NEU-DET training routes, plain ultralytics vs the toolkit, scored on the fixed test split.

Builds the YOLO dataset of NEU-DET's fixed split once (train / val / test by image stem), then
trains every (route, seed) job, several at once if asked (one GPU holds several YOLOv8n runs),
scores each best.pt on the test split with ultralytics' own ``val`` (conf 0.001, iou 0.7) and
writes ``benchmarks/results/<date>-<card>.json`` and ``.md`` (mean ± spread over the seeds).

Routes ``FAMILY-START[:RECIPE]``:
  FAMILY  plain (``YOLO(..).train`` with ultralytics' defaults) or ours (``train_yolov8.run``
          with training.yaml's settings), both plus the recipe's and --all-set's overrides;
  START   finetune (from --model, the production model: neu_v1.0_half.pt, trained on half the
          training images), scratch (yolov8n.yaml), or both (the finetune and scratch jobs of
          that family and seed; the one with the better *validation* mAP50-95 is "promoted", its
          test score reported, and the time is the sum of both);
  RECIPE  a named set of ultralytics overrides (RECIPES below), e.g. ours-finetune:metal.
Every job gets the same plots setting (off: the toolkit's default), so time ratios compare the
same work. Phases per job: setup (call -> first epoch), loop (ultralytics' epoch loop and its
final validation of best.pt), after (loop end -> result: for ours, curves.png and the report).

--concurrent N runs N jobs at once as separate processes, data-loader workers split over the
cores (cores // N - 1 each, at most 8), CPU threads split likewise.
--cpu-proxy: a small preset for a machine without a GPU (NEU at imgsz 160, 5 epochs,
720 training images, fine-tune route: plain, ours with ultralytics' augmentation, ours with
"metal", 3 seeds; about 15 min on 2 idle cores); its figures check the direction of a recipe
change and never stand in for GPU figures. A run cut off by a time limit keeps its finished
jobs: --collect OUT/<stamp> [...] writes their results (several runs merged).

Usage (GPU machine, after `source .gpu/setup.sh`, see ../shared/gpu/README.md):
    python3 benchmarks/gpu_train_neu.py --neu .gpu/NEU-DET --model .gpu/models/neu_v1.0_half.pt \\
        --routes plain-finetune,ours-finetune,plain-scratch,ours-scratch,ours-both --seeds 0,1,2 --concurrent 4
    nice -n 10 python benchmarks/gpu_train_neu.py --cpu-proxy                    # 2-core CPU, ~15 min
    python benchmarks/gpu_train_neu.py --collect benchmarks/out/gpu_train_neu/*  # what cut-off runs finished
    python benchmarks/gpu_train_neu.py --routes ours-finetune --epochs-finetune 1 --imgsz 64 \\
        --limit-train 24 --limit-eval 12 --device cpu                            # smoke test
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
FAMILIES = ("plain", "ours")
STARTS = ("finetune", "scratch", "both")
# Named ultralytics overrides. "metal" is the augmentation training.yaml carried until issue 11
# (reverted to ultralytics' defaults for lack of evidence: README.md, "Training recipes").
# "default" adds nothing (ours: training.yaml as shipped); "ultralytics" spells out ultralytics'
# own values of the keys "metal" changes, so a comparison does not depend on the template.
RECIPES: dict[str, dict] = {
    "default": {},
    "ultralytics": {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "scale": 0.5, "flipud": 0.0},
    "metal": {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.3, "scale": 0.3, "flipud": 0.5},
}
# close_mosaic=1: with 5 epochs ultralytics' default 10 would switch mosaic off for the whole run.
CPU_PROXY = {"imgsz": 160, "epochs_finetune": 5, "epochs_scratch": 5, "limit_train": 720, "batch": 16,
             "routes": "plain-finetune:ultralytics,ours-finetune:ultralytics,ours-finetune:metal", "seeds": "0,1,2",
             "device": "cpu", "all_set": ["close_mosaic=1"]}

logger = logging.getLogger("gpu_train_neu")


# ----------------------------------------------------------------------------- data
def _voc_to_yolo(xml_path: Path) -> list[str]:
    from toolkit.data.labels.voc import voc_as_yolo_text

    return voc_as_yolo_text(xml_path, NEU_CLASSES).splitlines()


def find_neu_pair(neu: Path, stem: str) -> tuple[Path, Path]:
    for images, notes in (("IMAGES", "ANNOTATIONS"), ("Validation_Images", "Validation_Annotations")):
        img, xml = neu / images / f"{stem}.jpg", neu / notes / f"{stem}.xml"
        if img.is_file() and xml.is_file():
            return img, xml
    raise FileNotFoundError(f"{stem}: image or annotation missing in {neu}")


def _take(stems: list[str], limit: int | None) -> list[str]:
    """At most ``limit`` stems, the same share of every class (round-robin), in a fixed order."""
    if not limit:
        return stems
    by_class = {c: [s for s in stems if s.startswith(c + "_")] for c in NEU_CLASSES}
    share = max(1, limit // len(NEU_CLASSES))
    return [s for c in NEU_CLASSES for s in by_class[c][:share]]


def build_workspace(neu: Path, root: Path, limit: int | None = None, train_list: str = "train",
                    limit_train: int | None = None, limit_eval: int | None = None) -> dict[str, int]:
    """A toolkit workspace whose managed dataset is NEU-DET's fixed split (copies, stems from splits/)."""
    from toolkit.core.datafile import write_dataset_yaml
    from toolkit.core.layout import Workspace

    ws = Workspace.at(root)
    for folder in ws.tree():
        folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, list_name in (("train", train_list), ("val", "val"), ("test", "test")):
        stems = (neu / "splits" / f"{list_name}.txt").read_text().split()
        stems = _take(stems, (limit_train if split == "train" else limit_eval) or limit)
        for stem in stems:
            img, xml = find_neu_pair(neu, stem)
            shutil.copyfile(img, ws.images_dir(split) / f"{stem}.jpg")
            (ws.labels_dir(split) / f"{stem}.txt").write_text("\n".join(_voc_to_yolo(xml)) + "\n")
        counts[split] = len(stems)
    write_dataset_yaml(ws, NEU_CLASSES, 1)
    return counts


# ----------------------------------------------------------------------------- routes and jobs
def parse_route(text: str) -> dict:
    match = re.fullmatch(r"(plain|ours)-(finetune|scratch|both)(?::([A-Za-z0-9_]+))?", text.strip())
    if not match:
        raise ValueError(f"route {text!r}: write FAMILY-START[:RECIPE], FAMILY plain|ours, START finetune|scratch|both")
    family, start, recipe = match.group(1), match.group(2), match.group(3) or "default"
    if recipe not in RECIPES:
        raise ValueError(f"route {text!r}: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    return {"route": text.strip(), "family": family, "start": start, "recipe": recipe}


def plan_jobs(routes: list[str], seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """(jobs to train, derived 'both' routes); a both route trains its finetune and scratch jobs."""
    parsed = [parse_route(r) for r in routes]
    jobs: dict[tuple, dict] = {}
    for seed in seeds:  # seed by seed: a run cut off early still holds comparable pairs
        for route in parsed:
            starts = ("finetune", "scratch") if route["start"] == "both" else (route["start"],)
            for start in starts:
                key = (route["family"], start, route["recipe"], seed)
                jobs.setdefault(key, {"family": route["family"], "start": start, "recipe": route["recipe"],
                                      "seed": seed, "id": f"{route['family']}-{start}-{route['recipe']}-s{seed}"})
    return list(jobs.values()), [r for r in parsed if r["start"] == "both"]


def job_settings(job: dict, args: argparse.Namespace) -> dict:
    epochs = args.epochs_finetune if job["start"] == "finetune" else args.epochs_scratch
    return {"epochs": epochs, "imgsz": args.imgsz, "batch": args.batch, "device": args.device,
            "workers": args.job_workers, "seed": job["seed"], "patience": 0,
            "model": str(Path(args.model).resolve()) if job["start"] == "finetune" else "yolov8n.yaml",
            "overrides": {**args.all_overrides, **RECIPES[job["recipe"]]}}


def _phase_callbacks(marks: dict) -> None:
    """Time stamps of ultralytics' phases for every model created afterwards (its default callbacks)."""
    from ultralytics.utils.callbacks import base

    base.default_callbacks["on_train_start"].append(lambda t: marks.setdefault("train_start", time.time()))
    base.default_callbacks["on_train_end"].append(lambda t: marks.setdefault("train_end", time.time()))


def _val_metrics(trainer) -> dict:
    m = getattr(trainer, "metrics", None) or {}
    return {"val_map50": float(m.get("metrics/mAP50(B)", float("nan"))),
            "val_map50_95": float(m.get("metrics/mAP50-95(B)", float("nan")))}


def test_scores(best: Path, data: Path, imgsz: int, batch: int, device: str | None) -> dict[str, float]:
    from ultralytics import YOLO

    metrics = YOLO(str(best)).val(data=str(data), split="test", imgsz=imgsz, batch=batch, conf=0.001, iou=0.7,
                                  device=device, plots=False, verbose=False,
                                  project=str(best.parent.parent), name="test_val", exist_ok=True)
    return {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}


def run_job(job: dict, settings: dict, data: Path, out: Path) -> dict:
    """Train one job in this process and score it on the test split."""
    import train_yolov8
    from toolkit.core.offline import prepare_ultralytics

    out.mkdir(parents=True, exist_ok=True)
    prepare_ultralytics(out / "ultralytics_cfg")
    marks: dict = {}
    _phase_callbacks(marks)
    s = settings
    t0 = time.time()
    if job["family"] == "plain":
        from ultralytics import YOLO

        model = YOLO(s["model"])
        model.train(data=str(data), epochs=s["epochs"], imgsz=s["imgsz"], batch=s["batch"], device=s["device"],
                    workers=s["workers"], seed=s["seed"], patience=s["patience"], plots=False, verbose=False,
                    project=str(out), name="run", exist_ok=True, **s["overrides"])
        t1 = time.time()
        best, val = out / "run" / "weights" / "best.pt", _val_metrics(model.trainer)
        epochs_done = int(model.trainer.epoch) + 1
    else:
        result = train_yolov8.run(train_yolov8.TrainConfig(
            root=out / "ws", data=data, start_from="scratch" if job["start"] == "scratch" else s["model"],
            epochs=s["epochs"], imgsz=s["imgsz"], batch=s["batch"], device=s["device"], workers=s["workers"],
            seed=s["seed"], patience=s["patience"], extra=tuple(s["overrides"].items()), name="bench"))
        t1 = time.time()
        best, epochs_done = result.best, result.epochs_completed
        val = {"val_map50": result.metrics.get("map50"), "val_map50_95": result.metrics.get("map50_95")}
    row = {**job, "epochs": epochs_done, "train_seconds": round(t1 - t0, 2),
           "setup_seconds": round(marks.get("train_start", t0) - t0, 2),
           "loop_seconds": round(marks.get("train_end", t1) - marks.get("train_start", t0), 2),
           "after_seconds": round(t1 - marks.get("train_end", t1), 2), **val,
           **test_scores(best, data, s["imgsz"], max(1, s["batch"] if s["batch"] > 0 else 16), s["device"]),
           "best": str(best)}
    return row


def _child(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    row = run_job(spec["job"], spec["settings"], Path(spec["data"]), Path(spec["out"]))
    Path(spec["result"]).write_text(json.dumps(row))
    return 0


def run_all(jobs: list[dict], args: argparse.Namespace, data: Path, out: Path) -> list[dict]:
    """Run the jobs, ``args.concurrent`` at a time, each in its own process; failures are reported rows."""
    pending, running, rows = list(jobs), [], []
    threads = max(1, (os.cpu_count() or 1) // args.concurrent)
    while pending or running:
        while pending and len(running) < args.concurrent:
            job = pending.pop(0)
            job_dir = out / job["id"]
            job_dir.mkdir(parents=True, exist_ok=True)
            spec = {"job": job, "settings": job_settings(job, args), "data": str(data), "out": str(job_dir),
                    "result": str(job_dir / "row.json"), "threads": threads if args.concurrent > 1 else 0}
            (job_dir / "spec.json").write_text(json.dumps(spec, indent=1))
            log = open(job_dir / "log.txt", "w")
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(job_dir / "spec.json")],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
            running.append((job, job_dir, proc, log, time.time()))
            logger.info("started %s", job["id"])
        time.sleep(0.5)
        for item in list(running):
            job, job_dir, proc, log, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode == 0 and (job_dir / "row.json").is_file():
                row = json.loads((job_dir / "row.json").read_text())
                row["wall_seconds"] = round(time.time() - started, 1)
                logger.info("done %s: test mAP50 %.3f mAP50-95 %.3f, train %.0f s", job["id"], row["map50"],
                            row["map50_95"], row["train_seconds"])
            else:
                tail = (job_dir / "log.txt").read_text(errors="replace")[-1500:]
                row = {**job, "error": f"exit {proc.returncode}", "log_tail": tail}
                logger.error("FAILED %s (exit %s); see %s", job["id"], proc.returncode, job_dir / "log.txt")
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- summary
def _route_name(family: str, start: str, recipe: str) -> str:
    return f"{family}-{start}" + ("" if recipe == "default" else f":{recipe}")


def derive_both(rows: list[dict], both_routes: list[dict]) -> list[dict]:
    """For each both route and seed: the finetune/scratch job with the better validation mAP50-95."""
    derived = []
    for route in both_routes:
        by_seed: dict[int, dict] = {}
        for row in rows:
            if "error" in row or row["family"] != route["family"] or row["recipe"] != route["recipe"]:
                continue
            by_seed.setdefault(row["seed"], {})[row["start"]] = row
        for seed, pair in sorted(by_seed.items()):
            if set(pair) != {"finetune", "scratch"}:
                continue
            pick = max(pair.values(), key=lambda r: (r.get("val_map50_95") or 0.0))
            derived.append({**pick, "start": "both", "picked": pick["start"], "id": f"{route['route']}-s{seed}",
                            "train_seconds": round(sum(r["train_seconds"] for r in pair.values()), 2),
                            "loop_seconds": round(sum(r["loop_seconds"] for r in pair.values()), 2),
                            "setup_seconds": round(sum(r["setup_seconds"] for r in pair.values()), 2),
                            "after_seconds": round(sum(r["after_seconds"] for r in pair.values()), 2)})
    return derived


def _mean_spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(rows: list[dict], routes: list[str]) -> list[dict]:
    table = []
    for text in routes:
        r = parse_route(text)
        mine = [x for x in rows if "error" not in x and x["family"] == r["family"] and x["start"] == r["start"]
                and x["recipe"] == r["recipe"]]
        if not mine:
            table.append({"route": text, "seeds": 0})
            continue
        entry = {"route": text, "seeds": len(mine), "epochs": mine[0]["epochs"]}
        for key in ("map50", "map50_95", "train_seconds", "loop_seconds", "setup_seconds", "after_seconds"):
            entry[key], entry[key + "_sd"] = _mean_spread([x[key] for x in mine])
        if r["start"] == "both":
            entry["picked"] = ", ".join(f"s{x['seed']}:{x['picked']}" for x in mine)
        table.append(entry)
    by_route = {e["route"]: e for e in table}
    for e in table:  # ours / plain time, same start and recipe
        if e["route"].startswith("ours-") and e.get("seeds"):
            plain = by_route.get("plain-" + e["route"][len("ours-"):])
            if plain and plain.get("seeds"):
                e["time_ratio_vs_plain"] = e["train_seconds"] / plain["train_seconds"]
    return table


def markdown(report: dict) -> str:
    head = (f"NEU-DET fixed split, test set ({report['images']['test']} images), {report['card']}"
            f"{' (CPU proxy: not a GPU figure)' if report['cpu_proxy'] else ''}, {report['date']}; "
            f"train {report['images']['train']} images, imgsz {report['imgsz']}, batch {report['batch']}, "
            f"seeds {report['seeds']}, concurrent {report['concurrent']}, ultralytics {report['ultralytics']}"
            + (f"; every job: {report['all_set']}" if report.get("all_set") else "")
            + (f"; {report['collected']}" if report.get("collected") else ""))
    lines = [head, "", "| route | seeds | epochs | test mAP50 | test mAP50-95 | train s | epoch loop s | "
             "outside loop s | time / plain |", "|---|---|---|---|---|---|---|---|---|"]

    def ms(e, key, fmt):
        return f"{e[key]:{fmt}} ± {e[key + '_sd']:{fmt}}"

    for e in report["table"]:
        if not e.get("seeds"):
            lines.append(f"| {e['route']} | 0 (failed) | | | | | | | |")
            continue
        outside = e["setup_seconds"] + e["after_seconds"]
        ratio = f"{e['time_ratio_vs_plain']:.2f}" if "time_ratio_vs_plain" in e else ""
        route = e["route"] + (f" (picked {e['picked']})" if e.get("picked") else "")
        lines.append(f"| {route} | {e['seeds']} | {e['epochs']} | {ms(e, 'map50', '.3f')} | {ms(e, 'map50_95', '.3f')} "
                     f"| {ms(e, 'train_seconds', '.0f')} | {e['loop_seconds']:.0f} | {outside:.1f} | {ratio} |")
    lines += ["", "mean ± sample standard deviation over the seeds; `both` = the finetune and scratch runs of a seed, "
              "the one with the better validation mAP50-95 kept, time = both runs' sum.", ""]
    return "\n".join(lines)


def card_name(device: str | None) -> tuple[str, str]:
    """(human name, file-name slug) of the card that trained: the GPU, else 'cpu-Ncores'."""
    import torch

    if str(device).lower() != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU, {os.cpu_count()} cores"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return name, slug


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "NEU-DET")
    parser.add_argument("--model", type=Path, default=REPO.parent / "shared" / "models" / "neu_v1.0_half.pt",
                        help="production model the finetune routes start from")
    parser.add_argument("--routes", default="plain-finetune,ours-finetune,plain-scratch,ours-scratch,ours-both",
                        help="comma-separated FAMILY-START[:RECIPE]")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train-list", default="train", help="splits/<name>.txt for training: train or train_half")
    parser.add_argument("--epochs-finetune", type=int, default=50)
    parser.add_argument("--epochs-scratch", type=int, default=100)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: GPU 0 if there is one, else cpu")
    parser.add_argument("--workers", type=int, default=None, help="per job (default: cores // concurrent - 1, at most 8)")
    parser.add_argument("--concurrent", type=int, default=1, help="jobs trained at once (each its own process)")
    parser.add_argument("--limit-train", type=int, default=None, help="at most this many training images")
    parser.add_argument("--limit-eval", type=int, default=None, help="at most this many val and test images")
    parser.add_argument("--all-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an ultralytics argument for every job (before the recipe's own)")
    parser.add_argument("--cpu-proxy", action="store_true", help="the small CPU preset (see above)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_train_neu")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                        help="where <date>-<card>.json and .md go")
    parser.add_argument("--collect", type=Path, nargs="+", metavar="RUN_DIR",
                        help="write the results of cut-off runs (OUT/<stamp> ...) from the jobs that finished")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.collect:
        return collect(args.collect, args.results)
    if args.cpu_proxy:
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--"))
        for key, value in CPU_PROXY.items():
            if "--" + key.replace("_", "-") not in given:
                setattr(args, key, value)
    if not (args.neu / "splits").is_dir():
        print(f"error: NEU-DET with splits/ not found at {args.neu}; pass --neu", file=sys.stderr)
        return 1
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
        routes = [r.strip() for r in str(args.routes).split(",") if r.strip()]
        jobs, both_routes = plan_jobs(routes, seeds)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(j["start"] == "finetune" for j in jobs) and not args.model.is_file():
        print(f"error: no model to fine-tune at {args.model}; pass --model", file=sys.stderr)
        return 1
    from toolkit.core.config import parse_set_pairs

    args.all_overrides = parse_set_pairs(args.all_set)
    args.concurrent = max(1, args.concurrent)
    cores = os.cpu_count() or 1
    args.job_workers = args.workers if args.workers is not None else max(0, min(8, cores // args.concurrent - 1))
    if args.device is None:
        import torch

        args.device = "0" if torch.cuda.is_available() else "cpu"

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = args.out / stamp
    counts = build_workspace(args.neu, root / "data", train_list=args.train_list, limit_train=args.limit_train,
                             limit_eval=args.limit_eval)
    data = root / "data" / "training" / "configs" / "dataset.yaml"
    logger.info("dataset: %s images; %d jobs, %d at once, %d workers each", counts, len(jobs), args.concurrent,
                args.job_workers)
    import ultralytics

    card, slug = card_name(args.device)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "card": card, "slug": slug,
            "cpu_proxy": bool(args.cpu_proxy), "device": args.device, "ultralytics": ultralytics.__version__,
            "imgsz": args.imgsz, "batch": args.batch, "epochs_finetune": args.epochs_finetune,
            "epochs_scratch": args.epochs_scratch, "model": str(args.model), "train_list": args.train_list,
            "images": counts, "seeds": seeds, "concurrent": args.concurrent, "workers_per_job": args.job_workers,
            "routes": routes, "recipes": {k: v for k, v in RECIPES.items()}, "all_set": args.all_overrides}
    (root / "plan.json").write_text(json.dumps(meta, indent=1))  # lets --collect finish a cut-off run
    t0 = time.time()
    rows = run_all(jobs, args, data, root / "jobs")
    meta["wall_seconds"] = round(time.time() - t0, 1)
    return finish(meta, rows, args.results, root)


def finish(meta: dict, rows: list[dict], results: Path, root: Path) -> int:
    """The 'both' picks, the table, and the results files; exit 1 when a job failed."""
    _, both_routes = plan_jobs(meta["routes"], meta["seeds"])
    rows = rows + derive_both(rows, both_routes)
    report = {**meta, "table": summarise(rows, meta["routes"]), "rows": rows}
    results.mkdir(parents=True, exist_ok=True)
    name = base = f"{report['date']}-{report['slug']}{'-cpu-proxy' if report['cpu_proxy'] else ''}"
    for n in range(2, 100):  # a second call on the same day and card keeps the first's files
        if not (results / f"{name}.json").exists():
            break
        name = f"{base}-{n}"
    (results / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (results / f"{name}.md").write_text(text)
    print(text)
    print(f"details: {results / (name + '.json')}; runs under {root}")
    return 0 if all("error" not in r for r in rows) else 1


def collect(roots: list[Path], results: Path) -> int:
    """Results of runs that were cut off (time limit): the jobs that finished, from ROOT/jobs/*/row.json.

    Several runs of the same settings (dataset, epochs, imgsz) are merged; a job done twice
    counts once (the later run's row); the routes are those of all the runs.
    """
    metas = [json.loads((root / "plan.json").read_text()) for root in roots]
    meta = dict(metas[0])
    for other in metas[1:]:
        for key in ("images", "imgsz", "batch", "epochs_finetune", "epochs_scratch", "model", "all_set", "device"):
            same = (Path(other[key]).resolve() == Path(meta[key]).resolve()) if key == "model" else \
                other.get(key) == meta.get(key)
            if not same:
                print(f"error: the runs differ in {key} ({meta.get(key)} vs {other.get(key)}); collect them apart",
                      file=sys.stderr)
                return 2
        meta["routes"] = meta["routes"] + [r for r in other["routes"] if r not in meta["routes"]]
        meta["seeds"] = sorted(set(meta["seeds"]) | set(other["seeds"]))
    by_id: dict[str, dict] = {}
    for root in roots:
        for path in sorted((root / "jobs").glob("*/row.json")):
            row = json.loads(path.read_text())
            by_id[row["id"]] = row
    if not by_id:
        print(f"error: no finished job under {', '.join(str(r / 'jobs') for r in roots)}", file=sys.stderr)
        return 1
    meta["collected"] = f"{len(by_id)} finished job(s) collected from {len(roots)} run(s)"
    return finish(meta, list(by_id.values()), results, roots[-1])


if __name__ == "__main__":
    raise SystemExit(main())

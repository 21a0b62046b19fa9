"""The first run's estimate against the real run, on a fresh NEU-DET workspace and a busy machine.

Builds a fresh workspace (production: the given model; all of NEU-DET imported with its fixed
train / val / test split; no history), starts ``--load`` CPU-bound processes beside it, then runs

1. ``training_pipeline.py --dry-run --json`` with the given flags: no run matches, so the plan times
   a pilot on this machine and records it; its estimate is the train step's ``estimate_s``;
2. ``training_pipeline.py --json`` with the same flags: the real run; its train seconds are the
   training call's (``stages.train.seconds``) and the whole train stage's (``timings.train``);

and writes ``benchmarks/results/<date>-<machine>-estimate.json`` and ``.md`` with the ratio
actual / estimate (the issue's bar: 0.6-1.67) and the load average at each step. Both commands
run as separate processes, as a user runs them. Not a test: it compares timings.

Usage:
    nice -n 5 python benchmarks/bench_estimate.py --neu ../shared/datasets/NEU-DET \\
        --model ../shared/models/neu_v1.0_half.pt --epochs 2 --imgsz 96 --device cpu --load 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LOAD_CODE = "while True: pass"


def export_fixed_split(neu: Path, dest: Path) -> Path:
    """A YOLO copy of NEU-DET laid out by its fixed split (splits/train|val|test.txt)."""
    import yaml

    from toolkit.data.labels.source import scan_files
    from toolkit.data.labels.voc import read_voc, voc_as_yolo_text

    batch = read_voc(scan_files(neu.resolve()))
    by_stem = {i.image.stem: i for i in batch.images}
    names = sorted({str(b.cls) for item in batch.images for b in item.boxes})
    for split in ("train", "val", "test"):
        (dest / "images" / split).mkdir(parents=True, exist_ok=True)
        (dest / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem in (neu / "splits" / f"{split}.txt").read_text().split():
            item = by_stem[stem]
            shutil.copyfile(item.image, dest / "images" / split / item.image.name)
            text = voc_as_yolo_text(item.label, names, item.image) if item.label else ""
            (dest / "labels" / split / f"{stem}.txt").write_text(text, encoding="utf-8")
    data = {"path": str(dest.resolve()), "train": "images/train", "val": "images/val", "test": "images/test",
            "names": dict(enumerate(names))}
    (dest / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest


def fresh_workspace(neu: Path, model: Path, base: Path) -> Path:
    import dataset_preparer
    import setup_training

    export = export_fixed_split(neu, base / "export")
    root = base / "ws"
    root.mkdir(parents=True)
    shutil.copyfile(model, root / "yolov8_model.pt")
    setup_training.run(setup_training.SetupConfig(root=root))
    dataset_preparer.run(dataset_preparer.PrepareConfig(root=root, source=export, keep_split=True))
    return root


def _pipeline(root: Path, flags: list[str], *extra: str) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(root), "--json", *flags,
                           *extra], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(extra)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "NEU-DET")
    parser.add_argument("--model", type=Path, default=REPO.parent / "shared" / "models" / "neu_v1.0_half.pt")
    parser.add_argument("--strategy", default="finetune")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--load", type=int, default=2, help="CPU-bound processes running beside both steps")
    parser.add_argument("--work", type=Path, help="folder for the workspace (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--label", default="", help="added to the results' file name")
    args = parser.parse_args(argv)
    flags = ["--strategy", args.strategy, "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
             "--device", args.device]
    base = args.work or Path(tempfile.mkdtemp(prefix="bench_estimate_"))
    t0 = time.perf_counter()
    root = fresh_workspace(args.neu, args.model, base)
    build_s = time.perf_counter() - t0
    hogs = [subprocess.Popen([sys.executable, "-c", LOAD_CODE]) for _ in range(args.load)]
    try:
        time.sleep(3)
        load_before_dry = os.getloadavg()
        dry, dry_s = _pipeline(root, flags, "--dry-run")
        load_before_run = os.getloadavg()
        real, real_s = _pipeline(root, flags, "--no-analyze")
        load_after = os.getloadavg()
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait()
    plan = dry["stages"]["plan"]
    estimate = plan["total_s"]
    train = real["stages"]["train"]
    history = [json.loads(line) for line in (root / "memory-bank" / "training_history.jsonl").read_text().splitlines()]
    pilot = next((t for r in history if r.get("decision") == "pilot" for t in r.get("trainings") or ()), None)
    from toolkit.model.machine import detect_machine

    machine = detect_machine()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine.describe(),
        "flags": flags, "load_processes": args.load, "images": {"train": 1440, "val": 180, "test": 180},
        "workspace_build_s": round(build_s, 1), "dry_run_s": round(dry_s, 1), "pipeline_s": round(real_s, 1),
        "estimate_s": estimate, "estimate_basis": plan["steps"]["train"], "pilot": pilot,
        "train_call_s": train["seconds"], "train_stage_s": real["timings"]["train"],
        "ratio_train_call": round(train["seconds"] / estimate, 3),
        "ratio_train_stage": round(real["timings"]["train"] / estimate, 3),
        "epochs_completed": train["epochs_completed"], "train_timing": train.get("timing"),
        "loadavg": {"before_dry_run": load_before_dry, "before_run": load_before_run, "after_run": load_after},
        "bar": [0.6, 1.67],
    }
    result["within_bar"] = 0.6 <= result["ratio_train_call"] <= 1.67
    args.results.mkdir(parents=True, exist_ok=True)
    slug = ("gpu" if machine.gpus else f"cpu-{machine.cores}-cores") + (f"-{args.label}" if args.label else "")
    stem = args.results / f"{datetime.now(timezone.utc):%Y-%m-%d}-{slug}-estimate"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = [f"# First-run estimate vs the real run ({result['date']})", "",
          f"- machine: {result['machine']}; {args.load} CPU-bound processes beside both steps",
          f"- flags: `{' '.join(flags)}`; fresh NEU-DET workspace (1440 / 180 / 180, production {args.model.name}, "
          "no history)",
          f"- estimate (dry run, after its pilot): {estimate:.1f} s",
          f"- real run: training call {train['seconds']:.1f} s (ratio {result['ratio_train_call']}), train stage "
          f"{real['timings']['train']:.1f} s (ratio {result['ratio_train_stage']}); bar 0.6-1.67: "
          f"{'met' if result['within_bar'] else 'NOT met'}",
          f"- load average (1/5/15 min): before the dry run {load_before_dry}, before the run {load_before_run}, "
          f"after {load_after}",
          f"- pilot: {json.dumps(pilot)}", ""]
    stem.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    print(json.dumps(result, indent=2))
    if not args.work:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

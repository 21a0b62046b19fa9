"""Label efficiency of the analyzer's picks on NEU-DET (issue 12): do its K images beat K random ones?

A simulation of the real loop. Production = ``neu_v1.0_half.pt`` (trained on
``splits/train_half.txt``: the "old" images). The pool = the other training images
(``train.txt`` minus ``train_half.txt``, 720) with their labels hidden. Then:

1. the analyzer - the real command, ``training_analyzer.py --scan POOL --export K`` in a fresh
   workspace whose managed train split is the old images (so priorities know the class shares) -
   picks K images, once per K and per ``analyzer.selection`` mode (``--selections``, the default
   mode first; ``random`` is the random arm below). The scan and the production model's
   embeddings of the pool are made once and reused by every export;
2. production is fine-tuned on old + those K (labels revealed) and scored on the test split;
3. the same with K random pool images (several draws, each with its own training seed), with
   no new image (K = 0: the same fine-tune on old alone, the control) and with the whole pool.

Reported per K and mode: test mAP50 / mAP50-95 (mean +- std over seeds / draws) and the labels
saved: ``random_images_to_match`` = how many random images (linear interpolation of the random mean
over K, 0 and the whole pool) reach the mode's mean mAP50-95, ``label_efficiency`` = that / K.
Goal (issue 26): for the default mode, label efficiency >= 1.5 at K 30 and 90 and a mean above
random's at every K. An analyzer seed is both the selection's ``analyzer.seed`` (its clustering)
and the fine-tune's training seed, as a random draw's seed is both its sample and its training seed.

Runs: the default mode's (all seeds) first, then one seed of every other mode, then random / the
control / the whole pool, then the other modes' further seeds; the results file is rewritten
after every fine-tune (marked PARTIAL until the end), and a fine-tune whose spec (images, seeds,
settings) finished before in the same --work is taken over, so a cut-off run resumes. CPU
fine-tunes repeat closely (the same spec: within 0.0001 in two runs; 2026-12-04's random draws run
again on 2026-12-06 in another --work: within 0.0006 at K 30 / 90, 0.0032 at K 240), so
``--arms analyzer --reuse OLD.json`` takes random / control / whole-pool runs of the same
settings over instead of repeating them; the results say which runs were reused.

Fine-tunes use plain ultralytics (``YOLO(production).train``, the toolkit's offline preparation,
ultralytics' default augmentation, no per-epoch validation), the same settings for every arm;
scores come from ultralytics' ``val`` on the test split (conf 0.001, iou 0.7).

Modes:
  --mode gpu        imgsz 640, 30 epochs, batch 32, K 120,240,360, 3 draws, whole pool and test
                    split; ``--jobs N`` runs N fine-tunes at once (one GPU fits several).
  --mode cpu-proxy  a proxy that took 34 min on 2 busy shared cores: imgsz 128, 8 epochs,
                    a class-balanced 60-image replay of the old set, the whole 720-image pool,
                    K 30,90,240, 5 draws. At 128 px production is weak (mAP50-95 0.067 after a
                    fine-tune on the replay alone) and random rose from 0.108 +- 0.010 at K 30 to
                    0.146 +- 0.007 at K 240 (5 draws, 4.0 SD; 2026-12-04) - but that rise is mostly
                    the longer training a bigger K brings, not the images (see --epoch-images
                    below). The first proxy (224 px, 3 epochs,
                    a 240-image replay of a model that already knew those images) was flat from
                    40 to 120 images (0.214 / 0.210 / 0.212), so no method could show a gain in it.
                    Its figures are a CPU proxy, labelled so in the results, and say nothing about
                    GPU-sized fine-tunes.
``--epoch-images N`` (same steps): in the proxy a bigger K also trains longer (8 epochs of old + K
images), and on NEU-DET most of random's rise from K 0 to 90 came from those steps, not from the
images: the 60 replay images repeated to the image count of K 30 / 90 (no new image) scored 0.092 /
0.104 on test against random's 0.103 / 0.114 (3 seeds; 2026-12-06). With N, every run's train list
is cycled to N images per epoch, so all runs take the same steps and only the images differ. At
N 300 (152 steps, K 240's) the proxy's curve was flat: 0.142 with no new image, 0.143 / 0.147 /
0.150 with 30 / 90 / 240 random ones (2026-12-06-cpu-proxy-same-steps.md): at 128 px, 8 epochs,
new images teach production little more than repeating its old ones.
``--native-epochs E``: the proxy also changes the image size. ``neu_v1.0_half.pt`` was trained at
640 px and scores 0.054 mAP50-95 on test at 128 px (0.276 at 256, 0.376 at 640), so the standard
proxy's curve is mostly production re-learning 128 px. With E, production is first fine-tuned E
epochs on all its old images at --imgsz (once per --work; runs named ``<name>_n<E>``) and every arm
starts from that. At E 20 (266 s, test 0.244) random rose only 1.9 SD from K 30 to 240 (3 draws:
0.213 +- 0.016 / 0.243 +- 0.008; replay alone 0.202, below the start: 2026-12-06-cpu-proxy-native.md),
so the 128-px proxy does not resolve K 30 from that start either.
At ``--imgsz 256`` (production as it is scores 0.276 there) random rose 6.0 SD from K 30 to 240
(5 draws) and ``confident`` gave 1.39x / 1.29x / 0.95x, none of it resolved at 5 seeds
(2026-12-06-cpu-proxy-256px.md; 46 min with ``--jobs 2``, each run on its own view of the data).
Every size can be overridden (--imgsz --epochs --batch --ks --draws --old-limit --pool-limit
--test-limit). Results: ``benchmarks/results/<UTC date>-<card | cpu-proxy>.json`` and ``.md``.

Usage:
    python benchmarks/label_efficiency.py --mode cpu-proxy --arms analyzer \\
        --reuse benchmarks/results/2026-12-04-cpu-proxy.json --selections confident,hybrid,diversity,uncertainty
    python benchmarks/label_efficiency.py --mode gpu --neu .gpu/NEU-DET --model .gpu/models/neu_v1.0_half.pt --jobs 4
    python benchmarks/label_efficiency.py --mode cpu-proxy --imgsz 64 --epochs 1 --ks 4,8 --draws 2 \\
        --old-limit 24 --pool-limit 30 --test-limit 12 --analyzer-seeds 1   # smoke test (2-7 minutes)
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gpu_train_neu import find_neu_pair  # noqa: E402  (after the sys.path line)
from toolkit.data.labels.voc import voc_as_yolo_text  # noqa: E402

logger = logging.getLogger("label_efficiency")

MODES = {
    "gpu": dict(imgsz=640, epochs=30, batch=32, ks="120,240,360", draws=3, old_limit=0, pool_limit=0, test_limit=0),
    "cpu-proxy": dict(imgsz=128, epochs=8, batch=16, ks="30,90,240", draws=5, old_limit=60, pool_limit=0,
                      test_limit=0),
}


# --- data ------------------------------------------------------------------------------------------

def balanced(stems: list[str], names: list[str], limit: int, seed: int) -> list[str]:
    """``limit`` stems taken round-robin over the classes (NEU names start with the class)."""
    if not limit or limit >= len(stems):
        return list(stems)
    rng = random.Random(seed)
    by_class = {c: [s for s in stems if s.startswith(c + "_")] for c in names}
    for group in by_class.values():
        rng.shuffle(group)
    out: list[str] = []
    while len(out) < limit and any(by_class.values()):
        for c in names:
            if by_class[c] and len(out) < limit:
                out.append(by_class[c].pop())
    return sorted(out)


def build_data(neu: Path, work: Path, names: list[str], args) -> dict[str, list[str]]:
    """YOLO copies (images/ + labels/ side by side) of every stem used; returns the stem lists."""
    split = {name: (neu / "splits" / f"{name}.txt").read_text().split() for name in ("train", "train_half", "test")}
    old_all = split["train_half"]
    pool_all = sorted(set(split["train"]) - set(old_all))
    sets = {"old_all": old_all,
            "old": balanced(old_all, names, args.old_limit, 1),
            "pool": balanced(pool_all, names, args.pool_limit, 2),
            "test": balanced(split["test"], names, args.test_limit, 3)}
    images, labels = work / "data" / "images", work / "data" / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for stem in sorted({s for v in sets.values() for s in v}):
        img, xml = find_neu_pair(neu, stem)
        target = images / img.name
        if not target.exists():
            target.write_bytes(img.read_bytes())
        label_of(work, stem).write_text(voc_as_yolo_text(xml, names))  # the import's own conversion
    return sets


def image_of(work: Path, stem: str) -> Path:
    return work / "data" / "images" / f"{stem}.jpg"


def label_of(work: Path, stem: str) -> Path:
    return work / "data" / "labels" / f"{stem}.txt"


# --- the analyzer's picks --------------------------------------------------------------------------

def analyzer_picks(work: Path, model: Path, sets: dict[str, list[str]], names: list[str], k_max: int,
                   analyzer_settings: dict | None = None) -> tuple[list[str], dict]:
    """Run the real analyzer command over the pool; return the picked stems in rank order and its summary."""
    from toolkit.core.datafile import write_dataset_yaml
    from toolkit.core.layout import Workspace

    import shutil

    ws = Workspace.at(work / "analyzer_ws")
    kept_cache = work / "embedding_cache"   # the production model's embeddings: computed once, reused by every arm
    if ws.root.exists():
        if (ws.cache / "embeddings").is_dir():
            shutil.rmtree(kept_cache, ignore_errors=True)
            shutil.move(str(ws.cache / "embeddings"), str(kept_cache))
        shutil.rmtree(ws.root)
    ws.labels_dir("train").mkdir(parents=True)
    if kept_cache.is_dir():
        ws.cache.mkdir(parents=True, exist_ok=True)
        shutil.copytree(kept_cache, ws.cache / "embeddings")
    write_dataset_yaml(ws, names)
    if analyzer_settings:
        import yaml

        ws.training_yaml.write_text(yaml.safe_dump({"analyzer": analyzer_settings}))
    for stem in sets["old_all"]:  # production's own training set: the class shares priorities compare with
        (ws.labels_dir("train") / f"{stem}.txt").write_text((work / "data" / "labels" / f"{stem}.txt").read_text())
    pool = work / "pool"
    if not pool.exists() or sorted(p.stem for p in pool.iterdir()) != sorted(sets["pool"]):
        shutil.rmtree(pool, ignore_errors=True)
        pool.mkdir()
        for stem in sets["pool"]:  # the pool's images only: its labels stay hidden from the analyzer
            (pool / f"{stem}.jpg").symlink_to(image_of(work, stem))
    # the scan depends only on the pool and the model: a second variant reuses the first one's records
    import hashlib

    key = hashlib.sha256((str(model) + str(model.stat().st_size) + "\n".join(sets["pool"])).encode()).hexdigest()[:16]
    cached = work / "scan_cache" / f"{key}.jsonl"
    cmd = [sys.executable, str(REPO / "training_analyzer.py"), "--root", str(ws.root), "--export", str(k_max),
           "--json", "-q", "--scan-model", str(model)]   # the production model: the scan's and the embeddings'

    if cached.exists():
        ws.detections.parent.mkdir(parents=True, exist_ok=True)
        ws.detections.write_bytes(cached.read_bytes())
    else:
        cmd += ["--scan", str(pool)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"training_analyzer failed ({out.returncode}): {out.stderr[-2000:]}")
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(ws.detections.read_bytes())
    if (ws.cache / "embeddings").is_dir():
        shutil.rmtree(kept_cache, ignore_errors=True)
        shutil.copytree(ws.cache / "embeddings", kept_cache)
    result = json.loads(out.stdout)
    rows = list(csv.DictReader(open(Path(result["export_dir"]) / "selection.csv", newline="", encoding="utf-8")))
    picks = [Path(r["source"].lstrip("'")).stem for r in rows]
    summary = {"seconds": round(time.perf_counter() - start, 1), "scan_reused": "--scan" not in cmd,
               "exported": result["exported"], "selection": result.get("selection"),
               "near_duplicates_skipped": result["near_duplicates_skipped"],
               "priorities": [{"class": p["class"], "score": p["score"], "reasons": p["reasons"]}
                              for p in result["priorities"]],
               "picked_per_class": {}, "reasons": {}}
    for r in rows[:k_max]:
        c = next((n for n in names if Path(r["source"]).stem.startswith(n + "_")), "?")
        summary["picked_per_class"][c] = summary["picked_per_class"].get(c, 0) + 1
        kind = r["reason"].split(" (")[0].split(",")[0]
        summary["reasons"][kind] = summary["reasons"].get(kind, 0) + 1
    return picks, summary


# --- one fine-tune ---------------------------------------------------------------------------------

def write_list(path: Path, root: Path, stems: list[str]) -> Path:
    """The image list ultralytics reads: each stem's image under ``root`` (a --work or a run's view)."""
    path.write_text("".join(f"{image_of(root, s)}\n" for s in stems))
    return path


def linked_view(run_dir: Path, work: Path, stems: set[str]) -> None:
    """``run_dir/data/images`` and ``labels``: links to the shared copies in ``work/data``, so that the
    ``labels.cache`` ultralytics writes beside a labels folder is this run's own - fine-tunes run at
    once (``--jobs``) on one shared folder raced on it (FileNotFoundError)."""
    import os
    import shutil

    for of in (image_of, label_of):
        of(run_dir, "x").parent.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            source, target = of(work, stem), of(run_dir, stem)
            if target.is_file():
                continue
            target.unlink(missing_ok=True)   # a dangling link from an earlier --work
            try:
                os.symlink(source, target)
            except OSError:   # no symlinks (Windows without the right): a hard link, else a copy
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)


def finetune(spec: dict) -> dict:
    """Fine-tune production on spec['train'] stems, score on the test stems; returns the figures."""
    import yaml

    from toolkit.core.offline import prepare_ultralytics

    work = Path(spec["work"])
    run_dir = work / "runs" / spec["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_ultralytics(work / "ultralytics_cfg", verbose=False)
    from ultralytics import YOLO

    linked_view(run_dir, work, set(spec["train"]) | set(spec["test"]))
    data = {"path": str(work), "names": dict(enumerate(spec["names"])),
            "train": str(write_list(run_dir / "train.txt", run_dir, spec["train"])),
            "val": str(write_list(run_dir / "test.txt", run_dir, spec["test"]))}
    (run_dir / "data.yaml").write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    model = YOLO(spec["model"])
    if spec["epochs"] > 0:
        model.train(data=str(run_dir / "data.yaml"), epochs=spec["epochs"], imgsz=spec["imgsz"], batch=spec["batch"],
                    device=spec["device"], workers=spec["workers"], seed=spec["seed"], deterministic=True,
                    val=False, plots=False, project=str(run_dir), name="train", exist_ok=True, verbose=False,
                    amp=spec["device"] not in ("cpu", ""), cache=False)
        weights = run_dir / "train" / "weights" / "last.pt"
        model = YOLO(str(weights))
    train_s = time.perf_counter() - start
    metrics = model.val(data=str(run_dir / "data.yaml"), split="val", imgsz=spec["imgsz"], batch=spec["batch"],
                        conf=0.001, iou=0.7, device=spec["device"], workers=spec["workers"], plots=False,
                        verbose=False, project=str(run_dir), name="val", exist_ok=True)
    ap50 = {spec["names"][int(c)]: round(float(a), 4) for c, a in zip(metrics.box.ap_class_index, metrics.box.ap50)}
    return {"name": spec["name"], "arm": spec["arm"], **({"selection": spec["selection"]} if "selection" in spec else {}),
            "k": spec["k"], "draw": spec["draw"], "seed": spec["seed"],
            "images": len(spec["train"]), "unique_images": len(set(spec["train"])),
            "map50": round(float(metrics.box.map50), 4),
            "map50_95": round(float(metrics.box.map), 4), "ap50_per_class": ap50,
            "seconds": round(time.perf_counter() - start, 1), "train_seconds": round(train_s, 1)}


def same_steps(specs: list[dict], per_epoch: int) -> list[dict]:
    """Every spec's train list cycled to ``per_epoch`` images (the same steps for every arm; the old : new
    mix kept), named ``<name>_e<per_epoch>`` so its run never takes over a standard one. The whole-pool
    arm is left out when it holds more; ValueError (what to give instead) when another arm does."""
    out = []
    for spec in specs:
        n = len(spec["train"])
        if n > per_epoch:
            if spec["arm"] == "all":
                logger.info("--epoch-images %d: the whole-pool arm (%d images) is left out", per_epoch, n)
                continue
            raise ValueError(f"--epoch-images {per_epoch} is below {spec['name']}'s {n} images (old + K): "
                             f"give at least {max(len(s['train']) for s in specs if s['arm'] != 'all')}")
        out.append(dict(spec, name=f"{spec['name']}_e{per_epoch}", epoch_images=per_epoch,
                        train=[spec["train"][i % n] for i in range(per_epoch)]))
    return out


def run_specs(specs: list[dict], jobs: int, work: Path, on_result=None) -> list[dict]:
    """Each fine-tune in its own process (fresh ultralytics state); ``jobs`` at once; ``on_result(results)``
    after each one (the partial results file)."""
    pending = list(specs)
    running: list[tuple[subprocess.Popen, Path, dict]] = []
    results = []
    while pending or running:
        while pending and len(running) < jobs:
            spec = pending.pop(0)
            spec_path = work / "runs" / f"{spec['name']}.spec.json"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            done = spec_path.with_suffix(".result.json")
            if spec_path.is_file() and done.is_file() and json.loads(spec_path.read_text()) == spec:
                res = json.loads(done.read_text())   # the same fine-tune finished before: resume
                results.append(dict(res, **({"selection": spec["selection"]} if "selection" in spec else {})))
                logger.info("%-18s done before (same spec): reused", spec["name"])
                if on_result:
                    on_result(results)
                continue
            done.unlink(missing_ok=True)
            spec_path.write_text(json.dumps(spec))
            log = open(work / "runs" / f"{spec['name']}.log", "w")
            proc = subprocess.Popen([sys.executable, __file__, "--one", str(spec_path)], stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, spec_path, spec))
        time.sleep(1.0)
        for item in list(running):
            proc, spec_path, spec = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = spec_path.with_suffix(".result.json")
            if proc.returncode != 0 or not out.exists():
                tail = (work / "runs" / f"{spec['name']}.log").read_text()[-1500:]
                raise SystemExit(f"fine-tune {spec['name']} failed ({proc.returncode}):\n{tail}")
            res = json.loads(out.read_text())
            results.append(res)
            if on_result:
                on_result(results)
            logger.info("%-18s images %4d  mAP50 %.3f  mAP50-95 %.3f  (%.0f s)", res["name"], res["images"],
                        res["map50"], res["map50_95"], res["seconds"])
    return results


# --- the comparison --------------------------------------------------------------------------------

def interpolate_k(curve: list[tuple[int, float]], target: float) -> float | None:
    """Smallest K where the piecewise-linear random curve reaches ``target``; None if it never does."""
    curve = sorted(curve)
    if curve and curve[0][1] >= target:
        return float(curve[0][0])
    for (k0, v0), (k1, v1) in zip(curve, curve[1:]):
        if v0 < target <= v1:
            return k0 + (target - v0) / (v1 - v0) * (k1 - k0)
    return None


def summarise(results: list[dict], ks: list[int], pool_size: int, default: str | None = None) -> dict:
    """Per K: random's draws, and each selection mode's runs with the random images that match its mean
    (``random_images_to_match``) and ``label_efficiency`` = that / K. ``analyzer`` (and the two figures
    at the row's top level) is the ``default`` mode (the first met when None); ``modes`` holds every mode."""
    def stats(rows: list[dict], key: str) -> dict:
        values = [r[key] for r in rows]
        return {"mean": round(statistics.fmean(values), 4) if values else None,
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": min(values) if values else None, "max": max(values) if values else None, "n": len(values)}

    modes: list[str] = []
    for r in results:
        if r["arm"] == "analyzer" and r.get("selection", "analyzer") not in modes:
            modes.append(r.get("selection", "analyzer"))
    if default in modes:
        modes.remove(default)
    if default:
        modes.insert(0, default)
    base = [r for r in results if r["arm"] == "old_only"]
    full = [r for r in results if r["arm"] == "all"]
    curve = [(0, stats(base, "map50_95")["mean"])] if base else []
    for k in ks:
        rnd = [r for r in results if r["arm"] == "random" and r["k"] == k]
        if rnd:
            curve.append((k, stats(rnd, "map50_95")["mean"]))
    if full:
        curve.append((pool_size, stats(full, "map50_95")["mean"]))
    table = []
    for k in ks:
        rnd = [r for r in results if r["arm"] == "random" and r["k"] == k]
        row = {"k": k, "random": {m: stats(rnd, m) for m in ("map50", "map50_95")}, "modes": {}}
        for mode in modes:
            ana = [r for r in results if r["arm"] == "analyzer" and r.get("selection", "analyzer") == mode and r["k"] == k]
            entry = {m: stats(ana, m) for m in ("map50", "map50_95")}
            if ana and len(curve) > 1:
                matched = interpolate_k(curve, entry["map50_95"]["mean"])
                entry["random_images_to_match"] = None if matched is None else round(matched, 1)
                entry["label_efficiency"] = None if matched is None else round(matched / k, 2)
                if row["random"]["map50_95"]["n"]:
                    entry["above_random_mean"] = entry["map50_95"]["mean"] > row["random"]["map50_95"]["mean"]
            row["modes"][mode] = entry
        if modes:
            first = row["modes"][modes[0]]
            row["selection"] = modes[0]
            row["analyzer"] = {m: first[m] for m in ("map50", "map50_95")}
            for key in ("random_images_to_match", "label_efficiency", "above_random_mean"):
                if key in first:
                    row[key] = first[key]
        else:
            row["analyzer"] = {m: stats([], m) for m in ("map50", "map50_95")}
        table.append(row)
    return {"old_only": {m: stats(base, m) for m in ("map50", "map50_95")} if base else None,
            "all_pool": {m: stats(full, m) for m in ("map50", "map50_95")} if full else None,
            "random_curve_map50_95": curve, "per_k": table, "random_rise": random_rise(table),
            "modes": modes, "goal": goal(table, modes)}


def goal(table: list[dict], modes: list[str]) -> dict:
    """Issue 26's acceptance per mode: label efficiency >= 1.5 at K 30 and 90, mean above random's at every K."""
    out = {}
    for mode in modes:
        effs = {row["k"]: row["modes"][mode].get("label_efficiency") for row in table}
        above = [row["modes"][mode].get("above_random_mean") for row in table]
        small = [k for k in effs if k in (30, 90)]
        out[mode] = {"efficiency_1_5_at_30_and_90": bool(small) and all((effs[k] or 0) >= 1.5 for k in small),
                     "above_random_at_every_k": bool(above) and all(a is True for a in above)}
    return out


def random_rise(table: list[dict]) -> dict | None:
    """How far random's mean mAP50-95 rises from the smallest to the largest K, in standard deviations
    of the draws (the larger of the two ends' std): a proxy in which more labelled images do not
    clearly help (under 2 SD) cannot show any selection method's gain."""
    rows = [r for r in table if r["random"]["map50_95"]["n"]]
    if len(rows) < 2:
        return None
    lo, hi = rows[0]["random"]["map50_95"], rows[-1]["random"]["map50_95"]
    sd = max(lo["std"], hi["std"])
    rise = hi["mean"] - lo["mean"]
    return {"from_k": rows[0]["k"], "to_k": rows[-1]["k"], "rise": round(rise, 4), "sd": sd,
            "in_sd": round(rise / sd, 2) if sd > 0 else None}


def markdown(report: dict) -> str:
    s = report["settings"]
    label = "CPU PROXY (not GPU figures)" if report["mode"] == "cpu-proxy" else report["device_name"]
    other_modes = [r for r in s.get("reused_runs", []) if not r.startswith(("random_", "old_only", "all_pool"))]
    who_ran = "default mode" if other_modes else "analyzer"   # --reuse-analyzer took other modes' runs over
    lines = [f"# Label efficiency of the analyzer's picks - {label}", "",
             f"{report['date']}, {report['device_name']}; production `{Path(s['model']).name}`, "
             f"fine-tune {s['epochs']} epoch(s) at imgsz {s['imgsz']}, batch {s['batch']}"
             + (f", **same steps: every run's train list cycled to {s['epoch_images']} images per epoch** (the curve "
                "measures images, not steps; not the standard proxy's settings)" if s.get("epoch_images") else "")
             + (f", **production first fine-tuned {s['native_epochs']} epoch(s) on all its old images at imgsz "
                f"{s['imgsz']}** (at home at the proxy's size; test mAP50-95 "
                f"{(report.get('native') or {}).get('map50_95', float('nan')):.3f}), the start of every run"
                if s.get("native_epochs") else "")
             + f", plain ultralytics "
             f"{report.get('ultralytics', '?')}; old (replay) {s['old_images']} images, pool {s['pool_images']}, "
             f"test {s['test_images']}; random draws {s['draws']} (seeds {', '.join(map(str, s['random_seeds']))}); "
             f"training seed of the old-only / all runs: {s['train_seed']}"
             + (f", analyzer seeds (each both the selection's analyzer.seed and the training seed) of the default "
                f"mode: {', '.join(map(str, s.get('analyzer_seeds', [s['train_seed']])))}"
                if s.get("analyzer_seeds", [s["train_seed"]]) else ", no analyzer run")
             + (f"; runs other than the {who_ran}'s reused from `{Path(s['reused_from']).name}`" if s.get("reused_from") else "")
             + ".", ""]
    if s.get("run_started_with"):
        lines += [f"The toolkit's default is `{s['default_selection']}`, which leads this summary; the run started "
                  f"with `{s['run_started_with']}` (chosen beforehand on the val split), and `{s['default_selection']}` "
                  "became the default as the best measured here: a choice made on these test results.", ""]
    o = report["summary"]["old_only"]
    a = report["summary"]["all_pool"]
    if o:
        lines.append(f"- old only (K = 0, the control): mAP50 {o['map50']['mean']:.3f}, mAP50-95 {o['map50_95']['mean']:.3f}")
    if a:
        lines.append(f"- all {s['pool_images']} pool images: mAP50 {a['map50']['mean']:.3f}, "
                     f"mAP50-95 {a['map50_95']['mean']:.3f}")
    who = s.get("default_selection") or "analyzer"
    lines += ["", f"| K | {who} mAP50 | random mAP50 (mean ± std) | {who} mAP50-95 | random mAP50-95 (mean ± std) "
                  "| random images to match | label efficiency |",
              "|---|---|---|---|---|---|---|"]

    def fmt(st: dict) -> str:
        if st["mean"] is None:
            return "-"
        return f"{st['mean']:.3f}" + (f" ± {st['std']:.3f} (n={st['n']})" if st["n"] > 1 else "")

    # above random's whole curve: beyond the whole pool, or beyond the largest K where that arm was not run
    ends = report["summary"].get("random_curve_map50_95") or [(0, None)]
    beyond = "> pool" if report["summary"].get("all_pool") else f"> {ends[-1][0]}"
    for row in report["summary"]["per_k"]:
        match = row.get("random_images_to_match")
        eff = row.get("label_efficiency")
        lines.append(f"| {row['k']} | {fmt(row['analyzer']['map50'])} | {fmt(row['random']['map50'])} | "
                     f"{fmt(row['analyzer']['map50_95'])} | {fmt(row['random']['map50_95'])} | "
                     f"{'-' if row['analyzer']['map50_95']['mean'] is None else beyond if match is None else f'{match:.0f}'}"
                     f" | {'-' if eff is None else f'{eff:.2f}x'} |")
    modes = report["summary"].get("modes") or []
    if len(modes) > 1 or (modes and modes[0] != "analyzer"):
        lines += ["", "Every selection mode's curve (mAP50-95 on the test split; `random` is the random draws):", "",
                  "| mode | " + " | ".join(f"K {row['k']}" for row in report["summary"]["per_k"]) + " |",
                  "|---|" + "---|" * len(report["summary"]["per_k"])]
        for mode in modes:
            cells = []
            for row in report["summary"]["per_k"]:
                e = row["modes"][mode]
                eff = e.get("label_efficiency")
                cells.append(fmt(e["map50_95"]) + ("" if e["map50_95"]["mean"] is None else
                                                   f", {beyond if eff is None and 'label_efficiency' in e else (f'{eff:.2f}x' if eff is not None else '-')}"))
            lines.append(f"| {mode}{' (default)' if mode == modes[0] else ''} | " + " | ".join(cells) + " |")
        lines.append("| random | " + " | ".join(fmt(row["random"]["map50_95"]) for row in report["summary"]["per_k"]) + " |")
        g = report["summary"].get("goal", {})
        if g:
            lines += ["", "Goal (issue 26: label efficiency >= 1.5 at K 30 and K 90, mean above random's at every K): "
                      + "; ".join(f"{m} {'met' if v['efficiency_1_5_at_30_and_90'] and v['above_random_at_every_k'] else 'not met'}"
                                  f" (efficiency {'yes' if v['efficiency_1_5_at_30_and_90'] else 'no'}, above random "
                                  f"{'yes' if v['above_random_at_every_k'] else 'no'})" for m, v in g.items()) + "."]
    rise = report["summary"].get("random_rise")
    if rise:
        lines += ["", f"Random's mean mAP50-95 rises by {rise['rise']:+.3f} from K {rise['from_k']} to K {rise['to_k']}"
                      + (f", {rise['in_sd']:.1f} standard deviations of the draws (largest std {rise['sd']:.3f})"
                         if rise["in_sd"] is not None else "") + "."]
    if report.get("partial"):
        lines.insert(2, f"**PARTIAL RESULT: {report['partial']}** (the run was still going or was cut short).")
        lines.insert(3, "")
    pick = report["analyzer"]
    if not pick:
        lines += (["", "Notes:"] + [f"- {n}" for n in report["notes"]]) if report.get("notes") else []
        return "\n".join(lines + ["", f"Wall time {report['seconds'] / 60:.1f} min."]) + "\n"
    embeds = [(sm.get("selection") or {}).get("embedding") for per_k in (report.get("selection_picks") or {}).values()
              for sm in per_k.values()]
    embeds = [e for e in embeds if e] or [(pick.get("selection") or {}).get("embedding")]
    emb = next((e for e in embeds if e and e.get("embedded_now")), embeds[0])
    if emb:
        lines += ["", f"Embeddings: {emb['images']} pool images at imgsz {emb['imgsz']}; "
                      + (f"{emb['seconds_per_1000_images']:.0f} s per 1,000 images on this machine"
                         if emb.get("seconds_per_1000_images") else "read from the workspace cache")
                      + f" ({emb['embedded_now']} embedded by this export, {emb['from_cache']} from the cache)."]
    if report.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    lines += ["", f"Analyzer settings: {pick.get('settings') or 'defaults'}. Analyzer: {'read the cached scan of the pool' if pick.get('scan_reused') else 'scanned the pool'} and exported {pick['exported']} image(s) in {pick['seconds']} s "
                  f"({pick['near_duplicates_skipped']} near-duplicates skipped); picks per true class: "
                  + ", ".join(f"{c} {n}" for c, n in sorted(pick["picked_per_class"].items()))
                  + "; top priorities: "
                  + "; ".join(f"{p['class']} {p['score']:.0f}" for p in pick["priorities"][:3]) + ".",
              "", f"Wall time {report['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: run one fine-tune spec
    parser.add_argument("--summarise", type=Path, metavar="RESULTS_JSON",
                        help="recompute the summary and the .md of a results JSON from its runs (no training)")
    parser.add_argument("--default-selection", metavar="MODE", help="with --summarise: the mode the summary leads "
                        "with (the toolkit's default), when it is not the mode the run started with")
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu-proxy")
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "NEU-DET")
    parser.add_argument("--model", type=Path, default=REPO.parent / "shared" / "models" / "neu_v1.0_half.pt")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "label_efficiency")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--device", default=None, help="'cpu', '0', ... (default: cpu in cpu-proxy mode, 0 in gpu mode)")
    parser.add_argument("--jobs", type=int, default=1, help="fine-tunes at once (a GPU fits several)")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers per fine-tune")
    parser.add_argument("--arms", default="old_only,analyzer,random,all", help="which arms to run")
    parser.add_argument("--analyzer-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training.yaml analyzer setting for the analyzer's workspace, e.g. class_weight_power=0.5")
    parser.add_argument("--tag", default="", help="suffix of the results file names (a variant's name)")
    parser.add_argument("--analyzer-seeds", type=int, default=3,
                        help="training seeds for the analyzer's fine-tunes (its spread; the selection is fixed)")
    parser.add_argument("--selections", default="confident,hybrid,diversity,uncertainty",
                        help="analyzer.selection modes to run, the default one first (random is the random arm)")
    parser.add_argument("--other-seeds", type=int, default=None,
                        help="training seeds for the modes after the first (default: --analyzer-seeds)")
    parser.add_argument("--random-first-seed", type=int, default=1, help="first seed of the random draws")
    parser.add_argument("--analyzer-first-seed", type=int, default=0, help="first training seed of the analyzer's runs")
    parser.add_argument("--reuse-analyzer", action="store_true", help="with --reuse: take over its analyzer runs of "
                        "the modes not run now too (same analyzer settings required), e.g. to add a mode")
    parser.add_argument("--epoch-images", type=int, default=None, metavar="N",
                        help="same steps for every arm: each fine-tune's train list (old + K) is cycled to N images "
                        "per epoch, so every run takes the same number of steps and the curve measures images, "
                        "not steps (in the standard proxy a bigger K also trains longer); N must be at least "
                        "old + the largest K; the whole-pool arm is left out when it holds more than N")
    parser.add_argument("--native-epochs", type=int, default=None, metavar="E",
                        help="production at home at the proxy's size: first fine-tune it E epochs on all its old "
                        "images at --imgsz (once, kept in --work) and use that as production for the analyzer "
                        "and every arm; without it a proxy at 128 px mostly measures production's re-adaptation "
                        "from 640 px (neu_v1.0_half.pt scores 0.054 mAP50-95 on test at 128 px, 0.376 at 640)")
    parser.add_argument("--reuse", type=Path, help="a results JSON of the same settings: its runs of the arms not "
                        "run now are taken over (e.g. rerun only the analyzer after changing its selection)")
    for key, value in MODES["gpu"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.one:
        result = finetune(json.loads(args.one.read_text()))
        args.one.with_suffix(".result.json").write_text(json.dumps(result))
        return 0
    if args.summarise:
        return resummarise(args.summarise, args.default_selection)
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = args.device or ("cpu" if args.mode == "cpu-proxy" else "0")
    workers = args.workers if args.workers is not None else (0 if device == "cpu" else 4)
    ks = sorted(int(k) for k in str(args.ks).split(","))
    arms = set(args.arms.split(","))
    if not args.model.is_file() or not (args.neu / "splits").is_dir():
        print(f"need NEU-DET at {args.neu} and the production model at {args.model}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from toolkit.core.offline import model_class_names, prepare_ultralytics

    prepare_ultralytics(work / "ultralytics_cfg", verbose=False)
    names = model_class_names(args.model, work / "ultralytics_cfg")
    sets = build_data(args.neu, work, names, args)
    ks = [k for k in ks if k <= len(sets["pool"])]
    logger.info("old %d (replay %d), pool %d, test %d; K %s", len(sets["old_all"]), len(sets["old"]),
                len(sets["pool"]), len(sets["test"]), ks)
    production = args.model.resolve()
    native = None
    base = dict(work=str(work), names=names, test=sets["test"], imgsz=args.imgsz, batch=args.batch, device=device,
                workers=workers)   # what every fine-tune shares
    if args.native_epochs:
        spec = dict(base, model=str(production), epochs=args.native_epochs, name=f"native_e{args.native_epochs}",
                    arm="native", k=0, draw=0, seed=0, train=sets["old_all"])
        logger.info("production first fine-tuned %d epoch(s) on its %d old images at imgsz %d", args.native_epochs,
                    len(sets["old_all"]), args.imgsz)
        native = run_specs([spec], 1, work)[0]
        production = work / "runs" / spec["name"] / "train" / "weights" / "last.pt"
    import yaml

    analyzer_settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.analyzer_set)}
    selections = [m for m in args.selections.split(",") if m] if "analyzer" in arms else []
    analyzer_seeds = list(range(args.analyzer_first_seed, args.analyzer_first_seed + args.analyzer_seeds))
    other_seeds = analyzer_seeds[:args.other_seeds] if args.other_seeds is not None else analyzer_seeds
    # an analyzer seed is both analyzer.seed (the selection's clustering) and the fine-tune's training
    # seed, as a random draw's seed is both its sample and its training seed; the uncertainty order
    # has no seed (its picks are the same for every seed)
    picks: dict[str, dict[tuple[int, int], list[str]]] = {}
    pick_summaries: dict[str, dict[str, dict]] = {}
    for mode in selections:  # each K exported on its own, as a plant would (clusters depend on K)
        for seed in (analyzer_seeds if mode == selections[0] else other_seeds):
            settings_now = dict(analyzer_settings, selection=mode, seed=seed)
            for k in ks:
                if mode == "uncertainty" and seed != analyzer_seeds[0]:
                    picks[mode][(k, seed)] = picks[mode][(k, analyzer_seeds[0])]
                    continue
                chosen, summary = analyzer_picks(work, production, sets, names, k, settings_now)
                picks.setdefault(mode, {})[(k, seed)] = chosen[:k]
                summary["settings"] = settings_now
                pick_summaries.setdefault(mode, {})[f"{k}" + (f"_seed{seed}" if seed != analyzer_seeds[0] else "")] = summary
                logger.info("%s seed %d picked %d in %.0f s: %s", mode, seed, len(chosen), summary["seconds"],
                            summary["picked_per_class"])
    common = dict(base, model=str(production), epochs=args.epochs)
    train_seed = 0
    random_seeds = list(range(args.random_first_seed, args.random_first_seed + args.draws))

    def analyzer_spec(mode: str, k: int, seed: int) -> dict:
        name = f"{mode}_k{k}" + (f"_t{seed}" if seed else "")
        return dict(common, name=name, arm="analyzer", selection=mode, k=k, draw=0, seed=seed,
                    train=sets["old"] + picks[mode][(k, seed)])

    # order: the default selection's runs first (all seeds), then one seed of each other mode, then
    # random / control / whole pool, then the other modes' further seeds: a run cut short still compares
    specs = [analyzer_spec(selections[0], k, seed) for seed in analyzer_seeds for k in ks] if selections else []
    specs += [analyzer_spec(m, k, other_seeds[0]) for m in selections[1:] for k in ks] if other_seeds else []
    if "random" in arms:
        for k in ks:
            for seed in random_seeds:
                chosen = random.Random(seed * 1000 + k).sample(sets["pool"], k)
                specs.append(dict(common, name=f"random_k{k}_s{seed}", arm="random", k=k, draw=seed, seed=seed,
                                  train=sets["old"] + chosen))
    if "old_only" in arms:
        specs.append(dict(common, name="old_only", arm="old_only", k=0, draw=0, seed=train_seed, train=sets["old"]))
    if "all" in arms:
        specs.append(dict(common, name="all_pool", arm="all", k=len(sets["pool"]), draw=0, seed=train_seed,
                          train=sets["old"] + sets["pool"]))
    specs += [analyzer_spec(m, k, seed) for seed in other_seeds[1:] for m in selections[1:] for k in ks]
    if args.epoch_images:
        try:
            specs = same_steps(specs, args.epoch_images)
        except ValueError as refused:
            print(refused, file=sys.stderr)
            return 1
    if native:   # its own names: a run from the native start never takes over (or over-writes) a standard one
        specs = [dict(spec, name=f"{spec['name']}_n{args.native_epochs}") for spec in specs]
    reused = []
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        same = {key: old["settings"].get(key) for key in ("epochs", "imgsz", "batch", "old_images", "pool_images",
                                                          "test_images", "epoch_images", "native_epochs")}
        now = dict(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, old_images=len(sets["old"]),
                   pool_images=len(sets["pool"]), test_images=len(sets["test"]), epoch_images=args.epoch_images,
                   native_epochs=args.native_epochs)
        if same != now:
            print(f"--reuse {args.reuse}: other settings ({same} vs {now})", file=sys.stderr)
            return 1
        running = {spec["name"] for spec in specs}
        arms_now = {spec["arm"] for spec in specs}
        # an analyzer run is taken over with --reuse-analyzer when its mode is not run now (modes do not
        # share picks), any other run when its arm is not run now
        reused = [r for r in old["runs"] if r["name"] not in running
                  and ((r["arm"] == "analyzer" and args.reuse_analyzer and r.get("selection") not in selections)
                       or (r["arm"] != "analyzer" and r["arm"] not in arms_now))]
        for mode, summaries in (old.get("selection_picks") or {}).items():
            if args.reuse_analyzer and mode not in selections:
                pick_summaries.setdefault(mode, summaries)
        logger.info("reusing %d run(s) of %s from %s", len(reused), sorted({r["arm"] for r in reused}), args.reuse)
    import ultralytics

    device_name = "CPU proxy (2 shared cores)" if device == "cpu" else _gpu_name()
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "cpu-proxy" if args.mode == "cpu-proxy" else device_name.lower().replace(" ", "-")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stem = args.out / f"{date}-{tag}{'-' + args.tag if args.tag else ''}"
    planned = len(specs)

    def write(results: list[dict], final: bool) -> dict:
        runs = results + reused
        default = selections[0] if selections else None
        report = {"mode": args.mode, "date": date, "device_name": device_name, "ultralytics": ultralytics.__version__,
                  "partial": None if final else f"{len(results)} of {planned} runs done",
                  "settings": {"model": str(args.model), "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
                               "ks": ks, "draws": len({r["draw"] for r in runs if r["arm"] == "random"}),
                               "random_seeds": sorted({r["seed"] for r in runs if r["arm"] == "random"}),
                               "train_seed": train_seed,
                               "old_images": len(sets["old"]), "pool_images": len(sets["pool"]),
                               "test_images": len(sets["test"]), "epoch_images": args.epoch_images,
                               "native_epochs": args.native_epochs,
                               "device": device, "trainer": "plain ultralytics",
                               "selections": selections, "default_selection": default,
                               "analyzer_seeds": sorted({r["seed"] for r in runs if r["arm"] == "analyzer"
                                                         and r.get("selection", default) == default}),
                               "reused_from": str(args.reuse) if args.reuse else None,
                               "reused_runs": sorted(r["name"] for r in reused)},
                  "analyzer": (pick_summaries.get(default) or {}).get(str(max(ks)), {}) if default else {},
                  "native": native, "selection_picks": pick_summaries, "runs": runs,
                  "summary": summarise(runs, ks, len(sets["pool"]), default),
                  "seconds": round(time.perf_counter() - started, 1)}
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(report))
        return report

    logger.info("%d fine-tune(s) to run; results (partial until the end) in %s.json / .md", planned, stem)
    results = run_specs(specs, max(1, args.jobs), work, lambda rs: write(rs, False))
    report = write(results, True)
    print(markdown(report))
    print(f"written: {stem}.json / .md", file=sys.stderr)
    return 0


def resummarise(path: Path, default: str | None = None) -> int:
    """Rewrite a results JSON's summary and its .md next to it from the runs it holds (``default``: the
    mode to lead with)."""
    if not path.is_file():
        print(f"no results file at {path}: give a benchmarks/results/*.json written by this script", file=sys.stderr)
        return 1
    report = json.loads(path.read_text())
    if default and default != report["settings"].get("default_selection"):
        modes = {r.get("selection") for r in report["runs"] if r["arm"] == "analyzer"}
        if default not in modes:
            print(f"--default-selection {default}: no runs of that mode in {path} ({sorted(m for m in modes if m)})",
                  file=sys.stderr)
            return 1
        report["settings"]["run_started_with"] = report["settings"].get("default_selection")
        report["settings"]["default_selection"] = default
        report["settings"]["analyzer_seeds"] = sorted({r["seed"] for r in report["runs"] if r["arm"] == "analyzer"
                                                       and r.get("selection") == default})
        report["analyzer"] = (report.get("selection_picks", {}).get(default) or {}).get(
            str(max(report["settings"]["ks"])), report["analyzer"])
    report["summary"] = summarise(report["runs"], report["settings"]["ks"], report["settings"]["pool_images"],
                                  report["settings"].get("default_selection"))
    path.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - only a label
        return "gpu"


if __name__ == "__main__":
    raise SystemExit(main())

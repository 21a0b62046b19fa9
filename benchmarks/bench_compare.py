"""Speed of the comparator's evaluation against ultralytics' own ``val``, as ratios in one run.

Builds a YOLO copy of the NEU-DET test split (or its first --images stems) in benchmarks/out/
(git-ignored), then times on the same device, same imgsz / batch / conf / iou:
  val:        YOLO(model).val(...)                      (the yardstick; no per-image results)
  evaluate:   toolkit.model.evaluation.evaluate(..., cache off) (one pass + per-image arrays + metrics)
  cached:     the same evaluate() answered from the cache
  bootstrap:  1000 paired resamples with BootstrapScorer vs ap_per_class on the replicated
              arrays (what a naive bootstrap does), both on the evaluate() arrays
and prints the ratios (goals: evaluate / val <= 1.2; cached / evaluate < 0.1; naive / scorer > 1)
and checks that evaluate() and val() agree on mAP50 and mAP50-95.

Usage:
    python benchmarks/bench_compare.py                                   # 180 test images, cpu
    python benchmarks/bench_compare.py --images 36 --device 0 --model ../shared/models/neu_v1.1_full.pt
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "NEU-DET")
    parser.add_argument("--model", type=Path, default=REPO.parent / "shared" / "models" / "neu_v1.0_half.pt")
    parser.add_argument("--images", type=int, default=None, help="first N test stems (default: all 180)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()

    from test_model_comparator import test_stems, write_neu_yolo
    from toolkit.data import eval_split as S
    from toolkit.model import evaluation as E
    from toolkit.model import inference as I
    from toolkit.model import metrics as M
    from toolkit.core.offline import prepare_ultralytics

    out = REPO / "benchmarks" / "out" / "compare"
    shutil.rmtree(out, ignore_errors=True)
    stems = test_stems(args.neu)[: args.images] if args.images else test_stems(args.neu)
    data_yaml = write_neu_yolo(args.neu, stems, out / "data")
    prepare_ultralytics(out / "ultralytics")
    from ultralytics import YOLO
    from ultralytics.utils.metrics import ap_per_class

    settings = I.EvalSettings(device=args.device)
    data = S.load_split(data_yaml, "test")
    model = E.load_model(args.model, data, settings, out / "ultralytics", data_yaml)
    I.run_inference(model, S.load_split(data_yaml, "test", subset=settings.batch), settings)  # warm-up

    start = time.perf_counter()
    ev = E.evaluate(model, data, settings, out / "cache", "bench", use_cache=True)
    t_eval = time.perf_counter() - start
    start = time.perf_counter()
    cached = E.evaluate(model, data, settings, out / "cache", "bench", use_cache=True)
    t_cached = time.perf_counter() - start
    assert cached.cached

    with tempfile.TemporaryDirectory() as tmp:  # val writes a label cache: give it its own copy
        val_data = write_neu_yolo(args.neu, stems, Path(tmp) / "data")
        yolo = YOLO(str(args.model))
        yolo.val(data=str(val_data), split="test", imgsz=640, batch=settings.batch, device=args.device,
                 conf=0.001, iou=0.7, plots=False, verbose=False, workers=0, project=tmp, name="w")  # warm-up
        start = time.perf_counter()
        res = yolo.val(data=str(val_data), split="test", imgsz=640, batch=settings.batch, device=args.device,
                       conf=0.001, iou=0.7, plots=False, verbose=False, workers=0, project=tmp, name="v")
        t_val = time.perf_counter() - start

    scorer = M.BootstrapScorer(ev)
    rng = np.random.default_rng(0)
    draws = [np.bincount(rng.integers(0, ev.n_images, ev.n_images), minlength=ev.n_images)
             for _ in range(args.resamples)]
    start = time.perf_counter()
    for counts in draws:
        scorer.score(counts)
    t_scorer = time.perf_counter() - start
    naive_n = max(args.resamples // 10, 20)
    start = time.perf_counter()
    for counts in draws[:naive_n]:
        images = np.repeat(np.arange(ev.n_images), counts)
        p = np.concatenate([np.flatnonzero(ev.pred_img == i) for i in images])
        t = np.concatenate([np.flatnonzero(ev.target_img == i) for i in images])
        ap_per_class(ev.tp[p], ev.conf[p], ev.pred_cls[p], ev.target_cls[t])
    t_naive = (time.perf_counter() - start) * len(draws) / naive_n

    print(f"{len(data)} images, {args.model.name}, device {args.device}")
    print(f"mAP50    evaluate {ev.metrics['map50']:.4f}  val {res.box.map50:.4f}")
    print(f"mAP50-95 evaluate {ev.metrics['map50_95']:.4f}  val {res.box.map:.4f}")
    print(f"evaluate {t_eval:.2f} s   val {t_val:.2f} s   ratio evaluate/val {t_eval / t_val:.2f}")
    print(f"cached   {t_cached:.3f} s   ratio cached/evaluate {t_cached / t_eval:.3f}")
    print(f"bootstrap x{args.resamples}: scorer {t_scorer:.2f} s, naive ap_per_class {t_naive:.2f} s "
          f"(from {naive_n}), ratio naive/scorer {t_naive / t_scorer:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast dataset_preparer.py imports, as ratios to a pass that only decodes the same files.

Generates N labelled images once (cached in benchmarks/out/), then times, on a warm page cache:
  decode-only   cv2.imread of every image, on the same number of threads as the preparer
  prepare       a full import into a fresh workspace (read labels, hash, decode, pHash, check,
                de-duplicate, split, copy, manifest, report)
  re-run        the same import again with nothing changed
and, with --executor both, the import on a process pool instead of threads.
Goals (issue 3): prepare <= 2x decode-only; re-run <= 0.1x prepare.

Usage:
    python benchmarks/bench_prepare.py                    # 5000 images of 200 px, all cores
    python benchmarks/bench_prepare.py --n 2000 --workers 2 --executor both
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generated_batch(out: Path, n: int, size: int) -> Path:
    from toolkit.synthetic import write_batch

    batch = out / f"batch_{n}_{size}px"
    if not (batch / "classes.txt").is_file() or len(list((batch / "images").glob("*.jpg"))) != n:
        shutil.rmtree(batch, ignore_errors=True)
        t = time.perf_counter()
        # 1 in 10 images defect-free, 1 in 3 with two defects: a realistic mix for the split.
        write_batch(batch, n, fmt="yolo", size=size, seed=1, background_every=10)
        print(f"generated {n} images of {size} px in {time.perf_counter() - t:.1f} s -> {batch}", file=sys.stderr)
    return batch


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="images to generate (at least 5000 for the issue's figure)")
    parser.add_argument("--size", type=int, default=200, help="image side in pixels (NEU-DET: 200)")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: the preparer's default)")
    parser.add_argument("--executor", choices=("thread", "process", "both"), default="thread")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat every pass and keep the fastest (on a shared, noisy machine)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    import cv2

    import dataset_preparer as dp
    from toolkit.dataset import default_workers, parallel_map

    workers = args.workers or default_workers()
    batch = generated_batch(args.out, args.n, args.size)
    images = sorted((batch / "images").glob("*.jpg"))
    for p in images:  # warm the page cache: both passes read from memory
        p.read_bytes()

    def best(fn) -> float:
        return min(timed(fn)[0] for _ in range(max(1, args.repeat)))

    decode_1 = best(lambda: [cv2.imread(str(p)) for p in images])
    decode_n = best(lambda: parallel_map(lambda p: cv2.imread(str(p)), images, workers))
    rows = [("decode-only, 1 thread", decode_1, None), (f"decode-only, {workers} threads", decode_n, None)]

    kinds = ("thread", "process") if args.executor == "both" else (args.executor,)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_", dir=args.out) as tmp:
        for kind in kinds:
            first_s = rerun_s = float("inf")
            phases: dict = {}
            for i in range(max(1, args.repeat)):
                config = dp.PrepareConfig(root=Path(tmp) / f"{kind}{i}", source=batch, workers=workers, executor=kind)
                s, first = timed(lambda: dp.run(config))
                if s < first_s:
                    first_s, phases = s, first.timings
                s, rerun = timed(lambda: dp.run(config))
                rerun_s = min(rerun_s, s)
                assert first.added + first.duplicates == args.n and rerun.added == 0, (first.added, rerun.added)
            rows.append((f"prepare ({kind} pool)", first_s, first_s / decode_n))
            rows += [(f"  {name}", sec, sec / decode_n) for name, sec in phases.items()]
            rows.append((f"no-change re-run ({kind} pool)", rerun_s, rerun_s / first_s))

    print(f"\n{args.n} images of {args.size} px, {workers} workers, CPU cores: {_cores()}")
    print(f"{'pass':34s} {'seconds':>8s} {'ratio':>7s}")
    for name, seconds, ratio in rows:
        print(f"{name:34s} {seconds:8.2f} {'' if ratio is None else f'{ratio:6.2f}x':>7s}")
    print("ratio: prepare over decode-only with the same threads (goal <= 2x); re-run over prepare (goal <= 0.1x)")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())

"""How long each script's --help takes, as a ratio to starting a bare Python interpreter.

--help must stay instant (torch, ultralytics and pandas are imported inside functions): each
script's --help is run ``--repeat`` times in a fresh interpreter, alternating with ``python -c
pass``, and the median of each is reported with their ratio. Goal: well under 2 s on a quiet
2-core machine, which is a ratio of a few times a bare start. The test suite checks only that no
heavy module is imported (tests/test_setup_training.py); the time itself is measured here.

Usage:
    python benchmarks/bench_help.py
    python benchmarks/bench_help.py --repeat 9 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (default: 5); the median is reported")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    bare, scripts = [], {p.name: [] for p in sorted(REPO.glob("*.py"))}
    for _ in range(args.repeat):
        bare.append(timed([sys.executable, "-c", "pass"]))
        for name, times in scripts.items():
            times.append(timed([sys.executable, name, "--help"]))
    base = statistics.median(bare)
    result = {"bare_python_s": round(base, 3), "load_average": os.getloadavg(),
              "scripts": {n: {"median_s": round(statistics.median(t), 3), "ratio": round(statistics.median(t) / base, 2)}
                          for n, t in scripts.items()}}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"bare python start: {base:.3f} s (load average {result['load_average']})")
    for name, r in result["scripts"].items():
        print(f"  {name:24s} --help {r['median_s']:.3f} s  = {r['ratio']:.1f}x a bare start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

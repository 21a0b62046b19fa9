"""Speed and memory of the memory-bank analysis against a bare ``json.loads`` loop.

Generates a JSONL memory bank (1 million records, about 300 MB, by default) in benchmarks/out/
(git-ignored), then in the same run times, each in its own subprocess:
  baseline:  for line in f: json.loads(line)           (the yardstick of issue 7; broken lines caught)
  analyze:   read_memory_bank() + analyze_memory_bank()  (read, validate, every per-class figure
             and the priorities: what training_analyzer.run does before its report)
  command:   python training_analyzer.py --root <fresh workspace> --memory-bank FILE -q: the whole
             command a user waits for (interpreter start, imports, read, analysis, JSON + markdown
             report and the three charts; issue 12)
and prints the ratios analyze / baseline and command / baseline (goal <= 1.5 for both, ideally
< 1) and the analysis's peak memory (ru_maxrss of its child process; goal < 1.5 GB). Rounds
alternate baseline and command so that a busy shared machine slows both alike; the median of the
per-round ratios is reported with their range. The CPU-time ratio (every process of the command,
the chart helper included, against the baseline's) is steadier on a busy machine; it is higher
than the wall-time ratio of an idle one, where the helper runs on a second core.

Usage:
    python benchmarks/bench_memory_bank.py                  # 1,000,000 records
    python benchmarks/bench_memory_bank.py --records 200000 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")

BASELINE = """
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        try:
            json.loads(line)
        except ValueError:  # the generated file has a few broken lines, like a real one
            pass
"""

ANALYZE = """
import sys
sys.path.insert(0, sys.argv[2])
from toolkit.analysis import analyze_memory_bank
from toolkit.memory_bank import read_memory_bank
bank = read_memory_bank(sys.argv[1])
analysis = analyze_memory_bank(bank, uncertain=(0.25, 0.6), iou_match=0.5)
print(bank.records, bank.skipped, file=sys.stderr)
"""


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Realistic records: 0-3 detections, 5% reviewed, a few malformed lines."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            day = 1 + (i * 90 // n)
            dets = []
            for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 3))):
                x, y = rng.uniform(0, 150), rng.uniform(0, 150)
                dets.append({"class": rng.choice(CLASSES), "confidence": round(rng.random(), 4),
                             "bbox": [round(x, 1), round(y, 1), round(x + rng.uniform(5, 50), 1), round(y + rng.uniform(5, 50), 1)]})
            record = {"timestamp": f"2026-{1 + day // 31:02d}-{1 + day % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}Z",
                      "image": f"D:/line3/2026/img_{i:07d}.jpg", "model_version": "1.0" if i < n // 2 else "1.1",
                      "source": "line3", "image_width": 200, "image_height": 200, "detections": dets}
            if i % 20 == 0:
                record["review"] = {"labels": [{"class": d["class"], "bbox": d["bbox"]} for d in dets[:1]], "reviewer": "qa1"}
            line = json.dumps(record)
            if i % 100_000 == 99_999:
                line = line[:-5]  # a broken line now and then, as a crashed writer leaves
            fh.write(line + "\n")


def timed_child(code: str, *args: str) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter; return (seconds, peak MB of that child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far (KB on Linux)
    return seconds, max(peak, before) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--no-command", action="store_true", help="skip timing the whole command")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"detections_{args.records}.jsonl"
    if not path.exists():
        print(f"generating {args.records} records -> {path}", file=sys.stderr)
        generate(path, args.records)
    size_mb = path.stat().st_size / 1e6
    # the analysis runs first so that its peak is not masked by ru_maxrss of the baseline child
    analyze = [timed_child(ANALYZE, str(path), str(REPO)) for _ in range(args.repeat)]
    baseline = [timed_child(BASELINE, str(path)) for _ in range(args.repeat)]
    command_rounds = []
    cpu_rounds = []   # CPU seconds of the command (all its processes, chart helper included) and the baseline
    if not args.no_command:
        import shutil
        import statistics
        import tempfile

        for _ in range(args.repeat):
            ws = Path(tempfile.mkdtemp(prefix="bench_analyzer_ws_"))
            def cpu() -> float:
                use = resource.getrusage(resource.RUSAGE_CHILDREN)
                return use.ru_utime + use.ru_stime

            try:
                cpu0 = cpu()
                start = time.perf_counter()
                subprocess.run([sys.executable, str(REPO / "training_analyzer.py"), "--root", str(ws),
                                "--memory-bank", str(path), "-q"], check=True, stderr=subprocess.DEVNULL)
                t_cmd = time.perf_counter() - start
                c_cmd = cpu() - cpu0
                assert len(list((ws / "training" / "reports").rglob("*.png"))) == 3, "the charts were not written"
            finally:
                shutil.rmtree(ws, ignore_errors=True)
            cpu0 = cpu()
            t_b, _ = timed_child(BASELINE, str(path))
            c_b = cpu() - cpu0
            command_rounds.append((t_cmd, t_b))
            cpu_rounds.append((c_cmd, c_b))
            baseline.append((t_b, 0.0))
    t_analyze = min(s for s, _ in analyze)
    t_base = min(s for s, _ in baseline)
    peak_analyze = analyze[-1][1]
    try:
        import orjson  # noqa: F401
        parser_name = "orjson"
    except ImportError:
        parser_name = "json (install orjson for the fast path)"
    print(json.dumps({"records": args.records, "file_mb": round(size_mb, 1), "parser": parser_name,
                      "baseline_json_loads_s": round(t_base, 2), "analyze_s": round(t_analyze, 2),
                      "ratio": round(t_analyze / t_base, 3), "analyze_peak_mb": round(peak_analyze),
                      **({"command_s": [round(c, 2) for c, _ in command_rounds],
                          "command_ratio_median": round(statistics.median(c / b for c, b in command_rounds), 3),
                          "command_ratio_range": [round(min(c / b for c, b in command_rounds), 3),
                                                  round(max(c / b for c, b in command_rounds), 3)],
                          "command_cpu_ratio_median": round(statistics.median(c / b for c, b in cpu_rounds), 3)}
                         if command_rounds else {}),
                      "goal": "ratio and command ratio <= 1.5 (ideally < 1), peak < 1500 MB"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

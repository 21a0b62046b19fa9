"""Speed and memory of the whole analyzer command against a bare ``json.loads`` loop (and CSV against pandas).

Generates a JSONL memory bank (1 million records, about 300 MB, by default) in benchmarks/out/
(git-ignored), then times, each in its own process, in alternating rounds (so that a busy shared
machine weighs on both alike):
  baseline:  for line in f: json.loads(line)         (the yardstick of issue 7; broken lines caught)
  command:   python training_analyzer.py --root <fresh workspace> --memory-bank FILE -q: the whole
             command a user waits for (interpreter start, imports, read, analysis, JSON + markdown
             report and the three charts)
With ``--csv`` the same records as a CSV bank (one row per detection) are timed against
``pandas.read_csv`` of that file alone. Prints the best-of-N times, the ratio of the bests, each
round's ratio (the spread), the command's peak RSS (``wait4``: the process and the children it
reaped, the chart helper included) and the load average before and after.

Goals (issue 20): JSONL command <= 1.0x the baseline on an idle machine, peak RSS <= 800 MB; CSV
command <= 2.0x ``pandas.read_csv``.

Usage:
    nice -n 10 python benchmarks/bench_memory_bank.py                  # 1,000,000 records, 3 rounds
    nice -n 10 python benchmarks/bench_memory_bank.py --records 200000 --csv
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
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

READ_CSV = "import sys, pandas; pandas.read_csv(sys.argv[1])"


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


def to_csv(jsonl: Path, path: Path) -> None:
    """The same records as a CSV bank (tests/bank_helpers.write_csv)."""
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO))
    from bank_helpers import iter_jsonl, write_csv

    write_csv(iter_jsonl(jsonl), path)


def timed(argv: list[str]) -> tuple[float, float, float]:
    """(seconds, peak RSS in MB of the process and the children it reaped, their CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[1]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def command(bank: Path) -> tuple[float, float, float]:
    ws = Path(tempfile.mkdtemp(prefix="bench_analyzer_ws_"))
    try:
        got = timed([sys.executable, str(REPO / "training_analyzer.py"), "--root", str(ws), "--memory-bank", str(bank),
                     "-q"])
        assert len(list((ws / "training" / "reports").rglob("*.png"))) == 3, "the charts were not written"
        return got
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    parser.add_argument("--csv", action="store_true", help="time the CSV bank against pandas.read_csv instead")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"detections_{args.records}.jsonl"
    if not path.exists():
        print(f"generating {args.records} records -> {path}", file=sys.stderr)
        generate(path, args.records)
    if args.csv:
        bank = path.with_suffix(".csv")
        if not bank.exists():
            to_csv(path, bank)
        yardstick, name = [sys.executable, "-c", READ_CSV, str(bank)], "pandas_read_csv"
    else:
        bank, yardstick, name = path, [sys.executable, "-c", BASELINE, str(path)], "json_loads_loop"
    load_before = os.getloadavg()
    rounds = []
    for _ in range(args.rounds):
        t_cmd, peak, cpu_cmd = command(bank)
        t_base, _, cpu_base = timed(yardstick)
        rounds.append((t_cmd, t_base, peak, cpu_cmd, cpu_base))
    best_cmd, best_base = min(r[0] for r in rounds), min(r[1] for r in rounds)
    print(json.dumps({
        "records": args.records, "file": bank.name, "file_mb": round(bank.stat().st_size / 1e6, 1),
        f"{name}_s": [round(r[1], 2) for r in rounds], "command_s": [round(r[0], 2) for r in rounds],
        "ratio_of_bests": round(best_cmd / best_base, 3),
        "round_ratios": [round(r[0] / r[1], 3) for r in rounds],
        "command_peak_rss_mb": round(max(r[2] for r in rounds)),
        # CPU seconds (every process of the command, the chart helper included): steadier on a busy machine
        "cpu_ratio_of_bests": round(min(r[3] for r in rounds) / min(r[4] for r in rounds), 3),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
        "goal": "CSV: command <= 2.0x pandas.read_csv" if args.csv else
                "command <= 1.0x the json.loads loop (idle machine), peak RSS <= 800 MB"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The planted memory bank of the golden comparison (tests/test_bank_golden.py), and its summary.

``planted_lines``: 50,000 generated records (benchmarks/bench_memory_bank.generate, seed 0: 0-3
detections, 5 % reviewed, a broken line per 100,000) with every malformed record of the
malformed-input tests planted at fixed lines. ``summary``: what the analyzer reports from a bank,
in the JSON form of its report. tests/data/bank_golden.json.gz is written by
``python tests/bank_golden.py`` with the memory-bank modules of 5029a87 (the hand-written readers
and analysis, before pandas) put back in a temporary copy of the toolkit, beside today's
``toolkit/memory/priorities.py`` (the class ranking, another topic, changes on its own): the test compares
the frames' output with the old code's. Rewrite it the same way after a change of priorities.py.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "bank_golden.json.gz"
N = 50_000


def _bad() -> list[str]:
    good = {"timestamp": "2026-02-01T08:15:01Z", "image": "planted.jpg", "model_version": "1.0",
            "detections": [{"class": "scratches", "confidence": 0.5, "bbox": [10, 10, 40, 30]}]}

    def rec(**extra) -> str:
        return json.dumps({**good, **extra})

    det = {"class": "patches", "confidence": 0.5, "bbox": [1, 1, 5, 5]}
    return [
        '{"timestamp": "2026-03-01T08:00:00Z", "image": "a.jpg", "detections": [',
        json.dumps({"timestamp": "2026-03-01T08:00:00Z", "detections": []}),
        rec(detections=[{**det, "confidence": "high"}]),
        rec(detections=[{**det, "confidence": 1.5}]),
        rec(detections=[{**det, "bbox": [9, 1, 5, 5]}]),
        rec(timestamp="yesterday"),
        "",
        rec(detections={"class": "x"}),
        json.dumps([1, 2, 3]),
        rec(detections=[{**det, "confidence": 0.9}, {"class": "crazing", "confidence": 0.4}]),
        rec(image_width="wide"),
        rec(image_width=-5),
        rec(review={"labels": [{"class": "patches", "bbox": [1, 2]}]}),
        rec(review={"labels": [{"class": "patches", "bbox": [8, 2, 3, 9]}]}),
        rec(detections=[{**det, "confidence": None}]),
        rec(model_version=1.1),
        rec(source=7),
        rec(timestamp=12345),
        rec(image=""),
        rec(detections=[{**det, "class": ""}]),
        rec(detections=[{**det, "bbox": [1, 1, 5]}]),
        rec(detections=[{**det, "bbox": [1, 1, "5", 9]}]),
        rec(detections=["patches"]),
        rec(review="yes"),
        rec(review={"labels": "none"}),
        rec(review={"labels": [{"bbox": [1, 1, 5, 5]}]}),
        rec(review={"labels": []}, timestamp="2026-02-02"),
        rec(timestamp="2026-02-03T09:00:00+02:00", model_version="0.9"),
        '{"timestamp": "2026-03-01T08:00:00Z", "image": "nan.jpg", "detections": [{"class": "a", "confidence": NaN, "bbox": [1,1,5,5]}]}',
    ]


def planted_lines() -> list[str]:
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    from bench_memory_bank import generate  # noqa: E402  (the benchmark's generator, seed 0)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gen.jsonl"
        generate(path, N)
        lines = path.read_text(encoding="utf-8").splitlines()
    for i, bad in enumerate(_bad()):
        lines.insert(7 + 1601 * i, bad)
    lines[-1] = lines[-1][:-3]   # an unterminated, cut-off last line
    return lines


def write_planted(path: Path) -> Path:
    lines = planted_lines()
    path.write_text("\n".join(lines), encoding="utf-8")   # no newline after the cut-off last line
    return path


def summary(bank, analysis, order: list[tuple[int, str]]) -> dict:
    """What the report says about the bank, plus the first export candidates (line, reason)."""
    return json.loads(json.dumps({
        "records": bank.records, "skipped": bank.skipped, "malformed": bank.malformed.items,
        "filtered_out": bank.filtered_out, "weeks": analysis.weeks, "versions": analysis.versions,
        "reviewed_images": analysis.reviewed_images, "classes": analysis.classes,
        "priorities": analysis.priorities,
        "candidates": [[int(bank.line[r]), reason] for r, reason in order]}, default=str))


CASES = {"all": {}, "window": {"since": "2026-02-01", "until": "2026-02-20"}, "version": {"model_version": "1.1"}}


def compute(path: Path) -> dict:
    from itertools import islice

    from toolkit.memory.analysis import analyze_memory_bank, candidate_order
    from toolkit.memory.memory_bank import read_memory_bank
    from toolkit.memory.bank_table import parse_date_bound

    out = {}
    for name, case in CASES.items():
        since = parse_date_bound(case["since"]) if "since" in case else None
        until = parse_date_bound(case["until"], end=True) if "until" in case else None
        bank = read_memory_bank(path, since=since, until=until, model_version=case.get("model_version"))
        classes = ["scratches", "patches", "crazing", "inclusion", "pitted_surface", "rolled-in_scale"]
        analysis = analyze_memory_bank(bank, (0.25, 0.6), 0.5, {"scratches": 300, "patches": 200, "crazing": 10},
                                       classes, dataset_images=400)
        order = list(islice(candidate_order(bank, analysis, list(analysis.classes), 0.0), 300))
        out[name] = summary(bank, analysis, order)
    return out


OLD_COMMIT = "5029a87"
OLD_MODULES = ("memory_bank.py", "memory_bank_sql.py", "analysis.py", "detection_api.py")


def old_toolkit(tmp: Path) -> Path:
    """A copy of the repository's toolkit with the memory-bank modules of OLD_COMMIT."""
    import shutil
    import subprocess

    repo = HERE.parent
    shutil.copytree(repo / "toolkit", tmp / "toolkit")
    for name in OLD_MODULES:
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:toolkit/{name}"], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
        (tmp / "toolkit" / name).write_text(text, encoding="utf-8")
    return tmp


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(old_toolkit(Path(tmp))))
        import toolkit.memory.memory_bank

        assert "_Reader" in dir(toolkit.memory.memory_bank), "not the old reader"
        result = compute(write_planted(Path(tmp) / "planted.jsonl"))
    GOLDEN.parent.mkdir(exist_ok=True)
    with gzip.open(GOLDEN, "wt", encoding="utf-8") as fh:
        json.dump(result, fh, sort_keys=True)
    print(GOLDEN, {k: (v["records"], v["skipped"], v["filtered_out"]) for k, v in result.items()})

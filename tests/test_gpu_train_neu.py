"""benchmarks/gpu_train_neu.py: route planning and the summary (pure), then one tiny real run on CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_train_neu as bench  # noqa: E402


def test_routes_expand_to_jobs_and_both_reuses_them():
    jobs, both = bench.plan_jobs(["ours-finetune", "ours-both", "plain-scratch:metal"], [0, 1])
    ids = sorted(j["id"] for j in jobs)
    assert ids == sorted(["ours-finetune-default-s0", "ours-finetune-default-s1", "ours-scratch-default-s0",
                          "ours-scratch-default-s1", "plain-scratch-metal-s0", "plain-scratch-metal-s1"])
    assert [b["route"] for b in both] == ["ours-both"]
    with pytest.raises(ValueError, match="FAMILY-START"):
        bench.parse_route("ours-fine")
    with pytest.raises(ValueError, match="unknown recipe"):
        bench.parse_route("ours-scratch:shiny")


def row(family, start, seed, val, test, seconds, recipe="default"):
    return {"family": family, "start": start, "recipe": recipe, "seed": seed, "epochs": 3, "val_map50_95": val,
            "map50": test + 0.3, "map50_95": test, "train_seconds": seconds, "loop_seconds": seconds - 2,
            "setup_seconds": 1.0, "after_seconds": 1.0, "id": f"{family}-{start}-s{seed}"}


def test_both_keeps_the_better_validation_run_and_sums_the_time():
    rows = [row("ours", "finetune", 0, 0.40, 0.41, 50), row("ours", "scratch", 0, 0.45, 0.44, 100),
            row("ours", "finetune", 1, 0.43, 0.42, 52), row("ours", "scratch", 1, 0.42, 0.46, 98),
            row("plain", "finetune", 0, 0.40, 0.40, 40), row("plain", "finetune", 1, 0.40, 0.42, 44)]
    derived = bench.derive_both(rows, [bench.parse_route("ours-both")])
    assert [(d["seed"], d["picked"], d["map50_95"], d["train_seconds"]) for d in derived] == \
        [(0, "scratch", 0.44, 150), (1, "finetune", 0.42, 150)]  # picked on val, not on the test score
    table = {e["route"]: e for e in bench.summarise(rows + derived, ["plain-finetune", "ours-finetune", "ours-both"])}
    assert table["ours-both"]["map50_95"] == pytest.approx(0.43) and table["ours-both"]["seeds"] == 2
    assert table["ours-finetune"]["map50_95_sd"] == pytest.approx(0.00707, abs=1e-4)
    assert table["ours-finetune"]["time_ratio_vs_plain"] == pytest.approx(51 / 42)
    text = bench.markdown({"images": {"train": 10, "test": 5}, "card": "CPU, 2 cores", "cpu_proxy": True,
                           "date": "2026-11-26", "imgsz": 64, "batch": 8, "seeds": [0, 1], "concurrent": 1,
                           "ultralytics": "8", "table": list(table.values())})
    assert "CPU proxy: not a GPU figure" in text and "| ours-both (picked s0:scratch, s1:finetune) | 2 |" in text
    assert "0.430 ± 0.014" in text and "| 1.21 |" in text


@pytest.mark.slow  # the GPU benchmark's own script, trained tiny on the CPU: about 15 s
def test_tiny_real_run_writes_the_results_files(neu_dir, shared_models, tmp_path):
    """Two real trainings (ours, finetune + scratch = the both route) at imgsz 64, one epoch, 12 images."""
    rc = bench.main(["--neu", str(neu_dir), "--model", str(shared_models / "neu_v1.0_half.pt"),
                     "--routes", "ours-both", "--seeds", "0", "--epochs-finetune", "1", "--epochs-scratch", "1",
                     "--imgsz", "64", "--batch", "8", "--limit-train", "12", "--limit-eval", "6", "--device", "cpu",
                     "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results")])
    assert rc == 0
    (json_path,) = (tmp_path / "results").glob("*-cpu-*.json")
    report = json.loads(json_path.read_text())
    assert report["images"] == {"train": 12, "val": 6, "test": 6} and report["cpu_proxy"] is False
    starts = sorted(r["start"] for r in report["rows"])
    assert starts == ["both", "finetune", "scratch"]
    for r in report["rows"]:
        assert 0.0 <= r["map50_95"] <= r["map50"] <= 1.0 and r["loop_seconds"] > 0 and r["epochs"] == 1
    assert json_path.with_suffix(".md").read_text().count("| ours-both") == 1


def test_collect_merges_cut_off_runs_and_counts_a_job_once(tmp_path, capsys):
    meta = {"date": "2026-11-26", "card": "CPU, 2 cores", "slug": "cpu-2-cores", "cpu_proxy": True, "device": "cpu",
            "ultralytics": "8", "imgsz": 160, "batch": 16, "epochs_finetune": 5, "epochs_scratch": 5,
            "model": str(tmp_path / "m.pt"), "train_list": "train", "images": {"train": 720, "val": 180, "test": 180},
            "seeds": [0, 1], "concurrent": 1, "workers_per_job": 1, "routes": ["plain-finetune"], "all_set": {}}
    runs = []
    for i, (routes, jobs) in enumerate(((["plain-finetune"], [row("plain", "finetune", 0, 0.4, 0.40, 50)]),
                                        (["ours-finetune"], [row("ours", "finetune", 0, 0.4, 0.41, 55),
                                                             row("plain", "finetune", 0, 0.4, 0.42, 60)])), 1):
        root = tmp_path / f"run{i}"
        for job in jobs:
            (root / "jobs" / job["id"]).mkdir(parents=True)
            (root / "jobs" / job["id"] / "row.json").write_text(json.dumps(job))
        (root / "plan.json").write_text(json.dumps({**meta, "routes": routes}))
        runs.append(root)
    assert bench.main(["--collect", *map(str, runs), "--results", str(tmp_path / "results")]) == 0
    report = json.loads((tmp_path / "results" / "2026-11-26-cpu-2-cores-cpu-proxy.json").read_text())
    assert report["routes"] == ["plain-finetune", "ours-finetune"] and len(report["rows"]) == 2
    table = {e["route"]: e for e in report["table"]}
    assert table["plain-finetune"]["map50_95"] == 0.42  # the later run's row of the same job
    assert "2 finished job(s) collected from 2 run(s)" in capsys.readouterr().out
    (runs[1] / "plan.json").write_text(json.dumps({**meta, "imgsz": 320}))
    assert bench.main(["--collect", *map(str, runs), "--results", str(tmp_path / "results")]) == 2

"""toolkit/memory/priorities.py through the real analyzer: missed classes judged in absolute terms (issue 17).

The plant here is a PCB line (six classes, 640-px boards) whose production model detects almost
nothing: the issue's case, where the old test (each class against the median class's rate) called
every class normal and ranked copper, the only class that works, above the missed ones.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import training_analyzer
from toolkit.core.datafile import write_dataset_yaml
from toolkit.core.layout import Workspace
from toolkit.memory.priorities import prevalence

PCB = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]
# defects per board, as labelled in the 150 scanned images (239 open, 182 short, ...)
PER_BOARD = {"open": 239 / 150, "short": 182 / 150, "mousebite": 202 / 150, "spur": 158 / 150,
             "copper": 145 / 150, "pin-hole": 163 / 150}
SIZE = 640


def _boards(rng: np.random.Generator, n: int) -> list[list[tuple[str, list[float]]]]:
    """``n`` boards, each a list of (class, box) drawn at the PCB rates."""
    boards = []
    for _ in range(n):
        truth = []
        for name in PCB:
            for _ in range(int(rng.poisson(PER_BOARD[name]))):
                x, y = rng.uniform(0, SIZE - 40, 2)
                w, h = rng.uniform(8, 40, 2)
                truth.append((name, [round(float(x), 1), round(float(y), 1), round(float(x + w), 1),
                                     round(float(y + h), 1)]))
        boards.append(truth)
    return boards


def _pcb_workspace(root: Path, records: int, detect_rate: dict[str, float], reviewed: bool,
                   dataset_boards: int = 300, seed: int = 17) -> Path:
    """A workspace: ``records`` logged boards whose model finds each true defect of a class with
    probability ``detect_rate[class]`` (a few uncertain), and a managed dataset of ``dataset_boards``
    train boards (the manifest) or, with ``reviewed``, an operator review on every logged board."""
    rng = np.random.default_rng(seed)
    ws = Workspace.at(root)
    ws.memory_bank.mkdir(parents=True)
    start = datetime(2026, 11, 2, 6, 0, tzinfo=timezone.utc)
    lines = []
    for i, truth in enumerate(_boards(rng, records)):
        detections = []
        for name, box in truth:
            if rng.random() < detect_rate[name]:
                jitter = rng.normal(0, 1.0, 4)
                detections.append({"class": name, "confidence": round(float(rng.uniform(0.3, 0.95)), 4),
                                   "bbox": [round(float(v + j), 1) for v, j in zip(box, jitter)]})
        record = {"timestamp": (start + timedelta(hours=2 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "image": f"boards/pcb_{i:04d}.png", "model_version": "1.0", "source": "aoi2",
                  "image_width": SIZE, "image_height": SIZE, "detections": detections}
        if reviewed:
            record["review"] = {"labels": [{"class": name, "bbox": box} for name, box in truth], "reviewer": "qe"}
        lines.append(json.dumps(record))
    ws.detections.write_text("\n".join(lines) + "\n")
    write_dataset_yaml(ws, PCB)
    if not reviewed:
        ws.datasets.mkdir(parents=True, exist_ok=True)
        images = [{"boxes": {name: sum(1 for c, _ in board if c == name) for name in PCB}, "split": "train"}
                  for board in _boards(rng, dataset_boards)]
        ws.manifest.write_text(json.dumps({"classes": PCB, "images": images}))
    return ws.root


WEAK = {name: 0.02 for name in PCB} | {"copper": 1.0}   # five classes at ~2% of their rate, copper at 100%


@pytest.mark.parametrize("reviewed", [False, True], ids=["managed-dataset", "reviewed-labels"])
def test_five_missed_classes_rank_above_the_one_that_works(tmp_path, capsys, reviewed):
    root = _pcb_workspace(tmp_path / "pcb", 150, WEAK, reviewed)
    assert training_analyzer.main(["--root", str(root), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    ranks = [p["class"] for p in result["priorities"]]
    assert ranks[-1] == "copper", result["priorities"]
    prios = {p["class"]: p for p in result["priorities"]}
    copper = prios.pop("copper")
    assert result["classes"]["copper"]["production_share"] > 0.7    # most detections: no lift from that
    assert copper["estimated_recall"] >= 0.8
    assert not any("missed" in r for r in copper["reasons"])
    for name, p in prios.items():
        assert p["score"] > copper["score"]
        assert p["estimated_recall"] < 0.1, (name, p)
        first = p["reasons"][0]
        assert f"estimated recall {p['estimated_recall']:.0%}, likely missed" in first, first
        assert result["classes"][name]["prevalence"]["basis"] == ("reviewed" if reviewed else "dataset")
        assert result["classes"][name]["prevalence"]["missed"] == 1.0
        # 150 boards are plenty of data: the model finding almost nothing is not "little evidence"
        assert not any("little" in r for r in p["reasons"]), p["reasons"]
        assert p["images_needed"] > 0


def test_little_data_is_said_only_where_few_images_were_logged(tmp_path):
    few = training_analyzer.run(training_analyzer.AnalyzeConfig(
        root=_pcb_workspace(tmp_path / "few", 4, WEAK, reviewed=False)))
    assert few.records == 4
    for p in few.priorities:
        assert any(r.startswith("little data: ") and "in 4 image(s)" in r for r in p["reasons"]), p
        if p["class"] != "copper":
            assert p["score"] < 75   # a few boards cannot make a class certainly missed


def test_a_uniformly_weak_model_leaves_no_class_normal():
    """Every class at 2-3% of its labelled rate: all missed (the old median reference called all normal)."""
    names = ["open", "short", "spur"]
    out = prevalence(names, np.array([3, 2, 4]), 150, 0, [0, 0, 0], [0, 0, 0],
                     {"open": 200, "short": 150, "spur": 180}, 100)
    for prev in out:
        assert prev["missed"] == 1.0 and prev["estimated_recall"] < 0.05 and not prev["little_data"]
    # a class detected at its full rate is not missed, whatever the others do
    out = prevalence(names, np.array([3, 2, 270]), 150, 0, [0, 0, 0], [0, 0, 0],
                     {"open": 200, "short": 150, "spur": 180}, 100)
    assert out[2]["missed"] == 0.0 and out[2]["estimated_recall"] == 1.0

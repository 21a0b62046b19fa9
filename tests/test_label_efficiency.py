"""benchmarks/label_efficiency.py: its arithmetic, and (slow) one tiny end-to-end run on NEU-DET."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("label_efficiency", REPO / "benchmarks" / "label_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_images_to_match_interpolates_the_random_curve():
    le = _module()
    curve = [(0, 0.20), (40, 0.22), (80, 0.24), (360, 0.30)]
    assert le.interpolate_k(curve, 0.23) == pytest.approx(60.0)
    assert le.interpolate_k(curve, 0.27) == pytest.approx(220.0)
    assert le.interpolate_k(curve, 0.31) is None           # beyond the whole pool
    assert le.interpolate_k(curve, 0.19) == 0.0


def test_summary_compares_the_analyzer_with_random_draws():
    le = _module()
    runs = [{"arm": "old_only", "k": 0, "map50": 0.4, "map50_95": 0.20},
            {"arm": "all", "k": 360, "map50": 0.6, "map50_95": 0.30},
            {"arm": "analyzer", "k": 40, "map50": 0.5, "map50_95": 0.24},
            {"arm": "random", "k": 40, "map50": 0.45, "map50_95": 0.21},
            {"arm": "random", "k": 40, "map50": 0.47, "map50_95": 0.23}]
    summary = le.summarise(runs, [40], 360)
    row = summary["per_k"][0]
    assert row["random"]["map50_95"]["mean"] == pytest.approx(0.22) and row["random"]["map50_95"]["n"] == 2
    assert row["analyzer"]["map50_95"]["mean"] == 0.24
    # random: 0.22 at 40, 0.30 at 360 -> 0.24 is reached at 40 + 0.02/0.08 * 320 = 120 images
    assert row["random_images_to_match"] == pytest.approx(120.0) and row["label_efficiency"] == pytest.approx(3.0)


def test_random_rise_is_measured_in_standard_deviations_of_the_draws(tmp_path):
    """Issue 17: the proxy must show random's mean rising with K; the summary says by how many SD."""
    le = _module()
    runs = [{"arm": "random", "k": k, "map50": 0.3, "map50_95": v}
            for k, vs in ((30, (0.10, 0.09, 0.11)), (90, (0.12, 0.13)), (240, (0.15, 0.16, 0.14))) for v in vs]
    summary = le.summarise(runs, [30, 90, 240], 720)
    rise = summary["random_rise"]
    assert (rise["from_k"], rise["to_k"]) == (30, 240)
    assert rise["rise"] == pytest.approx(0.05) and rise["sd"] == pytest.approx(0.01)
    assert rise["in_sd"] == pytest.approx(5.0)
    flat = le.summarise([dict(r, map50_95=0.2 + (0.01 if i % 2 else -0.01)) for i, r in enumerate(runs)],
                        [30, 90, 240], 720)["random_rise"]
    assert abs(flat["in_sd"]) < 2
    # --summarise rewrites a results file's summary and .md from its runs
    path = tmp_path / "r.json"
    report = {"mode": "cpu-proxy", "date": "2026-12-04", "device_name": "CPU proxy", "ultralytics": "x",
              "settings": {"model": "m.pt", "epochs": 8, "imgsz": 128, "batch": 16, "ks": [30, 90, 240], "draws": 3,
                           "random_seeds": [1, 2, 3], "train_seed": 0, "old_images": 60, "pool_images": 720,
                           "test_images": 180},
              "analyzer": {"exported": 0, "seconds": 1.0, "near_duplicates_skipped": 0, "picked_per_class": {},
                           "priorities": []},
              "runs": runs, "summary": {}, "seconds": 60.0}
    path.write_text(json.dumps(report))
    assert le.main(["--summarise", str(path)]) == 0
    assert json.loads(path.read_text())["summary"]["random_rise"]["in_sd"] == pytest.approx(5.0)
    assert "rises by +0.050 from K 30 to K 240, 5.0 standard deviations" in path.with_suffix(".md").read_text()
    assert le.main(["--summarise", str(tmp_path / "missing.json")]) == 1


def test_same_steps_gives_every_run_the_same_images_per_epoch_and_keeps_its_mix():
    """--epoch-images: K no longer buys extra steps; each run keeps its old : new mix and its own name."""
    le = _module()
    old = [f"old{i}" for i in range(6)]
    specs = [dict(name="old_only", arm="old_only", k=0, train=old),
             dict(name="random_k3_s1", arm="random", k=3, train=old + ["p0", "p1", "p2"]),
             dict(name="confident_k6", arm="analyzer", k=6, train=old + [f"p{i}" for i in range(6)]),
             dict(name="all_pool", arm="all", k=30, train=old + [f"p{i}" for i in range(30)])]
    out = le.same_steps(specs, 18)
    assert [s["name"] for s in out] == ["old_only_e18", "random_k3_s1_e18", "confident_k6_e18"]
    assert all(len(s["train"]) == 18 and s["epoch_images"] == 18 for s in out)   # the whole pool (36) is left out
    assert out[0]["train"] == old * 3
    assert out[1]["train"] == (old + ["p0", "p1", "p2"]) * 2                     # 2 : 1 old : new, as before
    assert set(out[2]["train"]) == set(specs[2]["train"]) and out[2]["k"] == 6
    assert specs[1]["train"] == old + ["p0", "p1", "p2"]                          # the given specs are not changed
    with pytest.raises(ValueError, match=r"below confident_k6's 12 images .* give at least 12"):
        le.same_steps(specs, 10)


def test_balanced_subset_keeps_every_class():
    le = _module()
    names = ["a", "b", "c"]
    stems = [f"{c}_{i}" for c in names for i in range(10)]
    subset = le.balanced(stems, names, 9, seed=1)
    assert len(subset) == 9 and {s.split("_")[0] for s in subset} == set(names)
    assert le.balanced(stems, names, 0, seed=1) == stems


@pytest.mark.slow
def test_cpu_proxy_runs_end_to_end(neu_dir, shared_models, tmp_path):
    le = _module()
    out = tmp_path / "results"
    code = le.main(["--mode", "cpu-proxy", "--neu", str(neu_dir), "--model", str(shared_models / "neu_v1.0_half.pt"),
                    "--imgsz", "64", "--epochs", "1", "--ks", "4,8", "--draws", "2", "--old-limit", "24",
                    "--pool-limit", "30", "--test-limit", "12", "--work", str(tmp_path / "work"), "--out", str(out),
                    "--analyzer-seeds", "1", "--selections", "diversity,uncertainty"])
    assert code == 0
    report = json.loads(next(out.glob("*-cpu-proxy.json")).read_text())
    arms = sorted({r["arm"] for r in report["runs"]})
    assert arms == ["all", "analyzer", "old_only", "random"] and len(report["runs"]) == 2 * 2 + 2 * 2 + 1 + 1
    assert report["analyzer"]["exported"] == 8 and report["settings"]["pool_images"] == 30
    assert report["partial"] is None and report["summary"]["modes"] == ["diversity", "uncertainty"]
    assert set(report["summary"]["per_k"][0]["modes"]) == {"diversity", "uncertainty"}
    # the default mode's exports embedded the pool once; the others read the cache
    embeds = [sm["selection"]["embedding"] for sm in report["selection_picks"]["diversity"].values()]
    assert sum(e["embedded_now"] for e in embeds) == 30 and embeds[-1]["from_cache"] == 30
    assert "CPU PROXY" in next(out.glob("*-cpu-proxy.md")).read_text()
    # a new mode added later: only its runs are made, every other run (other modes' included) taken over
    first = next(out.glob("*-cpu-proxy.json"))
    out2 = tmp_path / "results2"
    code = le.main(["--mode", "cpu-proxy", "--neu", str(neu_dir), "--model", str(shared_models / "neu_v1.0_half.pt"),
                    "--imgsz", "64", "--epochs", "1", "--ks", "4,8", "--old-limit", "24", "--pool-limit", "30",
                    "--test-limit", "12", "--work", str(tmp_path / "work"), "--out", str(out2), "--analyzer-seeds", "1",
                    "--arms", "analyzer", "--selections", "confident", "--reuse", str(first), "--reuse-analyzer"])
    assert code == 0
    added = json.loads(next(out2.glob("*-cpu-proxy.json")).read_text())
    assert added["summary"]["modes"] == ["confident", "diversity", "uncertainty"]
    assert sorted(r["name"] for r in added["runs"] if r["name"] not in added["settings"]["reused_runs"]) == \
        ["confident_k4", "confident_k8"]
    assert {r["name"] for r in report["runs"]} <= set(added["settings"]["reused_runs"])
    assert set(added["selection_picks"]) == {"confident", "diversity", "uncertainty"}
    assert "runs other than the default mode's reused" in next(out2.glob("*-cpu-proxy.md")).read_text()
    # same steps: every run cycled to the same images per epoch; a number below old + K is refused
    common = ["--mode", "cpu-proxy", "--neu", str(neu_dir), "--model", str(shared_models / "neu_v1.0_half.pt"),
              "--imgsz", "64", "--epochs", "1", "--ks", "4", "--draws", "1", "--old-limit", "24", "--pool-limit", "30",
              "--test-limit", "12", "--work", str(tmp_path / "work"), "--arms", "old_only,random"]
    assert le.main(common + ["--out", str(tmp_path / "refused"), "--epoch-images", "27"]) == 1
    assert not (tmp_path / "refused").exists()
    out3 = tmp_path / "results3"
    assert le.main(common + ["--out", str(out3), "--epoch-images", "32", "--tag", "same-steps", "--jobs", "2"]) == 0
    # two fine-tunes at once: each reads its own linked view of the data, so ultralytics' labels.cache
    # (written beside the labels folder) is never shared - on one shared folder they raced on it
    runs = tmp_path / "work" / "runs"
    assert not (tmp_path / "work" / "data" / "labels.cache").exists()
    assert (runs / "old_only_e32" / "data" / "labels.cache").is_file()
    assert (runs / "random_k4_s1_e32" / "data" / "labels.cache").is_file()
    assert len((runs / "random_k4_s1_e32" / "train.txt").read_text().split()) == 32
    steps = json.loads(next(out3.glob("*-cpu-proxy-same-steps.json")).read_text())
    assert steps["settings"]["epoch_images"] == 32
    assert sorted((r["name"], r["images"], r["unique_images"]) for r in steps["runs"]) == \
        [("old_only_e32", 32, 24), ("random_k4_s1_e32", 32, 28)]
    assert "same steps" in next(out3.glob("*-cpu-proxy-same-steps.md")).read_text()
    # native start: production first fine-tuned on all its old images at the proxy's size; every arm
    # starts from that model, under its own names (a standard run in the same --work is never taken over)
    out4 = tmp_path / "results4"
    assert le.main(common + ["--out", str(out4), "--native-epochs", "1", "--tag", "native"]) == 0
    native = json.loads(next(out4.glob("*-cpu-proxy-native.json")).read_text())
    assert native["settings"]["native_epochs"] == 1
    assert native["native"]["images"] == 720 and native["native"]["arm"] == "native"   # train_half, whole
    assert sorted(r["name"] for r in native["runs"]) == ["old_only_n1", "random_k4_s1_n1"]
    start = tmp_path / "work" / "runs" / "native_e1" / "train" / "weights" / "last.pt"
    assert start.is_file()
    for name in ("old_only_n1", "random_k4_s1_n1"):
        assert json.loads((tmp_path / "work" / "runs" / f"{name}.spec.json").read_text())["model"] == str(start)
    assert "production first fine-tuned 1 epoch(s)" in next(out4.glob("*-cpu-proxy-native.md")).read_text()

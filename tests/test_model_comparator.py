"""model_comparator.py on real NEU-DET images with the two real shared models.

The evaluation data is built here from the NEU VOC files (copies in tmp_path, the source is only
read): the default tests use 6 test images per class (36), on which v1.1's gain over v1.0 is
significant with room to spare (interval about [+0.056, +0.124] on mAP50-95); the full
180-image acceptance test is marked slow.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import model_comparator
from model_comparator import CompareConfig, run
from toolkit.model import evaluation
from toolkit.core.errors import UserError
from toolkit.data.labels.voc import voc_as_yolo_text

NEU_NAMES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
V10, V11 = "neu_v1.0_half.pt", "neu_v1.1_full.pt"
PER_CLASS = 6
FAST = {"device": "cpu", "speed_images": 0}  # speed timing is not under test in most runs (0: none)


def neu_pair(neu_dir: Path, stem: str) -> tuple[Path, Path]:
    for image_dir, xml_dir in (("IMAGES", "ANNOTATIONS"), ("Validation_Images", "Validation_Annotations")):
        image, xml = neu_dir / image_dir / f"{stem}.jpg", neu_dir / xml_dir / f"{stem}.xml"
        if image.is_file() and xml.is_file():
            return image, xml
    raise FileNotFoundError(f"{stem} not in {neu_dir}")


def voc_to_yolo(xml: Path) -> str:
    return voc_as_yolo_text(xml, NEU_NAMES)  # 'difficult' boxes included, as in the reference figures


def write_neu_yolo(neu_dir: Path, stems: list[str], dest: Path, names=NEU_NAMES) -> Path:
    """Copy the images of ``stems`` and their VOC boxes as a YOLO test split; return the data yaml."""
    for sub in ("images/test", "labels/test"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image, xml = neu_pair(neu_dir, stem)
        shutil.copyfile(image, dest / "images" / "test" / image.name)
        (dest / "labels" / "test" / f"{stem}.txt").write_text(voc_to_yolo(xml))
    data = {"path": str(dest), "train": "images/test", "val": "images/test", "test": "images/test",
            "names": dict(enumerate(names))}
    (dest / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dest / "data.yaml"


def test_stems(neu_dir: Path, per_class: int | None = None) -> list[str]:
    stems = (neu_dir / "splits" / "test.txt").read_text().split()
    if per_class is None:
        return stems
    return [s for c in NEU_NAMES for s in sorted(x for x in stems if x.startswith(c + "_"))[:per_class]]


test_stems.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def subset_yaml(neu_dir, tmp_path_factory) -> Path:
    return write_neu_yolo(neu_dir, test_stems(neu_dir, PER_CLASS), tmp_path_factory.mktemp("neu36"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One workspace for the module: its evaluation cache is shared by the tests below."""
    return tmp_path_factory.mktemp("compare_ws")


@pytest.fixture(scope="module")
def first_run(workspace, subset_yaml, shared_models):
    """v1.0 production against the v1.1 candidate, cold cache, with speed timing on."""
    result = run(CompareConfig(root=workspace, production=shared_models / V10, candidates=(shared_models / V11,),
                               data=subset_yaml, device="cpu", speed_images=8))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (workspace / "training" / "cache" / "evaluations").iterdir()}
    return result, mtimes


def entry(result, name: str) -> dict:
    return next(m for m in result.models if Path(m["path"]).name == name)


def test_candidate_v11_beats_v10_and_is_promoted(first_run, shared_models, workspace):
    result, _ = first_run
    assert result.images == PER_CLASS * len(NEU_NAMES) and result.split == "test"
    old, new = entry(result, V10), entry(result, V11)
    assert [old["role"], new["role"]] == ["production", "candidate"]
    for m in (old, new):
        assert set(m["per_class"]) == set(NEU_NAMES)
        assert all(0 <= v["ap50"] <= 1 and 0 <= v["ap50_95"] <= v["ap50"] for v in m["per_class"].values())
        assert m["ms_per_image"] > 0 and not m["cached"] and len(m["sha256"]) == 64
    assert new["map50"] > old["map50"] and new["map50_95"] > old["map50_95"]
    d = result.decision
    assert d["promote"] is True and result.winner == str((shared_models / V11).resolve())
    assert d["metric"] == "map50_95"
    assert d["gain"] == pytest.approx(new["map50_95"] - old["map50_95"])
    lo, hi = d["ci95"]
    assert 0 < lo < d["gain"] < hi
    assert any("significant" in r for r in d["reasons"])
    # the report: JSON with the DESIGN keys, markdown twin and the chart, all in training/reports
    report = json.loads(result.report.read_text())
    for key in ("split", "images", "models", "winner", "decision", "report", "dataset_version", "chart"):
        assert key in report
    assert report["decision"]["promote"] is True and report["models"][1]["per_class"]["crazing"]["ap50"] is not None
    assert result.report.parent == workspace / "training" / "reports"
    assert result.markdown.is_file() and "| crazing |" in result.markdown.read_text()
    assert result.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_identical_run_reuses_cached_evaluations(first_run, workspace, subset_yaml, shared_models,
                                                        monkeypatch):
    first, mtimes = first_run
    passes = []
    real = evaluation.run_inference

    def counting_inference(*args, **kwargs):  # a spy: it counts and calls the real thing
        passes.append(args[0].path.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "run_inference", counting_inference)
    again = run(CompareConfig(root=workspace, production=shared_models / V10, candidates=(shared_models / V11,),
                              data=subset_yaml, **FAST))
    assert passes == []  # no inference pass at all
    assert [m["cached"] for m in again.models] == [True, True]
    cache_dir = workspace / "training" / "cache" / "evaluations"
    assert {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()} == mtimes  # untouched
    for a, b in zip(first.models, again.models):
        assert (a["map50"], a["map50_95"], a["per_class"]) == (b["map50"], b["map50_95"], b["per_class"])
    assert again.decision["ci95"] == first.decision["ci95"]  # same seed, same resamples

    # a changed setting is a different evaluation: the cache is not used
    changed = run(CompareConfig(root=workspace, production=shared_models / V10, data=subset_yaml,
                                conf=0.01, subset=6, **FAST))
    assert passes == [V10] and changed.models[0]["cached"] is False


def test_roles_reversed_is_not_promoted_and_names_regressed_classes(first_run, workspace, subset_yaml, shared_models):
    result = run(CompareConfig(root=workspace, production=shared_models / V11, candidates=(shared_models / V10,),
                               data=subset_yaml, **FAST))
    d = result.decision
    assert d["promote"] is False and result.winner == str((shared_models / V11).resolve())
    assert d["ci95"][1] < 0
    prod, cand = entry(result, V11), entry(result, V10)
    regressed = [n for n in NEU_NAMES
                 if prod["per_class"][n]["ap50"] - cand["per_class"][n]["ap50"] > 0.05]
    assert "crazing" in regressed and "rolled-in_scale" in regressed
    assert d["candidates"][0]["regressed_classes"] == regressed
    for name in regressed:
        old, new = prod["per_class"][name]["ap50"], cand["per_class"][name]["ap50"]
        line = f"{name} AP50 fell {old - new:.3f} ({old:.3f} -> {new:.3f}), more than the allowed 0.05"
        assert line in d["reasons"]


def test_same_model_as_production_and_candidate_is_not_promoted(first_run, workspace, subset_yaml, shared_models):
    result = run(CompareConfig(root=workspace, production=shared_models / V11, candidates=(shared_models / V11,),
                               data=subset_yaml, **FAST))
    d = result.decision
    assert d["promote"] is False and d["gain"] == 0 and d["ci95"] == [0.0, 0.0]
    assert any("same sha256" in r for r in d["reasons"])
    assert result.winner == str((shared_models / V11).resolve())


def test_models_whose_classes_differ_from_the_dataset_are_refused(neu_dir, shared_models, tmp_path):
    renamed = ("cracks",) + NEU_NAMES[1:]
    data_yaml = write_neu_yolo(neu_dir, test_stems(neu_dir, 1), tmp_path / "data", names=renamed)
    with pytest.raises(UserError, match=r"lacks \['cracks'\].*has \['crazing'\]"):
        run(CompareConfig(root=tmp_path / "ws", production=shared_models / V10, data=data_yaml, **FAST))
    assert not (tmp_path / "ws" / "training" / "cache" / "evaluations").exists()  # refused before any inference


def test_cli_json_on_stdout_and_exit_codes(first_run, workspace, subset_yaml, shared_models, capsys):
    code = model_comparator.main(["--root", str(workspace), "--production", str(shared_models / V10),
                                  "--candidates", str(shared_models / V11), "--data", str(subset_yaml),
                                  "--device", "cpu", "--speed-images", "4", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)  # stdout holds the JSON object only
    assert result["decision"]["promote"] is True and len(result["models"]) == 2
    for key in ("path", "map50", "map50_95", "precision", "recall", "per_class", "ms_per_image"):
        assert key in result["models"][0]
    # no production model in an empty workspace and no candidate: one line saying what to do
    code = model_comparator.main(["--root", str(workspace / "empty"), "--data", str(subset_yaml)])
    err = capsys.readouterr().err
    assert code == 1 and "no production model" in err and "--candidates" in err


def test_source_data_is_left_untouched(first_run, subset_yaml):
    """The evaluation reads the dataset only: no label cache, no re-saved images beside it."""
    root = subset_yaml.parent
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == sorted(["data.yaml"] + [f"images/test/{s}.jpg" for s in _stems(root)]
                           + [f"labels/test/{s}.txt" for s in _stems(root)])


def _stems(root: Path) -> list[str]:
    return [p.stem for p in (root / "images" / "test").iterdir()]


@pytest.mark.slow
def test_full_neu_test_split_reproduces_ultralytics_val(neu_dir, shared_models, tmp_path):
    """All 180 test images: the reference figures of ultralytics 8.4.190 val (conf 0.001, iou 0.7, 640)."""
    data_yaml = write_neu_yolo(neu_dir, test_stems(neu_dir), tmp_path / "neu_test")
    result = run(CompareConfig(root=tmp_path / "ws", production=shared_models / V10,
                               candidates=(shared_models / V11,), data=data_yaml, device="cpu"))
    assert result.images == 180
    old, new = entry(result, V10), entry(result, V11)
    assert old["map50"] == pytest.approx(0.696, abs=0.01) and old["map50_95"] == pytest.approx(0.376, abs=0.01)
    assert new["map50"] == pytest.approx(0.786, abs=0.01) and new["map50_95"] == pytest.approx(0.453, abs=0.01)
    assert set(old["per_class"]) == set(new["per_class"]) == set(NEU_NAMES)
    assert result.decision["promote"] is True and result.decision["ci95"][0] > 0
    assert result.winner == str((shared_models / V11).resolve())


def evaluate_model(path, data_yaml, split: str, settings, root) -> dict:
    """One model's comparison entry, scored through the workspace's cache (a test helper: it
    checks that a model evaluated outside a comparison reuses the comparator's cached arrays)."""
    from toolkit.core.layout import Workspace

    workspace = Workspace.at(root)
    eval_settings = evaluation.EvalSettings.from_settings(settings)
    data_yaml = Path(data_yaml).resolve()
    data = evaluation.load_split(data_yaml, split)
    version = evaluation.dataset_version_of(workspace, data_yaml, data.fingerprint)
    model = evaluation.load_model(path, data, eval_settings, workspace.ultralytics_config, data_yaml)
    ev = evaluation.evaluate(model, data, eval_settings, workspace.evaluation_cache, version)
    ev.ms_per_image = evaluation.measure_speeds([model], data, eval_settings)[0]
    return evaluation.model_entry(ev, role="candidate")


def test_evaluate_model_helper_shares_the_comparators_cache(first_run, workspace, subset_yaml, shared_models):
    """A model scored outside a comparison: the same entry, answered from the same cache."""
    from toolkit.core.config import DEFAULTS

    first, _ = first_run
    settings = {**DEFAULTS["evaluation"], "device": "cpu", "speed_images": 2}
    got = evaluate_model(shared_models / V11, subset_yaml, "test", settings, root=workspace)
    want = entry(first, V11)
    assert got["cached"] is True and got["sha256"] == want["sha256"]
    assert (got["map50"], got["map50_95"], got["per_class"]) == (want["map50"], want["map50_95"], want["per_class"])
    assert got["ms_per_image"] > 0


@pytest.mark.parametrize("better_first", [False, True])
def test_with_several_candidates_the_better_one_wins_wherever_it_is_listed(first_run, workspace, subset_yaml,
                                                                          shared_models, tmp_path, better_first):
    """What `--strategy both` relies on: the comparator ranks several candidates and picks the best
    passing one, not the first or the last (a copy of v1.0 is the weaker candidate; cached scores)."""
    weaker = tmp_path / "weaker_candidate.pt"
    shutil.copyfile(shared_models / V10, weaker)
    better = shared_models / V11
    order = (better, weaker) if better_first else (weaker, better)
    result = run(CompareConfig(root=workspace, production=shared_models / V10, candidates=order,
                               data=subset_yaml, **FAST))
    assert len(result.models) == 3
    assert result.decision["promote"] is True
    assert result.winner == str(better.resolve())
    assert entry(result, V11)["map50_95"] > entry(result, weaker.name)["map50_95"]


# ----------------------------------------------------------------------------- issue 17: the line's operating point
def test_recall_and_false_calls_at_the_operating_conf_are_in_json_and_report(first_run):
    """Per class, for production and candidate: recall (1 - escape rate) and false calls per image at
    promotion.operating_conf, each with a 95% bootstrap interval; the rule's verdict is in the reasons."""
    result, _ = first_run
    report = json.loads(result.report.read_text())
    assert report["settings"]["promotion"]["operating_conf"] == 0.25
    for m in report["models"]:
        op = m["operating_point"]
        assert op["conf"] == 0.25 and set(op["per_class"]) == set(NEU_NAMES)
        for c in op["per_class"].values():
            assert c["instances"] > 0 and 0 <= c["recall"] <= 1
            lo, hi = c["recall_ci95"]
            assert lo <= c["recall"] <= hi
            assert c["false_calls_per_image"] >= 0 and len(c["false_calls_ci95"]) == 2
    cand = report["models"][1]
    drops = cand["recall_drop"]
    for n in NEU_NAMES:
        before, after = report["models"][0]["operating_point"]["per_class"][n]["recall"], \
            cand["operating_point"]["per_class"][n]["recall"]
        assert drops[n]["drop"] == pytest.approx(before - after)
    assert any("recall at confidence 0.25" in r for r in report["decision"]["reasons"])
    text = result.markdown.read_text()
    assert "## At the line's confidence" in text and "recall" in text and "false calls/img" in text


def _escaping_copy(source: Path, dest: Path, class_index: int, ultralytics_config_dir: Path) -> Path:
    """``source`` with one class's score bias lowered: that class ranks as before (its AP is almost
    unchanged) but its confidences fall below the line's threshold - the defects escape."""
    import torch

    from toolkit.core.offline import load_yolo

    yolo = load_yolo(source, ultralytics_config_dir)
    head = yolo.model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            branch[-1].bias[class_index] -= 5.0
    yolo.save(str(dest))
    return dest


def test_a_candidate_that_lets_one_class_escape_is_refused_even_with_higher_map(
        first_run, workspace, subset_yaml, shared_models, tmp_path, ultralytics_config_dir):
    patches = NEU_NAMES.index("patches")
    candidate = _escaping_copy(shared_models / V11, tmp_path / "v11_patches_escape.pt", patches,
                               ultralytics_config_dir)
    result = run(CompareConfig(root=workspace, production=shared_models / V10, candidates=(candidate,),
                               data=subset_yaml, **FAST))
    prod, cand = result.models
    assert cand["map50_95"] > prod["map50_95"] + 0.02  # mAP rises ...
    drop = cand["recall_drop"]["patches"]
    assert drop["before"] > 0.9 and drop["drop"] > 0.05  # ... but patches escape at 0.25
    d = result.decision
    assert d["promote"] is False
    assert any(r.startswith("patches recall at confidence 0.25 fell") and "max_recall_drop 0.05" in r
               for r in d["reasons"]), d["reasons"]
    # the same comparison with the rule loosened promotes it: the recall rule alone refused it
    loose = run(CompareConfig(root=workspace, production=shared_models / V10, candidates=(candidate,),
                              data=subset_yaml, max_recall_drop=1.0, **FAST))
    assert loose.decision["promote"] is True


@pytest.mark.slow  # it loads every core on purpose while it times: about 25 CPU-s
def test_copies_of_one_model_on_a_loaded_machine_are_never_refused_for_speed(
        first_run, workspace, subset_yaml, shared_models, tmp_path):
    """Busy loops on every core while two copies of one model are timed: whatever the timings say,
    a candidate of production's architecture and input size is not refused for speed."""
    import multiprocessing

    copy = tmp_path / "copy_of_v11.pt"
    shutil.copyfile(shared_models / V11, copy)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    burners = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(max(2, os.cpu_count() or 2))]
    for p in burners:
        p.start()
    try:
        result = run(CompareConfig(root=workspace, production=shared_models / V11, candidates=(copy,),
                                   data=subset_yaml, device="cpu", speed_images=4, speed_rounds=5))
    finally:
        stop.set()
        for p in burners:
            p.join(10)
    prod, cand = result.models
    assert len(prod["speed_rounds_ms"]) == len(cand["speed_rounds_ms"]) == 5
    assert prod["architecture"]["signature"] == cand["architecture"]["signature"]
    verdict = result.decision["candidates"][0]
    assert not any("as slow as production" in r for r in verdict["reasons"]), verdict["reasons"]
    assert "same architecture as production" in verdict["speed"] and "slowdown rule does not apply" in verdict["speed"]
    assert "median of 5 interleaved rounds (spread " in verdict["speed"]


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def test_the_next_line_never_offers_the_production_model_again(tmp_path):
    """Issue 27: the comparator's Next: named a file that was already production (here: the workspace's
    yolov8_model.pt as the candidate, against an older model given with --production)."""
    from toolkit.core.files import sha256_file

    root = tmp_path / "plant"
    (root / "training" / "reports").mkdir(parents=True)
    live = root / "yolov8_model.pt"
    live.write_bytes(b"the production model's bytes")
    older = tmp_path / "archive" / "old.pt"
    older.parent.mkdir()
    older.write_bytes(b"an older model")

    def result(candidate: Path, sha: str) -> model_comparator.CompareResult:
        models = ({"role": "production", "path": str(older), "sha256": sha256_file(older), "map50": 0.5,
                   "map50_95": 0.3, "cached": False},
                  {"role": "candidate", "path": str(candidate), "sha256": sha, "map50": 0.6, "map50_95": 0.4,
                   "cached": False})
        return model_comparator.CompareResult(
            split="test", images=10, dataset_version="1", models=models, winner=str(candidate),
            decision={"promote": True, "reasons": ["passes"], "metric": "map50_95"},
            report=root / "training" / "reports" / "compare_x.json", markdown=root / "training" / "reports" / "x.md",
            chart=None, data=tmp_path / "data.yaml", settings={"promotion": {"min_first_map": 0.05}}, skipped=(),
            seconds=1.0)

    text = model_comparator.describe(result(live, sha256_file(live)))
    next_line = text.splitlines()[-1]
    assert next_line.startswith("Next: it is already the production model") and "--candidate" not in next_line
    assert next_line.endswith(f"--root {root.resolve()} --status"), next_line
    other = tmp_path / "runs" / "20261206-train" / "weights" / "best.pt"
    text = model_comparator.describe(result(other, "f" * 64))
    assert "PROMOTE 20261206-train/best.pt" in text
    assert text.splitlines()[-1].endswith(f"--candidate {other}")

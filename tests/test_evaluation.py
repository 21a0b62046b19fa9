"""toolkit/model/evaluation.py and toolkit/promotion/decision.py: matching, AP, bootstrap, split loading, rules.

The references are ultralytics' own functions (DetectionValidator.match_predictions, box_iou,
ap_per_class), run on the same inputs; nothing is compared with hand-typed figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.data import eval_split as S
from toolkit.model import evaluation as E
from toolkit.model import inference as I
from toolkit.model import metrics as M
from toolkit.promotion.decision import PromotionRules, decide, judge_candidate
from toolkit.core.errors import UserError

NAMES = ("a", "b", "c")


def random_image(rng, n_gt: int, n_pred: int, nc: int = 3):
    """Ground truth and noisy predictions around it, in pixels, predictions by descending confidence."""
    xy = rng.uniform(0, 150, (n_gt, 2))
    gt = np.hstack([xy, xy + rng.uniform(10, 50, (n_gt, 2))]).astype(np.float32)
    gt_cls = rng.integers(0, nc, n_gt)
    src = rng.integers(0, max(n_gt, 1), n_pred)
    jitter = rng.normal(0, 6, (n_pred, 4)).astype(np.float32)
    pred = (gt[src] + jitter) if n_gt else rng.uniform(0, 200, (n_pred, 4)).astype(np.float32)
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
    pred_cls = np.where(rng.random(n_pred) < 0.8, gt_cls[src] if n_gt else 0, rng.integers(0, nc, n_pred))
    conf = np.sort(rng.random(n_pred).astype(np.float32))[::-1]
    return gt, gt_cls, pred, pred_cls, conf


def synthetic_evaluation(rng, n_images: int, quality: float = 1.0) -> M.ModelEvaluation:
    """Per-image arrays as an inference pass would give them (tp from our matcher)."""
    tp, conf, pcls, pimg, tcls, timg = [], [], [], [], [], []
    for i in range(n_images):
        gt, gt_cls, pred, pred_cls, c = random_image(rng, int(rng.integers(0, 5)), int(rng.integers(0, 12)))
        pred = pred + rng.normal(0, 8 / quality, pred.shape).astype(np.float32)
        tp.append(M.match_predictions(pred_cls, gt_cls, M.box_iou(gt, pred)) if len(gt) and len(pred)
                  else np.zeros((len(pred), 10), bool))
        conf.append(c), pcls.append(pred_cls), pimg.append(np.full(len(c), i)), tcls.append(gt_cls)
        timg.append(np.full(len(gt_cls), i))
    ev = M.ModelEvaluation(Path("m.pt"), "0" * 64, NAMES, np.concatenate(tp), np.concatenate(conf),
                           np.concatenate(pcls), np.concatenate(pimg), np.concatenate(tcls),
                           np.concatenate(timg), n_images)
    ev.metrics = M.detection_metrics(ev.tp, ev.conf, ev.pred_cls, ev.target_cls, NAMES)
    return ev


@pytest.mark.parametrize("seed", range(5))
def test_matching_and_iou_equal_ultralytics(seed):
    import torch
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import box_iou

    rng = np.random.default_rng(seed)
    gt, gt_cls, pred, pred_cls, _ = random_image(rng, 6, 40)
    ours_iou = M.box_iou(gt, pred)
    ref_iou = box_iou(torch.from_numpy(gt), torch.from_numpy(pred))
    np.testing.assert_allclose(ours_iou, ref_iou.numpy(), rtol=1e-5, atol=1e-6)
    validator = DetectionValidator.__new__(DetectionValidator)
    validator.iouv = torch.linspace(0.5, 0.95, 10)
    ref = validator.match_predictions(torch.from_numpy(pred_cls), torch.from_numpy(gt_cls), ref_iou).numpy()
    ours = M.match_predictions(pred_cls, gt_cls, ours_iou)
    assert ours.shape == (40, 10) and ours.any()
    np.testing.assert_array_equal(ours, ref)


def test_detection_metrics_match_ap_per_class_and_mark_absent_classes():
    from ultralytics.utils.metrics import ap_per_class

    ev = synthetic_evaluation(np.random.default_rng(3), 30)
    ev.target_cls = ev.target_cls.copy()
    keep = ev.target_cls != 2  # class "c" has predictions but no ground truth
    ev.target_cls, ev.target_img = ev.target_cls[keep], ev.target_img[keep]
    m = M.detection_metrics(ev.tp, ev.conf, ev.pred_cls, ev.target_cls, NAMES)
    _, _, p, r, _, ap, classes, *_ = ap_per_class(ev.tp, ev.conf, ev.pred_cls, ev.target_cls)
    assert list(classes) == [0, 1]
    assert m["map50"] == pytest.approx(ap[:, 0].mean()) and m["map50_95"] == pytest.approx(ap.mean())
    assert m["precision"] == pytest.approx(p.mean()) and m["recall"] == pytest.approx(r.mean())
    assert m["per_class"]["b"]["ap50"] == pytest.approx(ap[1, 0])
    assert m["per_class"]["c"]["ap50"] is None and m["per_class"]["c"]["instances"] == 0


def test_bootstrap_scorer_equals_ap_per_class_on_replicated_images():
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(7)
    ev = synthetic_evaluation(rng, 25)
    scorer = M.BootstrapScorer(ev)
    ones = np.ones(ev.n_images, dtype=int)
    assert scorer.score(ones) == pytest.approx((ev.metrics["map50"], ev.metrics["map50_95"]), abs=1e-12)
    for _ in range(5):
        counts = np.bincount(rng.integers(0, ev.n_images, ev.n_images), minlength=ev.n_images)
        images = np.repeat(np.arange(ev.n_images), counts)  # the resample, spelled out
        p = np.concatenate([np.flatnonzero(ev.pred_img == i) for i in images])
        t = np.concatenate([np.flatnonzero(ev.target_img == i) for i in images])
        ap = ap_per_class(ev.tp[p], ev.conf[p], ev.pred_cls[p], ev.target_cls[t])[5]
        assert scorer.score(counts) == pytest.approx((ap[:, 0].mean(), ap.mean()), abs=1e-9)


def test_paired_bootstrap_is_zero_for_one_model_and_positive_for_a_better_one():
    rng = np.random.default_rng(11)
    worse = synthetic_evaluation(rng, 40, quality=0.5)
    same = M.paired_bootstrap(worse, worse, "map50_95", 200)
    assert np.all(same == 0)
    better = synthetic_evaluation(np.random.default_rng(11), 40, quality=4.0)  # same images, tighter boxes
    assert better.metrics["map50_95"] > worse.metrics["map50_95"]
    gains = M.paired_bootstrap(worse, better, "map50_95", 300, seed=1)
    lo, hi = M.interval95(gains)
    assert 0 < lo < better.metrics["map50_95"] - worse.metrics["map50_95"] < hi
    assert np.array_equal(gains, M.paired_bootstrap(worse, better, "map50_95", 300, seed=1))  # reproducible


def test_rect_batches_follow_ultralytics_val():
    # square images at 640: padded to 672 as ultralytics' rect val (pad 0.5 stride)
    batches = I.rect_batches([(200, 200)] * 5, batch=2, imgsz=640, stride=32)
    assert [len(i) for i, _ in batches] == [2, 2, 1] and {s for _, s in batches} == {(672, 672)}
    wide = I.rect_batches([(100, 200), (200, 200)], batch=1, imgsz=640, stride=32)
    assert dict((int(i[0]), s) for i, s in wide) == {0: (352, 672), 1: (672, 672)}


def test_read_yolo_label(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n")
    cls, boxes = S.read_yolo_label(f, 2)
    assert list(cls) == [0, 1]  # the duplicate row counts once, the polygon became its box
    np.testing.assert_allclose(boxes, [[0.4, 0.3, 0.6, 0.7], [0.1, 0.1, 0.3, 0.3]], atol=1e-6)
    assert S.read_yolo_label(tmp_path / "missing.txt", 2)[0].size == 0  # no label file: background image
    f.write_text("0 0.5 0.5 1.4 0.2\n")
    with pytest.raises(ValueError, match="outside 0..1"):
        S.read_yolo_label(f, 2)
    f.write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match="class 5"):
        S.read_yolo_label(f, 2)


def test_load_split_subset_skips_broken_and_reads_only(tiny_dataset, tmp_path):
    import shutil

    import yaml

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset["root"] / "val", root / "test")  # test/images + test/labels
    names = yaml.safe_load(tiny_dataset["yaml"].read_text())["names"]
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "test": "test/images", "names": names}))
    images = [p for p in (root / "test" / "images").iterdir() if p.suffix.lower() in S.IMAGE_SUFFIXES]
    assert len(images) > 3
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    data = S.load_split(root / "data.yaml", "test")
    assert len(data) == len(images) and not data.skipped
    assert [p.name for p in data.images] == sorted(p.name for p in data.images)
    assert len(S.load_split(root / "data.yaml", "test", subset=3)) == 3
    label = S.label_path_for(data.images[0])
    assert label.is_file()
    label.write_text("0 0.5 0.5 2 2\n")
    broken = S.load_split(root / "data.yaml", "test")
    assert len(broken) == len(images) - 1 and broken.skipped[0]["path"] == str(data.images[0])
    assert broken.fingerprint != data.fingerprint
    after = {p for p in root.rglob("*")}
    assert after == set(before)  # nothing written beside the user's data (no .cache files)
    with pytest.raises(UserError, match="no 'val:' split"):
        S.load_split(root / "data.yaml", "val")


def entry(path, map50_95, ap50, ms=10.0, sha=None):
    return {"path": path, "sha256": sha or path, "map50": map50_95 + 0.3, "map50_95": map50_95,
            "ms_per_image": ms, "per_class": {n: {"ap50": v} for n, v in zip(NAMES, ap50)}}


def test_promotion_rules_and_reasons():
    rules = PromotionRules()
    prod = entry("prod.pt", 0.40, [0.512, 0.8, None])
    good = judge_candidate(prod, entry("good.pt", 0.45, [0.50, 0.85, None]), rules, (0.02, 0.08))
    assert good.passes and any("significant" in r for r in good.reasons)
    bad = judge_candidate(prod, entry("bad.pt", 0.45, [0.431, 0.85, None], ms=20.0), rules, (0.02, 0.08))
    assert not bad.passes and bad.regressed_classes == ("a",)
    assert "a AP50 fell 0.081 (0.512 -> 0.431), more than the allowed 0.05" in bad.reasons
    assert any("2.00x as slow" in r for r in bad.reasons)
    unsure = judge_candidate(prod, entry("unsure.pt", 0.42, [0.5, 0.8, None]), rules, (-0.01, 0.05))
    assert not unsure.passes and any("includes zero" in r for r in unsure.reasons)
    relaxed = PromotionRules(require_significance=False)
    assert judge_candidate(prod, entry("unsure.pt", 0.42, [0.5, 0.8, None]), relaxed, (-0.01, 0.05)).passes
    same = judge_candidate(prod, entry("copy.pt", 0.40, [0.512, 0.8, None], sha="prod.pt"), rules, (0.0, 0.0))
    assert not same.passes and any("same sha256" in r for r in same.reasons)

    best = judge_candidate(prod, entry("best.pt", 0.47, [0.52, 0.8, None]), rules, (0.03, 0.1))
    d = decide(prod, [good, bad, best], rules)
    assert d["promote"] and d["winner"] == "best.pt" and d["gain"] == pytest.approx(0.07)
    assert any(r.startswith("bad.pt not chosen") for r in d["reasons"])
    kept = decide(prod, [bad, unsure], rules)
    assert not kept["promote"] and kept["winner"] == "prod.pt"
    assert any(r.startswith("bad.pt: a AP50 fell") for r in kept["reasons"])
    first = decide(None, [], rules, [entry("x.pt", 0.3, [0.5] * 3), entry("y.pt", 0.35, [0.5] * 3)])
    assert first["promote"] and first["winner"] == "y.pt"


def test_two_models_that_find_nothing_are_not_told_more_test_images_would_help():
    """Issue 27: two models scoring 0.000 got "more test images would narrow it"; there is nothing to narrow."""
    rules = PromotionRules(min_gain=0.0)
    nothing = judge_candidate(entry("prod.pt", 0.0, [0.0] * 3), entry("cand.pt", 0.0, [0.0] * 3), rules, (0.0, 0.0))
    assert not nothing.passes
    assert any("neither finds the defects" in r and "0.000 and 0.000" in r for r in nothing.reasons), nothing.reasons
    assert not any("narrow" in r for r in nothing.reasons)
    unsure = judge_candidate(entry("prod.pt", 0.40, [0.5] * 3), entry("cand.pt", 0.42, [0.5] * 3), rules,
                             (-0.01, 0.05))
    assert any("includes zero (more test images would narrow it)" in r for r in unsure.reasons)


def test_two_runs_best_pt_are_named_by_their_run_folder():
    """Issue 27: the comparator called two candidates "best.pt"."""
    from toolkit.core.layout import model_names

    runs = "/plant/training/runs"
    paths = ["/plant/yolov8_model.pt", f"{runs}/20261206-0100-pipeline-finetune/weights/best.pt",
             f"{runs}/20261206-0100-pipeline-scratch/weights/best.pt"]
    assert model_names(paths) == ["yolov8_model.pt", "20261206-0100-pipeline-finetune/best.pt",
                                  "20261206-0100-pipeline-scratch/best.pt"]
    assert model_names(["/a/x/m.pt", "/b/x/m.pt"]) == ["a/x/m.pt", "b/x/m.pt"]
    rules = PromotionRules(require_significance=False, min_gain=0.0)
    prod = entry("/plant/yolov8_model.pt", 0.40, [0.5] * 3)
    both = [judge_candidate(prod, entry(p, v, [0.5] * 3), rules, None) for p, v in zip(paths[1:], (0.45, 0.43))]
    reasons = decide(prod, both, rules)["reasons"]
    assert reasons[0] == "promote 20261206-0100-pipeline-finetune/best.pt: it passes every promotion rule"
    assert any(r.startswith("20261206-0100-pipeline-scratch/best.pt not chosen") for r in reasons)


def test_settings_are_checked_with_a_message_that_says_what_to_fix():
    with pytest.raises(UserError, match="map50_95 or map50"):
        PromotionRules.from_settings({"metric": "f1"})
    with pytest.raises(UserError, match="1000 or more"):
        PromotionRules.from_settings({"bootstrap_resamples": 10})
    with pytest.raises(UserError, match="batch"):
        I.EvalSettings.from_settings({"imgsz": 640, "batch": 0, "conf": 0.001, "iou": 0.7})
    assert I.EvalSettings.from_settings({"imgsz": 320, "batch": 4, "conf": 0.001, "iou": 0.7, "device": 0}).device == "0"


@pytest.mark.parametrize("hw,new_shape", [((200, 200), (672, 672)), ((640, 320), (672, 352)), ((100, 300), (128, 320)),
                                          ((700, 500), (640, 480))])
def test_letterbox_equals_ultralytics_val_letterbox(hw, new_shape):
    from ultralytics.data.augment import LetterBox

    im = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    ours, r, (left, top) = I.letterbox(im, new_shape)
    ref = LetterBox(new_shape=new_shape, scaleup=False)(image=im)
    np.testing.assert_array_equal(ours, ref)
    assert ours.shape[:2] == new_shape and r <= 1
    assert (ours[:top] == 114).all() and (ours[:, :left] == 114).all()


def test_dataset_version_from_manifest_for_the_managed_dataset_only(tmp_path):
    import json

    from toolkit.core.layout import Workspace

    ws = Workspace.at(tmp_path)
    fingerprint = "ab" * 32
    assert E.dataset_version_of(ws, ws.dataset_yaml, fingerprint) == "sha-" + fingerprint[:12]
    ws.manifest.parent.mkdir(parents=True)
    ws.manifest.write_text(json.dumps({"version": 7}))
    assert E.dataset_version_of(ws, ws.dataset_yaml, fingerprint) == "7"
    assert E.dataset_version_of(ws, tmp_path / "other.yaml", fingerprint) == "sha-" + fingerprint[:12]


# ----------------------------------------------------------------------------- issue 17: operating point, speed
def _one_hit_per_target(n_images: int, confs: dict[int, float], false_conf: float = 0.3) -> M.ModelEvaluation:
    """Every image holds one instance of each class, found by one correct prediction of the given confidence,
    plus one false call of class 0 at ``false_conf``."""
    tp, conf, cls, img, tcls, timg = [], [], [], [], [], []
    for i in range(n_images):
        for c, value in confs.items():
            tp.append([True] * 10), conf.append(value), cls.append(c), img.append(i)
            tcls.append(c), timg.append(i)
        tp.append([False] * 10), conf.append(false_conf), cls.append(0), img.append(i)
    ev = M.ModelEvaluation(Path("m.pt"), "0" * 64, NAMES, np.array(tp), np.array(conf), np.array(cls),
                           np.array(img), np.array(tcls), np.array(timg), n_images)
    ev.metrics = M.detection_metrics(ev.tp, ev.conf, ev.pred_cls, ev.target_cls, NAMES)
    return ev


def test_recall_and_false_calls_at_the_operating_conf():
    ev = _one_hit_per_target(20, {0: 0.9, 1: 0.2, 2: 0.5})
    weights = M.resample_weights(20, 200, seed=0)
    op = M.operating_point(ev, 0.25, weights)
    assert op["per_class"]["a"]["recall"] == 1.0 and op["per_class"]["b"]["recall"] == 0.0
    assert op["per_class"]["c"]["recall"] == 1.0 and op["per_class"]["a"]["instances"] == 20
    assert op["per_class"]["a"]["false_calls_per_image"] == 1.0 and op["per_class"]["b"]["false_calls_per_image"] == 0
    assert op["false_calls_per_image"] == 1.0
    # at 0.1 class b's predictions count; at 0.95 nothing does (no false call either)
    assert M.operating_point(ev, 0.1, weights)["per_class"]["b"]["recall"] == 1.0
    high = M.operating_point(ev, 0.95, weights)
    assert high["per_class"]["a"]["recall"] == 0.0 and high["false_calls_per_image"] == 0.0


def test_a_class_that_escapes_refuses_a_candidate_with_higher_map():
    """AP ranks predictions, recall at the line's confidence counts what passes it: a candidate can rise
    on mAP while one class's defects fall below the threshold."""
    production = _one_hit_per_target(60, {0: 0.6, 1: 0.6, 2: 0.6}, false_conf=0.95)  # a's false calls rank first
    candidate = _one_hit_per_target(60, {0: 0.9, 1: 0.1, 2: 0.9})  # perfect ranking, class b below 0.25
    weights = M.resample_weights(60, 200)
    drops = M.recall_drops(production, candidate, 0.25, weights)
    assert drops["b"] == {"before": 1.0, "after": 0.0, "drop": 1.0, "ci95": [1.0, 1.0]}
    assert drops["a"]["drop"] == 0.0 and drops["c"]["drop"] == 0.0
    rules = PromotionRules(require_significance=False)
    prod_entry = entry("prod.pt", production.metrics["map50_95"], [0.5, 0.5, 0.5])
    cand_entry = {**entry("cand.pt", candidate.metrics["map50_95"], [0.5, 0.5, 0.5]), "recall_drop": drops}
    assert cand_entry["map50_95"] > prod_entry["map50_95"]
    verdict = judge_candidate(prod_entry, cand_entry, rules, (0.1, 0.2))
    assert not verdict.passes
    assert any(r.startswith("b recall at confidence 0.25 fell") for r in verdict.reasons), verdict.reasons
    assert judge_candidate(prod_entry, cand_entry, PromotionRules(require_significance=False, max_recall_drop=1.0),
                           (0.1, 0.2)).passes


def test_speed_rule_same_architecture_and_size_is_never_refused_else_medians_with_spread():
    rules = PromotionRules()
    arch = {"name": "yolov8n", "params": 3006818, "signature": "abc"}
    prod = {**entry("prod.pt", 0.4, [0.5] * 3, ms=10.0), "imgsz": 640, "architecture": arch,
            "speed_rounds_ms": [9.0, 10.0, 30.0]}
    same = {**entry("c.pt", 0.45, [0.5] * 3, ms=40.0), "imgsz": 640, "architecture": arch,
            "speed_rounds_ms": [35.0, 40.0, 90.0]}
    failure, reason = rules_speed(prod, same, rules)
    assert failure is None and "same architecture as production" in reason and "spread 35.0-90.0 vs 9.0-30.0" in reason
    bigger = {**same, "architecture": {"name": "yolov8s", "params": 11e6, "signature": "def"}}
    failure, _ = rules_speed(prod, bigger, rules)
    assert "4.00x as slow as production" in failure and "median of 3 interleaved rounds" in failure
    other_size = {**same, "imgsz": 1280}
    assert rules_speed(prod, other_size, rules)[0] is not None


def rules_speed(prod, cand, rules):
    from toolkit.promotion.decision import speed_rule

    return speed_rule(prod, cand, rules)

"""Imports never lose data nor read outside the source: links, a killed import, the manifest as the
truth of training and evaluation, a full disk. Real processes, real SIGKILL, a real full file system."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataset_preparer as dp
import setup_training
from toolkit.model import evaluation
from toolkit.data.dataset.manifest import load_manifest
from toolkit.data.dataset.store import recover_staging, settle_dataset
from toolkit.data.labels.source import QUOTE_LIMIT
from toolkit.core.layout import SPLITS, Workspace
from toolkit.data.synthetic import NEU_CLASSES, write_batch

REPO = Path(__file__).resolve().parent.parent


def make_workspace(root: Path) -> Workspace:
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    return Workspace.at(root)


def visible_files(ws: Workspace) -> set[str]:
    """What lies in the split folders (relative to training/datasets/)."""
    return {p.relative_to(ws.datasets).as_posix() for s in SPLITS for d in (ws.images_dir(s), ws.labels_dir(s))
            if d.is_dir() for p in d.iterdir()}


def listed_files(ws: Workspace) -> set[str]:
    manifest = load_manifest(ws) or {"images": []}
    return {e[k] for e in manifest["images"] for k in ("file", "label")}


def preparer_cmd(ws: Workspace, source: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "dataset_preparer.py"), "--root", str(ws.root), "--source", str(source),
            "--json", "-q", *extra]


# --------------------------------------------------------------------------- links and quoting

def test_links_out_of_the_source_are_reported_and_left_out(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    src = write_batch(tmp_path / "batch", 4, size=64, seed=1).root
    outside = write_batch(tmp_path / "elsewhere", 1, size=64, seed=2, prefix="far")
    secret = tmp_path / "secret.txt"  # stands for /etc/passwd: 25 lines that are no labels
    secret.write_text("".join(f"user{i}:x:{1000 + i}:{1000 + i}:SECRET-LINE-{i}:/home/u{i}:/bin/sh\n" for i in range(25)))
    shutil.copyfile(src / "images" / "syn_1_00000.jpg", src / "images" / "passwd_victim.jpg")
    (src / "labels" / "passwd_victim.txt").symlink_to(secret)
    (src / "images" / "far_away.jpg").symlink_to(outside.images[0].path)
    (src / "linked_dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "images" / "inside_link.jpg").symlink_to(src / "images" / "syn_1_00001.jpg")  # stays inside: read

    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, workers=2, max_bad_fraction=0.9))
    reasons = {Path(r["path"]).name: r["reason"] for r in result.rejected}
    assert "outside the source" in reasons["passwd_victim.txt"] and "not followed" in reasons["passwd_victim.txt"]
    assert "outside the source" in reasons["far_away.jpg"]
    assert "outside the source" in reasons["linked_dir"]
    assert "link out of the source" in reasons["passwd_victim.jpg"]  # not taken for a background image
    sources = {Path(e["source"]).name for e in load_manifest(ws)["images"]}
    assert sources.isdisjoint({"passwd_victim.jpg", "far_away.jpg"}) and not any("far_" in s for s in sources)
    assert "inside_link.jpg" in sources and result.added == 5  # a link that stays inside the source is read
    for report in (result.report, result.report.with_suffix(".md")):
        assert "SECRET-LINE" not in report.read_text()


def test_reports_quote_only_a_short_prefix_of_a_bad_line(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    src = write_batch(tmp_path / "batch", 3, size=64, seed=3).root
    long_line = "7 " + "Z" * 5000
    (src / "labels" / "syn_3_00000.txt").write_text("\n".join([long_line] * 40) + "\n")
    result = dp.run(dp.PrepareConfig(root=ws.root, source=src, workers=2, max_bad_fraction=0.9))
    about = [r["reason"] for r in result.rejected if Path(r["path"]).name == "syn_3_00000.txt"]
    assert 1 <= len(about) <= 6, about  # 40 bad lines: a few shown, the rest counted
    assert all("Z" * (QUOTE_LIMIT + 1) not in r and len(r) < QUOTE_LIMIT + 200 for r in about)
    assert any("more bad line" in r for r in about)
    assert "Z" * (QUOTE_LIMIT + 1) not in result.report.with_suffix(".md").read_text()


# --------------------------------------------------------------------------- killed import

def test_killed_import_leaves_nothing_visible_and_the_next_run_cleans_up(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    first = dp.run(dp.PrepareConfig(root=ws.root, source=write_batch(tmp_path / "a", 20, size=64, seed=1).root))
    assert first.added == 20
    manifest_before = ws.manifest.read_text()
    visible_before = visible_files(ws)
    test_images_before = [str(p) for p in evaluation.load_split(ws.dataset_yaml, "test").images]
    big = write_batch(tmp_path / "b", 600, size=160, seed=2, prefix="b").root

    staged = ws.dataset_staging
    proc = subprocess.Popen(preparer_cmd(ws, big, "--workers", "1"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 120
        copying = False
        while time.monotonic() < end and proc.poll() is None and not copying:
            copying = any(p.is_file() for p in staged.glob("*/images/*/*"))
        assert copying and proc.poll() is None, "the import was not caught copying"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Nothing visible: no new manifest, no new file in the split folders, the evaluator reads the same images.
    assert ws.manifest.read_text() == manifest_before
    assert visible_files(ws) == visible_before == listed_files(ws)
    assert [str(p) for p in evaluation.load_split(ws.dataset_yaml, "test").images] == test_images_before
    assert any(staged.rglob("*.jpg"))  # the killed run's copies are only in its staging folder
    # The next writer removes the stale staging; the rerun imports the whole batch; nothing set aside.
    rerun = subprocess.run(preparer_cmd(ws, big), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["added"] == 600
    assert not staged.exists() and not (ws.datasets / "unmanaged").exists()
    assert visible_files(ws) == listed_files(ws) and len(load_manifest(ws)["images"]) == 620


def test_staging_committed_before_a_kill_is_finished_uncommitted_is_removed(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    dp.run(dp.PrepareConfig(root=ws.root, source=write_batch(tmp_path / "a", 6, size=64, seed=1).root))
    manifest = load_manifest(ws)
    committed = manifest["images"][0]
    # As a kill between the commit and the moves leaves it: listed, still staged.
    stage = ws.dataset_staging / "20260101-000000-1"
    for rel in (committed["file"], committed["label"]):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(ws.datasets / rel, stage / rel)
    (stage / "images" / "train" / "uncommitted-0123abcd.jpg").write_bytes(b"\xff\xd8 half a copy")
    assert visible_files(ws) != listed_files(ws)
    notes = settle_dataset(ws)
    assert visible_files(ws) == listed_files(ws) and not ws.dataset_staging.exists()
    assert any("finished" in n for n in notes) and any("undone" in n for n in notes)
    assert recover_staging(ws, manifest) == []


def test_training_and_evaluation_read_the_images_the_manifest_lists(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    dp.run(dp.PrepareConfig(root=ws.root, source=write_batch(tmp_path / "a", 30, size=64, seed=1).root))
    manifest = load_manifest(ws)
    stray = ws.images_dir("test") / "not_in_the_manifest.jpg"  # e.g. put there by hand
    shutil.copyfile(write_batch(tmp_path / "x", 1, size=64, seed=9, prefix="x").images[0].path, stray)
    (ws.labels_dir("test") / "not_in_the_manifest.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    settle_dataset(ws)
    for split in SPLITS:
        wanted = sorted(str(ws.datasets / e["file"]) for e in manifest["images"] if e["split"] == split)
        if split == "test" or wanted:
            assert sorted(str(p) for p in evaluation.load_split(ws.dataset_yaml, split).images) == wanted
    # ultralytics' own loader (what training uses) reads the same list from dataset.yaml
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from toolkit.core.offline import prepare_ultralytics

    prepare_ultralytics(ws.cache / "ultralytics")
    data = check_det_dataset(str(ws.dataset_yaml))
    train = YOLODataset(img_path=data["train"], imgsz=64, augment=False, data=data, cache=False)
    assert sorted(train.im_files) == sorted(str(ws.datasets / e["file"]) for e in manifest["images"]
                                            if e["split"] == "train")
    assert str(stray) not in train.im_files


# --------------------------------------------------------------------------- disk full

@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB file system (tmpfs); skipped where this user may not mount one."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'}); "
                    "the RLIMIT_FSIZE test covers a full disk mid-copy")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def assert_nothing_half_made(ws: Workspace, manifest_before: str | None) -> None:
    assert (ws.manifest.read_text() if ws.manifest.exists() else None) == manifest_before
    assert visible_files(ws) == listed_files(ws)
    assert not ws.dataset_staging.exists()
    assert not (ws.datasets / "unmanaged").exists()


def test_a_disk_too_small_for_the_import_stops_it_with_one_line(small_disk, tmp_path):
    ws = make_workspace(small_disk / "ws")
    big = write_batch(tmp_path / "big", 300, size=160, seed=4).root  # about 2 MB of images + 300 labels
    done = subprocess.run(preparer_cmd(ws, big), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "space" in line and str(ws.datasets) in line and "MB" in line, line
    assert_nothing_half_made(ws, None)


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource  # POSIX only, as the limit itself

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_in_the_middle_of_the_copies_removes_every_partial_file(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    dp.run(dp.PrepareConfig(root=ws.root, source=write_batch(tmp_path / "a", 8, size=64, seed=1).root))
    manifest_before = ws.manifest.read_text()
    batch = write_batch(tmp_path / "b", 12, size=64, seed=2, prefix="b").root
    big = write_batch(tmp_path / "huge", 1, size=640, seed=3, prefix="huge").images[0].path
    shutil.copyfile(big, batch / "images" / "huge_one.jpg")
    limit = 64 * 1024
    assert big.stat().st_size > limit > max(p.stat().st_size for p in (batch / "images").glob("b_*.jpg"))
    # The OS refuses any write past 64 KB in this process (EFBIG), as a full disk refuses (ENOSPC).
    done = subprocess.run(preparer_cmd(ws, batch), cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(limit))
    assert done.returncode == 1
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "no space left writing" in line and "huge_one" in line, line
    assert "needs" in line and "free" in line
    assert_nothing_half_made(ws, manifest_before)

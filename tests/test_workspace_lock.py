"""One writer per workspace: every writing stage takes the one OS lock (real processes, real SIGKILL)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataset_preparer
import model_comparator
import setup_training
import train_yolov8
import training_analyzer
import training_pipeline
from toolkit.core.layout import Workspace
from toolkit.core.lock import workspace_lock
from toolkit.data.synthetic import NEU_CLASSES, write_batch

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys; sys.path.insert(0, sys.argv[1]); from toolkit.core.layout import Workspace; "
        "from toolkit.core.lock import workspace_lock\n"
        "with workspace_lock(Workspace.at(sys.argv[2]), 'test holder'):\n"
        "    print('held', flush=True); sys.stdin.read()")


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _holder_pid(ws: Workspace) -> int | None:
    try:
        return json.loads(ws.lock_file.with_suffix(".lock.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None


@pytest.fixture
def held_workspace(tmp_path):
    """A workspace whose lock another (real) process holds; yields (root, holder pid)."""
    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(REPO), str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield root, holder.pid
    finally:
        holder.kill()
        holder.wait(10)


def test_lock_is_reentrant_within_a_process_only(tmp_path):
    ws = Workspace.at(tmp_path)
    with workspace_lock(ws, "outer"):
        with workspace_lock(ws, "inner"):  # the pipeline calling a stage in-process
            pass
        assert _holder_pid(ws) is not None
        other = subprocess.run([sys.executable, "-c", HOLD, str(REPO), str(tmp_path)], input="", text=True,
                               capture_output=True, timeout=60)
        assert other.returncode == 1 and "busy: outer (pid" in other.stderr
    with workspace_lock(ws):  # released when the outer block ends
        pass


STAGES = {
    "setup": lambda root, src: setup_training.main(["--root", str(root), "--classes", ",".join(NEU_CLASSES)]),
    "prepare": lambda root, src: dataset_preparer.main(["--root", str(root), "--source", str(src)]),
    "prepare --check": lambda root, src: dataset_preparer.main(["--root", str(root), "--source", str(src), "--check"]),
    "train": lambda root, src: train_yolov8.main(["--root", str(root), "--epochs", "1", "--imgsz", "64"]),
    "compare": lambda root, src: model_comparator.main(["--root", str(root), "--candidates", str(src / "x.pt")]),
    "analyze --export": lambda root, src: training_analyzer.main(["--root", str(root), "--export", "5"]),
    "analyze --scan": lambda root, src: training_analyzer.main(["--root", str(root), "--scan", str(src / "images")]),
    "pipeline": lambda root, src: training_pipeline.main(["--root", str(root), "--source", str(src)]),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_writing_stage_refuses_while_another_process_holds_the_lock(stage, held_workspace, tmp_path, capsys):
    root, pid = held_workspace
    src = write_batch(tmp_path / "batch", 3, size=48, seed=3).root
    logs = Workspace.at(root).logs  # an unattended pipeline logs its refusal there
    before = sorted(str(p) for p in root.rglob("*") if logs not in p.parents)
    assert STAGES[stage](root, src) == 1
    err = capsys.readouterr().err.strip()
    assert f"busy: test holder (pid {pid}" in err and len(err.splitlines()) == 1, err
    assert sorted(str(p) for p in root.rglob("*") if logs not in p.parents) == before  # nothing written


def test_analyze_without_export_or_scan_only_reads_and_does_not_wait(held_workspace, capsys):
    root, _ = held_workspace
    write_batch(root / "scratch_batch", 3, size=48, seed=4)
    code = training_analyzer.main(["--root", str(root)])
    assert "busy" not in capsys.readouterr().err
    assert code in (0, 1)  # no memory bank here: a plain read, refused or not for that reason only


def _preparer(root: Path, source: Path) -> list[str]:
    return [sys.executable, str(REPO / "dataset_preparer.py"), "--root", str(root), "--source", str(source), "--json"]


def test_two_preparers_at_once_one_proceeds_the_other_refuses_and_no_batch_is_lost(tmp_path):
    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    ws = Workspace.at(root)
    a = write_batch(tmp_path / "a", 300, size=64, seed=1, prefix="a")
    b = write_batch(tmp_path / "b", 20, size=64, seed=2, prefix="b")
    # The second preparer is started first and waits, imported, for a word: it then tries at once.
    waiting = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                "import dataset_preparer; sys.stdin.readline(); "
                                "raise SystemExit(dataset_preparer.main(sys.argv[2:]))",
                                str(REPO), *_preparer(root, b.root)[2:]],
                               cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(_preparer(root, a.root), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _holder_pid(ws) == first.pid or first.poll() is not None, 120)
        assert first.poll() is None, "the first preparer ended before the second could try"
        out_b, err_b = waiting.communicate("go\n", timeout=120)
        out_a, err_a = first.communicate(timeout=300)
    finally:
        for p in (waiting, first):
            if p.poll() is None:
                p.kill()
    assert waiting.returncode == 1, err_b
    assert f"busy: prepare (pid {first.pid}" in err_b and len(err_b.strip().splitlines()) == 1
    assert first.returncode == 0, err_a[-2000:]
    assert json.loads(out_a)["added"] == 300
    # the refused batch comes in on its own rerun; nothing was set aside, nothing lost
    again = subprocess.run(_preparer(root, b.root), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = json.loads(ws.manifest.read_text())
    assert len(manifest["images"]) == 320 and len(manifest["batches"]) == 2
    assert not (ws.datasets / "unmanaged").exists()
    listed = {e["file"] for e in manifest["images"]}
    on_disk = {p.relative_to(ws.datasets).as_posix() for s in ("train", "val", "test")
               for p in ws.images_dir(s).iterdir()}
    assert on_disk == listed


def test_a_preparer_during_a_pipeline_run_refuses(tmp_path):
    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=NEU_CLASSES))
    ws = Workspace.at(root)
    write_batch(ws.incoming / "batch_001", 30, size=64, seed=21)
    other = write_batch(tmp_path / "other", 5, size=64, seed=22, prefix="o")
    pipeline = subprocess.Popen([sys.executable, str(REPO / "training_pipeline.py"), "--root", str(root),
                                 "--epochs", "50", "--imgsz", "64", "--batch", "8", "--json"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: _holder_pid(ws) == pipeline.pid or pipeline.poll() is not None, 120)
        assert pipeline.poll() is None, "the pipeline ended before the preparer could try"
        refused = subprocess.run(_preparer(root, other.root), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1
        assert f"busy: pipeline run (pid {pipeline.pid}" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait(30)
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    # the OS released the dead pipeline's lock: the preparer proceeds now
    after = subprocess.run(_preparer(root, other.root), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert json.loads(after.stdout)["added"] == 5

"""What a newcomer meets first (issue 14): wrong folders, mistyped paths, pipes, plans - each gets one
clear line and leaves nothing behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import dataset_preparer
import model_comparator
import setup_training
import train_yolov8
import training_pipeline

REPO = Path(__file__).resolve().parent.parent


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def set_up(root: Path, capsys) -> None:
    setup_training.run(setup_training.SetupConfig(root=root, classes=("a", "b")))
    capsys.readouterr()  # setup's own log lines


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_pipeline_in_a_folder_that_is_no_workspace_says_what_to_do_and_leaves_nothing(tmp_path, capsys):
    assert training_pipeline.main(["--root", str(tmp_path)]) == 1
    line = one_error_line(capsys)
    assert "is not a training workspace" in line and "--demo" in line and "setup_training.py" in line
    assert "pass --classes" not in line  # the pipeline has no --classes flag
    assert files_under(tmp_path) == []  # no memory-bank/, training/logs, lock files or history
    # a nightly --if-new-data there has nothing to do: it says so, exits 0 and writes nothing either
    assert training_pipeline.main(["--root", str(tmp_path), "--if-new-data"]) == 0
    assert "SKIPPED" in capsys.readouterr().out and files_under(tmp_path) == []


def test_train_on_an_empty_folder_leaves_no_settings_fonts_or_lock(tmp_path, capsys):
    assert train_yolov8.main(["--root", str(tmp_path)]) == 1
    assert "no dataset file" in one_error_line(capsys)
    assert files_under(tmp_path) == []


def test_prepare_with_a_missing_source_stops_before_reading_anything(tmp_path, capsys, monkeypatch):
    set_up(tmp_path, capsys)
    before = files_under(tmp_path)
    walked = []  # a spy: the fingerprint walk (of the missing path's parent, "/") must not start
    monkeypatch.setattr(dataset_preparer, "batch_fingerprint", lambda path: walked.append(path) or "x")
    assert dataset_preparer.main(["--root", str(tmp_path), "--source", str(tmp_path / "no_such_batch")]) == 1
    assert "does not exist; check the --source path" in one_error_line(capsys)
    assert walked == [] and files_under(tmp_path) == before


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    set_up(tmp_path, capsys)
    assert model_comparator.main(["--root", str(tmp_path), "--candidates", "/etc/passwd"]) == 1
    line = one_error_line(capsys)
    assert "/etc/passwd: not a .pt checkpoint" in line and "ultralytics supports" not in line.lower()
    assert training_pipeline.main(["--root", str(tmp_path), "--candidate", "/etc/passwd"]) == 1
    assert "not a .pt checkpoint" in one_error_line(capsys)


def test_dry_run_states_its_plan_once(tmp_path, capsys):
    set_up(tmp_path, capsys)
    (tmp_path / "training" / "incoming" / "batch_1").mkdir()
    before = files_under(tmp_path)
    assert training_pipeline.main(["--root", str(tmp_path), "--dry-run", "--epochs", "3", "--imgsz", "96"]) == 0
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert both.count("import 1 new batch(es)") == 1, both
    assert "at 96 px, 3 epochs" in captured.out  # the pipeline's flags reach the plan too
    assert files_under(tmp_path) == before


def test_json_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "setup_training.py", "--root", str(tmp_path), "--classes", "a,b",
                             "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written (as with `| head` that ended)
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize("argv,words", [
    (["--epochs", "0"], "--epochs: 'training.epochs' must be 1 or more, got 0"),
    (["--device", "gpu"], "--device: 'training.device' must be '', cpu"),
])
def test_a_bad_flag_value_is_one_line_naming_flag_and_key(tmp_path, capsys, argv, words):
    set_up(tmp_path, capsys)
    assert train_yolov8.main(["--root", str(tmp_path), *argv]) == 1
    assert words in one_error_line(capsys)


def test_a_first_model_that_was_not_promoted_gets_a_next_hint(tmp_path):
    result = training_pipeline.PipelineResult(
        "kept", {"path": str(tmp_path / "yolov8_model.pt"), "version": None, "sha256": None}, {}, None,
        ("no production model yet, and best.pt is not good enough to be the first",))
    text = training_pipeline.describe(result)
    assert "Next: no production model yet" in text
    # no candidate scored: the hint is a complete command, not "--candidate <its weights/best.pt> --force" (issue 27)
    assert "<" not in text and "training.epochs" in text
    assert text.rstrip().endswith(f"training_pipeline.py --root {tmp_path.resolve()}")


def test_ultralytics_first_use_notice_stays_out_of_the_users_way(tmp_path):
    """Ultralytics' 'Creating new Ultralytics Settings ... yolo settings key=value' notice on the first
    use of a workspace is not for the toolkit's user (debug log only); its settings file is still made."""
    code = ("import logging, sys; sys.path.insert(0, sys.argv[1]); logging.basicConfig(level=logging.INFO);"
            "from toolkit.core.offline import prepare_ultralytics; prepare_ultralytics(sys.argv[2]);"
            "from ultralytics.utils import LOGGER; LOGGER.warning('after-import warning')")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path / "cfg")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Ultralytics Settings" not in done.stdout + done.stderr
    assert (tmp_path / "cfg" / "Ultralytics" / "settings.json").is_file()
    # ultralytics' own later messages still reach the user, on stderr (stdout is for --json)
    assert "after-import warning" in done.stderr and done.stdout == ""


def _batch_with_classes(folder: Path) -> Path:
    from toolkit.data.synthetic import write_batch

    write_batch(folder, 3, size=64, seed=41)  # images/, labels/ and classes.txt: enough to make a workspace
    return folder


@pytest.mark.parametrize("argv", [
    ["dataset_preparer.py", "--source", "{batch}"],
    ["dataset_preparer.py", "--incoming"],
    ["train_yolov8.py", "--epochs", "1"],
    ["model_comparator.py"],
    ["training_analyzer.py", "--scan", "{batch}/images"],
    ["training_pipeline.py", "--status"],
    ["training_pipeline.py", "--rollback"],
    ["training_pipeline.py"],
])
@pytest.mark.parametrize("typo", ["plant-typo", "existing-empty-folder"])
def test_a_mistyped_root_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, argv, typo):
    """Only setup_training.py (and the demo) make a workspace; every other script refuses the folder."""
    import importlib

    batch = _batch_with_classes(tmp_path / "batch")
    root = tmp_path / typo
    if typo.startswith("existing"):
        root.mkdir()
    module = importlib.import_module(argv[0][:-3])
    rest = [a.replace("{batch}", str(batch)) for a in argv[1:]]
    capsys.readouterr()
    assert module.main(["--root", str(root), *rest]) == 1
    line = one_error_line(capsys)
    assert str(root) in line and ("does not exist" in line or "is not a training workspace" in line), line
    assert "setup_training.py --root" in line
    assert files_under(tmp_path / "batch") == files_under(batch)
    if typo.startswith("existing"):
        assert files_under(root) == []
    else:
        assert not root.exists()


def test_setup_with_a_file_as_root_says_so_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("not a folder\n")
    assert setup_training.main(["--root", str(readme), "--classes", "a,b"]) == 1
    line = one_error_line(capsys)
    assert line.startswith("error: --root") and "is a file" in line and "NotADirectoryError" not in line
    assert readme.read_text() == "not a folder\n"

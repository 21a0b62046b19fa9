"""Every hint is a command that works (issue 18): the hints the scenarios print are collected and run.

Scenarios: setup, import, first model below the bar, training done, compare done, promoted, kept,
rollback, interrupted training. Each printed ``python <script> ...`` command is run as printed
(shlex-split, ``python`` = this interpreter) from an unrelated folder, and must do what its words
promise. training.yaml is set to 1 epoch at 64 px and to promote any different candidate, so the
hints that train or promote are cheap and deterministic.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import interrupt_training_at

import dataset_preparer
import setup_training
import train_yolov8
import training_analyzer
import training_pipeline
from toolkit.core.layout import (PYTHON_WORD, TOOLKIT_HOME, Workspace, inside_toolkit, is_workspace, python_word,
                                  setup_hint)
from toolkit.data.synthetic import NEU_CLASSES, write_batch

REPO = Path(__file__).resolve().parent.parent
_WORD = r'(?:"[^"]*"|[^\s;()"]+)'
_COMMAND = re.compile(rf"{PYTHON_WORD} {_WORD}(?: (?!\(){_WORD})*")   # python, or this interpreter's path
# cheap and deterministic: 1 epoch at 64 px; any different candidate passes the promotion rules
_SETTINGS = {"epochs": "1", "imgsz": "64", "batch": "8", "device": "cpu", "min_gain": "0.0",
             "require_significance": "false", "max_class_drop": "1.0", "speed_images": "0"}


# what a hint must never hold (issue 27): a made-up class list, a <placeholder>, an ellipsis
PLACEHOLDER = re.compile(r"a,b,c|<[^<>\n]*>|\.\.\.")


def hints(text: str) -> list[str]:
    """The commands a script's output offers (``Next:`` lines and hints inside errors), in order."""
    found = []
    for line in text.splitlines():
        found += [m.group(0) for m in _COMMAND.finditer(line)]
    return found


def run_hint(hint: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(hint)
    assert argv[0] in ("python", sys.executable) and Path(argv[1]).is_absolute() and argv[1].endswith(".py"), hint
    if "--demo" not in argv:
        assert "--root" in argv, f"a hint without --root: {hint}"
    done = subprocess.run([sys.executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{hint}\n{done.stdout}\n{done.stderr}"
    return done


def tune(root: Path) -> None:
    path = root / "training" / "configs" / "training.yaml"
    text = path.read_text()
    for key, value in _SETTINGS.items():
        text, n = re.subn(rf"^(  {key}:).*$", rf"\g<1> {value}", text, count=1, flags=re.M)
        assert n == 1, key
    path.write_text(text)


def last_history(root: Path) -> dict:
    return json.loads((root / "memory-bank" / "training_history.jsonl").read_text().splitlines()[-1])


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    """The scenarios print from one folder, the hints run from another: neither is the toolkit's."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    other = tmp_path / "other_cwd"
    other.mkdir()
    return other


@pytest.mark.slow  # nine hints run as printed, three of them train: about 40 CPU-s
def test_each_hint_of_the_loop_runs_as_printed(tmp_path, capsys, elsewhere, ultralytics_config_dir):
    root = tmp_path / "plant"
    # setup: Next names both ways on, with --root
    assert setup_training.main(["--root", str(root), "--classes", ",".join(NEU_CLASSES)]) == 0
    setup_hints = hints(capsys.readouterr().out)
    assert [shlex.split(h)[1].rsplit("/", 1)[-1] for h in setup_hints] == ["dataset_preparer.py", "training_pipeline.py"]
    tune(root)
    write_batch(root / "training" / "incoming" / "batch_001", 24, size=64, seed=31)
    imported = run_hint(setup_hints[0], elsewhere)  # import: its own Next is the pipeline
    assert json.loads((root / "training" / "datasets" / "manifest.json").read_text())["version"] == 1
    assert not (elsewhere / "training").exists()  # nothing written where the hint was run
    # the first run's estimate comes from the built-in table here: the dry run that times a pilot is offered first
    dry_run, train_all = hints(imported.stdout)
    assert train_all == setup_hints[1] and shlex.split(dry_run)[1:] == [*shlex.split(train_all)[1:], "--dry-run"]

    # first model below the bar: the hint promotes *that* candidate, it does not train again
    first = run_hint(train_all, elsewhere)
    assert "NO MODEL PROMOTED - the first candidate scored mAP50-95" in first.stdout
    force, again = hints(first.stdout)
    candidate = shlex.split(force)[shlex.split(force).index("--candidate") + 1]
    assert "--force" in force and Path(candidate).is_file()
    runs_before = sorted((root / "training" / "runs").iterdir())
    promoted = run_hint(force, elsewhere)
    assert "Decision: PROMOTED" in promoted.stdout and sorted((root / "training" / "runs").iterdir()) == runs_before
    [status] = hints(promoted.stdout)
    assert "version 1.0" in run_hint(status, elsewhere).stdout

    # kept: the same file again is no gain; the hint shows where things stand
    kept = run_hint(force, elsewhere)
    assert "Decision: KEPT" in kept.stdout
    [status] = hints(kept.stdout)
    assert "Versions:" in run_hint(status, elsewhere).stdout

    # "train longer, then" the pipeline: it trains (fine-tunes 1.0) and, by the tuned rules, promotes 1.1
    capsys.readouterr()
    second = run_hint(again, elsewhere)
    assert "Decision: PROMOTED" in second.stdout and "version 1.1" in second.stdout
    # one decision line: the result's, not a log line saying it again (issue 27)
    assert (second.stdout + second.stderr).lower().count("decision:") == 1, second.stdout + second.stderr
    status, back = hints(second.stdout)
    assert shlex.split(back)[-2:] == ["--rollback", "1.0"]
    rolled = run_hint(back, elsewhere)  # rollback: its hint undoes it
    assert "Production is now version 1.0 (was version 1.1): rolled back" in rolled.stdout
    [undo] = hints(rolled.stdout)
    assert "Production is now version 1.1 (was version 1.0): rolled forward" in run_hint(undo, elsewhere).stdout

    # training done: compare (changes nothing), then promote through the pipeline
    assert train_yolov8.main(["--root", str(root), "--from", "production"]) == 0
    compare, promote = hints(capsys.readouterr().out)
    assert "model_comparator.py" in compare and "--candidates" in compare
    best = shlex.split(promote)[-1]
    assert shlex.split(promote)[-2:] == ["--candidate", best] and Path(best).is_file()
    compared = run_hint(compare, elsewhere)
    # the candidate is named by its run folder, not as one more "best.pt" (issue 27)
    assert f"PROMOTE {Path(best).parent.parent.name}/best.pt" in compared.stdout
    [make_production] = hints(compared.stdout)
    assert make_production == promote
    assert "version 1.2" in run_hint(make_production, elsewhere).stdout


def _interrupt_after_first_epoch(monkeypatch) -> None:
    """Ctrl-C as the user gives it: a KeyboardInterrupt in the training loop, after epoch 1 was saved."""
    interrupt_training_at(monkeypatch, "on_model_save")


@pytest.mark.slow  # two trainings (interrupted, then continued as the hint says): about 16 s; the
# interrupted-resume contract itself stays in the default run (test_train_yolov8)
def test_an_interrupted_pipeline_says_once_what_happens_next_and_its_hint_continues_the_training(
        tmp_path, capsys, elsewhere, monkeypatch, ultralytics_config_dir):
    root = tmp_path / "plant"
    assert setup_training.main(["--root", str(root), "--classes", ",".join(NEU_CLASSES), "-q"]) == 0
    tune(root)
    (root / "training" / "configs" / "training.yaml").write_text(
        re.sub(r"^  epochs: 1$", "  epochs: 2", (root / "training" / "configs" / "training.yaml").read_text(),
               flags=re.M))
    write_batch(root / "training" / "incoming" / "batch_001", 24, size=64, seed=32)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        assert training_pipeline.main(["--root", str(root)]) == 130
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if re.search(r"interrupted (by|after)|continue with|rerun to", line)]
    assert len(said) == 1, err  # one message, not a "continue with" warning and a "rerun to continue" error
    assert "nothing was promoted" in said[0] and "starts its training over" in said[0]
    [resume] = hints(said[0])
    assert "train_yolov8.py" in resume and "--resume" in resume
    record = last_history(root)
    assert record["decision"] == "interrupted" and "KeyboardInterrupt" not in json.dumps(record)
    assert training_pipeline.main(["--root", str(root), "--status"]) == 0
    status = capsys.readouterr().out
    assert "KeyboardInterrupt" not in status
    # a run with no production model says so, not "kept production -" (issue 27)
    assert "interrupted  no production yet  run " in status and "production -" not in status, status

    resumed = run_hint(resume, elsewhere)  # continues epoch 2 of the same run
    assert "epochs:  2/2 (completed)" in resumed.stdout, resumed.stdout
    compare, promote = hints(resumed.stdout)
    assert shlex.split(resume)[-1] in promote
    first = run_hint(promote, elsewhere)  # no production yet: below the bar, and it says how to force it
    [force, _] = hints(first.stdout)
    assert "Decision: PROMOTED" in run_hint(force, elsewhere).stdout


def test_a_nightly_run_that_finds_the_workspace_busy_exits_0(tmp_path, capsys):
    root = tmp_path / "plant"
    assert setup_training.main(["--root", str(root), "--classes", ",".join(NEU_CLASSES), "-q"]) == 0
    write_batch(root / "training" / "incoming" / "batch_001", 4, size=64, seed=33)
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from toolkit.core.layout import Workspace;"
            "from toolkit.core.lock import workspace_lock\n"
            "with workspace_lock(Workspace.at(sys.argv[2]), 'test'):\n"
            "    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert training_pipeline.main(["--root", str(root), "--if-new-data", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["decision"] == "skipped" and "busy" in result["reasons"][0]
        assert training_pipeline.main(["--root", str(root)]) == 1  # a run by hand is told, with exit 1
        assert "is busy" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def root_of(hint: str) -> Path:
    argv = shlex.split(hint)
    return Path(argv[argv.index("--root") + 1])


def test_an_export_ends_with_a_next_line_whose_command_takes_the_labelled_images_in(
        tmp_path, capsys, elsewhere, tiny_model, ultralytics_config_dir):
    """Issue 27: ``--scan DIR --export 5`` says the step by hand (label, move into incoming/) and ends
    with a complete command; done as said, that command imports the five images and trains."""
    root = tmp_path / "plant"
    root.mkdir()
    shutil.copyfile(tiny_model, root / "yolov8_model.pt")
    assert setup_training.main(["--root", str(root), "-q"]) == 0  # the classes come from the model
    tune(root)
    write_batch(root / "training" / "incoming" / "batch_001", 24, size=64, seed=35)
    assert dataset_preparer.main(["--root", str(root), "--incoming", "-q"]) == 0
    pool = write_batch(tmp_path / "unlabelled", 12, size=64, seed=36)
    capsys.readouterr()
    assert training_analyzer.main(["--root", str(root), "--scan", str(pool.root / "images"), "--export", "5",
                                   "--scan-conf", "0.001"]) == 0
    out = capsys.readouterr().out
    assert not PLACEHOLDER.search(out), out
    assert "dataset_preparer.py)" not in out  # the old "(import it with dataset_preparer.py)"
    last = out.strip().splitlines()[-1]
    assert last.startswith("Next: "), out
    [pipeline] = hints(last)
    assert "training_pipeline.py" in pipeline and root_of(pipeline) == root.resolve()
    # the step by hand, as the line before says: label the exported images (here with their true labels)
    # and move the folder into training/incoming/
    [export_dir] = list((root / "training" / "to_label").iterdir())
    assert str(export_dir) in out and str(root / "training" / "incoming") in out
    exported = sorted(p.name for p in (export_dir / "labels").glob("*.txt"))
    assert len(exported) == 5
    for name in exported:
        (export_dir / "labels" / name).write_text((pool.root / "labels" / name).read_text())
    shutil.move(str(export_dir), str(root / "training" / "incoming" / export_dir.name))
    done = run_hint(pipeline, elsewhere)
    assert "Decision:" in done.stdout
    manifest = json.loads((root / "training" / "datasets" / "manifest.json").read_text())
    assert manifest["version"] == 2 and len(manifest["images"]) == 24 + 5


def test_a_missing_workspace_hint_has_no_placeholder_and_never_sets_one_up_in_the_toolkit(
        tmp_path, capsys, elsewhere, tiny_model):
    """Issue 27: the hint was ``setup_training.py --root <the toolkit folder> --classes a,b,c``."""
    typo = tmp_path / "plnat"
    assert dataset_preparer.main(["--root", str(typo)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not PLACEHOLDER.search(err), err
    setup, prepare, demo = hints(err)
    assert "--demo" in demo and root_of(setup) == root_of(prepare) == typo.resolve()
    assert not typo.exists()  # nothing written by the refusal
    # the step by hand the words ask for, then the commands as printed
    model_at = Path(re.search(r"copy your production model to (\S+)", err).group(1).rstrip(","))
    assert model_at == typo.resolve() / "yolov8_model.pt"
    model_at.parent.mkdir(parents=True)
    shutil.copyfile(tiny_model, model_at)
    run_hint(setup, elsewhere)
    assert (typo / "training" / "configs" / "dataset.yaml").is_file()
    run_hint(prepare, elsewhere)

    # the default root is the toolkit's own folder: the hint names a folder beside it, never in it
    if is_workspace(Workspace.at(TOOLKIT_HOME)):
        text = setup_hint(TOOLKIT_HOME)  # a developer's checkout that holds a workspace: ask directly
    else:
        capsys.readouterr()
        assert dataset_preparer.main([]) == 1
        text = capsys.readouterr().err
    assert not PLACEHOLDER.search(text), text
    found = hints(text)
    assert len(found) == 3 and all(not inside_toolkit(root_of(h)) for h in found if "--demo" not in h), found
    assert "outside the toolkit's folder" in text


def test_a_rollback_and_its_undo_say_back_and_forward(tmp_path, capsys, elsewhere, tiny_model):
    """Issue 27: going forward to 1.1 again printed "rolled back"; each direction now says its own word,
    and the undo hint of each runs as printed."""
    import torch

    from toolkit.promotion.registry import Registry

    root = tmp_path / "plant"
    root.mkdir()
    shutil.copyfile(tiny_model, root / "yolov8_model.pt")
    assert setup_training.main(["--root", str(root), "-q"]) == 0
    newer = tmp_path / "newer.pt"  # the same weights saved again: another file, another version
    ckpt = torch.load(tiny_model, map_location="cpu", weights_only=False)
    ckpt["date"] = "2026-12-06T00:00:00"
    torch.save(ckpt, newer)
    registry = Registry.load(Workspace.at(root))
    registry.register_existing_production()
    assert registry.promote(newer, classes=list(NEU_CLASSES))["version"] == "1.1"
    capsys.readouterr()
    assert training_pipeline.main(["--root", str(root), "--rollback"]) == 0
    captured = capsys.readouterr()
    assert "Production is now version 1.0 (was version 1.1): rolled back" in captured.out
    assert "rolled back: version 1.0" in captured.err and "forward" not in captured.out + captured.err
    [forward] = hints(captured.out)
    assert shlex.split(forward)[-2:] == ["--rollback", "1.1"]
    done = run_hint(forward, elsewhere)
    assert "Production is now version 1.1 (was version 1.0): rolled forward" in done.stdout
    assert "rolled forward: version 1.1" in done.stderr and "rolled back" not in done.stdout + done.stderr
    [back] = hints(done.stdout)
    assert shlex.split(back)[-2:] == ["--rollback", "1.0"]


def test_python_in_a_hint_is_the_interpreter_running_now(tmp_path, monkeypatch):
    """``python`` only where that name on PATH starts this interpreter (an activated venv, under any of
    its names); else the interpreter's full path (no ``python`` at all, or another one first on PATH)."""
    real = Path(sys.executable).resolve()
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("python", "python3"):
        (venv / name).symlink_to(real)
    monkeypatch.setattr(sys, "executable", str(venv / "python3"))
    monkeypatch.setenv("PATH", str(venv))
    assert python_word() == "python"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))   # no python on PATH
    assert python_word() == str(venv / "python3")
    other = tmp_path / "other"
    other.mkdir()
    (other / "python").symlink_to(real)                    # the same binary, but not this environment
    monkeypatch.setenv("PATH", str(other))
    assert python_word() == str(venv / "python3")
    spaced = tmp_path / "Program Files" / "python3"
    spaced.parent.mkdir()
    spaced.symlink_to(real)
    monkeypatch.setattr(sys, "executable", str(spaced))
    hint = setup_hint(tmp_path / "nowhere")
    assert f'"{spaced}" ' in hint and shlex.split(hints(hint)[0])[0] == str(spaced)


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script stands in for the other python")
def test_a_hint_works_as_printed_when_python_on_path_is_another_one(tmp_path):
    """Another ``python`` first on PATH (here one that fails): the hints a script prints start this
    interpreter, and run as printed."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/bin/sh\necho 'not the toolkit python' >&2\nexit 3\n")
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run([sys.executable, str(REPO / "train_yolov8.py"), "--root", str(tmp_path / "nowhere")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    printed = hints(done.stdout + done.stderr)
    assert printed and all(shlex.split(h)[0] == sys.executable for h in printed), done.stderr
    for hint in printed:   # as printed, with that PATH: the interpreter starts and reads the script
        argv = shlex.split(hint)
        ran = subprocess.run([*argv[:2], "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 0 and "--root" in ran.stdout, hint

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
import subprocess
import sys
from pathlib import Path

import pytest

import setup_training
import train_yolov8
import training_pipeline
from toolkit.data.synthetic import NEU_CLASSES, write_batch

REPO = Path(__file__).resolve().parent.parent
_WORD = r'(?:"[^"]*"|[^\s;()"]+)'
_COMMAND = re.compile(rf"python {_WORD}(?: (?!\(){_WORD})*")
# cheap and deterministic: 1 epoch at 64 px; any different candidate passes the promotion rules
_SETTINGS = {"epochs": "1", "imgsz": "64", "batch": "8", "device": "cpu", "min_gain": "0.0",
             "require_significance": "false", "max_class_drop": "1.0", "speed_images": "0"}


def hints(text: str) -> list[str]:
    """The commands a script's output offers (``Next:`` lines and hints inside errors), in order."""
    found = []
    for line in text.splitlines():
        found += [m.group(0) for m in _COMMAND.finditer(line)]
    return found


def run_hint(hint: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(hint)
    assert argv[0] == "python" and Path(argv[1]).is_absolute() and argv[1].endswith(".py"), hint
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
    status, back = hints(second.stdout)
    assert shlex.split(back)[-2:] == ["--rollback", "1.0"]
    rolled = run_hint(back, elsewhere)  # rollback: its hint undoes it
    assert "Production is now version 1.0 (was version 1.1)" in rolled.stdout
    [undo] = hints(rolled.stdout)
    assert "Production is now version 1.1" in run_hint(undo, elsewhere).stdout

    # training done: compare (changes nothing), then promote through the pipeline
    assert train_yolov8.main(["--root", str(root), "--from", "production"]) == 0
    compare, promote = hints(capsys.readouterr().out)
    assert "model_comparator.py" in compare and "--candidates" in compare
    best = shlex.split(promote)[-1]
    assert shlex.split(promote)[-2:] == ["--candidate", best] and Path(best).is_file()
    compared = run_hint(compare, elsewhere)
    assert "PROMOTE best.pt" in compared.stdout
    [make_production] = hints(compared.stdout)
    assert make_production == promote
    assert "version 1.2" in run_hint(make_production, elsewhere).stdout


def _interrupt_after_first_epoch(monkeypatch) -> None:
    """Ctrl-C as the user gives it: a KeyboardInterrupt in the training loop, after epoch 1 was saved."""
    from toolkit.model import training as tr
    attach = tr.EpochMonitor.attach

    def attach_and_interrupt(self, model):
        attach(self, model)

        def on_model_save(trainer):
            raise KeyboardInterrupt

        model.add_callback("on_model_save", on_model_save)

    monkeypatch.setattr(tr.EpochMonitor, "attach", attach_and_interrupt)


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
    assert "KeyboardInterrupt" not in capsys.readouterr().out

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

"""Setup stage and the foundation it stands on: settings precedence, CLI contract, idempotence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import setup_training
from toolkit.core.config import DEFAULTS, parse_set_pairs, resolve_settings
from toolkit.core.template import TRAINING_YAML_TEMPLATE
from toolkit.core.errors import ConfigError, UserError
from toolkit.core.files import sha256_file
from toolkit.core.layout import Workspace

REPO = Path(__file__).resolve().parent.parent
SETUP_KEYS = {"root", "created", "dataset_yaml", "training_yaml", "base_model"}


# --- settings -------------------------------------------------------------------------------

def test_template_is_the_defaults(tmp_path):
    """What setup writes for the user is what every stage uses when the user changes nothing."""
    from toolkit.core.config import Settings
    from toolkit.promotion.decision import PromotionRules
    from toolkit.model.inference import EvalSettings

    assert DEFAULTS == yaml.safe_load(TRAINING_YAML_TEMPLATE)
    assert DEFAULTS["training"]["epochs"] == 100
    assert DEFAULTS["promotion"]["metric"] == "map50_95"
    setup_training.run(setup_training.SetupConfig(root=tmp_path, classes=("a",)))
    written = Settings.load(Workspace.at(tmp_path).training_yaml)
    assert written.as_dict() == Settings.load(None).as_dict()  # the file a user sees == no file at all
    # the typed sections restate nothing: their defaults are the template's
    assert PromotionRules() == PromotionRules.from_settings(written.section("promotion"))
    assert EvalSettings() == EvalSettings.from_settings(written.section("evaluation"))
    # and an edit of the written text is what a stage then uses
    ws = Workspace.at(tmp_path)
    ws.training_yaml.write_text(ws.training_yaml.read_text().replace("min_gain: 0.005", "min_gain: 0.02"))
    assert PromotionRules.from_settings(Settings.load(ws.training_yaml).section("promotion")).min_gain == 0.02


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "training.yaml"
    cfg.write_text("training:\n  epochs: 30\n  imgsz: 320\n  augment:\n    flipud: 0.5\n")
    settings = resolve_settings(cfg, {"training": {"epochs": 5, "imgsz": None}})
    assert settings["training"]["epochs"] == 5          # flag beats yaml
    assert settings["training"]["imgsz"] == 320         # yaml beats default; None flag = not given
    assert settings["training"]["batch"] == DEFAULTS["training"]["batch"]  # default kept
    assert settings["training"]["augment"]["flipud"] == 0.5 != DEFAULTS["training"]["augment"]["flipud"]
    assert settings["training"]["augment"]["fliplr"] == DEFAULTS["training"]["augment"]["fliplr"]


def test_unknown_key_is_an_error_naming_it(tmp_path):
    cfg = tmp_path / "training.yaml"
    cfg.write_text("training:\n  epoch: 30\n")
    with pytest.raises(ConfigError, match=r"unknown key 'training\.epoch'"):
        resolve_settings(cfg)
    cfg.write_text("trainig:\n  epochs: 30\n")
    with pytest.raises(ConfigError, match="unknown key 'trainig'"):
        resolve_settings(cfg)


def test_wrong_type_and_broken_yaml_are_errors(tmp_path):
    cfg = tmp_path / "training.yaml"
    cfg.write_text("training:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="training.epochs"):
        resolve_settings(cfg)
    cfg.write_text("training:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_settings(cfg)


def test_set_pairs_parse_values():
    assert parse_set_pairs(["lr0=0.005", "cos_lr=true", "name=x"]) == {"lr0": 0.005, "cos_lr": True, "name": "x"}
    with pytest.raises(ConfigError):
        parse_set_pairs(["novalue"])


# --- setup ----------------------------------------------------------------------------------

def test_setup_json_creates_tree_and_keeps_user_edits(tmp_path, capsys):
    root = tmp_path / "ws"
    assert setup_training.main(["--root", str(root), "--classes", "a,b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert SETUP_KEYS <= set(out)
    ws = Workspace.at(root)
    for folder in ws.tree():
        assert folder.is_dir(), folder
    assert yaml.safe_load(ws.dataset_yaml.read_text())["names"] == {0: "a", 1: "b"}
    assert out["base_model"] == "yolov8n.yaml"

    edited = ws.training_yaml.read_text().replace("epochs: 100", "epochs: 7")
    ws.training_yaml.write_text(edited)
    assert setup_training.main(["--root", str(root), "--classes", "a,b", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["created"] == []
    assert ws.training_yaml.read_text() == edited

    assert setup_training.main(["--root", str(root), "--classes", "a,b", "--force", "--json"]) == 0
    capsys.readouterr()
    assert "epochs: 100" in ws.training_yaml.read_text()
    assert (ws.configs / "training.yaml.bak").read_text() == edited


def test_setup_recreates_what_is_missing(tmp_path):
    root = tmp_path / "ws"
    setup_training.run(setup_training.SetupConfig(root=root, classes=("a",)))
    ws = Workspace.at(root)
    ws.reports.rmdir()
    result = setup_training.run(setup_training.SetupConfig(root=root, classes=("a",)))
    assert result.created == (str(ws.reports),)


def test_setup_without_classes_or_model_says_what_to_do(tmp_path, capsys):
    assert setup_training.main(["--root", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no classes known: put your production model at ")
    assert "with --classes" in err and "a,b,c" not in err  # no made-up class list (issue 27)
    assert len(err.splitlines()) == 1


def test_bad_arch_and_usage_errors(tmp_path, capsys):
    assert setup_training.main(["--root", str(tmp_path), "--classes", "a", "--arch", "resnet50"]) == 1
    assert "yolov8n/s/m/l/x" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        setup_training.main(["--no-such-flag"])
    assert exc.value.code == 2
    assert setup_training.normalize_arch("s") == "yolov8s.yaml"


def test_setup_takes_classes_from_production_model(tmp_path, shared_models):
    import shutil

    root = tmp_path / "ws"
    root.mkdir()
    shutil.copyfile(shared_models / "neu_v1.0_half.pt", root / "yolov8_model.pt")
    result = setup_training.run(setup_training.SetupConfig(root=root))
    assert result.classes == ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    assert not result.from_scratch
    assert sha256_file(result.base_model) == sha256_file(shared_models / "neu_v1.0_half.pt")
    assert Path(result.base_model).read_bytes() == (shared_models / "neu_v1.0_half.pt").read_bytes()
    with pytest.raises(UserError, match=r"differ from the production model's classes \['crazing'"):
        setup_training.run(setup_training.SetupConfig(root=root, classes=("a", "b")))


HEAVY = ("torch", "ultralytics", "pandas", "cv2", "matplotlib", "sqlalchemy")


def test_every_script_help_imports_nothing_heavy():
    """--help stays instant: no script imports torch, ultralytics, pandas ... to print its help (each of
    them alone takes seconds). How long --help takes is measured by benchmarks/bench_help.py, not here."""
    scripts = sorted(p.name for p in REPO.glob("*.py"))
    assert "setup_training.py" in scripts
    probe = ("import runpy, sys; sys.argv = [sys.argv[1], '--help']; sys.path.insert(0, '.')\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n"
             "    assert exc.code in (0, None), exc.code\n"
             f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    for script in scripts:
        proc = subprocess.run([sys.executable, "-c", probe, script], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (script, proc.stderr)
        assert "--root" in proc.stdout and "--json" in proc.stdout, script
        assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", (script, proc.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- a first model from weights on disk
def test_a_first_model_starts_from_weights_the_user_has(tmp_path, capsys, tiny_model, ultralytics_config_dir):
    """training.arch / setup --arch: a .pt on disk (here a 'sister line' model with 6 other classes; a
    COCO yolov8n.pt works the same) starts the first training; a new class head, nothing downloaded."""
    import dataset_preparer
    import torch
    import train_yolov8
    from toolkit.data.synthetic import write_batch

    root = tmp_path / "line2"
    assert setup_training.main(["--root", str(root), "--classes", "crazing,patches", "--arch", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert f"base model:    {tiny_model.resolve()}  (the first run starts from these weights)" in out
    ws = Workspace.at(root)
    assert yaml.safe_load(ws.training_yaml.read_text())["training"]["arch"] == str(tiny_model.resolve())
    write_batch(tmp_path / "batch", 12, size=64, seed=71, classes=("crazing", "patches"))
    assert dataset_preparer.main(["--root", str(root), "--source", str(tmp_path / "batch"), "-q"]) == 0
    result = train_yolov8.run(train_yolov8.TrainConfig(root=root, epochs=1, imgsz=64, batch=8, device="cpu"))
    assert result.start_mode == "pretrained" and result.start_from == str(tiny_model.resolve())
    assert any("new classes" in n for n in result.notes)
    # the backbone came from the .pt: its first convolution is the sister model's, moved by one short epoch
    first = lambda path: torch.load(path, map_location="cpu", weights_only=False)["model"].model[0].conv.weight.float()  # noqa: E731
    start, trained = first(tiny_model), first(result.best)
    assert (trained - start).abs().mean() < 0.2 * start.abs().mean()


def test_a_missing_weights_file_as_arch_is_one_line(tmp_path, capsys):
    assert setup_training.main(["--root", str(tmp_path / "ws"), "--classes", "a", "--arch",
                                str(tmp_path / "yolov8n.pt")]) == 1
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "no such file" in line and "downloads nothing" in line
    assert not (tmp_path / "ws").exists()

"""Settings declared once, resolved once: the template, the rules, the generated CLI, the layering."""
from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

from toolkit.core.config import (DEFAULTS, KEYS, Settings, check_value, options_of, read_training_yaml, resolve_config, template_keys)
from toolkit.core.template import TRAINING_YAML_TEMPLATE
from toolkit.core.yaml_safe import short
from toolkit.core.errors import ConfigError
from toolkit.core.cli import config_from_args

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("training_analyzer", "setup_training", "dataset_preparer", "train_yolov8", "model_comparator",
           "training_pipeline", "pipeline_demo")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "training.yaml"
    path.write_text(text)
    return path


# --- one rule per key ------------------------------------------------------------------------

def test_every_template_key_has_exactly_one_rule_and_the_defaults_pass_it():
    assert set(template_keys()) == set(KEYS)
    defaults = Settings.defaults()
    for key in KEYS:
        assert check_value(key, defaults[key], "test") == defaults[key], key


def test_the_written_template_resolves_to_the_defaults_and_an_edit_of_it_changes_them(tmp_path):
    path = write(tmp_path, TRAINING_YAML_TEMPLATE)
    assert Settings.load(path).as_dict() == Settings.defaults().as_dict()
    assert Settings.load(path).given == frozenset(k for k in KEYS if Settings.defaults()[k] is not None)
    edited = write(tmp_path, TRAINING_YAML_TEMPLATE.replace("  epochs: 100\n", "  epochs: 7\n"))
    assert Settings.load(edited)["training.epochs"] == 7


def test_stage_configs_name_only_known_keys_and_generated_flags_are_unique():
    for name in SCRIPTS[:-1]:
        module = importlib.import_module(name)
        config_type = next(v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type))
        for field, opt in options_of(config_type):
            assert all(k in KEYS for k in opt.keys), (name, field.name)
        flags = [a.option_strings for a in module.build_arg_parser()._actions]
        flat = [f for group in flags for f in group]
        assert len(flat) == len(set(flat)), name


# --- checks of training.yaml (issue 10, "Smaller") ---------------------------------------------

@pytest.mark.parametrize("text,words", [
    ("dataset:\n  split: {train: 0.8, val: 0.1, test: 0.3}\n", "add up to 1"),
    ("dataset:\n  split: {train: 0.9, val: 0.1, test: 0.0}\n", "test share above 0"),
    ("dataset:\n  split: {train: 1.2, val: -0.1, test: -0.1}\n", "in [0, 1]"),
    ("dataset:\n  split: {train: 0.8, vall: 0.2}\n", "unknown split"),
    ("dataset:\n  max_bad_fraction: 1.5\n", "max_bad_fraction' must be in [0, 1]"),
    ("dataset:\n  max_bad_fraction: -0.1\n", "max_bad_fraction' must be in [0, 1]"),
    ("training:\n  imgsz: 16\n", "imgsz' must be 32 or more"),
    ("evaluation:\n  device: gpu\n", "evaluation.device"),
    ("promotion:\n  min_first_map: 2\n", "min_first_map"),
])
def test_bad_values_are_errors_that_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as info:
        Settings.load(write(tmp_path, text))
    assert words in str(info.value) and str(tmp_path / "training.yaml") in str(info.value)


def test_good_shares_and_a_yaml_device_number_are_normalised(tmp_path):
    settings = Settings.load(write(tmp_path, "dataset:\n  split: {train: 0.7, val: 0.2, test: 0.1}\n"
                                             "training:\n  device: 0\n"))
    assert settings["dataset.split"] == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert settings["training.device"] == "0" and settings["evaluation.device"] == ""


def test_a_key_written_twice_is_an_error_with_its_line(tmp_path):
    path = write(tmp_path, "training:\n  epochs: 30\n  imgsz: 320\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=r"line 4.*'epochs' is written twice \(first on line 2\)"):
        read_training_yaml(path)
    with pytest.raises(ConfigError, match="written twice"):
        Settings.load(write(tmp_path, "training:\n  epochs: 3\ntraining:\n  imgsz: 64\n"))


def test_a_yaml_bomb_gives_a_short_error_line(tmp_path):
    levels = ['&a [' + ", ".join(['"lol"'] * 9) + "]"]
    for level in "bcdefg":  # 9**7 strings if expanded: 80 MB as one repr
        levels.append(f"&{level} [{', '.join(['*' + chr(ord(level) - 1)] * 9)}]")
    text = f"training:\n  epochs: [{', '.join(levels)}]\n"
    with pytest.raises(ConfigError) as info:
        Settings.load(write(tmp_path, text))
    message = str(info.value)
    assert "training.epochs" in message and len(message) < 200 + len(str(tmp_path)) + 80
    assert len(short("x" * 10_000)) <= 200


def test_flags_beat_the_file_and_are_checked_with_the_flag_named(tmp_path):
    import train_yolov8

    settings = Settings.load(write(tmp_path, "training:\n  epochs: 30\n  imgsz: 320\n"))
    config, resolved = resolve_config(train_yolov8.TrainConfig(root=tmp_path, epochs=5), settings)
    assert (config.epochs, config.imgsz, config.batch) == (5, 320, DEFAULTS["training"]["batch"])
    assert resolved["training.epochs"] == 5 and settings["training.epochs"] == 30  # settings are immutable
    with pytest.raises(ConfigError, match=r"^--imgsz: 'training.imgsz' must be 32 or more, got 8$"):
        resolve_config(train_yolov8.TrainConfig(root=tmp_path, imgsz=8), settings)


def test_one_pipeline_flag_sets_every_key_it_names(tmp_path):
    import training_pipeline

    from toolkit.core.layout import Workspace

    config, settings = training_pipeline.load_settings(
        training_pipeline.PipelineConfig(root=tmp_path, device="CPU", batch=4, imgsz=96), Workspace.at(tmp_path))
    assert settings["training.device"] == settings["evaluation.device"] == "cpu"
    assert settings["training.batch"] == settings["evaluation.batch"] == 4
    assert settings["training.imgsz"] == 96
    assert settings["evaluation.imgsz"] is None  # scoring follows the checkpoint's training size
    assert (config.device, config.batch, config.imgsz) == ("cpu", 4, 96)


def test_the_pipeline_takes_a_time_limit_and_its_plan_shares_it(tmp_path):
    """Issue 27: train_yolov8.py had --time-limit, the pipeline had none."""
    import training_pipeline

    from toolkit.core.layout import Workspace

    args = training_pipeline.build_arg_parser().parse_args(["--root", str(tmp_path), "--time-limit", "1.5"])
    config = config_from_args(training_pipeline.PipelineConfig, args)
    config, settings = training_pipeline.load_settings(config, Workspace.at(tmp_path))
    assert config.time_limit == 1.5 and settings["training.time_limit"] == 1.5
    assert "--time-limit HOURS" in training_pipeline.build_arg_parser().format_help()


def test_help_states_defaults_as_a_person_writes_them():
    """Issue 27: defaults read "", {"train": 0.8, ...} and [0.25, 0.6]; jargon went unexplained."""
    import dataset_preparer
    import model_comparator
    import train_yolov8
    import training_analyzer

    texts = {m.__name__: " ".join(a.help for a in m.build_arg_parser()._actions if a.help)
             for m in (dataset_preparer, model_comparator, train_yolov8, training_analyzer)}
    every = " ".join(texts.values())
    assert 'default: ""' not in every and "default: [" not in every and "default: {" not in every
    assert "default: 80/10/10)" in texts["dataset_preparer"] and "default: 0.25,0.6)" in texts["training_analyzer"]
    assert "default: not set)" in texts["model_comparator"]
    assert "non-maximum suppression" in texts["model_comparator"] and "redrawn at random" in texts["model_comparator"]
    assert "fingerprints of what a picture shows" in texts["dataset_preparer"]
    assert "one training process per GPU" in texts["train_yolov8"]


# --- the generated command lines ---------------------------------------------------------------

@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_help_and_states_its_default_at_most_once(name):
    parser = importlib.import_module(name).build_arg_parser() if name != "pipeline_demo" else None
    if parser is None:
        from toolkit.core.cli import build_parser

        parser = build_parser("demo", prog="pipeline_demo.py")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, (name, action.option_strings)
        assert action.help.lower().count("default") <= 1, (name, action.option_strings, action.help)
        if isinstance(action, argparse._StoreFalseAction):
            assert action.option_strings[0].startswith("--no-"), action.option_strings
            assert "True" not in action.help
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text


def test_no_toolkit_module_imports_a_top_level_script():
    scripts = {p.stem for p in REPO.glob("*.py")}
    assert {"training_pipeline", "train_yolov8", "pipeline_demo"} <= scripts
    offenders = []
    for path in sorted((REPO / "toolkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in scripts]
    assert offenders == []

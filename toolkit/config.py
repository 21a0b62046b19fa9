"""Settings: built-in defaults < ``training/configs/training.yaml`` < command-line flags.

The built-in defaults *are* the commented template that ``setup_training.py`` writes, parsed:
one text serves as the defaults and as the user's documentation, so the two cannot drift.
A key in the user's YAML that the template does not have is an error naming the key (a typo
such as ``epoch:`` must not be silently ignored for a night of training).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import yaml

from toolkit.errors import ConfigError

logger = logging.getLogger(__name__)

TRAINING_YAML_TEMPLATE = """\
# Training and promotion settings of the defect-model retraining toolkit.
# Precedence: built-in defaults < this file < command-line flags.
# Edit freely: setup_training.py never overwrites this file unless you pass --force
# (and then it keeps your version as training.yaml.bak). Unknown keys are an error.

training:
  # Architecture used when there is no production model to fine-tune (n/s/m/l/x).
  arch: yolov8n.yaml
  # Starting point: production (fine-tune yolov8_model.pt), scratch (arch), or a .pt path.
  # Empty: production when yolov8_model.pt exists, else scratch.
  start_from: ""
  epochs: 100
  # Image size the model sees. 640 is the YOLOv8 default; NEU-style 200 px crops gain nothing
  # above it, and a smaller size trains much faster on a CPU.
  imgsz: 640
  # Images per batch; -1 lets ultralytics pick the largest that fits the GPU memory.
  batch: 16
  # "" = first GPU if there is one, else cpu. "0", "0,1,2,3" (several GPUs: DDP) or "cpu".
  device: ""
  # Data loader processes. Keep it at or below the CPU cores.
  workers: 2
  # Stop when validation mAP has not improved for this many epochs (best.pt is kept).
  patience: 20
  seed: 0
  # Hours; stops the run cleanly when reached (0 = no limit). Useful for nightly windows.
  time_limit: 0
  # Cache decoded images in RAM ("ram"), on disk ("disk") or not at all (""): faster epochs.
  cache: ""
  optimizer: auto
  # Augmentation suited to grey metal surfaces (reason beside each non-default value):
  augment:
    hsv_h: 0.0      # default 0.015: steel images are grey, a hue shift only adds noise
    hsv_s: 0.0      # default 0.7: no colour to saturate
    hsv_v: 0.3      # default 0.4: lighting on the line varies, but less than outdoors
    degrees: 0.0
    translate: 0.1
    scale: 0.3      # default 0.5: the camera-to-strip distance is fixed, defect sizes vary less
    fliplr: 0.5
    flipud: 0.5     # default 0.0: a steel strip has no "up", defects look the same flipped
    mosaic: 1.0
    mixup: 0.0
    close_mosaic: 10

dataset:
  # Share of images per split for newly added images (stratified per class).
  split: {train: 0.8, val: 0.1, test: 0.1}
  # Stop an import when more than this share of a batch is bad input.
  max_bad_fraction: 0.2
  # Perceptual-hash distance (bits of 64) at or below which two images are near-duplicates.
  near_duplicate_bits: 4

evaluation:
  # Every model is scored on this split with the same settings (fair comparison).
  split: test
  imgsz: 640
  batch: 16
  conf: 0.001
  iou: 0.7
  device: ""
  # Images timed per model for ms_per_image, after a warm-up batch (0 = do not time).
  speed_images: 16

promotion:
  # Metric that decides: map50_95 (stricter, default) or map50.
  metric: map50_95
  # Smallest gain over production worth a model change.
  min_gain: 0.005
  # Largest drop of any single class's AP50 that is still acceptable.
  max_class_drop: 0.05
  # Require the bootstrap 95% interval of the gain to lie above zero.
  require_significance: true
  bootstrap_resamples: 1000
  # Largest accepted slowdown of inference, as a ratio to production (1.5 = 50% slower).
  max_slowdown: 1.5

memory_bank:
  # Where the detection system logs. Empty: ROOT/memory-bank/detections.jsonl. Else a file
  # (.jsonl, .json, .csv, SQLite) or a database URL such as
  # postgresql://inspector@dbhost:5432/inspection?table=detections (the password comes from
  # PGPASSWORD or .pgpass, never from this file). --memory-bank overrides it.
  url: ""

analyzer:
  # Confidence band where the model is unsure: those detections are the most useful to label.
  uncertain: [0.25, 0.6]
  # IoU at which a detection matches a reviewed label.
  iou_match: 0.5
  # --export skips an image within this perceptual-hash distance (bits of 64) of one already
  # chosen. Looser than dataset.near_duplicate_bits: on NEU-DET, 8 bits still finds no distinct
  # pair and catches 99% of copies shifted by 2 px (4 bits: 68%).
  near_duplicate_bits: 8
"""

DEFAULTS: dict[str, Any] = yaml.safe_load(TRAINING_YAML_TEMPLATE)


def _check_known(user: Mapping[str, Any], known: Mapping[str, Any], prefix: str, source: str) -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            options = ", ".join(sorted(known))
            raise ConfigError(f"{source}: unknown key '{dotted}' (known keys here: {options}); fix or remove it")
        default = known[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping of settings, not {value!r}")
            # A dict of free keys (e.g. split ratios) is checked for its value types only.
            _check_known(value, default, f"{dotted}.", source)
        else:
            _check_type(dotted, value, default, source)


def _check_type(dotted: str, value: Any, default: Any, source: str) -> None:
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, (str, int))  # device: 0 is written as a number in YAML
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{source}: '{dotted}' should be like {default!r}, got {value!r}")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` laid on top; ``None`` in override means 'not given'."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_training_yaml(path: str | Path) -> dict[str, Any]:
    """The user's settings file, validated against the template; {} when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the file or rerun setup with --force") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections such as 'training:' at the top level")
    _check_known(data, DEFAULTS, "", str(path))
    return data


def resolve_settings(training_yaml: str | Path | None, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < training.yaml < flags, as one nested dict (flags: same nesting, None = unset)."""
    user = read_training_yaml(training_yaml) if training_yaml is not None else {}
    settings = deep_merge(DEFAULTS, user)
    if flags:
        _check_known({k: v for k, v in flags.items() if v is not None}, DEFAULTS, "", "command line")
        settings = deep_merge(settings, flags)
    return settings


def parse_set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs to a dict, values parsed as YAML scalars (``0.01``, ``true``)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: write it as key=value, e.g. --set lr0=0.005")
        try:
            result[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip()] = raw
    return result

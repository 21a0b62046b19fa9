"""Settings: declared once, resolved once - built-in defaults < ``training/configs/training.yaml`` < flags.

The built-in defaults *are* the commented template that ``setup_training.py`` writes, parsed:
one text serves as the defaults and as the user's documentation, so the two cannot drift.
Every key of that template has one entry in ``KEYS`` below: the rule that checks (and
normalises) its value and, where a flag sets it, the flag's help text. A stage's frozen config
declares its fields with ``setting("training.imgsz")`` (a training.yaml key, flag and help come
from ``KEYS``) or ``option("--source", help=...)`` (a flag only); ``toolkit/core/cli.py`` builds the
argparse parser from those fields, and ``resolve_config`` fills the fields a user did not give
from one ``Settings`` object, which a pipeline run loads once and hands to every stage.

Adding a setting: a line in the template (with its comment), an entry in ``KEYS``, and a
``setting(...)`` field in the config of each stage that uses it.

A key in the user's YAML that the template does not have is an error naming the key (a typo
such as ``epoch:`` must not be silently ignored for a night of training); so is a key written
twice, and so is a value its rule refuses. Messages quote at most about 200 characters of a value.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Callable, Iterator, Mapping

import yaml

from toolkit.core.errors import ConfigError
from toolkit.core.template import TRAINING_YAML_TEMPLATE
from toolkit.core.yaml_safe import load_yaml_text, short

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = load_yaml_text(TRAINING_YAML_TEMPLATE)

# --------------------------------------------------------------------------------- value rules
# A rule returns the value, normalised, or raises ValueError with what is wrong in words.

Rule = Callable[[Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    def rule(value: Any) -> int:
        if isinstance(value, bool) or not (isinstance(value, int) or (_is_number(value) and float(value).is_integer())):
            raise ValueError("must be a whole number")
        value = int(value)
        if lo is not None and value < lo:
            raise ValueError(f"must be {lo} or more")
        if hi is not None and value > hi:
            raise ValueError(f"must be {hi} or less")
        return value
    return rule


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def rule(value: Any) -> float:
        if not _is_number(value):
            raise ValueError("must be a number")
        value = float(value)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            raise ValueError(f"must be {_bounds(lo, hi, lo_open, hi_open)}")
        if hi is not None and (value > hi or (hi_open and value == hi)):
            raise ValueError(f"must be {_bounds(lo, hi, lo_open, hi_open)}")
        return value
    return rule


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"above {lo}" if lo_open else f"{lo} or more"
    return f"below {hi}" if hi_open else f"{hi} or less"


def text(*choices: str) -> Rule:
    def rule(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, PurePath)):
            raise ValueError("must be a text")
        value = str(value).strip()
        if choices and value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}")
        return value
    return rule


def flag_value(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def optional(rule: Rule) -> Rule:
    """``None`` (an empty value in YAML) stays None; anything else must pass ``rule``."""
    return lambda value: None if value is None or value == "" else rule(value)


def auto_or(rule: Rule) -> Rule:
    """``auto`` (chosen from the machine when training starts: toolkit/model/training.py), else ``rule``."""
    return lambda value: "auto" if isinstance(value, str) and value.strip().lower() == "auto" else rule(value)


def device(value: Any) -> str:
    """'' (first GPU, else cpu), 'cpu', 'mps', '0' or '0,1,2,3'; YAML ``device: 0`` is a number."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be '', cpu, a GPU index such as 0, or indices such as 0,1")
    value = str(value).strip().lower().replace(" ", "")
    if value in ("", "auto", "cpu", "mps") or all(part.isdigit() for part in value.split(",")):
        return value
    raise ValueError("must be '', cpu, a GPU index such as 0, or indices such as 0,1")


# Upper bounds of the numeric settings: far beyond any real use, low enough that a typo (an extra
# zero or three) is refused when the settings load instead of failing deep in OpenCV or numpy
# (imgsz 100000: a 30 GB image buffer; bootstrap_resamples 1e12: a 7 TiB array).
MAX_IMGSZ = 8192
MAX_EPOCHS = 10_000
MAX_BATCH = 4096
MAX_RESAMPLES = 50_000  # a Python loop, one mAP per resample: minutes at this count


def batch_size(value: Any) -> int | float:
    if _is_number(value) and 0 < value < 1:
        return float(value)  # ultralytics: a share of the GPU memory
    value = integer()(value)
    if value == -1 or 1 <= value <= MAX_BATCH:
        return value
    raise ValueError(f"must be -1 (largest that fits the GPU), a share such as 0.7, or 1 to {MAX_BATCH}")


def cache_mode(value: Any) -> str:
    if value in (None, False, ""):
        return ""
    if value is True:
        return "ram"
    return text("ram", "disk")(value)


def split_shares(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("must be shares like {train: 0.8, val: 0.1, test: 0.1}")
    unknown = [k for k in value if k not in ("train", "val", "test")]
    if unknown:
        raise ValueError(f"names unknown split(s) {short(unknown)}; use train, val and test")
    shares = {s: number(0, 1)(value.get(s, 0) if value.get(s) is not None else 0) for s in ("train", "val", "test")}
    if abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"must add up to 1 (they add up to {sum(shares.values()):g})")
    if shares["train"] <= 0 or shares["test"] <= 0:
        raise ValueError("needs a train share and a test share above 0 (the test split is what models are judged on)")
    return shares


def metric(value: Any) -> str:
    value = text()(value).replace("-", "_").lower()
    if value not in ("map50_95", "map50"):
        raise ValueError("must be map50_95 or map50")
    return value


def confidence_band(value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise ValueError("must be two confidences [lo, hi], e.g. [0.25, 0.6]")
    lo, hi = float(value[0]), float(value[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError("must be an uncertain band of two confidences lo < hi within 0..1, e.g. [0.25, 0.6]")
    return lo, hi


def recall_spec(value: Any) -> float | dict[str, float]:
    """promotion.min_recall: a recall, or {class: recall} (class names: toolkit/promotion/spec.py)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, float] = {}
        for name, recall in value.items():
            try:
                out[str(name).strip()] = number(0, 1)(recall)
            except ValueError as exc:
                raise ValueError(f"for {short(name)} {exc}") from None
        return out
    try:
        return number(0, 1)(value)
    except ValueError:
        raise ValueError("must be a recall in [0, 1] such as 0.5, or recalls per class such as "
                         "{short: 0.9, default: 0.5}") from None


@dataclass(frozen=True)
class Key:
    """One training.yaml key: the rule for its value and, when a flag sets it, the flag."""

    rule: Rule
    flag: str | None = None
    help: str = ""
    metavar: str | None = None
    type: Callable[[str], Any] | None = None  # argparse type of the flag (default: str)


def _band_arg(text_value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text_value.split(","))
    except ValueError:
        raise ConfigError(f"--uncertain {short(text_value)}: give two confidences as lo,hi, e.g. --uncertain 0.25,0.6") from None
    return lo, hi



GROUPS_CSV = "groups.csv"
CSV_PREFIX = "csv:"


def check_group_by(value: str) -> str:
    """The setting's rule: '' (no lots), ``csv:COLUMN`` or a regular expression (ValueError otherwise)."""
    value = value.strip()
    if not value:
        return ""
    if value.startswith(CSV_PREFIX):
        if not value[len(CSV_PREFIX):].strip():
            raise ValueError(f"'{CSV_PREFIX}' must name a column of {GROUPS_CSV}, e.g. csv:lot")
        return value
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a regular expression ({exc})") from None
    if _nested_repeat(value):
        raise ValueError("holds a repeat inside a repeat (like (a+)+ or (a|b)*), which can take exponential time "
                         "on a long file name; write the lot's part directly, e.g. '^(coil\\d+)_'")
    return value


def _nested_repeat(pattern: str) -> bool:
    """Whether a repeat (``*``, ``+``, ``{2,}``) holds another repeat or an alternation: the patterns whose
    backtracking is exponential (``^(a+)+$`` on 88 letters never ends). Possessive and atomic forms do
    not backtrack and pass."""
    try:
        from re import _constants as c, _parser as parser   # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons
        import sre_constants as c  # type: ignore[no-redef]
        import sre_parse as parser  # type: ignore[no-redef]

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT)

    def children(op, av) -> list:
        if op in repeats:
            return [av[2]]
        if op == c.SUBPATTERN:
            return [av[-1]]
        if op == c.BRANCH:
            return list(av[1])
        if op in (c.ASSERT, c.ASSERT_NOT):
            return [av[1]]
        if op == getattr(c, "GROUPREF_EXISTS", None):
            return [x for x in av[1:] if x is not None]
        return []

    def varies(items) -> bool:   # holds a repeat of more than one, or an alternation
        for op, av in items:
            if (op in repeats and av[1] > 1) or op == c.BRANCH:
                return True
            if any(varies(child) for child in children(op, av)):
                return True
        return False

    def walk(items) -> bool:
        for op, av in items:
            if op in repeats and av[1] > 1 and varies(av[2]):
                return True
            if any(walk(child) for child in children(op, av)):
                return True
        return False

    return walk(parser.parse(pattern))

KEYS: dict[str, Key] = {
    "training.arch": Key(text(), help="what training from scratch starts from: yolov8n/s/m/l/x.yaml or a .pt on disk"),
    "training.strategy": Key(text("auto", "finetune", "scratch", "both"), "--strategy",
                             "what the pipeline trains: finetune production, scratch, both (picked on the validation "
                             "split) or auto (from this workspace's time budget, timings and earlier both runs)",
                             metavar="auto|finetune|scratch|both"),
    "training.start_from": Key(text(), "--from", "starting point: production | scratch | PATH to a .pt "
                               "(not set: production if yolov8_model.pt exists, else scratch)",
                               metavar="production|scratch|PATH"),
    "training.epochs": Key(integer(1, MAX_EPOCHS), "--epochs", "training epochs", type=int),
    "training.imgsz": Key(auto_or(lambda v: integer(32, MAX_IMGSZ)(int(v) if str(v).strip().isdigit() else v)), "--imgsz",
                          "pixels the images are resized to for training, or auto (see training.yaml)", metavar="PX|auto"),
    "training.batch": Key(auto_or(batch_size), "--batch", "images per training batch (-1: as many as fit one GPU)", type=float),
    "training.device": Key(device, "--device", "cpu | 0 | 0,1,2,3 (several GPUs: one training process per GPU, "
                           "ultralytics' DDP); not set: GPU 0 if there is one, else cpu"),
    "training.workers": Key(auto_or(integer(0, 64)), "--workers", "data loader processes", type=int),
    "training.patience": Key(integer(0, MAX_EPOCHS), "--patience", "stop after this many epochs without val improvement "
                             "(0: never)", type=int),
    "training.seed": Key(integer(0, 2**32 - 1), "--seed", "random seed", type=int),
    "training.time_limit": Key(number(0, 24 * 365), "--time-limit", "stop cleanly at the first epoch end that would pass "
                               "this many hours (best.pt kept; 0: no limit)", metavar="HOURS", type=float),
    "training.cache": Key(cache_mode),
    "training.optimizer": Key(text()),
    "dataset.split": Key(split_shares, "--split", "shares of new images per split (train/val/test), e.g. 70/20/10 or 0.7,0.2,0.1"),
    "dataset.max_bad_fraction": Key(number(0, 1), "--max-bad-fraction",
                                    "stop an import when a larger share of a batch is bad", type=float),
    "dataset.group_by": Key(lambda v: check_group_by(text()(v)), "--group-by",
                            "lot of each image, whose images share one split: a regex on the file name "
                            "(first group) or csv:COLUMN of the batch's groups.csv", metavar="REGEX|csv:COLUMN"),
    "dataset.near_duplicate_bits": Key(integer(0, 64), "--near-duplicate-bits",
                                       "near-duplicates (kept in one split): how many of the 64 bits of two images' "
                                       "perceptual hashes, fingerprints of what a picture shows, may differ", type=int),
    "evaluation.split": Key(text(), "--split", "split to score on"),
    "evaluation.imgsz": Key(optional(integer(32, MAX_IMGSZ)), "--imgsz", "image size for scoring; not set: each model at the "
                            "size it was trained at", type=int),
    "evaluation.batch": Key(integer(1, MAX_BATCH), "--batch", "images per inference batch", type=int),
    "evaluation.conf": Key(number(0, 1, hi_open=True), "--conf", "confidence threshold; keep it low for mAP",
                           type=float),
    "evaluation.iou": Key(number(0, 1, lo_open=True), "--iou", "overlap (IoU, 0-1) above which two boxes of one class "
                          "count as one detection and the weaker is dropped (non-maximum suppression)", type=float),
    "evaluation.device": Key(device, "--device", "cpu or a GPU number (0 is the first); not set: GPU 0 if any, else cpu"),
    "evaluation.speed_images": Key(integer(0, 10_000), "--speed-images", "images timed per model for ms/image "
                                   "(0: no timing)", type=int),
    "evaluation.speed_rounds": Key(integer(1, 100), "--speed-rounds", "timing rounds the models take turns "
                                   "over; ms/image is each model's median round", type=int),
    "promotion.metric": Key(metric),
    "promotion.min_gain": Key(number(-1, 1)),
    "promotion.max_class_drop": Key(number(0, 1)),
    "promotion.require_significance": Key(flag_value),
    "promotion.bootstrap_resamples": Key(integer(1000, MAX_RESAMPLES), "--resamples", "times the test images are redrawn "
                                         "at random (a bootstrap) for the gain's 95% interval: more is steadier, slower", type=int),
    "promotion.max_slowdown": Key(number(0, 1000, lo_open=True)),
    "promotion.operating_conf": Key(number(0, 1, hi_open=True), "--operating-conf",
                                    "confidence the line runs at: per-class recall and false calls are "
                                    "measured there", type=float),
    "promotion.max_recall_drop": Key(number(0, 1), "--max-recall-drop", "largest accepted drop of one "
                                     "class's recall at operating_conf", type=float),
    "promotion.min_recall": Key(recall_spec, "--min-recall", "the line's spec: the recall every class must reach "
                                "at operating_conf (training.yaml may give it per class)", metavar="RECALL",
                                type=float),
    "promotion.min_first_map": Key(number(0, 1)),
    "memory_bank.url": Key(text()),  # --memory-bank (training_analyzer.py) overrides it, relative to the cwd
    "analyzer.near_duplicate_bits": Key(integer(0, 64)),
    "analyzer.class_weight_power": Key(number(0, 4)),
    "analyzer.selection": Key(text("confident", "hybrid", "diversity", "uncertainty", "random"), "--selection",
                              "how --export chooses: confident | hybrid | diversity | uncertainty | random"),
    "analyzer.seed": Key(integer(0, 2**32 - 1)),
    "analyzer.uncertain": Key(confidence_band, "--uncertain", "confidence band lo,hi where the model is unsure",
                              metavar="LO,HI", type=_band_arg),
    "analyzer.iou_match": Key(number(0, 1, lo_open=True), "--iou-match",
                              "overlap (IoU: shared / joint area of two boxes) where a detection matches a review", type=float),
}
# Every augmentation value is checked when the settings load, not when training starts: shares of
# the image or probabilities in [0, 1], rotation in degrees, close_mosaic in epochs.
_AUGMENT_RANGES: dict[str, Rule] = {"degrees": number(0, 180), "close_mosaic": integer(0, MAX_EPOCHS)}
KEYS.update({f"training.augment.{name}": Key(_AUGMENT_RANGES.get(name, number(0, 1)))
             for name in DEFAULTS["training"]["augment"]})
_MAPPING_VALUES = {"dataset.split"}  # a mapping that is one value, checked whole


def template_keys(tree: Mapping[str, Any] = DEFAULTS, prefix: str = "") -> Iterator[str]:
    """Every dotted key of the template (``training.augment.hsv_h``, ``dataset.split``, ...)."""
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and dotted not in _MAPPING_VALUES:
            yield from template_keys(value, f"{dotted}.")
        else:
            yield dotted


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def check_value(key: str, value: Any, origin: str) -> Any:
    """``value`` for ``key`` normalised by its rule; a ConfigError naming origin and key otherwise."""
    if key not in KEYS:
        raise ConfigError(f"{origin}: unknown setting '{key}'")
    try:
        return KEYS[key].rule(value)
    except ValueError as exc:
        raise ConfigError(f"{origin}: '{key}' {exc}, got {short(value)}") from None


# --------------------------------------------------------------------------------- training.yaml

def _check_known(user: Mapping[str, Any], known: Mapping[str, Any], prefix: str, source: str) -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            options = ", ".join(sorted(str(k) for k in known))
            raise ConfigError(f"{source}: unknown key {short(dotted, 80)} (known keys here: {options}); fix or remove it")
        if isinstance(known[key], dict) and dotted not in _MAPPING_VALUES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping of settings, got {short(value)}")
            _check_known(value, known[key], f"{dotted}.", source)


def read_training_yaml(path: str | Path) -> dict[str, Any]:
    """The user's settings file, validated against the template; {} when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8 or rerun setup_training.py --force") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({short(getattr(exc, 'problem', None) or exc, 160)}); "
                          "fix the file or rerun setup with --force") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections such as 'training:' at the top level")
    _check_known(data, DEFAULTS, "", str(path))
    for key in template_keys():
        try:
            value = _get(data, key)
        except (KeyError, TypeError):
            continue
        check_value(key, value, str(path))
    return data


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


class Settings:
    """Resolved, checked settings of one run: defaults < training.yaml < overrides (flags).

    Read-only: ``override`` returns a new object. ``settings["evaluation.imgsz"]`` is a value
    after its rule (typed and normalised), ``section("training")`` a copy of one section.
    """

    def __init__(self, values: Mapping[str, Any], source: Path | None = None, given: frozenset[str] = frozenset()):
        self._values = copy.deepcopy(dict(values))
        self.source = source
        self.given = given  # keys set by training.yaml or a flag (not the built-in default)

    @classmethod
    def defaults(cls) -> "Settings":
        return cls._checked(DEFAULTS, None, "built-in defaults", frozenset())

    @classmethod
    def load(cls, training_yaml: str | Path | None) -> "Settings":
        """Defaults < the file (absent: defaults only). The one place training.yaml is read."""
        path = Path(training_yaml) if training_yaml is not None else None
        user = read_training_yaml(path) if path is not None and path.exists() else {}
        given = frozenset(k for k in template_keys() if _has(user, k))
        return cls._checked(deep_merge(DEFAULTS, user), path, str(path), given)

    @classmethod
    def _checked(cls, values: Mapping[str, Any], source: Path | None, origin: str, given: frozenset[str]) -> "Settings":
        values = copy.deepcopy(dict(values))
        for key in template_keys():
            _set(values, key, check_value(key, _get(values, key), origin))
        return cls(values, source, given)

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(_get(self._values, key))

    def section(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._values[name])

    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._values)

    def override(self, values: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> "Settings":
        """A copy with ``values`` ({dotted key: value}; None = not given) laid on top, each checked."""
        merged = copy.deepcopy(self._values)
        given = set(self.given)
        for key, value in values.items():
            if value is None:
                continue
            _set(merged, key, check_value(key, value, (origins or {}).get(key, "command line")))
            given.add(key)
        return Settings(merged, self.source, frozenset(given))


def _has(tree: Mapping[str, Any], dotted: str) -> bool:
    try:
        return _get(tree, dotted) is not None
    except (KeyError, TypeError):
        return False


def resolve_settings(training_yaml: str | Path | None, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < training.yaml < flags, as one nested dict (flags: same nesting, None = unset)."""
    settings = Settings.load(training_yaml)
    if flags:
        _check_known({k: v for k, v in flags.items() if v is not None}, DEFAULTS, "", "command line")
        dotted = {k: _get(flags, k) for k in template_keys() if _has(flags, k)}
        settings = settings.override(dotted)
    return settings.as_dict()


def parse_set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs to a dict, values parsed as YAML scalars (``0.01``, ``true``)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {short(pair)}: write it as key=value, e.g. --set lr0=0.005")
        try:
            result[key.strip()] = load_yaml_text(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip()] = raw
    return result


# --------------------------------------------------------------------------------- stage configs

OPTION = "toolkit.option"


@dataclass(frozen=True)
class Option:
    """What a config field carries: its flag and help, and the training.yaml key(s) it sets."""

    flag: str | None
    help: str
    keys: tuple[str, ...] = ()
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    nargs: str | int | None = None
    const: Any = None
    repeat: bool = False                   # the flag may be given several times (a list)
    parse: Callable[[Any], Any] | None = None  # turns the parsed flag into the field's value
    group: str | None = None
    exclusive: str | None = None           # options naming the same word exclude each other (exit 2)


def option(flag: str | None = None, help: str = "", *, default: Any = None, type: Callable[[str], Any] | None = None,
           metavar: str | None = None, choices: tuple[str, ...] | None = None, nargs: str | int | None = None,
           const: Any = None, repeat: bool = False, parse: Callable[[Any], Any] | None = None,
           group: str | None = None, exclusive: str | None = None) -> Any:
    """A config field set by a flag only (not a training.yaml key). A bool field with default
    True is switched off by its flag, which must read ``--no-...``."""
    if isinstance(default, bool) and default and flag and not flag.startswith("--no-"):
        raise ValueError(f"{flag}: a flag that turns off a default-on setting is written --no-...")
    meta = Option(flag, help, (), type, metavar, choices, nargs, const, repeat, parse, group, exclusive)
    return dataclasses.field(default=default, metadata={OPTION: meta})


def setting(*keys: str, flag: str | None = "", help: str | None = None, parse: Callable[[Any], Any] | None = None,
            group: str | None = None) -> Any:
    """A config field for training.yaml key(s): None until resolved, then the key's value.

    Flag, help and argparse type come from ``KEYS[keys[0]]``; a field with several keys (the
    pipeline's ``--device``) sets each of them. ``flag=None``: no flag (read from the YAML only).
    """
    if not keys or any(k not in KEYS for k in keys):
        raise ValueError(f"setting{keys}: every key must be in toolkit.core.config.KEYS")
    spec = KEYS[keys[0]]
    chosen_flag = spec.flag if flag == "" else flag
    meta = Option(chosen_flag, help if help is not None else spec.help, tuple(keys), spec.type, spec.metavar,
                  parse=parse, group=group)
    return dataclasses.field(default=None, metadata={OPTION: meta})


def options_of(config_type: type) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata[OPTION]) for f in dataclasses.fields(config_type) if OPTION in f.metadata]


def resolve_config(config: Any, settings: Settings) -> tuple[Any, Settings]:
    """``config`` with every keyed field filled (given value > settings), and the settings with
    the given values laid on top, so the rest of the stage reads one consistent object."""
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for f, opt in options_of(type(config)):
        value = getattr(config, f.name)
        if opt.keys and value is not None:
            for key in opt.keys:
                overrides[key], origins[key] = value, opt.flag or f.name
    settings = settings.override(overrides, origins)
    filled = {f.name: settings[opt.keys[0]] for f, opt in options_of(type(config)) if opt.keys}
    return dataclasses.replace(config, **filled), settings

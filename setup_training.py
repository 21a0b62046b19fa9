"""Create the training workspace: folders, configs/dataset.yaml, configs/training.yaml, base model.

Run it once per workspace (it is safe to run again: it only adds what is missing and never
changes a file you edited; --force regenerates the configs and keeps your old ones as .bak).

Classes come from --classes, else from the production model ROOT/yolov8_model.pt, else from an
existing managed dataset. With a production model, the base model training/models/yolov8_base.pt
is a verified copy of it (training fine-tunes it); without one, the base is an architecture
(--arch) and the first training run starts from scratch.

Usage:
    python setup_training.py --root D:/inspection                  # classes from yolov8_model.pt
    python setup_training.py --root ./ws --classes scratch,dent,rust --arch yolov8s.yaml
    python setup_training.py --root ./ws --force --json            # regenerate the configs
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.cli import add_options, build_parser, config_from_args, run_main
from toolkit.core.layout import command
from toolkit.core.config import DEFAULTS, Settings, option
from toolkit.core.template import TRAINING_YAML_TEMPLATE
from toolkit.core.datafile import read_class_names, write_dataset_yaml
from toolkit.core.errors import UserError
from toolkit.core.files import atomic_copy, atomic_write_text, sha256_file
from toolkit.core.layout import Workspace
from toolkit.core.lock import holds_workspace_lock
from toolkit.core.offline import model_class_names

logger = logging.getLogger(__name__)

_ARCH_RE = re.compile(r"^yolov8[nsmlx]\.yaml$")


def normalize_arch(arch: str) -> str:
    """``n`` / ``yolov8s`` / ``yolov8m.yaml`` -> ``yolov8?.yaml``; a ``.pt`` on disk (COCO-pretrained
    weights, a sister line's model) -> its absolute path; anything else is an error."""
    if arch.strip().lower().endswith(".pt"):
        path = Path(arch.strip()).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"--arch {arch}: no such file; give a .pt you have on disk (the toolkit downloads "
                            "nothing) or one of yolov8n/s/m/l/x.yaml")
        from toolkit.core.checkpoint_scan import holds_detection_model

        if not holds_detection_model(path):  # refused now, not with an AttributeError at the first training
            raise UserError(f"--arch {arch}: not a YOLO detection checkpoint (no ultralytics DetectionModel in it); "
                            "give a YOLOv8 detection .pt or one of yolov8n/s/m/l/x.yaml")
        return str(path)
    value = arch.strip().lower()
    if value in ("n", "s", "m", "l", "x"):
        value = f"yolov8{value}"
    if not value.endswith(".yaml"):
        value += ".yaml"
    if not _ARCH_RE.match(value):
        raise UserError(f"--arch {arch!r} is not a YOLOv8 architecture; use one of yolov8n/s/m/l/x.yaml")
    return value


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UserError("--classes is empty; give the class names separated by commas, e.g. --classes scratch,dent")
    if len(set(names)) != len(names):
        raise UserError(f"--classes lists a class twice: {', '.join(names)}")
    return names


@dataclass(frozen=True)
class SetupConfig:
    root: Path
    classes: tuple[str, ...] | None = option(
        "--classes", "class names in model order, comma-separated (default: from yolov8_model.pt)", parse=parse_classes)
    arch: str = option("--arch", "what the first model starts from when there is no production model: "
                       "yolov8n/s/m/l/x.yaml (random weights) or a .pt on disk (e.g. COCO yolov8n.pt)",
                       default=DEFAULTS["training"]["arch"])
    force: bool = option("--force", "regenerate dataset.yaml and training.yaml (your old ones are kept as .bak)",
                         default=False)


@dataclass(frozen=True)
class SetupResult:
    root: Path
    created: tuple[str, ...]
    dataset_yaml: Path
    training_yaml: Path
    base_model: str            # a .pt path (fine-tune) or an architecture yaml (from scratch)
    classes: tuple[str, ...]
    from_scratch: bool
    notes: tuple[str, ...]
    route: str = ""                # what the first run starts from, in words
    first_run: dict | None = None  # its command and estimate (toolkit/model/first_run.py); None before any import


def resolve_classes(workspace: Workspace, requested: tuple[str, ...] | None, arch: str = "") -> tuple[str, ...]:
    """--classes, else the production model's names, else the managed dataset's, else those of the
    user's own weights (--arch PATH.pt, loaded safely: no code from the file runs)."""
    production = None
    if workspace.production_model.exists():
        production = tuple(model_class_names(workspace.production_model, workspace.ultralytics_config))
    if requested is not None:
        if production is not None and production != requested:
            raise UserError(f"--classes {list(requested)} differ from the production model's classes "
                            f"{list(production)}; drop --classes or give the same names in the same order")
        return requested
    if production is not None:
        return production
    if workspace.dataset_yaml.exists():
        return tuple(read_class_names(workspace.dataset_yaml))
    if arch.endswith(".pt"):
        return tuple(model_class_names(arch, workspace.ultralytics_config))
    raise UserError(f"no classes known: put your production model at {workspace.production_model} (setup reads "
                    "the class names from it), give the class names in model order, comma-separated, with --classes, "
                    "or start from your own weights with --arch PATH.pt (their classes are taken)")


@holds_workspace_lock("setup")
def run(config: SetupConfig, settings: Settings | None = None) -> SetupResult:
    """Create what the workspace lacks. ``settings``: already read (a pipeline run), so the
    existing training.yaml is not read again here."""
    workspace = Workspace.at(config.root)
    if workspace.root.exists() and not workspace.root.is_dir():
        raise UserError(f"--root {workspace.root} is a file; give the folder to set the workspace up in "
                        "(it is created when missing)")
    arch = normalize_arch(config.arch)
    classes = resolve_classes(workspace, config.classes, arch)
    created: list[str] = []
    notes: list[str] = []

    for folder in workspace.tree():
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(str(folder))

    if workspace.dataset_yaml.exists() and not config.force:
        existing = tuple(read_class_names(workspace.dataset_yaml))
        if existing != classes:
            raise UserError(f"{workspace.dataset_yaml} has classes {list(existing)} but setup resolved {list(classes)}; "
                            "rerun with --force to regenerate it (a .bak is kept)")
    else:
        _keep_backup(workspace.dataset_yaml, created)
        write_dataset_yaml(workspace, classes)
        created.append(str(workspace.dataset_yaml))

    if workspace.training_yaml.exists() and not config.force:
        if settings is None:
            Settings.load(workspace.training_yaml)  # a broken edit is reported now, not mid-run
    else:
        _keep_backup(workspace.training_yaml, created)
        value = json.dumps(arch) if arch.endswith(".pt") else arch  # a path: quoted (JSON strings are YAML)
        text = TRAINING_YAML_TEMPLATE.replace(f"arch: {DEFAULTS['training']['arch']}", f"arch: {value}", 1)
        atomic_write_text(workspace.training_yaml, text)
        created.append(str(workspace.training_yaml))

    if workspace.production_model.exists():
        base_model = str(workspace.base_model)
        expected = sha256_file(workspace.production_model)
        if not workspace.base_model.exists() or sha256_file(workspace.base_model) != expected:
            atomic_copy(workspace.production_model, workspace.base_model, expected_sha256=expected)
            created.append(str(workspace.base_model))
        from_scratch = False
        route = "fine-tune production"
        notes.append(f"base model: verified copy of the production model (sha256 {expected[:12]})")
    else:
        base_model = arch
        from_scratch = True
        route = f"from your weights ({arch})" if arch.endswith(".pt") else f"scratch ({arch})"
        notes.append(f"no production model at {workspace.production_model}: the first training run "
                     + (f"starts from your weights ({arch})" if arch.endswith(".pt") else f"trains {arch} from scratch"))
    for note in notes:
        logger.info(note)
    from toolkit.model.first_run import first_run_hint

    first_run = first_run_hint(workspace, settings or Settings.load(workspace.training_yaml))
    return SetupResult(workspace.root, tuple(created), workspace.dataset_yaml, workspace.training_yaml,
                       base_model, classes, from_scratch, tuple(notes), route, first_run)


def _keep_backup(path: Path, created: list[str]) -> None:
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        shutil.copy2(path, backup)
        created.append(str(backup))
        logger.info("kept your previous %s as %s", path.name, backup.name)


def describe(result: SetupResult) -> str:
    lines = [f"Workspace ready at {result.root}",
             f"  classes ({len(result.classes)}): {', '.join(result.classes)}",
             f"  dataset.yaml:  {result.dataset_yaml}",
             f"  training.yaml: {result.training_yaml}  (edit it to change training and promotion settings)",
             f"  base model:    {result.base_model}" + (("  (the first run starts from these weights)"
                                                            if str(result.base_model).endswith(".pt") else
                                                            "  (first run trains from scratch)")
                                                           if result.from_scratch else ""),
             f"  created {len(result.created)} item(s)" if result.created else "  nothing to create: already set up"]
    lines.append(f"  first run:     {result.route}" if result.route else "")
    lines = [line for line in lines if line]
    if result.first_run:
        from toolkit.model.first_run import hint_lines

        return "\n".join(lines + hint_lines(result.first_run))
    lines.append(f"Next: put each labelled batch in its own folder under {Workspace.at(result.root).incoming}, then")
    lines.append(f"      import and check them: {command('dataset_preparer.py', result.root, '--incoming')}")
    lines.append(f"      or import, train, compare and promote in one go: {command('training_pipeline.py', result.root)}")
    if result.from_scratch:
        lines.append("      (the first model becomes version 1.0 if it reaches promotion.min_first_map; the run's "
                     "Next: line says how to promote a weaker one)")
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = build_parser(__doc__, prog="setup_training.py")
    add_options(parser, SetupConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_main(args, lambda a: run(config_from_args(SetupConfig, a)), describe)


if __name__ == "__main__":
    raise SystemExit(main())

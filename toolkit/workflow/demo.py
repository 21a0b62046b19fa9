"""The demo's workspace: a synthetic steel line whose every run brings a new labelled batch.

``training_pipeline.py --demo`` (and ``pipeline_demo.py``) call ``prepare_demo``, then run the
real pipeline on the workspace. Images are 64 px and schedules short, so the loop takes minutes on
a CPU; the settings are written into the demo's training.yaml.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolkit.core.errors import UserError
from toolkit.core.layout import Workspace

logger = logging.getLogger(__name__)

MARKER = ".toolkit-demo"
IMAGE_SIZE = 64
FIRST_BATCH, NEW_BATCH = 300, 300
# The synthetic "production" model is trained briefly, as a first model on a new line would be.
FIRST_MODEL_EPOCHS = 20

# Small images, no mosaic (at 64 px a mosaic shrinks defects to a few pixels), short schedules.
_DEMO_SETTINGS = {
    r"(\n  imgsz:) 640": r"\1 64",
    r"(\n  epochs:) 100": r"\1 15",
    r"(\n  strategy:) auto": r"\1 finetune",  # the demo shows the nightly fine-tune
    r"(\n  patience:) 100": r"\1 10",
    r"(\n    mosaic:) 1.0": r"\1 0.0",
    r"(\n    close_mosaic:) 10": r"\1 0",
}


def _demo_training_yaml(text: str) -> str:
    for pattern, replacement in _DEMO_SETTINGS.items():
        text, n = re.subn(pattern, replacement, text, count=1)
        if n != 1:
            raise RuntimeError(f"demo settings: pattern {pattern!r} not found in the training.yaml template")
    return "# Demo workspace: small images and short schedules so the loop runs in minutes on a CPU.\n" + text


def _next_batch_number(workspace: Workspace) -> int:
    numbers = [int(m.group(1)) for p in workspace.incoming.glob("batch_*")
               if (m := re.match(r"batch_(\d+)$", p.name))]
    return max(numbers, default=0) + 1


def demo_root(root: str | Path | None = None) -> Path:
    """The demo's workspace: ``root``, default ``./demo``: the folder ``demo`` in the current folder, as
    the help says (run from the toolkit's folder, as the README's quick start does, it is ``demo/`` there)."""
    return Workspace.at(root if root is not None else Path.cwd() / "demo").root


def check_demo_root(root: Path) -> None:
    """Refuse a folder holding a production model that the demo did not make."""
    ws = Workspace.at(root)
    if ws.production_model.exists() and not (ws.root / MARKER).exists():
        raise UserError(f"{ws.root} holds a production model that the demo did not make; "
                        "give the demo an empty folder with --root")


@dataclass(frozen=True)
class DemoStages:
    """The stages the demo drives, handed in by the pipeline (no toolkit module imports a script).

    Each takes its stage config's fields as keywords and returns the stage's result.
    """
    setup: Callable[..., Any]
    prepare: Callable[..., Any]
    train: Callable[..., Any]


def prepare_demo(root: Path, stages: DemoStages) -> Path:
    """Make the synthetic line (first run) and drop a new labelled batch; the pipeline runs next."""
    from toolkit.promotion.registry import Registry
    from toolkit.data.synthetic import NEU_CLASSES, write_batch, write_memory_bank

    ws = Workspace.at(root)
    check_demo_root(ws.root)
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / MARKER).write_text("This workspace was made by training_pipeline.py --demo; its models are synthetic.\n")

    if not ws.production_model.exists():
        logger.info("demo: first run - making a synthetic production line and a v1.0 model (about 2 minutes)")
        stages.setup(root=ws.root, classes=NEU_CLASSES)
        ws.training_yaml.write_text(_demo_training_yaml(ws.training_yaml.read_text()))
        batch = write_batch(ws.incoming / "batch_001", FIRST_BATCH, fmt="yolo", size=IMAGE_SIZE, seed=1,
                            background_every=12, prefix="line3")
        write_memory_bank(ws.detections, batch, seed=1, model_version="1.0")
        stages.prepare(root=ws.root, incoming=True)
        first = stages.train(root=ws.root, start_from="scratch", name="demo-v1.0", epochs=FIRST_MODEL_EPOCHS)
        Registry.load(ws).promote(Path(first.best), metrics={**first.metrics, "split": "val"}, source="demo initial model",
                                  reasons=["demo: first model of the synthetic line"], classes=list(NEU_CLASSES),
                                  run_dir=str(first.run_dir))
        logger.info("demo: v1.0 is in production (val mAP50 %.3f)", first.metrics["map50"])

    number = _next_batch_number(ws)
    batch = write_batch(ws.incoming / f"batch_{number:03d}", NEW_BATCH, fmt="yolo", size=IMAGE_SIZE,
                        seed=number, background_every=12, prefix="line3")
    production = Registry.load(ws).production_entry()
    write_memory_bank(ws.detections, batch, seed=number, model_version=production["version"] if production else "1.0")
    logger.info("demo: new labelled batch %s arrived; running the pipeline", batch.root.name)
    return ws.root

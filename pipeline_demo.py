"""The whole retraining loop on synthetic steel images, on a laptop CPU (as training_pipeline.py --demo).

1. In a fresh demo workspace: generate a labelled batch and a memory bank, set up, import,
   train a small v1.0 from scratch and put it in production (as a user's existing model).
2. Every demo run then drops a *new* labelled batch into training/incoming/, logs it in the
   memory bank, and runs the real pipeline: analyze -> prepare -> fine-tune -> compare -> promote or keep.
Images are 64 px so that the loop takes a few minutes on 2 CPU cores; the settings it uses are
written into the demo's training.yaml, where you can read them. It refuses a folder that holds a
production model it did not make.

Usage:
    python pipeline_demo.py                 # the same as: python training_pipeline.py --demo
    python pipeline_demo.py --root D:/try-it --json
"""
# For developers: this module lives at the top level, beside the stage scripts it drives (no toolkit/
# module imports a script). ``prepare_demo`` readies the workspace; the pipeline's own ``run`` does the loop.
from __future__ import annotations

import logging
import re
from pathlib import Path

from toolkit.errors import UserError
from toolkit.layout import TOOLKIT_HOME, Workspace

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
    """The demo's workspace: ``root``, default ``./demo`` next to the toolkit."""
    return Workspace.at(root if root is not None else TOOLKIT_HOME / "demo").root


def check_demo_root(root: Path) -> None:
    """Refuse a folder holding a production model that the demo did not make."""
    ws = Workspace.at(root)
    if ws.production_model.exists() and not (ws.root / MARKER).exists():
        raise UserError(f"{ws.root} holds a production model that the demo did not make; "
                        "give the demo an empty folder with --root")


def prepare_demo(root: Path) -> Path:
    """Make the synthetic line (first run) and drop a new labelled batch; the pipeline runs next."""
    import dataset_preparer
    import setup_training
    import train_yolov8
    from toolkit.registry import Registry
    from toolkit.synthetic import NEU_CLASSES, write_batch, write_memory_bank

    ws = Workspace.at(root)
    check_demo_root(ws.root)
    ws.root.mkdir(parents=True, exist_ok=True)
    (ws.root / MARKER).write_text("This workspace was made by training_pipeline.py --demo; its models are synthetic.\n")

    if not ws.production_model.exists():
        logger.info("demo: first run - making a synthetic production line and a v1.0 model (about 2 minutes)")
        setup_training.run(setup_training.SetupConfig(root=ws.root, classes=NEU_CLASSES))
        ws.training_yaml.write_text(_demo_training_yaml(ws.training_yaml.read_text()))
        batch = write_batch(ws.incoming / "batch_001", FIRST_BATCH, fmt="yolo", size=IMAGE_SIZE, seed=1,
                            background_every=12, prefix="line3")
        write_memory_bank(ws.detections, batch, seed=1, model_version="1.0")
        dataset_preparer.run(dataset_preparer.PrepareConfig(root=ws.root, incoming=True))
        first = train_yolov8.run(train_yolov8.TrainConfig(root=ws.root, start_from="scratch", name="demo-v1.0",
                                                          epochs=FIRST_MODEL_EPOCHS))
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


def main(argv: list[str] | None = None) -> int:
    """``python pipeline_demo.py [--root DIR] [--json]``: the pipeline's ``--demo``."""
    import training_pipeline

    from toolkit.cli import build_parser

    args = build_parser(__doc__, prog="pipeline_demo.py", root_default="./demo").parse_args(argv)
    passed = ["--root", str(args.root)] if args.root is not None else []
    passed += [flag for flag, on in (("--json", args.json), ("-v", args.verbose), ("-q", args.quiet)) if on]
    return training_pipeline.main(["--demo", *passed])


if __name__ == "__main__":
    raise SystemExit(main())

"""Every path of the workspace (``--root DIR``) in one place.

A stage never builds a workspace path by hand: it asks ``Workspace``. That keeps the layout of
DESIGN.md in one file, so a change of layout is a change here only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The toolkit's own folder: the default root, so a user who cloned the repository next to their
# production model can run every script without flags.
TOOLKIT_HOME = Path(__file__).resolve().parent.parent

PRODUCTION_MODEL_NAME = "yolov8_model.pt"


@dataclass(frozen=True)
class Workspace:
    """The folder that holds the production model, the memory bank and the training workspace."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "Workspace":
        return cls(Path(root if root is not None else TOOLKIT_HOME).expanduser().resolve())

    # production
    @property
    def production_model(self) -> Path:
        return self.root / PRODUCTION_MODEL_NAME

    @property
    def production_sidecar(self) -> Path:
        return self.root / "yolov8_model.json"

    # memory bank
    @property
    def memory_bank(self) -> Path:
        return self.root / "memory-bank"

    @property
    def detections(self) -> Path:
        return self.memory_bank / "detections.jsonl"

    @property
    def training_history(self) -> Path:
        return self.memory_bank / "training_history.jsonl"

    # training workspace
    @property
    def training(self) -> Path:
        return self.root / "training"

    @property
    def configs(self) -> Path:
        return self.training / "configs"

    @property
    def dataset_yaml(self) -> Path:
        return self.configs / "dataset.yaml"

    @property
    def training_yaml(self) -> Path:
        return self.configs / "training.yaml"

    @property
    def incoming(self) -> Path:
        return self.training / "incoming"

    @property
    def datasets(self) -> Path:
        return self.training / "datasets"

    @property
    def manifest(self) -> Path:
        return self.datasets / "manifest.json"

    @property
    def models(self) -> Path:
        return self.training / "models"

    @property
    def registry(self) -> Path:
        return self.models / "registry.json"

    @property
    def base_model(self) -> Path:
        return self.models / "yolov8_base.pt"

    @property
    def runs(self) -> Path:
        return self.training / "runs"

    @property
    def reports(self) -> Path:
        return self.training / "reports"

    @property
    def to_label(self) -> Path:
        return self.training / "to_label"

    @property
    def logs(self) -> Path:
        return self.training / "logs"

    @property
    def cache(self) -> Path:
        """Evaluation caches and ultralytics' own settings (kept out of the user's home)."""
        return self.training / "cache"

    @property
    def ultralytics_config(self) -> Path:
        """ultralytics' settings folder (YOLO_CONFIG_DIR): in the workspace, not the user's home."""
        return self.cache / "ultralytics"

    @property
    def evaluation_cache(self) -> Path:
        """One .npz of per-image results per (model, dataset version, split, settings)."""
        return self.cache / "evaluations"

    @property
    def lock_file(self) -> Path:
        return self.training / "pipeline.lock"

    @property
    def dataset_staging(self) -> Path:
        """Where an import writes its copies until the manifest that lists them is committed."""
        return self.datasets / ".staging"

    def split_list(self, split: str) -> Path:
        """The images of a split as the manifest lists them: what training and evaluation read."""
        return self.datasets / f"{split}.txt"

    def images_dir(self, split: str) -> Path:
        return self.datasets / "images" / split

    def labels_dir(self, split: str) -> Path:
        return self.datasets / "labels" / split

    def tree(self) -> list[Path]:
        """The folders a complete workspace has, parents first."""
        return [
            self.memory_bank, self.training, self.configs, self.incoming, self.datasets,
            *(self.images_dir(s) for s in SPLITS), *(self.labels_dir(s) for s in SPLITS),
            self.models, self.runs, self.reports, self.to_label, self.logs,
        ]


SPLITS = ("train", "val", "test")


def run_weights(run_dir: str | Path, which: str = "best") -> Path:
    """``best.pt`` or ``last.pt`` of a training run folder (ultralytics' layout)."""
    return Path(run_dir) / "weights" / f"{which}.pt"

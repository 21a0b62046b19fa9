"""Every path of the workspace (``--root DIR``) in one place.

A stage never builds a workspace path by hand: it asks ``Workspace``. That keeps the layout of
DESIGN.md in one file, so a change of layout is a change here only.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The toolkit's own folder: the default root, so a user who cloned the repository next to their
# production model can run every script without flags.
TOOLKIT_HOME = Path(__file__).resolve().parents[2]  # toolkit/core/layout.py -> the repository

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


_SAFE_WORD = re.compile(r"[\w@%+=:,./\\-]+")


def python_word() -> str:
    """How a hint starts Python: ``python`` when that name on PATH is the interpreter running now (an
    activated virtual environment: the usual case), else this interpreter's full path - with no
    ``python`` on PATH (many Linux systems have only ``python3``), or another Python there that may lack
    the toolkit's packages, a hint that says ``python`` would not work."""
    here = sys.executable
    if not here:
        return "python"
    found = shutil.which("python")
    if found:
        a, b = (os.path.normcase(os.path.abspath(p)) for p in (found, here))
        # the same file, or a sibling name of the same interpreter (a venv's python / python3)
        if a == b or (os.path.dirname(a) == os.path.dirname(b) and os.path.realpath(a) == os.path.realpath(b)):
            return "python"
    return here


# a hint's first word: ``python`` or an interpreter's path (python3, python3.11, python.exe), maybe quoted
PYTHON_WORD = r'(?:"[^"]*python[\d.]*(?:\.exe)?"|[^\s"();]*python[\d.]*(?:\.exe)?)'


def command(script: str, root: str | Path | None, *args: Any) -> str:
    """A hint as a complete command that works from any folder: ``python <toolkit>/<script> --root
    <absolute root> <args>`` (``python``: see ``python_word``); a word with spaces or shell characters is
    put in double quotes (which both a POSIX shell and Windows' cmd read as one word)."""
    words = [python_word(), str(TOOLKIT_HOME / script)]
    if root is not None:
        words += ["--root", str(Workspace.at(root).root)]
    words += [str(a) for a in args]
    return " ".join(w if _SAFE_WORD.fullmatch(w) else '"' + w.replace('"', '\\"') + '"' for w in words)


def is_workspace(ws: Workspace) -> bool:
    """A folder the user set up (``training/configs/dataset.yaml`` or ``training.yaml``, which may name a
    memory bank in a database), or one that holds a production model or a memory bank (the detection
    system's side; setup can take its classes from the model)."""
    return (ws.dataset_yaml.is_file() or ws.training_yaml.is_file() or ws.production_model.is_file()
            or ws.detections.is_file())


def require_workspace(root: str | Path | None, missing: str = "") -> Workspace:
    """The workspace at ``root``, or a one-line ``UserError`` naming what was expected there.

    Only setup_training.py and the demo create a workspace; every other script calls this before it
    writes anything, so a mistyped ``--root`` never becomes a new, empty workspace. ``missing``: what the
    script itself lacks, said first (the analyzer: "memory bank not found").
    """
    from toolkit.core.errors import UserError

    ws = Workspace.at(root)
    if is_workspace(ws):
        return ws
    if ws.root.exists() and not ws.root.is_dir():
        raise UserError(f"--root {ws.root} is a file; give the workspace folder (the one that holds "
                        f"{PRODUCTION_MODEL_NAME}, memory-bank/ and training/)")
    where = ("does not exist" if not ws.root.exists() else "is not a training workspace: no dataset file "
             f"(training/configs/dataset.yaml), no production model ({PRODUCTION_MODEL_NAME}) and no memory bank")
    raise UserError(f"{missing + ': ' if missing else ''}{ws.root} {where} - {setup_hint(ws.root)}")


def inside_toolkit(path: str | Path) -> bool:
    """Is ``path`` the toolkit's own folder or a folder inside it (the code checkout)?"""
    path = Path(path).expanduser().resolve()
    return path == TOOLKIT_HOME or TOOLKIT_HOME in path.parents


def suggested_root(root: str | Path) -> Path:
    """Where to set a workspace up when ``root`` is not one: ``root`` itself, unless it lies in the
    toolkit's own folder (a workspace there would mix the plant's models and data into the code
    checkout): then a folder beside the toolkit."""
    root = Path(root).expanduser().resolve()
    return TOOLKIT_HOME.parent / "defect-workspace" if inside_toolkit(root) else root


def setup_hint(root: str | Path) -> str:
    """The words after "not a workspace": which --root to give, and the complete command that sets one up.

    Setup takes the class names from the production model, so the command needs no class list: the
    person copies the model in first (a step by hand, said in words; the command has no placeholder).
    """
    root = Path(root).expanduser().resolve()
    target = suggested_root(root)
    where = ("give --root the folder that holds your production model, or set a workspace up outside the "
             f"toolkit's folder: copy your production model to {target / PRODUCTION_MODEL_NAME}, then run"
             if target != root else
             f"check the --root path, or set a workspace up there: copy your production model to "
             f"{target / PRODUCTION_MODEL_NAME}, then run")
    return (f"{where} {command('setup_training.py', target)} (it takes the class names from the model) and "
            f"import labelled batches with {command('dataset_preparer.py', target)}; to try the toolkit on "
            f"synthetic data first: {command('training_pipeline.py', None, '--demo')}")


def model_names(paths: list[Any] | tuple[Any, ...]) -> list[str]:
    """Short names that tell models apart, for tables and verdicts: the file name; a training run's
    weights as ``<run folder>/best.pt`` (two runs' ``best.pt`` never read the same); where two names
    still match, more parent folders until they differ."""
    def label(path: Path, depth: int) -> str:
        words, folder = [path.name], path.parent
        while len(words) < depth and folder.name:
            if folder.name != "weights":  # ultralytics' RUN/weights/best.pt: the run folder says which
                words.insert(0, folder.name)
            folder = folder.parent
        return "/".join(words)

    items = [Path(str(p)) for p in paths]
    depths = [2 if p.parent.name == "weights" else 1 for p in items]
    names = [label(p, d) for p, d in zip(items, depths)]
    for _ in range(8):
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        depths = [d + 1 if n in clashes else d for n, d in zip(names, depths)]
        names = [label(p, d) for p, d in zip(items, depths)]
    return names


def run_weights(run_dir: str | Path, which: str = "best") -> Path:
    """``best.pt`` or ``last.pt`` of a training run folder (ultralytics' layout)."""
    return Path(run_dir) / "weights" / f"{which}.pt"

"""Prepare ultralytics to run with no network: nothing downloaded, nothing waited on.

Call ``prepare_ultralytics(workspace)`` before the first ``import ultralytics`` of a stage
(it imports it for you and returns the module). What it does, and why:

- ``YOLO_OFFLINE=1``: ultralytics' own online check answers "offline" at once instead of
  resolving DNS names (which can take seconds per try on a closed network).
- ``YOLO_AUTOINSTALL=false``: ultralytics never tries ``pip install`` behind the user's back.
- ``YOLO_CONFIG_DIR`` inside the workspace (``training/cache/ultralytics``): its settings file
  and fonts stay there, never in the user's home; every workspace is self-contained.
- Its fonts (Arial.ttf, Arial.Unicode.ttf) are provided from matplotlib's bundled DejaVu Sans,
  so plotting and dataset checks never try to download them.
- Settings ``sync`` and every logger integration (hub, wandb, mlflow, ...) off: no uploads.
- The GPU AMP self-check (which downloads a checkpoint) is replaced by a check that runs the
  model itself; on a CPU ultralytics skips it anyway.
- Its offline / download warnings are kept out of the user's way (debug log with ``-v``).
- ``ULTRALYTICS_SAFE_LOAD=1``: checkpoints are unpickled with ``torch.load(weights_only=True)``
  and ultralytics' allow-list of its own and torch's model classes, so a ``.pt`` file cannot run
  code while it loads. ``load_yolo`` is the one door through which the toolkit loads a model.
The environment variables are inherited by ultralytics' DDP workers (several GPUs).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import shutil
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_prepared_dir: Path | None = None


def _install_fonts(config_dir: Path) -> None:
    try:
        import matplotlib

        dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except Exception:  # matplotlib missing: ultralytics falls back to PIL's default font
        return
    for name in _FONT_NAMES:
        target = config_dir / name
        if not target.exists() and dejavu.exists():
            shutil.copyfile(dejavu, target)


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the moment of writing.

    Ultralytics' log handler keeps the stream it was created with; binding it to this proxy sends
    its lines to stderr (stdout holds only ``--json`` results) and survives later replacements
    of ``sys.stderr`` (pytest's capture, a caller's redirect) instead of writing to a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    @property
    def encoding(self) -> str:
        return getattr(sys.stderr, "encoding", "utf-8") or "utf-8"


_STDERR = _CurrentStderr()


class _OfflineNoiseFilter(logging.Filter):
    """Ultralytics' messages about being offline say nothing the user can act on."""

    _PHRASES = ("offline", "unable to download", "downloading https", "retry", "internet")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().lower()
        if any(p in message for p in self._PHRASES):
            logger.debug("ultralytics (offline): %s", record.getMessage())
            return False
        return True


def _amp_check_without_download(model) -> bool:
    """AMP on for CUDA, off elsewhere - without ultralytics' downloaded reference model."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return False
    if device.type != "cuda":
        return False
    logger.info("AMP: on (offline run: ultralytics' download-based AMP self-check skipped; "
                "add --set amp=False if losses turn NaN)")
    return True


def configure_environment(config_dir: str | Path) -> Path:
    """Set the environment variables; safe to call before or without importing ultralytics."""
    config_dir = Path(config_dir).resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"  # read by ultralytics at import; also patched below
    # ultralytics keeps its settings and fonts in the "Ultralytics" sub-folder of that dir
    fonts_dir = config_dir / "Ultralytics"
    fonts_dir.mkdir(exist_ok=True)
    _install_fonts(fonts_dir)
    return config_dir


def prepare_ultralytics(config_dir: str | Path, verbose: bool | None = None) -> ModuleType:
    """Make ultralytics offline-safe with its settings in ``config_dir``; return the module.

    ``config_dir`` is usually ``Workspace.ultralytics_config``. Ultralytics reads its config
    folder once, at first import: a second call with another folder in the same process keeps the
    first (logged at debug level), which is harmless since the settings written are the same.
    """
    global _prepared_dir
    config_dir = Path(config_dir).resolve()
    if _prepared_dir is None:
        configure_environment(config_dir)
        if verbose is not None:
            os.environ["YOLO_VERBOSE"] = "true" if verbose else "false"
        _prepared_dir = config_dir
    elif _prepared_dir != config_dir:
        logger.debug("ultralytics already prepared with %s; keeping it", _prepared_dir)

    # On its first import in a new config folder ultralytics prints a 3-line settings notice (with
    # `yolo settings` hints that do not apply here) on stdout, which would corrupt a stage's --json
    # output and only puzzles the user: keep it for -v. Its console handler, made during the import,
    # is pointed at stderr below.
    notice = io.StringIO()
    with contextlib.redirect_stdout(notice):
        import ultralytics
        from ultralytics.utils import LOGGER, SETTINGS
    if notice.getvalue().strip():
        logger.debug("ultralytics at first import: %s", " ".join(notice.getvalue().split()))

    wanted = {"sync": False, "hub": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
              "neptune": False, "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False,
              "openvino_msg": False}
    changes = {k: v for k, v in wanted.items() if k in SETTINGS and SETTINGS[k] != v}
    if changes:
        SETTINGS.update(changes)
    for handler in LOGGER.handlers:
        if type(handler) is logging.StreamHandler and handler.stream is not _STDERR:  # its console handler only
            handler.stream = _STDERR  # plain assignment: setStream would flush a possibly closed stream
    if not any(isinstance(f, _OfflineNoiseFilter) for f in LOGGER.filters):
        LOGGER.addFilter(_OfflineNoiseFilter())
    _require_safe_loading()
    try:
        import ultralytics.engine.trainer as trainer_module

        trainer_module.check_amp = _amp_check_without_download
    except ImportError:  # pragma: no cover - layout of another ultralytics release
        logger.debug("could not replace ultralytics' AMP check", exc_info=True)
    return ultralytics


def _require_safe_loading() -> None:
    """Turn ultralytics' restricted (weights_only) checkpoint loading on for this process, or refuse.

    Ultralytics reads ``ULTRALYTICS_SAFE_LOAD`` once, when it is first imported; a process that
    imported it before ``prepare_ultralytics`` (a test, a notebook) gets the module flag set too.
    An ultralytics or torch without restricted loading (torch < 2.6) would fall back to full
    unpickling silently: refused instead, since a model file could then run code.
    """
    from toolkit.core.errors import UserError

    try:
        import ultralytics.nn.tasks as tasks
        import ultralytics.utils as ul_utils
    except ImportError as exc:  # pragma: no cover - a broken install
        raise UserError(f"cannot import ultralytics ({exc}); reinstall requirements.txt") from None
    if not getattr(getattr(tasks, "_SafeLoad", None), "SUPPORTED", False) or not hasattr(tasks, "SAFE_LOAD"):
        raise UserError("this ultralytics/torch cannot load models without running code from the file "
                        "(needs ultralytics 8.4.x with torch >= 2.6); upgrade them (requirements.txt)")
    tasks.SAFE_LOAD = True
    ul_utils.SAFE_LOAD = True


def _unsafe_globals(path: str | Path) -> list[str]:
    """The Python objects a .pt file would import while unpickling (read from its opcodes, nothing run)."""
    try:
        import torch

        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint (a legacy pickle): torch's refusal names the object instead
        return []


def _load_error(path: str | Path, exc: BaseException) -> str:
    text = str(exc)
    chain = [exc, exc.__cause__, exc.__context__]
    refused = "outside the supported" in text or any(
        type(e).__name__ == "UnpicklingError" for e in chain if e is not None)
    if refused:
        named = [g for g in _unsafe_globals(path)
                 if not g.startswith(("torch.", "ultralytics.", "collections.", "numpy.", "builtins.", "pathlib."))]
        what = f" (it would call {', '.join(named[:3])})" if named else ""
        return (f"refused to load {path}: it is not a plain ultralytics checkpoint and loading it could run code "
                f"from the file{what}; only models saved by ultralytics are loaded - re-export it with "
                "ultralytics from a trusted copy")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = first.replace("ERROR ❌️", "").strip()
    return f"cannot load model {path}: {first[:300]} (is it a YOLOv8 detection model?)"


@contextlib.contextmanager
def _torch_warnings_to_debug_log():
    """torch's warnings while it unpickles (a pickle protocol it does not expect, a legacy file) go to the
    debug log: a refused file gets the one-line error only, a good one no noise."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                logger.debug("while loading a model: %s: %s", w.category.__name__, w.message)


def _refuse_reaching_out(path: str | Path) -> None:
    """A checkpoint whose pickle would call a class's constructor (a download, a file written outside the
    workspace) is refused before it is unpickled: toolkit/core/checkpoint_scan.py."""
    from toolkit.core.checkpoint_scan import reaching_out
    from toolkit.core.errors import UserError

    if str(path).endswith((".yaml", ".yml")):
        return
    why = reaching_out(path)
    if why:
        raise UserError(f"refused to load {path}: it is not a plain ultralytics checkpoint ({'; '.join(why[:2])}); "
                        "loading it could reach the network or write outside the workspace - only models saved "
                        "by ultralytics are loaded: re-export it with ultralytics from a trusted copy")


def load_yolo(path: str | Path, config_dir: str | Path):
    """``ultralytics.YOLO(path)`` for a local .pt or .yaml: offline and without running code from the file.

    Every model the toolkit loads (production, candidate, base model, archive, ``--from``,
    ``--scan``) comes through here. A checkpoint is unpickled with ``weights_only=True`` and
    ultralytics' allow-list; one that needs anything else (a pickle that would call a function)
    is refused with one line before any of its code runs. Architecture ``.yaml`` files are built
    without ``eval`` (ultralytics' restricted path).
    """
    from toolkit.core.errors import UserError

    path_str = str(path)
    if not path_str.endswith((".yaml", ".yml")) and not Path(path).is_file():
        raise UserError(f"model file not found: {path} (give the path of a YOLOv8 .pt file)")
    _refuse_reaching_out(path)
    ultralytics = prepare_ultralytics(config_dir)
    _require_safe_loading()
    try:
        with _torch_warnings_to_debug_log():
            model = ultralytics.YOLO(path_str)
    except Exception as exc:
        raise UserError(_load_error(path, exc)) from None
    require_detector(model, path)
    return model


def require_detector(model, path: str | Path) -> None:
    """UserError unless ``model`` (an ``ultralytics.YOLO``) holds a YOLO detection network with its class
    names: a checkpoint that loads but holds something else (a ``torch.nn.Linear``, a classifier, a
    segmentation model) would get ultralytics' 999 placeholder classes and fail at the first image."""
    from toolkit.core.errors import UserError
    from ultralytics.nn.tasks import DetectionModel

    inner = getattr(model, "model", None)
    task = getattr(model, "task", None)
    names = getattr(inner, "names", None)
    if not isinstance(inner, DetectionModel) or task != "detect" or not isinstance(names, (dict, list)) \
            or not names or len(names) != getattr(inner, "nc", len(names)):
        what = type(inner).__name__ if inner is not None else "nothing"
        raise UserError(f"{path} is not a YOLO detection model (it holds a {what}, task {task!r}); give a YOLOv8 "
                        "detection checkpoint (.pt) trained by ultralytics")


def load_checkpoint(path: str | Path, config_dir: str | Path) -> dict:
    """The checkpoint dict of a .pt file (``train_args``, ``epoch``, ...), loaded as safely as ``load_yolo``."""
    from toolkit.core.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"model file not found: {path} (give the path of a YOLOv8 .pt file)")
    _refuse_reaching_out(path)
    prepare_ultralytics(config_dir)
    _require_safe_loading()
    from ultralytics.nn.tasks import torch_safe_load

    try:
        with _torch_warnings_to_debug_log():
            ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:
        raise UserError(_load_error(path, exc)) from None
    return ckpt


def model_class_names(path: str | Path, config_dir: str | Path) -> list[str]:
    """Class names of a YOLO checkpoint, in class-id order."""
    model = load_yolo(path, config_dir)
    names = model.names
    if isinstance(names, dict):
        return [names[i] for i in sorted(names)]
    return list(names)

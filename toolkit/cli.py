"""The command-line contract every stage script shares.

``--root``, ``--json`` (the result on stdout, logs on stderr), ``-v``/``-q``; exit codes
0 success, 1 failure with one line that says what to fix, 2 usage error (argparse's own).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path, PurePath
from typing import Any, Callable

from toolkit.errors import UserError

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout and shows each flag's default."""


def build_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with the shared flags; ``doc`` (the module docstring) becomes the help text."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=_HelpFormatter)
    common = parser.add_argument_group("common options")
    common.add_argument("--root", type=Path, default=None,
                        help="workspace folder holding yolov8_model.pt, memory-bank/ and training/ "
                             "(default: the toolkit's own folder)")
    common.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (logs stay on stderr)")
    common.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_toolkit", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    handler._toolkit = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Our loggers speak for the toolkit; third-party chatter stays at warning level unless -v.
    for noisy in ("PIL", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def to_jsonable(obj: Any) -> Any:
    """Results (frozen dataclasses holding paths, tuples, dicts) to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def run_main(args: argparse.Namespace, execute: Callable[[argparse.Namespace], Any],
             describe: Callable[[Any], str] | None = None) -> int:
    """Run one stage for ``main()``: logging, error to one line, ``--json`` output, exit code."""
    configure_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    try:
        result = execute(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted by the user; nothing was promoted - rerun to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, traceback with -v
        logger.debug("unexpected failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc} (rerun with -v for the details)", file=sys.stderr)
        return EXIT_FAILURE
    if getattr(args, "json", False):
        print(json.dumps(to_jsonable(result), default=str))
    elif describe is not None and not getattr(args, "quiet", False):
        print(describe(result))
    return EXIT_OK

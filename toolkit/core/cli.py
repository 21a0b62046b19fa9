"""The command-line contract every stage script shares.

``--root``, ``--json`` (the result on stdout, logs on stderr), ``-v``/``-q``; exit codes
0 success, 1 failure with one line that says what to fix, 2 usage error (argparse's own).
A stage's options are generated from its config dataclass (``add_options``): flag, help text,
training.yaml key and default are declared once, on the field (``toolkit/core/config.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path, PurePath
from typing import Any, Callable

from toolkit.core.config import DEFAULTS, options_of
from toolkit.core.errors import Interrupted, UserError
from toolkit.core.redact import MaskingFormatter

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout; each option's help states its default itself (once)."""


def build_parser(doc: str | None, prog: str | None = None,
                 root_default: str = "the toolkit's own folder") -> argparse.ArgumentParser:
    """A parser with the shared flags; ``doc`` (the module docstring) becomes the help text."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=_HelpFormatter)
    common = parser.add_argument_group("common options")
    common.add_argument("--root", type=Path, default=None,
                        help="workspace folder holding yolov8_model.pt, memory-bank/ and training/ "
                             f"(default: {root_default})")
    common.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on stdout (logs stay on stderr)")
    common.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def _human_value(value: Any) -> str:
    """A default as a person writes it on the command line: ``not set``, ``0.25,0.6``, ``80/10/10``."""
    if value in ("", None) or value == [] or value == {}:
        return "not set"
    if isinstance(value, dict):
        numbers = [v for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(value) and abs(sum(numbers) - 1.0) < 1e-6:  # shares: percentages, as --split takes them
            return "/".join(f"{v * 100:g}" for v in numbers)
        return ", ".join(f"{k} {_human_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(_human_value(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _default_text(keys: tuple[str, ...], default: Any) -> str:
    if keys:
        where = " and ".join(keys)
        value = DEFAULTS
        for part in keys[0].split("."):
            value = value[part]
        return f" (training.yaml {where}, default: {_human_value(value)})"
    if default is None or isinstance(default, bool) or default == () or default == "":
        return ""
    return f" (default: {default})"


def add_options(parser: argparse.ArgumentParser, config_type: type, exclude: tuple[str, ...] = ()) -> None:
    """One argparse option per flagged field of ``config_type`` (a frozen config dataclass)."""
    groups: dict[Any, Any] = {g.title: g for g in parser._action_groups}  # join groups the caller made
    for field, opt in options_of(config_type):
        if not opt.flag or field.name in exclude:
            continue
        target = parser
        if opt.group:
            if opt.group not in groups:
                groups[opt.group] = parser.add_argument_group(opt.group)
            target = groups[opt.group]
        if opt.exclusive:
            if ("x", opt.exclusive) not in groups:
                groups[("x", opt.exclusive)] = target.add_mutually_exclusive_group()
            target = groups[("x", opt.exclusive)]
        kwargs: dict[str, Any] = {"dest": field.name}
        if isinstance(field.default, bool):
            kwargs["action"] = "store_false" if field.default else "store_true"
            kwargs["default"] = field.default
        else:
            kwargs["default"] = None  # not given: the field's default (or training.yaml) applies
            if opt.repeat:
                kwargs["action"] = "append"
            for name in ("type", "metavar", "choices", "nargs", "const"):
                if getattr(opt, name) is not None:
                    kwargs[name] = getattr(opt, name)
        default = None if opt.keys or isinstance(field.default, bool) else field.default
        kwargs["help"] = (opt.help + _default_text(opt.keys, default)).replace("%", "%%")
        target.add_argument(opt.flag, **kwargs)


def config_from_args(config_type: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The config of ``config_type`` from parsed flags; ``root`` resolved; ``fixed`` wins."""
    from toolkit.core.layout import Workspace

    values: dict[str, Any] = {}
    for field, opt in options_of(config_type):
        if not opt.flag or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if value is None:
            continue
        if opt.parse is not None:
            value = opt.parse(value)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    if "root" in {f.name for f in dataclasses.fields(config_type)}:
        values["root"] = Workspace.at(getattr(args, "root", None)).root
    values.update(fixed)
    return config_type(**values)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: Any, limit: int = 400) -> str:
    """An error message as one line: colour codes dropped, URL passwords masked, the first non-empty
    line, capped."""
    from toolkit.core.redact import mask_url

    lines = [line.strip() for line in mask_url(_ANSI.sub("", str(text))).splitlines() if line.strip()]
    first = lines[0] if lines else str(text).strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _print_stdout(text: str) -> None:
    """Print the result; a closed pipe (``--json | head``) is the reader's choice, not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


# ``logger.info(..., extra=FILE_ONLY)``: a line for the run's log file that the terminal already
# shows in other words (the pipeline's decision: its result says it once, on stdout).
FILE_ONLY = {"file_only": True}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (a redirect, a test's capture),
    never to a stream that was closed since logging was configured; ``FILE_ONLY`` records are left
    to the log file."""

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        return not getattr(record, "file_only", False) and bool(super().filter(record))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_toolkit", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(MaskingFormatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
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
        print(f"error: {one_line(exc, 1000)}", file=sys.stderr)
        return EXIT_FAILURE
    except Interrupted as exc:  # the stage said what was kept and how to go on
        print(f"error: {one_line(exc, 1000)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted by the user; nothing half-done was kept - run the same command again to "
              "start over", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment problem: one line, traceback with -v
        logger.debug("unexpected failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {one_line(exc)} (rerun with -v for the details)", file=sys.stderr)
        return EXIT_FAILURE
    if getattr(args, "json", False):
        _print_stdout(json.dumps(to_jsonable(result), default=str))
    elif describe is not None and not getattr(args, "quiet", False):
        _print_stdout(describe(result))
    return EXIT_OK

"""Progress bars on loops a person waits for; silent when stderr is not a terminal."""
from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    return sys.stderr.isatty() and logging.getLogger().getEffectiveLevel() <= logging.INFO


def progress_bar(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """``tqdm`` on a terminal, the bare iterable otherwise (logs of scheduled runs stay clean)."""
    if not progress_enabled():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False, file=sys.stderr)

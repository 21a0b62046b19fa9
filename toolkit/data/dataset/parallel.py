"""The checks of a batch on a pool: threads, or forked worker processes for big batches (Linux)."""
from __future__ import annotations

import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import replace
import os
from typing import Callable, Sequence, TypeVar

from toolkit.data.dataset.checks import CheckedImage, check_image
from toolkit.data.labels.source import SourceImage

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [fn(x) for x in chunk]


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, kind: str = "thread",
                 on_done: Callable[[int], None] | None = None, chunk: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a pool, results in input order; ``on_done(n)`` after each chunk.

    Items go out in chunks (one future per image cost more than checking a small image). Threads
    by default: decoding (cv2), hashing and file I/O release the GIL, threads start at once and
    share memory; ``kind="process"`` is there to measure (benchmarks/bench_prepare.py).
    """
    workers = workers or default_workers()
    if workers <= 1 or len(items) < 2:
        out = []
        for x in items:
            out.append(fn(x))
            if on_done:
                on_done(1)
        return out
    size = chunk or max(1, min(64, len(items) // (workers * 4)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    pool: Executor = (ThreadPoolExecutor(workers) if kind == "thread" else
                      ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)))
    results: list = [None] * len(chunks)
    with pool:
        futures = {pool.submit(_run_chunk, fn, c): i for i, c in enumerate(chunks)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(len(chunks[i]))
    return [r for part in results for r in part]


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the process that started it dies (even by SIGKILL).

    Linux: the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); the parent
    may have died before the call, hence the check of the parent pid after it. Elsewhere
    (Windows, macOS): a daemon thread waits on the parent process's sentinel and exits then.
    Without it, a killed preparer leaves its workers running under init for minutes.
    """
    import signal

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        from multiprocessing.connection import wait

        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _fork_available() -> bool:
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_FORKED_ITEMS: Sequence[SourceImage] = ()  # what forked check workers inherit (never pickled)


def _check_range(lo: int, hi: int) -> list[CheckedImage]:
    # The source item stays out of the result: the parent has it, and pickling Paths and boxes
    # back cost as much as the check of a small image.
    return [replace(check_image(_FORKED_ITEMS[i]), source=None) for i in range(lo, hi)]


def check_images(items: Sequence[SourceImage], workers: int | None = None, kind: str = "auto",
                 on_done: Callable[[int], None] | None = None) -> list[CheckedImage]:
    """``check_image`` of every item, in input order.

    ``kind="auto"``: forked worker processes where the OS forks (Linux) and the batch is large
    enough to pay for them, else threads. Measured on 2 cores (benchmarks/bench_prepare.py):
    threads do not scale past one core here - the checks' many short GIL-held steps (hashing,
    pHash, box checks) serialize them - while forked processes that inherit the items (nothing
    pickled on the way in) and send back compact results use both cores.
    """
    global _FORKED_ITEMS
    workers = workers or default_workers()
    if kind == "auto":
        kind = "process" if workers > 1 and len(items) >= 256 and _fork_available() else "thread"
    if kind != "process":
        return parallel_map(check_image, items, workers, "thread", on_done)
    if not _fork_available():
        return parallel_map(check_image, items, workers, "process", on_done)
    import multiprocessing

    import toolkit.data.phash  # noqa: F401 - numpy loaded once here, inherited by the forked workers (cv2 is not: see below)

    # Large chunks (few round trips), but several per worker so a slow one does not hold the end.
    size = max(1, min(1000, -(-len(items) // (workers * 3))))
    bounds = [(lo, min(lo + size, len(items))) for lo in range(0, len(items), size)]
    results: list = [None] * len(bounds)
    _FORKED_ITEMS = items
    try:
        # No cv2.setNumThreads in the children: after a fork it hangs (measured); OpenCV's own
        # parallel loops do run in a forked child (the checks use few: resize, rotate).
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_check_range, lo, hi): n for n, (lo, hi) in enumerate(bounds)}
            for fut in as_completed(futures):
                n = futures[fut]
                lo, hi = bounds[n]
                results[n] = [replace(c, source=items[i]) for i, c in zip(range(lo, hi), fut.result())]
                if on_done:
                    on_done(hi - lo)
    finally:
        _FORKED_ITEMS = ()
    return [r for part in results for r in part]

"""One writer per workspace: an OS-level file lock plus a note of who holds it.

Every stage that writes the workspace (setup, prepare, train, compare, analyze when it exports
or scans, the pipeline, rollback) holds this one lock while it runs; a second writer fails at
once with one line naming the holder. ``filelock`` uses ``fcntl.flock`` / ``msvcrt.locking``: the
operating system releases the lock when the holding process dies (SIGKILL, power loss of a
client), so a stale lock never blocks the next night's run and nobody deletes a lock file by
hand. The holder note (``pipeline.lock.json``) only serves the message a second writer prints.

The lock is re-entrant within one process: the pipeline holds it and calls the stages in-process,
and each stage takes it again without blocking itself.

Usage:
    @holds_workspace_lock("prepare")          # on a stage's run(config)
    def run(config): ...

    with workspace_lock(workspace, "rollback"):
        ...
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from toolkit.core.errors import WorkspaceBusy
from toolkit.core.files import atomic_write_json
from toolkit.core.layout import Workspace
from toolkit.core.reports import utc_now_iso

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# lock file -> [FileLock, depth, pid] for the locks this process holds (the pid: a forked child
# inherits this dict but is not the holder).
_HELD: dict[str, list] = {}


def _holder_note(workspace: Workspace):
    return workspace.lock_file.with_suffix(".lock.json")


def lock_holder(workspace: Workspace) -> str:
    """Who holds the lock, in words, from the holder note ("another run" when it is unreadable)."""
    try:
        info = json.loads(_holder_note(workspace).read_text())
        return f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, started {info.get('started')})"
    except (OSError, ValueError, AttributeError):
        return "another run"


@contextmanager
def workspace_lock(workspace: Workspace, what: str = "pipeline run") -> Iterator[None]:
    """Hold the workspace lock for the duration of the block; a second holder fails at once.

    Re-entrant within one process: a block inside a block of the same process just goes on
    (the outer holder's note stays). A workspace folder that does not exist yet has nothing to
    protect and gets no lock file (a failed run leaves no debris there).
    """
    key = str(workspace.lock_file)
    held = _HELD.get(key)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    if not workspace.root.is_dir():
        yield
        return
    from filelock import FileLock, Timeout

    made_folder = not workspace.lock_file.parent.exists()
    workspace.lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(workspace.lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise WorkspaceBusy(f"the workspace {workspace.root} is busy: {lock_holder(workspace)} holds its lock; "
                        "wait for it to finish (the lock is released automatically if it dies)") from None
    _HELD[key] = [lock, 1, os.getpid()]
    failed = True
    try:
        atomic_write_json(_holder_note(workspace), {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                                    "started": utc_now_iso()})
        yield
        failed = False
    finally:
        _HELD.pop(key, None)
        lock.release()
        if failed and made_folder:
            _remove_lock_debris(workspace)


def _remove_lock_debris(workspace: Workspace) -> None:
    """A run that failed in a folder it made only for its lock (a wrong --root, nothing set up)
    leaves nothing behind: the lock files go, and the folder when it is empty."""
    for path in (workspace.lock_file, _holder_note(workspace)):
        try:
            path.unlink()
        except OSError:
            pass
    try:
        workspace.lock_file.parent.rmdir()  # only when empty: whatever the run made stays
    except OSError:
        pass


def holds_workspace_lock(what: str, when: Callable[[Any], bool] | None = None) -> Callable[[F], F]:
    """Decorate a stage's ``run(config, ...)``: it runs holding the lock of ``config.root``'s
    workspace (only when ``when(config)`` is true, if given: a stage that only reads)."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def locked(config: Any, *args: Any, **kwargs: Any) -> Any:
            if when is not None and not when(config):
                return fn(config, *args, **kwargs)
            with workspace_lock(Workspace.at(config.root), what):
                return fn(config, *args, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate

"""One pipeline run per workspace: an OS-level file lock plus a note of who holds it.

``filelock`` uses ``fcntl.flock`` / ``msvcrt.locking``: the operating system releases the lock
when the holding process dies (SIGKILL, power loss of a client), so a stale lock never blocks
the next night's run and nobody has to delete a lock file by hand. The holder note
(``pipeline.lock.json``) only serves the message that a second run prints.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

from toolkit.errors import UserError
from toolkit.files import atomic_write_json
from toolkit.layout import Workspace
from toolkit.reports import utc_now_iso

logger = logging.getLogger(__name__)


def _holder_note(workspace: Workspace):
    return workspace.lock_file.with_suffix(".lock.json")


@contextmanager
def workspace_lock(workspace: Workspace, what: str = "pipeline run") -> Iterator[None]:
    """Hold the workspace lock for the duration of the block; a second holder fails at once."""
    from filelock import FileLock, Timeout

    workspace.lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(workspace.lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = "another run"
        try:
            info = json.loads(_holder_note(workspace).read_text())
            holder = f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, started {info.get('started')})"
        except (OSError, json.JSONDecodeError):
            pass
        raise UserError(f"the workspace {workspace.root} is busy: {holder} holds its lock; "
                        "wait for it to finish (the lock is released automatically if it dies)") from None
    try:
        atomic_write_json(_holder_note(workspace), {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                                    "started": utc_now_iso()})
        yield
    finally:
        lock.release()

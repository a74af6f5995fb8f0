"""The writer lock of a collection folder: one writer at a time across processes and threads.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with writer_lock(folder):
    ...     with writer_lock(folder):  # re-entrant within a process
    ...         pass

An exclusive ``fcntl.flock`` on ``COLLECTION/.ragloom.lock``. The kernel drops it when the holder exits,
SIGKILL included, so a crashed writer never leaves the collection locked. Within one process a re-entrant
thread lock per folder guards the one file descriptor (two descriptors of one file would lock each other out).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rag.errors import CollectionBusyError

LOCK_FILE = ".ragloom.lock"
DEFAULT_TIMEOUT_S = 600.0

log = logging.getLogger(__name__)
_GUARD = threading.Lock()
_HELD: dict[Path, _Held] = {}  # folder -> this process's lock on it


class _Held:
    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd = -1


@contextmanager
def writer_lock(folder: str | Path, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Hold the collection's writer lock; ``CollectionBusyError`` if another keeps it past ``timeout``."""
    folder = Path(folder).resolve()
    with _GUARD:
        held = _HELD.setdefault(folder, _Held())
    if not held.thread_lock.acquire(timeout=timeout):
        raise CollectionBusyError(f"collection {folder} is being written by another thread of this process")
    try:
        if held.depth == 0:
            held.fd = _acquire(folder, timeout)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                os.close(held.fd)  # closing the descriptor releases the flock
                held.fd = -1
    finally:
        held.thread_lock.release()


def _acquire(folder: Path, timeout: float) -> int:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if delay == 0.005:
                log.warning("waiting for %s: another process is writing this collection", folder)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise CollectionBusyError(
                    f"collection {folder} is being written by another process (waited {timeout:g} s); "
                    "try again when it has finished"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

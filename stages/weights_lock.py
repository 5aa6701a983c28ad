"""The lock that lets one worker at a time download a model type's weights.

``models/.<type>.lock`` carries a POSIX record lock (``fcntl.lockf``), which NFSv4 (EFS) honours
across hosts, like the job lease's lock in ``infra/volume.py``. It is taken by polling, never by
blocking: a thread stuck in ``lockf`` could not be cancelled, so a worker asked to stop while
another one downloads would hang in its shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

from contracts.enums import StageName
from stages.errors import Interrupted


def lock_path(models_dir: Path) -> Path:
    return models_dir.parent / f".{models_dir.name}.lock"


# POSIX record locks belong to the process: a second lockf from this process would succeed, and
# closing any descriptor of the file would drop the lock. So holders in this process (several
# worker slots) are kept apart here first, and the file is opened only by the one that wins.
_HELD_HERE: set[Path] = set()
_HELD_HERE_GUARD = threading.Lock()


class WeightsLock:
    """An exclusive lock on one model type's weights, between processes and within one."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        with _HELD_HERE_GUARD:
            if self.path in _HELD_HERE:
                return False
            _HELD_HERE.add(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    self._forget()
                    return False
                raise
        except BaseException:
            self._forget()
            raise
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.lockf(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            self._forget()

    def _forget(self) -> None:
        with _HELD_HERE_GUARD:
            _HELD_HERE.discard(self.path)


@asynccontextmanager
async def hold(
    path: Path,
    should_stop: Callable[[], bool],
    poll_s: float,
    on_wait: Callable[[], None] = lambda: None,
) -> AsyncIterator[None]:
    """Wait for the lock without blocking the event loop, giving up when asked to stop.

    Polling instead of a blocking ``lockf`` in a thread: a thread stuck in ``lockf`` could not
    be cancelled, and the worker's shutdown would wait for another worker's download to end.
    ``on_wait`` is called once, when the lock is found taken.
    """
    lock = WeightsLock(path)
    waited = False
    while not lock.try_acquire():
        if not waited:
            on_wait()
            waited = True
        if should_stop():
            raise Interrupted("the worker is shutting down", stage=StageName.PROVISION)
        await asyncio.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()

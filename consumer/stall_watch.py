"""Say so, loudly and with stacks, when something blocks the worker's event loop.

Every slot, every heartbeat and every lease renewal of a worker run on one event loop. A call
that blocks it (a synchronous download, a ``Popen`` whose child never reaches ``exec``) freezes
them all: messages reappear, leases expire and other workers take the jobs over, while this
worker's own log stays silent. So a watchdog thread (``faulthandler``'s) is re-armed by the loop
every second (at most); if the loop fails to re-arm it for ``dump_after_s``, the thread writes every
thread's stack to stderr while the stall is still going on, which names the blocking call. When
the loop comes back, ``event_loop_stalled`` is logged with how long it was gone. Stacks hold file
names, lines and function names only, never values, so no secret can reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import structlog

log = structlog.get_logger("loraq.loop")

_TICK_S = 1.0  # at most; always well inside the limit, or a healthy loop would trip it


def _stderr() -> TextIO | None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):
            continue
    return None


@contextlib.asynccontextmanager
async def stall_watch(dump_after_s: float) -> AsyncIterator[None]:
    """Watch the running loop while the block runs; ``dump_after_s`` <= 0 turns it off."""
    stream = _stderr()
    if dump_after_s <= 0 or stream is None:
        yield
        return
    faulthandler.dump_traceback_later(dump_after_s, file=stream)
    task = asyncio.create_task(_rearm(dump_after_s, stream))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        faulthandler.cancel_dump_traceback_later()


async def _rearm(dump_after_s: float, stream: TextIO) -> None:
    loop = asyncio.get_running_loop()
    tick = min(_TICK_S, dump_after_s / 4)
    while True:
        before = loop.time()
        await asyncio.sleep(tick)
        late = loop.time() - before - tick
        faulthandler.dump_traceback_later(dump_after_s, file=stream)
        if late >= dump_after_s:
            log.error("event_loop_stalled", stalled_s=round(late, 1))

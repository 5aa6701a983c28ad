"""The worker: ``slots`` receive loops, and one ``shutdown()`` with named phases.

Shutdown (safe to call twice): stop polling → ask running jobs to checkpoint and hand back
their messages → wait for them within the grace period → cancel what is left. Heartbeats keep
running while jobs drain, so no message reappears on another worker before it is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from consumer.job_runner import JobRunner
from infra.queue import JobQueue

log = structlog.get_logger("loraq.worker")


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        runner: JobRunner,
        *,
        stop_requested: asyncio.Event,
        slots: int = 1,
        wait_seconds: int = 20,
        visibility_timeout: int = 120,
        grace_s: float = 90.0,
    ) -> None:
        self._queue = queue
        self._runner = runner
        self._stop_jobs = stop_requested
        self._slots = slots
        self._wait = wait_seconds
        self._visibility = visibility_timeout
        self._grace = grace_s
        self._polling = True
        self._idle: dict[int, asyncio.Task[None]] = {}
        self._busy: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._shutdown_started = False

    async def run(self) -> None:
        """Poll until ``shutdown()``; returns once its phases have all finished."""
        await asyncio.gather(*(self._slot(i) for i in range(self._slots)))
        await self._stopped.wait()

    async def _slot(self, index: int) -> None:
        while self._polling:
            receive = asyncio.create_task(self._receive_and_run())
            self._idle[index] = receive
            try:
                await receive
            except asyncio.CancelledError:
                if self._polling:
                    raise
            except Exception:  # a failed receive (network, throttling) must not end the worker
                log.exception("receive_failed")
                await asyncio.sleep(1)
            finally:
                self._idle.pop(index, None)

    async def _receive_and_run(self) -> None:
        messages = await self._queue.receive(
            wait_seconds=self._wait, visibility_timeout=self._visibility
        )
        for message in messages:
            job = asyncio.create_task(self._runner.handle(message))
            self._busy.add(job)
            try:
                # Shielded: cancelling a waiting receive must never cancel the job itself.
                await asyncio.shield(job)
            finally:
                self._busy.discard(job)

    async def shutdown(self) -> None:
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        log.info("shutdown", phase="stop_polling", running_jobs=len(self._busy))
        self._polling = False
        busy = set(self._busy)
        # Cancels waiting receives; a slot running a job only stops waiting (the job is shielded).
        for task in list(self._idle.values()):
            task.cancel()
        log.info("shutdown", phase="drain", running_jobs=len(busy))
        self._stop_jobs.set()
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self._grace)
            log.info("shutdown", phase="cancel", still_running=len(pending))
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("shutdown", phase="closed")
        self._stopped.set()

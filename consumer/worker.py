"""The worker: ``slots`` receive loops, and one ``shutdown()`` with named phases.

Shutdown (safe to call twice): stop polling → ask running jobs to checkpoint and hand back
their messages → wait for them within the grace period → cancel what is left. Heartbeats keep
running while jobs drain, so no message reappears on another worker before it is handed back.

A long poll in flight is never cancelled: SQS (and moto) would still deliver a message to the
abandoned request and keep it invisible for a whole visibility timeout. The poll is allowed to
finish (at most ``wait_seconds``) and whatever it brings is handed straight back.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from consumer.job_runner import JobRunner
from infra.queue import JobQueue, QueueMessage

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
        self._busy: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._shutdown_started = False

    async def run(self) -> None:
        """Poll until ``shutdown()``; returns once its phases have all finished."""
        await asyncio.gather(*(self._slot() for _ in range(self._slots)))
        await self._stopped.wait()

    async def _slot(self) -> None:
        while self._polling:
            try:
                messages = await self._queue.receive(
                    wait_seconds=self._wait, visibility_timeout=self._visibility
                )
            except Exception:  # a failed receive (network, throttling) must not end the worker
                log.exception("receive_failed")
                await asyncio.sleep(1)
                continue
            if not self._polling:
                await self._hand_back(messages)
                return
            for message in messages:
                await self._run(message)

    async def _run(self, message: QueueMessage) -> None:
        job = asyncio.create_task(self._runner.handle(message))
        self._busy.add(job)
        try:
            await job
        except asyncio.CancelledError:
            if self._polling:
                raise  # we are being cancelled ourselves, not past the shutdown grace
        except Exception:  # the runner turns failures into events; this is a bug's last stop
            log.exception("job_crashed", message_id=message.message_id)
        finally:
            self._busy.discard(job)

    async def _hand_back(self, messages: list[QueueMessage]) -> None:
        for message in messages:
            with contextlib.suppress(Exception):
                await self._queue.change_visibility(message, 0)
        if messages:
            log.info("shutdown", phase="handed_back", messages=len(messages))

    async def shutdown(self) -> None:
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        log.info("shutdown", phase="stop_polling", running_jobs=len(self._busy))
        self._polling = False
        busy = set(self._busy)
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

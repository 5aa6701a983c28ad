"""Keep a running job's message invisible and its lease alive, every ``interval`` seconds.

The visibility timeout stays short (a dead worker's job reappears within it); this heartbeat is
what lets a live worker hold a job for hours. If the lease is lost (our renewals stalled past
its expiry and another worker took the job), ``lost`` is set and the runner stops the job.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from infra.queue import JobQueue, QueueMessage
from infra.volume import JobStore, LeaseToken

log = structlog.get_logger("loraq.heartbeat")


class Heartbeat:
    def __init__(
        self,
        queue: JobQueue,
        store: JobStore,
        message: QueueMessage,
        token: LeaseToken,
        *,
        interval_s: float,
        visibility_s: int,
        lease_s: int,
    ) -> None:
        self._queue = queue
        self._store = store
        self._message = message
        self._token = token
        self._interval = interval_s
        self._visibility = visibility_s
        self._lease = lease_s
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._queue.change_visibility(self._message, self._visibility)
            except Exception as exc:  # a missed beat is survivable; the next one retries
                log.warning(
                    "heartbeat_visibility_failed", job_id=self._token.job_id, error=str(exc)
                )
            if not self._store.renew_lease(self._token, self._lease):
                log.error("lease_lost", job_id=self._token.job_id)
                self.lost.set()
                return

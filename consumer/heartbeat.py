"""Keep a running job's message invisible and its lease alive, every ``interval`` seconds.

The visibility timeout stays short (a dead worker's job reappears within it); this heartbeat is
what lets a live worker hold a job for hours. SQS caps one receipt's invisibility at 12 hours,
so before that the heartbeat hands off: it sends a continuation message for the same job (the
same body, ``job_id`` pinned, marked by the ``loraq-continuation`` attribute), then deletes the
old message. The job keeps running; the continuation stays on the queue as its safety net —
other workers find the live lease and put it back until the lease ends (``JobRunner``).

If the lease is lost (renewals stalled past its expiry and another worker took the job),
``lost`` is set and the runner stops the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from infra.queue import JobQueue, QueueMessage
from infra.volume import JobStore, LeaseToken

log = structlog.get_logger("loraq.heartbeat")

CONTINUATION_ATTRIBUTE = "loraq-continuation"
# SQS refuses ChangeMessageVisibility past 12 hours after the receive.
RECEIPT_LIMIT_S = 12 * 3600


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
        handoff_after_s: float,
        continuation_body: str,
    ) -> None:
        self._queue = queue
        self._store = store
        self._token = token
        self._interval = interval_s
        self._visibility = visibility_s
        self._lease = lease_s
        self._handoff_after = handoff_after_s
        self._continuation_body = continuation_body
        # None once handed off: the continuation message is no longer ours to extend or delete.
        self.message: QueueMessage | None = message
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
            if self.message is not None:
                await self._extend(self.message)
            if not self._store.renew_lease(self._token, self._lease):
                log.error("lease_lost", job_id=self._token.job_id)
                self.lost.set()
                return

    async def _extend(self, message: QueueMessage) -> None:
        age = time.monotonic() - message.received_at
        try:
            if age + self._interval + self._visibility >= self._handoff_after:
                await self._hand_off(message)
            else:
                await self._queue.change_visibility(message, self._visibility)
        except Exception as exc:  # a missed beat is survivable; the next one retries
            log.warning("heartbeat_failed", job_id=self._token.job_id, error=str(exc))

    async def _hand_off(self, message: QueueMessage) -> None:
        # Send first, delete second: a crash between the two leaves two messages (harmless,
        # the lease and the ledger dedupe them), never none.
        new_id = await self._queue.send(
            self._continuation_body, attributes={CONTINUATION_ATTRIBUTE: self._token.job_id}
        )
        await self._queue.delete(message)
        self.message = None
        log.info(
            "handed_off",
            job_id=self._token.job_id,
            continuation=new_id,
            receipt_age_s=round(time.monotonic() - message.received_at, 1),
        )

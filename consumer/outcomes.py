"""How a run ends, and what happens to its message: succeeded, failed, interrupted.

Terminal writes are shielded: a shutdown arriving while the result is being published must not
lose the event or the acknowledgement. Attempts are counted in the ledger, not by SQS receive
counts, because deferrals and hand-offs receive a message without attempting the job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from consumer.events import EventPublisher
from consumer.heartbeat import CONTINUATION_ATTRIBUTE
from consumer.job import Job, qualified_field
from consumer.policy import RetryPolicy
from contracts.enums import ErrorCode, EventType, JobStatus, StageName, StageStatus
from contracts.events import FailedData, InterruptedData, SucceededData
from contracts.ledger import Ledger, StageError
from infra.queue import JobQueue
from infra.volume import JobStore, LeaseToken
from stages.errors import Interrupted, StageFailure

log = structlog.get_logger("loraq.job")

MAX_SEND_DELAY_S = 900  # SQS's DelaySeconds limit


class Outcomes:
    def __init__(
        self, queue: JobQueue, store: JobStore, events: EventPublisher, policy: RetryPolicy
    ) -> None:
        self._queue = queue
        self._store = store
        self._events = events
        self._policy = policy

    async def emit(self, job: Job, event_type: EventType, data: Any) -> None:
        await self._events.publish(event_type, data, model_type=job.model_type)

    async def settle(self, job: Job, *, delete: bool = False, visible_in: int = 0) -> None:
        """Delete the job's message, or make it visible again after ``visible_in`` seconds."""
        message = job.current_message
        if message is None:
            return  # handed off: the continuation resolves itself against the ledger
        if delete:
            await self._queue.delete(message)
        else:
            await self._queue.change_visibility(message, visible_in)

    async def succeeded(self, job: Job, ledger: Ledger) -> None:
        result = self._store.load_result(job.job_id)
        if result is None:
            raise RuntimeError("publish completed without writing result.json")
        ledger.status = JobStatus.SUCCEEDED
        self._store.save_ledger(ledger)
        await asyncio.shield(self._finish_succeeded(job, SucceededData(**result.model_dump())))

    async def _finish_succeeded(self, job: Job, data: SucceededData) -> None:
        await self.emit_terminal(job, EventType.JOB_SUCCEEDED, data)
        await self.settle(job, delete=True)

    async def emit_terminal(self, job: Job, event_type: EventType, data: Any) -> None:
        """Publish a terminal event and remember in the ledger that every sink has it."""
        await self.emit(job, event_type, data)
        ledger = self._store.load_ledger(job.job_id)
        if ledger is not None and not ledger.terminal_published:
            ledger.terminal_published = True
            self._store.save_ledger(ledger)

    async def hold_back(self, job: Job, delay_s: int) -> None:
        """The terminal event could not go out: come back later without spending a receive.

        A fresh copy (a continuation) is sent with a delay and the current message deleted, so
        a long outage of the event sinks never walks the message into the dead-letter queue.
        """
        message = job.current_message
        await self._queue.send(
            job.continuation_body(),
            attributes={CONTINUATION_ATTRIBUTE: job.job_id},
            delay_s=min(delay_s, MAX_SEND_DELAY_S),
        )
        if message is not None:
            await self._queue.delete(message)

    async def interrupted(
        self, job: Job, stop: Interrupted, token: LeaseToken, *, lease_lost: bool
    ) -> None:
        """Hand the job back at once: another worker resumes from the checkpoint just written.

        The message is replaced by a fresh copy instead of made visible again, so a graceful
        stop never counts against the receive limit that sends poison to the dead-letter queue.
        """
        reason = "the lease was lost to another worker" if lease_lost else stop.reason
        await self.emit(
            job,
            EventType.JOB_INTERRUPTED,
            InterruptedData(job_id=job.job_id, stage=stop.stage, reason=reason, step=stop.step),
        )
        message = job.current_message
        if lease_lost or message is None:
            return  # the job is someone else's now, or its continuation already waits
        # Released first, so whoever receives the copy can take the job without waiting.
        self._store.release_lease(token)
        await asyncio.shield(self._requeue(job))

    async def _requeue(self, job: Job) -> None:
        assert job.current_message is not None
        await self._queue.send(
            job.continuation_body(), attributes={CONTINUATION_ATTRIBUTE: job.job_id}
        )
        await self._queue.delete(job.current_message)

    async def failed(self, job: Job, ledger: Ledger, failure: StageFailure) -> None:
        ledger.failed_attempts += 1
        attempt = ledger.failed_attempts
        stage = _failed_stage(ledger)
        message = job.redactor(failure.message)
        log.warning(
            "job_attempt_failed",
            code=failure.code.value,
            stage=stage,
            attempt=attempt,
            retryable=failure.retryable,
            error=message,
        )
        # SQS dead-letters the message after its own receive limit whatever we count: when
        # that is next, this attempt is the last one.
        final = self._policy.is_final(attempt) or self._policy.is_final(job.message.receive_count)
        if failure.retryable and not final:
            self._store.save_ledger(ledger)
            delay = self._policy.delay_s(attempt)
            await self.emit(
                job,
                EventType.JOB_INTERRUPTED,
                InterruptedData(
                    job_id=job.job_id,
                    stage=stage,
                    reason=message,
                    code=failure.code,
                    retry_in_s=delay,
                    attempt=attempt,
                ),
            )
            await self.settle(job, visible_in=delay)
            return
        ledger.status = JobStatus.FAILED
        ledger.failed_stage = stage
        ledger.error = StageError(
            code=failure.code,
            message=message,
            field=qualified_field(failure.field),
            retryable=False,
        )
        self._store.save_ledger(ledger)
        await asyncio.shield(self._final_failure(job, ledger, attempt))

    async def _final_failure(self, job: Job, ledger: Ledger, attempt: int) -> None:
        await self.publish_failed(job, ledger, attempt)
        if self._policy.has_dead_letter_queue and self._policy.is_final(job.message.receive_count):
            # Left visible: the next receive exceeds maxReceiveCount and SQS moves it to the DLQ.
            await self.settle(job, visible_in=0)
        else:
            await self.settle(job, delete=True)

    async def publish_failed(self, job: Job, ledger: Ledger, attempt: int) -> None:
        error = ledger.error or StageError(
            code=ErrorCode.INTERNAL_ERROR, retryable=False, message="the job failed"
        )
        data = FailedData(
            job_id=job.job_id,
            stage=ledger.failed_stage,
            attempt=attempt,
            retryable=False,
            code=error.code,
            field=error.field,
            message=job.redactor(error.message),
        )
        await self.emit_terminal(job, EventType.JOB_FAILED, data)


def _failed_stage(ledger: Ledger) -> StageName | None:
    """The stage that failed this attempt (None: the request was refused before any stage)."""
    for name, record in ledger.stages.items():
        if record.status is StageStatus.FAILED:
            return name
    return None

"""Run one received message: receive → lease → run stages → publish → ack.

A message is deleted only after its terminal event was published; everything else leaves it
on the queue, where the visibility timeout, the receive count and the dead-letter queue decide
what happens next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from consumer.events import EventPublisher, EventsUndelivered, JobSinkFactory
from consumer.heartbeat import RECEIPT_LIMIT_S, Heartbeat
from consumer.job import Job
from consumer.lost_runs import count_lost_run, mark_worker_lost
from consumer.messages import Rejection, parse_request
from consumer.outcomes import MAX_SEND_DELAY_S, Outcomes
from consumer.policy import RetryPolicy
from contracts.enums import ErrorCode, EventType, JobStatus, StageName
from contracts.events import AcceptedData, FailedData, SucceededData
from contracts.ledger import Lease, Ledger
from infra.queue import JobQueue, QueueMessage
from infra.redact import Redactor, redacting
from infra.s3 import S3Objects
from infra.settings import Settings
from infra.volume import JobStore, LeaseHeld, LeaseToken, utcnow
from stages.context import StageContext
from stages.errors import Interrupted, Permanent, Retryable, StageFailure
from stages.pipeline import StageHook, preflight, run_stages

log = structlog.get_logger("loraq.job")


class JobRunner:
    def __init__(
        self,
        queue: JobQueue,
        store: JobStore,
        publisher: EventPublisher,
        settings: Settings,
        policy: RetryPolicy,
        *,
        stop_requested: asyncio.Event,
        s3: S3Objects | None = None,
        stage_hook: StageHook | None = None,
        job_sinks: JobSinkFactory | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._events = publisher
        self._settings = settings
        self._policy = policy
        self._stop = stop_requested
        self._s3 = s3
        self._hook = stage_hook or log_stage
        self._job_sinks = job_sinks
        self._outcomes = Outcomes(queue, store, publisher, policy)

    async def handle(self, message: QueueMessage) -> None:
        parsed = parse_request(message.body, message.message_id)
        if isinstance(parsed, Rejection):
            await self._reject(message, parsed)
            return
        job = Job.of(message, parsed)
        with structlog.contextvars.bound_contextvars(job_id=job.job_id), redacting(job.redactor):
            try:
                await self._handle_job(job)
            except EventsUndelivered as exc:
                # The outcome is in the ledger; a delayed copy of the message comes back to
                # publish it again once the sinks are back.
                log.warning("terminal_event_undelivered", error=str(exc))
                await self._outcomes.hold_back(job, self._policy.delay_s(1))

    async def _handle_job(self, job: Job) -> None:
        if await self._replay_finished(job):
            return
        try:
            token = self._store.acquire_lease(
                job.job_id, self._settings.worker_id, self._settings.lease_seconds
            )
        except LeaseHeld as held:
            await self._defer(job, held.lease)
            return
        try:
            async with self._own_sinks(job):
                await self._run_leased(job, token)
        finally:
            self._store.release_lease(token)

    @contextlib.asynccontextmanager
    async def _own_sinks(self, job: Job) -> AsyncIterator[None]:
        """The job's own sinks (its Hub repo's UPDATES/) while it runs here, whatever the end.

        Best-effort: a sink that cannot be built is logged and skipped, never a failed job.
        """
        sink = None
        if self._job_sinks is not None:
            try:
                sink = self._job_sinks(job.job_id, job.request)
            except Exception as exc:
                log.warning("job_sink_unavailable", error=job.redactor(str(exc)))
        if sink is None:
            yield
            return
        self._events.attach(job.job_id, sink)
        try:
            yield
        finally:
            # Shielded: the final status (and its download link) goes out even on a late cancel.
            await asyncio.shield(self._events.detach(job.job_id))

    async def _reject(self, message: QueueMessage, rejection: Rejection) -> None:
        # An invalid message that claims the id of a real job must not fail that job in the
        # eyes of its subscribers: it is reported under its own message id.
        job_id = rejection.job_id
        if self._store.load_ledger(job_id) is not None:
            job_id = message.message_id
        log.warning(
            "request_rejected", job_id=job_id, code=rejection.code.value, field=rejection.field
        )
        data = FailedData(
            job_id=job_id,
            code=rejection.code,
            field=rejection.field,
            message=rejection.message,
            retryable=False,
        )
        await self._events.publish(EventType.JOB_FAILED, data, model_type=None)
        await self._queue.delete(message)

    async def _defer(self, job: Job, lease: Lease) -> None:
        """Another runner holds the job: put the message back until its lease would end.

        A continuation waits like this for the whole run. Before SQS's receive count would
        send it to the dead-letter queue, it is replaced by a fresh copy: the job is alive.
        """
        remaining = (lease.expires_at - utcnow()).total_seconds()
        delay = int(min(max(remaining + 1, 1), RECEIPT_LIMIT_S - 60))
        log.info("job_leased_elsewhere", holder=lease.worker_id, retry_in_s=delay)
        if self._policy.is_final(job.message.receive_count):
            # The job id is pinned: a body without one would otherwise become a new job.
            await self._queue.send(
                job.continuation_body(),
                attributes=job.message.attributes,
                delay_s=min(delay, MAX_SEND_DELAY_S),
            )
            await self._queue.delete(job.message)
        else:
            await self._queue.change_visibility(job.message, delay)

    async def _replay_finished(self, job: Job) -> bool:
        """A finished job received again publishes its stored outcome instead of re-running.

        A continuation of a finished job whose terminal event is out is only a safety net that
        outlived its run: it is removed without a second event.
        """
        ledger = self._store.load_ledger(job.job_id)
        if ledger is None or ledger.status is JobStatus.RUNNING:
            return False
        if job.is_continuation and ledger.terminal_published:
            await self._queue.delete(job.message)
            return True
        if ledger.status is JobStatus.SUCCEEDED and (result := self._store.load_result(job.job_id)):
            data: Any = SucceededData(**result.model_dump())
            await self._outcomes.emit_terminal(job, EventType.JOB_SUCCEEDED, data)
        else:
            await self._outcomes.publish_failed(job, ledger, attempt=ledger.failed_attempts)
        await self._queue.delete(job.message)
        return True

    async def _run_leased(self, job: Job, token: LeaseToken) -> None:
        ledger = self._open_ledger(job, token)
        try:
            if self._policy.has_lost_too_many_runs(ledger.lost_runs):
                await self._fail_lost(job, ledger)
            else:
                await self._run_heartbeated(job, ledger, token)
        finally:
            self._close_run(job.job_id, token)

    async def _run_heartbeated(self, job: Job, ledger: Ledger, token: LeaseToken) -> None:
        settings = self._settings
        job.heartbeat = Heartbeat(
            self._queue,
            self._store,
            job.message,
            token,
            interval_s=settings.heartbeat_every,
            visibility_s=settings.visibility_timeout,
            lease_s=settings.lease_seconds,
            handoff_after_s=settings.handoff_after_s,
            continuation_body=job.continuation_body(),
        )
        async with job.heartbeat:
            await self._outcomes.emit(
                job,
                EventType.JOB_ACCEPTED,
                AcceptedData(
                    job_id=job.job_id,
                    model_type=job.request.model_type,
                    delivery=job.message.receive_count,
                    resumed=ledger.deliveries > 1,
                ),
            )
            try:
                await self._run_pipeline(job, ledger, job.heartbeat.lost)
            except Interrupted as stop:
                await self._outcomes.interrupted(
                    job, stop, token, lease_lost=job.heartbeat.lost.is_set()
                )
                return
            except StageFailure as failure:
                await self._outcomes.failed(job, ledger, failure)
                return
            except asyncio.CancelledError:
                # Cancelled past the shutdown grace: hand the message back before going.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._outcomes.settle(job, visible_in=0))
                raise
            except Exception as exc:  # a bug must fail one job, never the worker
                log.exception("stage_crashed")
                await self._outcomes.failed(job, ledger, _internal(exc, job.redactor))
                return
        await self._outcomes.succeeded(job, ledger)

    def _open_ledger(self, job: Job, token: LeaseToken) -> Ledger:
        ledger = self._store.load_ledger(job.job_id)
        if ledger is None:
            now = utcnow()
            ledger = Ledger(
                job_id=job.job_id, model_type=job.request.model_type, created_at=now, updated_at=now
            )
            self._store.save_request(job.job_id, job.request.redacted())
        if count_lost_run(ledger):
            log.warning(
                "previous_run_lost",
                lost_runs=ledger.lost_runs,
                stage=ledger.last_started_stage(),
                limit=self._policy.max_lost_runs,
            )
        ledger.open_run = token.token
        ledger.deliveries += 1
        self._store.save_ledger(ledger)
        return ledger

    def _close_run(self, job_id: str, token: LeaseToken) -> None:
        """Whatever way the run ended here, it did not vanish: the next one must not count it.

        Reloaded and checked, so a run that lost its lease never overwrites the new holder's.
        """
        ledger = self._store.load_ledger(job_id)
        if ledger is not None and ledger.open_run == token.token:
            ledger.open_run = None
            self._store.save_ledger(ledger)

    async def _fail_lost(self, job: Job, ledger: Ledger) -> None:
        """The job took its worker down on each of its last runs: stop feeding it workers."""
        stage = ledger.last_started_stage()
        error = mark_worker_lost(
            ledger,
            f"the job's runs ended with their worker's death {ledger.lost_runs} times{{where}} "
            "({cause}); it is not run again so that it takes no more workers down",
        )
        ledger.open_run = None
        log.error("job_lost_too_many_runs", lost_runs=ledger.lost_runs, stage=stage)
        await self._outcomes.failed(job, ledger, Permanent(error.code, error.message))

    async def _run_pipeline(self, job: Job, ledger: Ledger, lease_lost: asyncio.Event) -> None:
        try:
            preflight(job.request)
        except StageFailure:
            self._end_run(ledger, lease_lost)
            raise
        stop = AnyEvent(self._stop, lease_lost)
        ctx = StageContext(
            job_id=job.job_id,
            request=job.request,
            paths=self._store.paths(job.job_id),
            store=self._store,
            settings=self._settings,
            ledger=ledger,
            emit=lambda event_type, data: self._outcomes.emit(job, event_type, data),
            stop_requested=stop,
            s3=self._s3,
            redact=job.redactor,
        )
        try:
            await run_stages(ctx, self._store.save_ledger, self._hook)
        finally:
            stop.close()
            self._end_run(ledger, lease_lost)

    def _end_run(self, ledger: Ledger, lease_lost: asyncio.Event) -> None:
        """Before the outcome is handled: a hand-back may reach another worker at once."""
        if not lease_lost.is_set():
            ledger.open_run = None
            self._store.save_ledger(ledger)


def _internal(exc: Exception, redactor: Redactor) -> StageFailure:
    return Retryable(ErrorCode.INTERNAL_ERROR, redactor(f"{type(exc).__name__}: {exc}"))


async def log_stage(stage: StageName, body: Callable[[], Awaitable[None]]) -> None:
    with structlog.contextvars.bound_contextvars(stage=stage.value):
        log.info("stage_started")
        await body()
        log.info("stage_completed")


class AnyEvent(asyncio.Event):
    """An event set when either source is set; ``close`` stops watching them."""

    def __init__(self, *sources: asyncio.Event) -> None:
        super().__init__()
        self._watchers = [asyncio.ensure_future(self._follow(s)) for s in sources]

    async def _follow(self, source: asyncio.Event) -> None:
        await source.wait()
        self.set()

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()

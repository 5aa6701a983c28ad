"""The failure no worker lived to publish: jobs that SQS dead-lettered while they were running.

A job whose worker dies on its message's last receive (its earlier receives spent on retryable
failures or redeliveries) is moved to the dead-letter queue by SQS, and no ``loraq.job.failed``
was ever published: every worker that could have said so is dead. Its ledger still says
``running``. So each worker looks at the dead-letter queue every few minutes. For a message whose
job is still ``running`` on the volume and leased by nobody, it takes the lease and fails the
job with ``worker_lost``, naming the stage the last run died in. The message itself stays in the
DLQ (it is the operators' record and their alarm): it is only hidden until the next sweep, which
finds the job failed and leaves it alone (or, if SNS was down, publishes the failure again). A
message whose job another worker runs (a redrive in progress) or already ended is never touched.
"""

from __future__ import annotations

import asyncio

import structlog

from consumer.job import Job
from consumer.lost_runs import count_lost_run, mark_worker_lost
from consumer.messages import Rejection, parse_request
from consumer.outcomes import Outcomes
from contracts.enums import JobStatus
from contracts.ledger import Ledger
from infra.queue import JobQueue, QueueMessage
from infra.volume import JobStore, LeaseHeld

log = structlog.get_logger("loraq.dead_letters")

# Per sweep: enough for any burst of dead jobs; the rest wait for the next sweep.
_MAX_PER_SWEEP = 50


class DeadLetterSweep:
    def __init__(
        self,
        dead_letters: JobQueue,
        store: JobStore,
        outcomes: Outcomes,
        *,
        worker_id: str,
        lease_s: int,
        interval_s: float,
    ) -> None:
        self._dlq = dead_letters
        self._store = store
        self._outcomes = outcomes
        self._worker_id = worker_id
        self._lease_s = lease_s
        self._interval_s = interval_s

    async def run(self) -> None:
        """Sweep every ``interval_s`` until cancelled; a failed sweep is logged, never fatal."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("dead_letter_sweep_failed", error=str(exc))
            await asyncio.sleep(self._interval_s)

    async def sweep(self) -> list[str]:
        """Fail the silently dead jobs among the DLQ's messages; returns their job ids."""
        failed = []
        # Hidden past the next sweep, so that one sweep sees each message once.
        hide_s = int(self._interval_s * 2) + 1
        for _ in range(_MAX_PER_SWEEP):
            messages = await self._dlq.receive(wait_seconds=0, visibility_timeout=hide_s)
            if not messages:
                break
            for message in messages:
                try:
                    job_id = await self._settle(message)
                except Exception as exc:
                    # One message the sweep cannot settle must not hide the others behind it.
                    log.warning(
                        "dead_letter_unsettled", message_id=message.message_id, error=str(exc)
                    )
                    continue
                if job_id:
                    failed.append(job_id)
        return failed

    async def _settle(self, message: QueueMessage) -> str | None:
        parsed = parse_request(message.body, message.message_id)
        if isinstance(parsed, Rejection):
            return None  # never a job: its rejection went out (or is the DLQ's to explain)
        job = Job.of(message, parsed)
        ledger = self._store.load_ledger(job.job_id)
        if (
            ledger is not None
            and ledger.status is JobStatus.FAILED
            and not ledger.terminal_published
        ):
            # Failed here on an earlier sweep while SNS was down: say it again.
            await self._outcomes.publish_failed(job, ledger, ledger.failed_attempts)
            return None
        if not _is_running(ledger):
            return None
        try:
            token = self._store.acquire_lease(job.job_id, self._worker_id, self._lease_s)
        except LeaseHeld:
            return None  # someone runs it now: it is not dead
        try:
            ledger = self._store.load_ledger(job.job_id)  # again, under the lease
            if ledger is None or not _is_running(ledger):
                return None
            self._fail(ledger)
            log.error(
                "dead_lettered_job_failed",
                job_id=job.job_id,
                stage=ledger.failed_stage,
                lost_runs=ledger.lost_runs,
            )
            await self._outcomes.publish_failed(job, ledger, ledger.failed_attempts)
            return job.job_id
        finally:
            self._store.release_lease(token)

    def _fail(self, ledger: Ledger) -> None:
        count_lost_run(ledger)
        error = mark_worker_lost(
            ledger,
            "the job's worker died{where} on its message's last delivery ({cause}), and SQS "
            "moved the message to the dead-letter queue",
        )
        ledger.failed_attempts += 1
        ledger.status = JobStatus.FAILED
        ledger.failed_stage = ledger.last_started_stage()
        ledger.error = error
        self._store.save_ledger(ledger)


def _is_running(ledger: Ledger | None) -> bool:
    return ledger is not None and ledger.status is JobStatus.RUNNING

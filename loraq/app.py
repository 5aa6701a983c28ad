"""Build a worker from ``Settings`` and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from consumer.dead_letters import DeadLetterSweep
from consumer.events import EventPublisher, EventSink
from consumer.job_runner import JobRunner
from consumer.outcomes import Outcomes
from consumer.policy import DEFAULT_MAX_RECEIVES, RetryPolicy
from consumer.reconcile import reconcile
from consumer.stall_watch import stall_watch
from consumer.worker import Worker
from infra.aws import AwsClients
from infra.hub_updates import updates_sink_for
from infra.queue import SqsJobQueue
from infra.s3 import S3Objects
from infra.settings import Settings
from infra.sns import SnsEventSink
from infra.volume import JobStore
from stages.pipeline import StageHook

log = structlog.get_logger("loraq.app")


async def run_worker(
    settings: Settings,
    *,
    slots: int = 1,
    stop: asyncio.Event | None = None,
    stage_hook: StageHook | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, or until ``stop`` is set when the caller owns the process."""
    async with AwsClients() as aws:
        queue = SqsJobQueue(aws.sqs, settings.queue_url)
        store = JobStore(settings.volume)
        reconcile(store, settings.worker_id)
        sinks: list[EventSink] = []
        if settings.topic_arn:
            sinks.append(SnsEventSink(aws.sns, settings.topic_arn))
        publisher = EventPublisher(
            store,
            sinks,
            source=f"loraq/worker/{settings.worker_id}",
            progress_interval_s=settings.progress_interval_s,
        )
        policy = await _retry_policy(queue, settings)
        stop_jobs = asyncio.Event()
        runner = JobRunner(
            queue,
            store,
            publisher,
            settings,
            policy,
            stop_requested=stop_jobs,
            s3=S3Objects(aws.s3),
            stage_hook=stage_hook,
            job_sinks=functools.partial(updates_sink_for, settings=settings, store=store),
        )
        worker = Worker(
            queue,
            runner,
            stop_requested=stop_jobs,
            slots=slots,
            wait_seconds=settings.wait_time_seconds,
            visibility_timeout=settings.visibility_timeout,
            grace_s=settings.shutdown_grace_s,
        )
        if stop is None:
            _on_signals(worker)
        else:
            watcher = asyncio.ensure_future(_shutdown_when(stop, worker))
        log.info(
            "worker_started",
            worker_id=settings.worker_id,
            queue=settings.queue_url,
            max_receives=policy.max_receives,
            max_lost_runs=policy.max_lost_runs,
            volume=str(settings.volume),
        )
        sweep = await _dead_letter_sweep(aws, queue, store, publisher, policy, settings)
        try:
            async with stall_watch(settings.loop_stall_dump_s):
                await worker.run()
        finally:
            if stop is not None:
                watcher.cancel()
            if sweep is not None:
                sweep.cancel()
                # Awaited while the AWS clients are still open: a sweep cut short releases its
                # lease, and a failure it saved but did not publish goes out on the next sweep.
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep


async def _dead_letter_sweep(
    aws: AwsClients,
    queue: SqsJobQueue,
    store: JobStore,
    publisher: EventPublisher,
    policy: RetryPolicy,
    settings: Settings,
) -> asyncio.Task[None] | None:
    """Start sweeping the jobs queue's DLQ, when it has one and the worker may read it."""
    if settings.dead_letter_sweep_s <= 0:
        return None
    try:
        url = await queue.dead_letter_queue_url()
    except (BotoCoreError, ClientError) as exc:
        log.warning("dead_letter_queue_unreadable", error=str(exc))
        return None
    if url is None:
        return None
    sweep = DeadLetterSweep(
        SqsJobQueue(aws.sqs, url),
        store,
        Outcomes(queue, store, publisher, policy),
        worker_id=settings.worker_id,
        lease_s=settings.lease_seconds,
        interval_s=settings.dead_letter_sweep_s,
    )
    return asyncio.create_task(sweep.run())


async def _retry_policy(queue: SqsJobQueue, settings: Settings) -> RetryPolicy:
    from_queue = await queue.max_receive_count()
    max_receives = settings.max_receives or from_queue or DEFAULT_MAX_RECEIVES
    if from_queue is not None and max_receives > from_queue:
        log.warning("max_receives_clamped", configured=max_receives, queue=from_queue)
        max_receives = from_queue
    # With a lower limit than the queue's, SQS would not dead-letter our last attempt: it
    # is deleted after its job.failed instead of coming back to be failed again.
    dead_letters = from_queue is not None and max_receives >= from_queue
    return RetryPolicy(
        max_receives=max_receives,
        has_dead_letter_queue=dead_letters,
        base_delay_s=settings.retry_base_delay_s,
        max_lost_runs=settings.max_lost_runs,
    )


async def _shutdown_when(stop: asyncio.Event, worker: Worker) -> None:
    await stop.wait()
    await worker.shutdown()


_PENDING: set[asyncio.Future[None]] = set()


def _on_signals(worker: Worker) -> None:
    loop = asyncio.get_running_loop()

    def begin_shutdown() -> None:
        # Keep a reference: the loop holds tasks weakly, and shutdown must run to its end.
        task = asyncio.ensure_future(worker.shutdown())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, begin_shutdown)

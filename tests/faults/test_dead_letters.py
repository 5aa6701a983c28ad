"""Jobs that SQS dead-lettered while their worker was dead get the job.failed nobody sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from consumer.dead_letters import DeadLetterSweep
from consumer.events import EventPublisher
from consumer.outcomes import Outcomes
from consumer.policy import RetryPolicy
from contracts.enums import EventType, JobStatus, ModelType, StageName, StageStatus
from contracts.ledger import Ledger
from infra.aws import AwsClients
from infra.local_stack import LocalStack
from infra.queue import SqsJobQueue
from infra.sns import SnsEventSink
from infra.volume import JobStore, utcnow
from loraq.demo import demo_request
from tests.conftest import drain_events, queue_depth, run_worker_until_terminal
from tests.faults.harness import wait_until

DATASET = "http://127.0.0.1:9/dataset.zip"  # never fetched: these jobs are past that


def _dead_letter(stack: LocalStack, body: dict[str, object] | str) -> None:
    """Where SQS puts a message after its last receive: the DLQ, body unchanged."""
    text = body if isinstance(body, str) else json.dumps(body)
    stack.client("sqs").send_message(QueueUrl=stack.dlq_url, MessageBody=text)


def _ledger(store: JobStore, job_id: str, status: JobStatus, *, died_in: StageName) -> None:
    now = utcnow()
    ledger = Ledger(job_id=job_id, model_type=ModelType.TINY, created_at=now, updated_at=now)
    ledger.status = status
    for name in StageName:
        record = ledger.stage(name)
        record.started_at = now
        if name is died_in:
            record.status, record.attempts = StageStatus.RUNNING, 1
            break
        record.status, record.attempts, record.completions = StageStatus.COMPLETED, 1, 1
    if status is JobStatus.RUNNING:
        ledger.open_run = "the-token-of-a-worker-killed-on-the-last-receive"
    else:
        ledger.terminal_published = True
    store.save_ledger(ledger)


async def test_a_sweep_fails_the_silently_dead_job_once_and_leaves_the_dlq_as_it_was(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN in the DLQ: a job whose ledger still says running (its worker was killed in
    train on the last receive), a job that failed for good with its event out, and a body
    that is no job WHEN the DLQ is swept twice THEN the first sweep publishes one job.failed
    (worker_lost, stage train, not retryable) and marks that ledger failed; the second
    publishes nothing; all three messages are still in the DLQ."""
    store = JobStore(tmp_path)
    _ledger(store, "died-silently", JobStatus.RUNNING, died_in=StageName.TRAIN)
    _ledger(store, "failed-loudly", JobStatus.FAILED, died_in=StageName.FETCH)
    _dead_letter(stack, demo_request(DATASET, stack, job_id="died-silently"))
    _dead_letter(stack, demo_request(DATASET, stack, job_id="failed-loudly"))
    _dead_letter(stack, "not a job at all")

    async with AwsClients() as aws:
        dlq = SqsJobQueue(aws.sqs, stack.dlq_url)
        publisher = EventPublisher(
            store, [SnsEventSink(aws.sns, stack.topic_arn)], source="t", progress_interval_s=0
        )
        outcomes = Outcomes(dlq, store, publisher, RetryPolicy(max_receives=3))
        sweep = DeadLetterSweep(dlq, store, outcomes, worker_id="sweeper", lease_s=30, interval_s=0)
        assert await sweep.sweep() == ["died-silently"]
        first = await asyncio.to_thread(drain_events, stack)
        # Hidden for one second by the sweep: wait until all three are back, then sweep again.
        await asyncio.to_thread(
            wait_until, lambda: _visible(stack) == 3, 30, "the DLQ messages to be visible"
        )
        assert await sweep.sweep() == []
    assert await asyncio.to_thread(drain_events, stack) == []

    assert [(e.subject, e.type) for e in first] == [("died-silently", EventType.JOB_FAILED)]
    data = first[0].data
    assert (data["code"], data["stage"], data["retryable"]) == ("worker_lost", "train", False)
    assert "last delivery" in data["message"]
    ledger = store.load_ledger("died-silently")
    assert ledger is not None and ledger.status is JobStatus.FAILED
    assert ledger.terminal_published and ledger.lost_runs == 1 and ledger.open_run is None
    assert store.read_lease("died-silently") is None
    assert queue_depth(stack, stack.dlq_url) == 3


def _visible(stack: LocalStack) -> int:
    attrs = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


async def test_a_sweep_leaves_a_job_that_a_live_worker_runs(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a running job in the DLQ whose lease a live worker holds (a redrive running it)
    WHEN the DLQ is swept THEN the job is not failed and nothing is published."""
    store = JobStore(tmp_path)
    _ledger(store, "redriven", JobStatus.RUNNING, died_in=StageName.TRAIN)
    store.acquire_lease("redriven", "a-live-worker", ttl_s=60)
    _dead_letter(stack, demo_request(DATASET, stack, job_id="redriven"))
    async with AwsClients() as aws:
        dlq = SqsJobQueue(aws.sqs, stack.dlq_url)
        publisher = EventPublisher(
            store, [SnsEventSink(aws.sns, stack.topic_arn)], source="t", progress_interval_s=0
        )
        sweep = DeadLetterSweep(
            dlq,
            store,
            Outcomes(dlq, store, publisher, RetryPolicy()),
            worker_id="sweeper",
            lease_s=30,
            interval_s=0,
        )
        assert await sweep.sweep() == []
    ledger = store.load_ledger("redriven")
    assert ledger is not None and ledger.status is JobStatus.RUNNING
    assert await asyncio.to_thread(drain_events, stack) == []


async def test_a_worker_finds_the_dlq_from_the_redrive_policy_and_sweeps_it(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a silently dead job in the DLQ WHEN a worker starts (DLQ known only through the
    jobs queue's redrive policy) THEN its job.failed worker_lost arrives."""
    _ledger(JobStore(tmp_path), "found-by-a-worker", JobStatus.RUNNING, died_in=StageName.CAPTION)
    _dead_letter(stack, demo_request(DATASET, stack, job_id="found-by-a-worker"))
    settings = stack.worker_settings(tmp_path, dead_letter_sweep_s=1)
    events = await run_worker_until_terminal(stack, settings, {"found-by-a-worker"}, 60)
    (failed,) = [e for e in events if e.type.is_terminal]
    assert (failed.type, failed.data["code"], failed.data["stage"]) == (
        EventType.JOB_FAILED,
        "worker_lost",
        "caption",
    )

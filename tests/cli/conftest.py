"""Events shaped like a worker's, published through the real SNS sink, and watch leftovers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts.enums import ErrorCode, EventType, ModelType, OutputMethod, StageName
from contracts.events import (
    AcceptedData,
    CloudEvent,
    EventData,
    FailedData,
    ProgressData,
    StageData,
    SucceededData,
)
from contracts.result import OutputInfo
from infra.aws import AwsClients
from infra.local_stack import LocalStack
from infra.sns import SnsEventSink
from infra.topic_watch import WATCH_QUEUE_PREFIX
from tests.cli.pty_process import PtyProcess


def event(kind: EventType, data: EventData) -> CloudEvent:
    return CloudEvent.of(kind, data, source="loraq/worker/test-1", model_type="tiny")


def start_events(job_id: str) -> list[CloudEvent]:
    return [
        event(EventType.JOB_ACCEPTED, AcceptedData(job_id=job_id, model_type=ModelType.TINY)),
        event(EventType.STAGE_STARTED, StageData(job_id=job_id, stage=StageName.FETCH)),
        event(EventType.STAGE_COMPLETED, StageData(job_id=job_id, stage=StageName.FETCH)),
        event(EventType.STAGE_STARTED, StageData(job_id=job_id, stage=StageName.TRAIN)),
    ]


def progress(job_id: str, step: int, total: int = 32, loss: float = 0.5) -> CloudEvent:
    return event(
        EventType.JOB_PROGRESS,
        ProgressData(
            job_id=job_id,
            epoch=1 + step // 8,
            step=step,
            total_steps=total,
            loss=loss,
            samples_per_s=4.0,
            eta_s=float(total - step),
            percent=round(100 * step / total, 2),
        ),
    )


def succeeded(job_id: str, url: str) -> CloudEvent:
    return event(
        EventType.JOB_SUCCEEDED,
        SucceededData(
            job_id=job_id,
            model_type=ModelType.TINY,
            model_name="Tiny DiT",
            epochs_completed=4,
            latest_epoch="epoch4",
            output=OutputInfo(
                download_url=url,
                safetensors_url=url.replace(".zip", ".safetensors"),
                download_method=OutputMethod.S3,
                expires_in_days=7,
            ),
        ),
    )


def failed(job_id: str) -> CloudEvent:
    return event(
        EventType.JOB_FAILED,
        FailedData(
            job_id=job_id,
            code=ErrorCode.DATASET_INVALID,
            stage=StageName.FETCH,
            field="input.dataset.images_url",
            message="the zip holds no images",
            retryable=False,
        ),
    )


async def publish(stack: LocalStack, events: list[CloudEvent]) -> None:
    """Through the worker's own SNS sink: the same message body and attributes."""
    async with AwsClients() as aws:
        sink = SnsEventSink(aws.sns, stack.topic_arn)
        for item in events:
            await sink.publish(item)


def watch_queues(stack: LocalStack) -> list[str]:
    reply = stack.client("sqs").list_queues(QueueNamePrefix=WATCH_QUEUE_PREFIX)
    return list(reply.get("QueueUrls", []))


def watch_subscriptions(stack: LocalStack) -> list[dict[str, str]]:
    """Subscriptions on the topic other than the stack's own watch queue."""
    subs = stack.client("sns").list_subscriptions_by_topic(TopicArn=stack.topic_arn)
    return [s for s in subs["Subscriptions"] if f":{WATCH_QUEUE_PREFIX}" in s["Endpoint"]]


@pytest.fixture
def watches() -> Iterator[list[PtyProcess]]:
    """The terminals a test starts, closed (their processes killed) whatever the outcome."""
    started: list[PtyProcess] = []
    yield started
    for process in started:
        process.close()

"""Shared fixtures: the real local stack (moto over HTTP) and an event collector."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from contracts.events import CloudEvent
from infra.local_stack import LocalStack, start_local_stack
from infra.settings import Settings
from loraq.app import run_worker


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """moto in server mode on 127.0.0.1, with the worker's AWS variables pointing at it."""
    local = start_local_stack()
    for name, value in local.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield local
    finally:
        local.stop()


def drain_events(stack: LocalStack, queue_url: str | None = None) -> list[CloudEvent]:
    """Everything waiting on the watch queue now (SNS → SQS, raw delivery)."""
    sqs = stack.client("sqs")
    url = queue_url or stack.watch_queue_url
    events: list[CloudEvent] = []
    while True:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = reply.get("Messages", [])
        if not messages:
            return events
        for message in messages:
            events.append(CloudEvent.model_validate_json(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def wait_for_terminal(
    stack: LocalStack, job_ids: set[str], timeout_s: float = 300, queue_url: str | None = None
) -> list[CloudEvent]:
    """Collect events until each job id has a terminal event (bounded by ``timeout_s``)."""
    sqs = stack.client("sqs")
    url = queue_url or stack.watch_queue_url
    events: list[CloudEvent] = []
    done: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while done < job_ids:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no terminal event for {job_ids - done}")
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in reply.get("Messages", []):
            event = CloudEvent.model_validate_json(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            events.append(event)
            if event.type.is_terminal:
                done.add(event.subject)
    return events


async def run_worker_until_terminal(
    stack: LocalStack, settings: Settings, job_ids: set[str], timeout_s: float
) -> list[CloudEvent]:
    """One real worker in this process until every job has a terminal event, then stopped
    (and awaited, so nothing of it outlives the test)."""
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:
        return await asyncio.to_thread(wait_for_terminal, stack, job_ids, timeout_s)
    finally:
        stop.set()
        await worker


def send_job(stack: LocalStack, body: dict[str, Any] | str) -> str:
    text = body if isinstance(body, str) else json.dumps(body)
    reply = stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=text)
    return str(reply["MessageId"])


def queue_depth(stack: LocalStack, url: str) -> int:
    attrs = stack.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(value) for value in attrs.values())

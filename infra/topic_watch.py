"""Follow one job's events live: a temporary SQS queue subscribed to the events topic.

SNS keeps nothing: a subscriber sees only what is published after it subscribed, and needs a
queue of its own to receive into. ``TopicWatch`` creates that queue (``loraq-watch-<id>``),
lets the topic send to it, subscribes it with a filter policy on the ``job_id`` message
attribute, so the queue only ever holds this job's events, and removes both again on close.
While it runs it keeps its queue's ``loraq:alive`` tag fresh, which is how a later watch tells
a live watch's queue from one abandoned by a killed watcher (``infra.watch_sweep``).
Raw message delivery makes each SQS body the CloudEvent itself, as ``SnsEventSink`` published it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError

from contracts.events import CloudEvent
from infra.watch_sweep import ALIVE_EVERY_S, ALIVE_TAG, WATCH_QUEUE_PREFIX

__all__ = ["WATCH_QUEUE_PREFIX", "TopicWatch", "queue_policy"]
# Long enough to outlive a suspended terminal (Ctrl-Z), short enough that an abandoned queue
# (a watcher killed with SIGKILL cannot clean up) does not keep events for days.
_RETENTION_S = 6 * 3600

_log = logging.getLogger(__name__)


def queue_policy(queue_arn: str, topic_arn: str) -> dict[str, Any]:
    """Only this topic may send to the queue (AWS refuses SNS deliveries without a policy)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }


class TopicWatch:
    """``async with TopicWatch(sqs, sns, topic_arn, job_id) as watch: await watch.receive(5)``.

    ``close()`` (run on leaving the block, cancellation included) unsubscribes first, so SNS
    stops delivering, then deletes the queue. It is safe to call twice.
    """

    def __init__(
        self,
        sqs: Any,
        sns: Any,
        topic_arn: str,
        job_id: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sqs = sqs
        self._sns = sns
        self._topic = topic_arn
        self._clock = clock
        self._alive_at = 0.0
        self.job_id = job_id
        self.queue_name = f"{WATCH_QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
        self.queue_url: str | None = None
        self.subscription_arn: str | None = None

    async def __aenter__(self) -> TopicWatch:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        self._alive_at = self._clock()
        reply = await self._sqs.create_queue(
            QueueName=self.queue_name,
            Attributes={"MessageRetentionPeriod": str(_RETENTION_S)},
            tags={ALIVE_TAG: str(int(self._alive_at))},
        )
        self.queue_url = str(reply["QueueUrl"])
        attrs = await self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )
        queue_arn = attrs["Attributes"]["QueueArn"]
        await self._sqs.set_queue_attributes(
            QueueUrl=self.queue_url,
            Attributes={"Policy": json.dumps(queue_policy(queue_arn, self._topic))},
        )
        subscribed = await self._sns.subscribe(
            TopicArn=self._topic,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={
                "RawMessageDelivery": "true",
                "FilterPolicy": json.dumps({"job_id": [self.job_id]}),
            },
            ReturnSubscriptionArn=True,
        )
        self.subscription_arn = str(subscribed["SubscriptionArn"])

    async def receive(self, wait_seconds: int) -> list[CloudEvent]:
        """The events waiting now (long-polling up to ``wait_seconds``), removed from the queue."""
        assert self.queue_url is not None, "open() first"
        reply = await self._sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        )
        await self._keep_alive()
        messages = reply.get("Messages", [])
        if not messages:
            return []
        await self._sqs.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        events = []
        for message in messages:
            try:
                events.append(CloudEvent.model_validate_json(message.get("Body", "")))
            except ValidationError:
                # Someone else's message on the topic with a matching job_id attribute.
                _log.warning("skipped a message that is not a loraq event")
        return events

    async def _keep_alive(self) -> None:
        now = self._clock()
        if now - self._alive_at < ALIVE_EVERY_S or self.queue_url is None:
            return
        self._alive_at = now
        try:
            await self._sqs.tag_queue(QueueUrl=self.queue_url, Tags={ALIVE_TAG: str(int(now))})
        except ClientError as exc:  # the next beat tries again; the sweep margin is 6 beats
            _log.warning("could not mark the watch queue alive: %s", exc)

    async def close(self) -> None:
        subscription, self.subscription_arn = self.subscription_arn, None
        queue, self.queue_url = self.queue_url, None
        try:
            if subscription:
                await self._sns.unsubscribe(SubscriptionArn=subscription)
        finally:
            # Even when unsubscribing failed: a queue without a reader is the bigger leak.
            if queue:
                await self._sqs.delete_queue(QueueUrl=queue)

"""SQS as the job queue: receive with long polling, extend visibility, delete, send.

The consumer depends on the ``JobQueue`` protocol, so unit tests can drive it with a fake.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    # String message attributes: loraq's own metadata travels here, never in the body contract.
    attributes: dict[str, str] = field(default_factory=dict)
    # When this receipt was taken (monotonic): SQS caps one receipt's invisibility at 12 hours.
    received_at: float = field(default_factory=time.monotonic)


class JobQueue(Protocol):
    async def receive(
        self, *, wait_seconds: int, visibility_timeout: int
    ) -> list[QueueMessage]: ...

    async def delete(self, message: QueueMessage) -> None: ...

    async def change_visibility(self, message: QueueMessage, timeout: int) -> None: ...

    async def send(
        self, body: str, *, attributes: dict[str, str] | None = None, delay_s: int = 0
    ) -> str: ...

    async def max_receive_count(self) -> int | None: ...


class SqsJobQueue:
    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._url = queue_url

    async def receive(self, *, wait_seconds: int, visibility_timeout: int) -> list[QueueMessage]:
        reply = await self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        return [
            QueueMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                attributes={
                    name: value["StringValue"]
                    for name, value in m.get("MessageAttributes", {}).items()
                    if "StringValue" in value
                },
            )
            for m in reply.get("Messages", [])
        ]

    async def delete(self, message: QueueMessage) -> None:
        await self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message.receipt_handle)

    async def change_visibility(self, message: QueueMessage, timeout: int) -> None:
        await self._sqs.change_message_visibility(
            QueueUrl=self._url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=timeout
        )

    async def send(
        self, body: str, *, attributes: dict[str, str] | None = None, delay_s: int = 0
    ) -> str:
        reply = await self._sqs.send_message(
            QueueUrl=self._url,
            MessageBody=body,
            DelaySeconds=delay_s,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value}
                for name, value in (attributes or {}).items()
            },
        )
        return str(reply["MessageId"])

    async def max_receive_count(self) -> int | None:
        policy = await self._redrive_policy()
        return None if policy is None else int(policy["maxReceiveCount"])

    async def dead_letter_queue_url(self) -> str | None:
        """The URL of the queue SQS dead-letters this one's messages to, from its redrive policy."""
        policy = await self._redrive_policy()
        if policy is None:
            return None
        # arn:aws:sqs:<region>:<account>:<name>
        _, _, _, _, account, name = str(policy["deadLetterTargetArn"]).split(":", 5)
        reply = await self._sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        return str(reply["QueueUrl"])

    async def _redrive_policy(self) -> dict[str, Any] | None:
        reply = await self._sqs.get_queue_attributes(
            QueueUrl=self._url, AttributeNames=["RedrivePolicy"]
        )
        policy = reply.get("Attributes", {}).get("RedrivePolicy")
        return dict(json.loads(policy)) if policy else None

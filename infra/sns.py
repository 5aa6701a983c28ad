"""SNS as an event sink: one CloudEvent per message, with attributes for filter policies."""

from __future__ import annotations

from typing import Any

from contracts.events import CloudEvent


class SnsEventSink:
    name = "sns"

    def __init__(self, sns: Any, topic_arn: str) -> None:
        self._sns = sns
        self._topic = topic_arn

    async def publish(self, event: CloudEvent) -> None:
        await self._sns.publish(
            TopicArn=self._topic,
            Message=event.model_dump_json(),
            MessageAttributes={
                key: {"DataType": "String", "StringValue": value}
                for key, value in event.message_attributes().items()
            },
        )

"""One delivery of one job: the message, the parsed request, and what identifies the job."""

from __future__ import annotations

import json
from dataclasses import dataclass

from consumer.heartbeat import CONTINUATION_ATTRIBUTE, Heartbeat
from contracts.request import JobInput, JobRequest
from infra.queue import QueueMessage
from infra.redact import Redactor


@dataclass
class Job:
    message: QueueMessage
    request: JobInput
    job_id: str
    redactor: Redactor
    heartbeat: Heartbeat | None = None

    @classmethod
    def of(cls, message: QueueMessage, request: JobRequest) -> Job:
        job_id = request.input.job_id or message.message_id
        return cls(message, request.input, job_id, Redactor(request.input.secret_values()))

    @property
    def model_type(self) -> str:
        return self.request.model_type.value

    @property
    def current_message(self) -> QueueMessage | None:
        """The message that stands for this job now (None once handed to a continuation)."""
        return self.heartbeat.message if self.heartbeat is not None else self.message

    @property
    def is_continuation(self) -> bool:
        return CONTINUATION_ATTRIBUTE in self.message.attributes

    def continuation_body(self) -> str:
        """The original body with ``job_id`` pinned, so a continuation names the same job."""
        body = json.loads(self.message.body)
        body["input"]["job_id"] = self.job_id
        return json.dumps(body)


def qualified_field(field: str | None) -> str | None:
    """Stage failures name request fields as parse errors do: ``input.dataset.images_url``."""
    if field is None or field.startswith("input"):
        return field
    return f"input.{field}"

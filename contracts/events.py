"""Events: CloudEvents 1.0 envelopes with a typed ``data`` per event type.

Every ``data`` carries ``job_id``; stage events carry ``stage``. Subscribers filter on the SNS
message attributes ``job_id``, ``event_type`` and ``model_type`` (see ``message_attributes``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contracts.enums import ErrorCode, EventType, ModelType, StageName
from contracts.result import JobResult


class EventData(BaseModel):
    """What every event's data carries: the job it is about."""

    model_config = ConfigDict(extra="forbid")

    job_id: str


class AcceptedData(EventData):
    model_type: ModelType | None = None
    delivery: int = 1
    resumed: bool = False


class StageData(EventData):
    stage: StageName
    attempt: int = 1
    duration_s: float | None = None


class ProgressData(EventData):
    stage: StageName = StageName.TRAIN
    epoch: int | None = None
    step: int
    total_steps: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    percent: float | None = None


class CheckpointData(EventData):
    stage: StageName = StageName.TRAIN
    step: int
    epoch: int | None = None
    tag: str


class InterruptedData(EventData):
    """The job stopped on this worker and will resume elsewhere (or here, after ``retry_in_s``)."""

    stage: StageName | None = None
    reason: str
    step: int | None = None
    code: ErrorCode | None = None
    retry_in_s: int | None = None
    attempt: int | None = None


class FailedData(EventData):
    code: ErrorCode
    stage: StageName | None = None
    field: str | None = None
    message: str
    retryable: bool
    attempt: int | None = None


class SucceededData(EventData, JobResult):
    """The seed's response, as the data of ``loraq.job.succeeded``."""


DATA_MODELS: dict[EventType, type[EventData]] = {
    EventType.JOB_ACCEPTED: AcceptedData,
    EventType.STAGE_STARTED: StageData,
    EventType.STAGE_COMPLETED: StageData,
    EventType.JOB_PROGRESS: ProgressData,
    EventType.JOB_CHECKPOINTED: CheckpointData,
    EventType.JOB_INTERRUPTED: InterruptedData,
    EventType.JOB_SUCCEEDED: SucceededData,
    EventType.JOB_FAILED: FailedData,
}


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: EventType
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str
    datacontenttype: str = "application/json"
    data: dict[str, Any]
    # Not part of CloudEvents' required set, but what SNS filter policies key on.
    loraqmodeltype: str | None = None

    @classmethod
    def of(
        cls, event_type: EventType, data: EventData, *, source: str, model_type: str | None = None
    ) -> CloudEvent:
        if not isinstance(data, DATA_MODELS[event_type]):
            raise TypeError(f"{event_type} takes {DATA_MODELS[event_type].__name__}")
        return cls(
            type=event_type,
            subject=data.job_id,
            source=source,
            data=data.model_dump(mode="json"),
            loraqmodeltype=model_type,
        )

    def payload(self) -> EventData:
        """The typed data, validated against this event type's model."""
        return DATA_MODELS[self.type].model_validate(self.data)

    def message_attributes(self) -> dict[str, str]:
        attrs = {"job_id": self.subject, "event_type": self.type.value}
        if self.loraqmodeltype:
            attrs["model_type"] = self.loraqmodeltype
        return attrs

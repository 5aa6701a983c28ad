"""A job's latest status: ``UPDATES/status.json`` on the Hub, and what ``loraq status`` prints.

Folded from the job's events (``fold``), so the same events always give the same status, whether
they are read from SNS, from the volume's ``events.jsonl`` or replayed after a crash. The final
status carries the download link, so it outlives the queue's memory of the job.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from contracts.enums import ErrorCode, EventType, JobStatus, StageName
from contracts.events import (
    AcceptedData,
    CloudEvent,
    FailedData,
    InterruptedData,
    ProgressData,
    StageData,
    SucceededData,
)


class StatusError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    field: str | None = None
    message: str
    retryable: bool


class JobStatusView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    status: JobStatus = JobStatus.RUNNING
    model_type: str | None = None
    stage: StageName | None = None
    percent: float | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    last_event: EventType | None = None
    updated_at: datetime | None = None
    # The last interruption's reason while the job waits to resume (cleared by progress).
    note: str | None = None
    download_url: str | None = None
    safetensors_url: str | None = None
    repo_url: str | None = None
    expires_in_days: float | None = None
    error: StatusError | None = None

    def fold(self, event: CloudEvent) -> JobStatusView:
        """The status after ``event``; events from another job are ignored."""
        if event.subject != self.job_id:
            return self
        view = self.model_copy(update={"last_event": event.type, "updated_at": event.time})
        if event.loraqmodeltype:
            view.model_type = event.loraqmodeltype
        data = event.payload()
        if isinstance(data, AcceptedData):
            view.status, view.error = JobStatus.RUNNING, None
        elif isinstance(data, StageData):
            view.stage = data.stage
            if event.type is EventType.STAGE_COMPLETED and data.stage is StageName.PUBLISH:
                view.percent = 100.0
        elif isinstance(data, ProgressData):
            view.stage, view.note = data.stage, None
            view.step, view.total_steps, view.epoch = data.step, data.total_steps, data.epoch
            view.loss = data.loss if data.loss is not None else view.loss
            view.eta_s, view.percent = data.eta_s, data.percent
        elif isinstance(data, InterruptedData):
            view.note = data.reason
        elif isinstance(data, SucceededData):
            view.status, view.stage, view.percent, view.eta_s = (
                JobStatus.SUCCEEDED,
                StageName.PUBLISH,
                100.0,
                0.0,
            )
            out = data.output
            view.download_url, view.safetensors_url = out.download_url, out.safetensors_url
            view.repo_url, view.expires_in_days = out.repo_url, out.expires_in_days
        elif isinstance(data, FailedData):
            view.status, view.stage = JobStatus.FAILED, data.stage or view.stage
            view.error = StatusError(
                code=data.code, field=data.field, message=data.message, retryable=data.retryable
            )
        return view


def fold_events(job_id: str, events: list[CloudEvent]) -> JobStatusView:
    view = JobStatusView(job_id=job_id)
    for event in events:
        view = view.fold(event)
    return view

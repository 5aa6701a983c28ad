"""The status view folded from events: what UPDATES/status.json and `loraq status` show."""

from __future__ import annotations

from contracts.enums import ErrorCode, EventType, JobStatus, ModelType, OutputMethod, StageName
from contracts.events import (
    AcceptedData,
    CloudEvent,
    EventData,
    FailedData,
    InterruptedData,
    ProgressData,
    StageData,
    SucceededData,
)
from contracts.result import OutputInfo
from contracts.status import fold_events


def _event(kind: EventType, data: EventData) -> CloudEvent:
    return CloudEvent.of(kind, data, source="test", model_type="tiny")


def test_progress_then_success_carries_the_download_link() -> None:
    events = [
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id="j1", model_type=ModelType.TINY)),
        _event(EventType.STAGE_STARTED, StageData(job_id="j1", stage=StageName.TRAIN)),
        _event(
            EventType.JOB_PROGRESS,
            ProgressData(job_id="j1", step=5, total_steps=10, loss=0.5, eta_s=3, percent=50),
        ),
        _event(EventType.JOB_PROGRESS, ProgressData(job_id="j1", step=6, total_steps=10)),
        _event(
            EventType.JOB_SUCCEEDED,
            SucceededData(
                job_id="j1",
                model_type=ModelType.TINY,
                model_name="Tiny",
                epochs_completed=2,
                latest_epoch="epoch2",
                output=OutputInfo(
                    download_url="https://x/y.safetensors?download=true",
                    download_method=OutputMethod.HUGGINGFACE,
                ),
            ),
        ),
    ]
    view = fold_events("j1", events)
    assert view.status is JobStatus.SUCCEEDED
    assert view.step == 6 and view.total_steps == 10
    assert view.loss == 0.5  # a progress event without a loss keeps the last known one
    assert view.percent == 100.0
    assert view.download_url == "https://x/y.safetensors?download=true"
    assert view.model_type == "tiny"


def test_failure_and_interruption_and_foreign_events() -> None:
    events = [
        _event(EventType.JOB_PROGRESS, ProgressData(job_id="j2", step=3, total_steps=9)),
        _event(EventType.JOB_INTERRUPTED, InterruptedData(job_id="j2", reason="worker stopping")),
        _event(EventType.JOB_PROGRESS, ProgressData(job_id="other", step=99)),
    ]
    view = fold_events("j2", events)
    assert view.status is JobStatus.RUNNING and view.note == "worker stopping" and view.step == 3
    failed = view.fold(
        _event(
            EventType.JOB_FAILED,
            FailedData(
                job_id="j2",
                code=ErrorCode.DATASET_INVALID,
                stage=StageName.FETCH,
                field="input.dataset.images_url",
                message="no images",
                retryable=False,
            ),
        )
    )
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.field == "input.dataset.images_url"
    assert failed.stage is StageName.FETCH

"""Event envelopes: CloudEvents 1.0, typed data, SNS filter attributes."""

from __future__ import annotations

import pytest

from contracts.enums import ErrorCode, EventType, StageName
from contracts.events import CloudEvent, FailedData, ProgressData, StageData


def test_envelope_is_cloudevents_with_filter_attributes() -> None:
    """GIVEN progress data WHEN wrapped THEN the envelope has CloudEvents fields and attributes."""
    event = CloudEvent.of(
        EventType.JOB_PROGRESS,
        ProgressData(job_id="j1", step=3, total_steps=9),
        source="loraq/worker/w",
        model_type="tiny",
    )
    dumped = event.model_dump(mode="json")
    assert dumped["specversion"] == "1.0" and dumped["type"] == "loraq.job.progress"
    assert dumped["subject"] == "j1" and dumped["data"]["job_id"] == "j1"
    assert event.message_attributes() == {
        "job_id": "j1",
        "event_type": "loraq.job.progress",
        "model_type": "tiny",
    }
    assert isinstance(
        CloudEvent.model_validate_json(event.model_dump_json()).payload(), ProgressData
    )


def test_data_must_match_the_type() -> None:
    """GIVEN stage data WHEN wrapped as a failure THEN it is refused."""
    with pytest.raises(TypeError):
        CloudEvent.of(
            EventType.JOB_FAILED, StageData(job_id="j", stage=StageName.FETCH), source="s"
        )


def test_failure_carries_code_field_and_retryable() -> None:
    """GIVEN a failure WHEN serialised THEN code, stage, field, message, retryable are present."""
    data = FailedData(
        job_id="j",
        code=ErrorCode.INVALID_REQUEST,
        field="input.model_type",
        message="bad",
        retryable=False,
    )
    event = CloudEvent.of(EventType.JOB_FAILED, data, source="s")
    assert {"code", "stage", "field", "message", "retryable"} <= set(event.data)
    assert EventType.JOB_FAILED.is_terminal and not EventType.JOB_PROGRESS.is_terminal

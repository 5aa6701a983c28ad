"""Consumer parts on fakes of our own interfaces: message parsing, event publishing, redaction."""

from __future__ import annotations

from pathlib import Path

from consumer.events import EventPublisher, EventsUndelivered
from consumer.messages import Rejection, parse_request
from consumer.policy import RetryPolicy
from contracts.enums import ErrorCode, EventType, StageName
from contracts.events import CloudEvent, FailedData, ProgressData, StageData
from infra.redact import Redactor
from infra.volume import JobStore


class FakeSink:
    name = "fake"

    def __init__(self, failures: int = 0) -> None:
        self.events: list[CloudEvent] = []
        self.failures = failures

    async def publish(self, event: CloudEvent) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink down")
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _publisher(tmp_path: Path, sink: FakeSink, clock: Clock) -> EventPublisher:
    return EventPublisher(
        JobStore(tmp_path),
        [sink],
        source="test",
        progress_interval_s=5,
        clock=clock,
        send_attempts=1,
    )


def test_bad_json_and_bad_fields_become_typed_rejections() -> None:
    """GIVEN malformed bodies WHEN parsed THEN typed rejections with code, field and job id."""
    bad_json = parse_request("{not json", "msg-1")
    assert isinstance(bad_json, Rejection) and bad_json.code is ErrorCode.INVALID_JSON
    assert bad_json.job_id == "msg-1"
    bad_field = parse_request('{"input": {"job_id": "mine", "model_type": "nope"}}', "msg-2")
    assert isinstance(bad_field, Rejection) and bad_field.code is ErrorCode.INVALID_REQUEST
    assert bad_field.job_id == "mine" and bad_field.field == "input.model_type"
    assert "more problems" in bad_field.message  # dataset is missing too


def test_rejection_never_echoes_a_secret() -> None:
    """GIVEN an invalid request holding a token WHEN rejected THEN the message has no token."""
    body = (
        '{"input": {"model_type": "tiny", "dataset": {"type": "images"}, '
        '"api_keys": {"huggingface_token": "hf_abcdefghijklmnopqrstuvwxyz123456", "x": 1}}}'
    )
    rejection = parse_request(body, "m")
    assert isinstance(rejection, Rejection)
    assert "hf_abcdefghijklmnopqrstuvwxyz" not in rejection.message


async def test_progress_is_throttled_but_terminal_and_final_steps_are_not(tmp_path: Path) -> None:
    """GIVEN a burst of progress WHEN published THEN one per interval, the last, the terminal."""
    sink, clock = FakeSink(), Clock()
    publisher = _publisher(tmp_path, sink, clock)
    for step in range(1, 5):
        await publisher.publish(
            EventType.JOB_PROGRESS,
            ProgressData(job_id="j", step=step, total_steps=10),
            model_type=None,
        )
    clock.now = 6
    await publisher.publish(
        EventType.JOB_PROGRESS, ProgressData(job_id="j", step=5, total_steps=10), model_type=None
    )
    await publisher.publish(
        EventType.JOB_PROGRESS, ProgressData(job_id="j", step=10, total_steps=10), model_type=None
    )
    await publisher.publish(
        EventType.JOB_FAILED,
        FailedData(job_id="j", code=ErrorCode.INTERNAL_ERROR, message="x", retryable=False),
        model_type=None,
    )
    steps = [e.data.get("step") for e in sink.events if e.type is EventType.JOB_PROGRESS]
    assert steps == [1, 5, 10]
    assert sink.events[-1].type is EventType.JOB_FAILED
    assert [e.id for e in JobStore(tmp_path).read_events("j")] == [e.id for e in sink.events]


async def test_undelivered_events_wait_in_the_outbox(tmp_path: Path) -> None:
    """GIVEN a sink that fails once WHEN the next event goes out THEN the first is flushed first."""
    sink, clock = FakeSink(failures=1), Clock()
    publisher = _publisher(tmp_path, sink, clock)
    first = StageData(job_id="j", stage=StageName.FETCH)
    await publisher.publish(EventType.STAGE_STARTED, first, model_type=None)
    assert publisher.undelivered == 1 and sink.events == []
    await publisher.publish(EventType.STAGE_COMPLETED, first, model_type=None)
    assert [e.type for e in sink.events] == [EventType.STAGE_STARTED, EventType.STAGE_COMPLETED]
    assert publisher.undelivered == 0


async def test_undeliverable_terminal_event_raises(tmp_path: Path) -> None:
    """GIVEN a dead sink WHEN a terminal event is published THEN the caller is told (keeps msg)."""
    sink, clock = FakeSink(failures=99), Clock()
    publisher = _publisher(tmp_path, sink, clock)
    data = FailedData(job_id="j", code=ErrorCode.INTERNAL_ERROR, message="x", retryable=False)
    try:
        await publisher.publish(EventType.JOB_FAILED, data, model_type=None)
    except EventsUndelivered:
        pass
    else:
        raise AssertionError("a terminal event was silently dropped")
    assert len(JobStore(tmp_path).read_events("j")) == 1  # still journaled on the volume


def test_redactor_masks_secrets_tokens_and_signatures() -> None:
    """GIVEN text with a known secret, a token shape and a presigned URL THEN all are masked."""
    redact = Redactor(["s3cr3t-value"])
    text = redact(
        "key s3cr3t-value, token hf_abcdefghijklmnopqrstuvwxyz12 at "
        "http://h/b/k?X-Amz-Signature=abcdef&X-Amz-Credential=AKIAXXXX&x=1"
    )
    assert "s3cr3t" not in text and "hf_abc" not in text and "abcdef" not in text
    assert "AKIAXXXX" not in text and "x=1" in text


def test_retry_delay_grows_and_the_last_receive_is_final() -> None:
    """GIVEN the policy WHEN asked per receive count THEN delays grow, capped; the max is final."""
    policy = RetryPolicy(max_receives=3)
    assert [policy.delay_s(n) for n in (1, 2, 3)] == [30, 60, 120]
    assert policy.delay_s(20) == 900
    assert not policy.is_final(2) and policy.is_final(3)

"""Per-job sinks: attached while a job runs here, best-effort, detached with a final flush."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from consumer.events import EventPublisher, EventSink, EventsUndelivered
from consumer.job_runner import JobRunner
from consumer.policy import RetryPolicy
from contracts.enums import ErrorCode, EventType, StageName
from contracts.events import AcceptedData, CloudEvent, FailedData, StageData
from contracts.request import JobInput
from infra.queue import QueueMessage
from infra.settings import Settings
from infra.volume import JobStore
from tests.unit.test_job_runner import FakeQueue


class RecordingSink:
    name = "recording"

    def __init__(self, fail: bool = False) -> None:
        self.events: list[CloudEvent] = []
        self.closed = 0
        self.fail = fail

    async def publish(self, event: CloudEvent) -> None:
        if self.fail:
            raise ConnectionError("the user's repo is unreachable")
        self.events.append(event)

    async def close(self) -> None:
        self.closed += 1
        if self.fail:
            raise ConnectionError("still unreachable")


class DeadSns:
    name = "sns"

    async def publish(self, event: CloudEvent) -> None:
        raise ConnectionError("SNS down")


def _publisher(tmp_path: Path, *sinks: EventSink) -> EventPublisher:
    return EventPublisher(
        JobStore(tmp_path), list(sinks), source="t", progress_interval_s=0, send_attempts=1
    )


async def test_an_attached_sink_gets_only_its_jobs_events_until_detached(tmp_path: Path) -> None:
    """GIVEN a sink attached to job a WHEN a and b publish THEN it sees a's events only; after
    detach it is closed once and sees nothing more."""
    sink = RecordingSink()
    publisher = _publisher(tmp_path, RecordingSink())
    publisher.attach("a", sink)
    await publisher.publish(EventType.JOB_ACCEPTED, AcceptedData(job_id="a"), model_type=None)
    await publisher.publish(EventType.JOB_ACCEPTED, AcceptedData(job_id="b"), model_type=None)
    started = StageData(job_id="a", stage=StageName.FETCH)
    await publisher.publish(EventType.STAGE_STARTED, started, model_type=None)
    await publisher.detach("a")
    await publisher.publish(EventType.STAGE_COMPLETED, started, model_type=None)
    assert [(e.subject, e.type) for e in sink.events] == [
        ("a", EventType.JOB_ACCEPTED),
        ("a", EventType.STAGE_STARTED),
    ]
    assert sink.closed == 1
    await publisher.detach("a")  # twice is harmless
    assert sink.closed == 1


async def test_a_failing_job_sink_never_holds_back_the_job(tmp_path: Path) -> None:
    """GIVEN an attached sink that always fails WHEN the job publishes, ends and detaches THEN
    nothing raises, nothing waits in the outbox, and the worker-wide sink has every event."""
    sns, broken = RecordingSink(), RecordingSink(fail=True)
    publisher = _publisher(tmp_path, sns)
    publisher.attach("a", broken)
    await publisher.publish(EventType.JOB_ACCEPTED, AcceptedData(job_id="a"), model_type=None)
    failed = FailedData(job_id="a", code=ErrorCode.INTERNAL_ERROR, message="x", retryable=False)
    await publisher.publish(EventType.JOB_FAILED, failed, model_type=None)
    await publisher.detach("a")
    assert [e.type for e in sns.events] == [EventType.JOB_ACCEPTED, EventType.JOB_FAILED]
    assert publisher.undelivered == 0 and broken.closed == 1


async def test_a_job_sink_sees_the_terminal_event_even_when_sns_refuses_it(
    tmp_path: Path,
) -> None:
    """GIVEN SNS down WHEN the terminal event is published THEN the caller is told (the job is
    held back) and the job's own sink has the outcome all the same."""
    sink = RecordingSink()
    publisher = _publisher(tmp_path, DeadSns())
    publisher.attach("a", sink)
    failed = FailedData(job_id="a", code=ErrorCode.INTERNAL_ERROR, message="x", retryable=False)
    try:
        await publisher.publish(EventType.JOB_FAILED, failed, model_type=None)
    except EventsUndelivered:
        pass
    else:
        raise AssertionError("an undelivered terminal event must raise")
    assert [e.type for e in sink.events] == [EventType.JOB_FAILED]


async def test_the_runner_attaches_the_jobs_sink_and_detaches_it_when_the_job_ends(
    tmp_path: Path,
) -> None:
    """GIVEN a factory that builds a sink for a job WHEN the job runs and fails on this worker
    THEN the sink saw accepted through failed, and was closed once the job ended."""
    store, sink = JobStore(tmp_path), RecordingSink()
    built: list[tuple[str, JobInput]] = []

    def factory(job_id: str, request: JobInput) -> RecordingSink:
        built.append((job_id, request))
        return sink

    await _run_failing_job(tmp_path, store, RecordingSink(), factory, "job-1")
    assert [job_id for job_id, _ in built] == ["job-1"]
    assert sink.events[0].type is EventType.JOB_ACCEPTED
    assert sink.events[-1].type is EventType.JOB_FAILED
    assert sink.events[-1].data["code"] == ErrorCode.DATASET_DOWNLOAD_FAILED
    assert {e.subject for e in sink.events} == {"job-1"} and sink.closed == 1


async def test_a_factory_that_fails_leaves_the_job_running(tmp_path: Path) -> None:
    """GIVEN a factory that raises WHEN a job runs THEN the job still runs to its end."""

    def factory(job_id: str, request: JobInput) -> RecordingSink:
        raise OSError("journal unreadable")

    sns = RecordingSink()
    await _run_failing_job(tmp_path, JobStore(tmp_path), sns, factory, "job-2")
    assert sns.events[-1].type is EventType.JOB_FAILED


async def _run_failing_job(
    volume: Path,
    store: JobStore,
    sns: RecordingSink,
    factory: Callable[[str, JobInput], RecordingSink],
    job_id: str,
) -> None:
    """One job through a real runner; its private dataset address fails it in fetch at once."""
    runner = JobRunner(
        FakeQueue(),
        store,
        _publisher(volume, sns),
        Settings(queue_url="q", volume=volume, worker_id="me"),
        RetryPolicy(max_receives=1),
        stop_requested=asyncio.Event(),
        job_sinks=factory,
    )
    body = {
        "input": {
            "job_id": job_id,
            "model_type": "tiny",
            "dataset": {"type": "precaptioned", "images_url": "http://10.0.0.1/d.zip"},
            "output": {"method": "local"},
        }
    }
    await runner.handle(QueueMessage("m", "rh", json.dumps(body), 1, {}))

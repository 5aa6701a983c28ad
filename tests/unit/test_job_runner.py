"""The job runner's decisions, on fakes of our own interfaces (no network, no trainer)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from consumer.events import EventPublisher
from consumer.heartbeat import CONTINUATION_ATTRIBUTE
from consumer.job_runner import JobRunner
from consumer.policy import RetryPolicy
from contracts.enums import EventType, JobStatus, ModelType, OutputMethod, StageName, StageStatus
from contracts.events import CloudEvent
from contracts.ledger import Ledger
from infra.queue import QueueMessage
from infra.settings import Settings
from infra.volume import JobStore, atomic_write_text, utcnow


@dataclass
class FakeQueue:
    deleted: list[str] = field(default_factory=list)
    visibility: list[tuple[str, int]] = field(default_factory=list)
    sent: list[tuple[str, dict[str, str], int]] = field(default_factory=list)

    async def receive(self, *, wait_seconds: int, visibility_timeout: int) -> list[QueueMessage]:
        return []

    async def delete(self, message: QueueMessage) -> None:
        self.deleted.append(message.message_id)

    async def change_visibility(self, message: QueueMessage, timeout: int) -> None:
        self.visibility.append((message.message_id, timeout))

    async def send(
        self, body: str, *, attributes: dict[str, str] | None = None, delay_s: int = 0
    ) -> str:
        self.sent.append((body, attributes or {}, delay_s))
        return f"sent-{len(self.sent)}"

    async def max_receive_count(self) -> int | None:
        return 3


class Sink:
    name = "memory"

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def publish(self, event: CloudEvent) -> None:
        self.events.append(event)


def _body(job_id: str = "job-1", **extra: object) -> str:
    return json.dumps(
        {
            "input": {
                "job_id": job_id,
                "model_type": "tiny",
                "dataset": {"type": "precaptioned", "images_url": "https://example.com/d.zip"},
                "output": {"method": "local"},
                **extra,
            }
        }
    )


def _message(body: str, receive_count: int = 1, **attributes: str) -> QueueMessage:
    return QueueMessage("msg-1", "rh", body, receive_count, dict(attributes))


def _runner(tmp_path: Path) -> tuple[JobRunner, FakeQueue, Sink, JobStore]:
    queue, sink, store = FakeQueue(), Sink(), JobStore(tmp_path)
    settings = Settings(queue_url="q", volume=tmp_path, worker_id="me")
    publisher = EventPublisher(store, [sink], source="t", progress_interval_s=0)
    runner = JobRunner(
        queue,
        store,
        publisher,
        settings,
        RetryPolicy(max_receives=3),
        stop_requested=asyncio.Event(),
    )
    return runner, queue, sink, store


def _ledger(store: JobStore, job_id: str, status: JobStatus) -> None:
    now = utcnow()
    store.save_ledger(
        Ledger(
            job_id=job_id, model_type=ModelType.TINY, created_at=now, updated_at=now, status=status
        )
    )


async def test_invalid_message_claiming_a_real_jobs_id_is_reported_under_its_own_id(
    tmp_path: Path,
) -> None:
    """GIVEN a running job WHEN an invalid message claims its id THEN the failure is reported
    under the message id, so the real job's subscribers see no failure."""
    runner, queue, sink, store = _runner(tmp_path)
    _ledger(store, "job-1", JobStatus.RUNNING)
    await runner.handle(_message(_body(model_type="nope")))
    assert [e.subject for e in sink.events] == ["msg-1"]
    assert queue.deleted == ["msg-1"]


async def test_a_leased_job_is_deferred_until_the_lease_would_end(tmp_path: Path) -> None:
    """GIVEN another worker's live lease WHEN the job is received THEN the message is put back
    for the lease's remaining time, nothing runs and no event is published."""
    runner, queue, sink, store = _runner(tmp_path)
    store.acquire_lease("job-1", "other", ttl_s=60)
    await runner.handle(_message(_body()))
    assert sink.events == [] and queue.deleted == []
    ((_, delay),) = queue.visibility
    assert 55 <= delay <= 61


async def test_a_deferred_message_is_refreshed_before_sqs_would_dead_letter_it(
    tmp_path: Path,
) -> None:
    """GIVEN a live lease and a message at its last allowed receive WHEN deferred THEN a fresh
    copy (same body and attributes) replaces it instead of letting SQS dead-letter a live job."""
    runner, queue, _, store = _runner(tmp_path)
    store.acquire_lease("msg-1", "other", ttl_s=60)  # a body without job_id: the message id
    anonymous = json.loads(_body())
    del anonymous["input"]["job_id"]
    await runner.handle(_message(json.dumps(anonymous), receive_count=3, extra="kept"))
    assert queue.deleted == ["msg-1"]
    ((body, attributes, delay),) = queue.sent
    # The copy names the same job, or it would become a second job with a new message id.
    assert json.loads(body)["input"]["job_id"] == "msg-1"
    assert attributes == {"extra": "kept"} and delay > 0


async def test_a_continuation_of_a_finished_job_is_removed_silently(tmp_path: Path) -> None:
    """GIVEN a failed job whose terminal event went out WHEN its continuation arrives THEN it is
    deleted with no second event; had the event not gone out, it is published first."""
    runner, queue, sink, store = _runner(tmp_path)
    _ledger(store, "job-1", JobStatus.FAILED)
    await runner.handle(_message(_body(), **{CONTINUATION_ATTRIBUTE: "job-1"}))
    assert [e.type for e in sink.events] == [EventType.JOB_FAILED]  # not yet published: now
    ledger = store.load_ledger("job-1")
    assert ledger is not None and ledger.terminal_published
    await runner.handle(_message(_body(), **{CONTINUATION_ATTRIBUTE: "job-1"}))
    assert len(sink.events) == 1 and queue.deleted == ["msg-1", "msg-1"]


def _litterbox_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker built without litterbox (every method is registered now, so take one away)."""
    from stages import publish

    supported = publish.SUPPORTED_METHODS - {OutputMethod.LITTERBOX}
    monkeypatch.setattr(publish, "SUPPORTED_METHODS", supported)


async def test_a_request_this_worker_cannot_serve_fails_once_with_the_qualified_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN an output method this worker lacks WHEN received THEN accepted, then one job.failed
    naming input.output.method, not retryable; the message is deleted; the ledger says failed."""
    _litterbox_unavailable(monkeypatch)
    runner, queue, sink, store = _runner(tmp_path)
    await runner.handle(_message(_body(output={"method": "litterbox"})))
    assert [e.type for e in sink.events] == [EventType.JOB_ACCEPTED, EventType.JOB_FAILED]
    failed = sink.events[-1].data
    assert (failed["code"], failed["field"], failed["retryable"]) == (
        "unsupported",
        "input.output.method",
        False,
    )
    assert queue.deleted == ["msg-1"]
    ledger = store.load_ledger("job-1")
    assert ledger is not None and ledger.status is JobStatus.FAILED


async def test_an_expired_lease_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a lease that expired WHEN the job is received THEN it runs (here: fails preflight)."""
    _litterbox_unavailable(monkeypatch)
    runner, _, sink, store = _runner(tmp_path)
    store.acquire_lease("job-1", "dead", ttl_s=60)
    lease = store.read_lease("job-1")
    assert lease is not None
    stale = lease.model_copy(update={"expires_at": utcnow() - timedelta(seconds=1)})
    atomic_write_text(store.paths("job-1").lease, stale.model_dump_json())
    await runner.handle(_message(_body(output={"method": "litterbox"})))
    assert sink.events[0].type is EventType.JOB_ACCEPTED


async def test_a_crashing_stage_is_named_and_its_message_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a stage that raises an unexpected error echoing a secret WHEN the job runs THEN
    the ledger names that stage with internal_error, and neither the ledger nor the event
    holds the secret."""
    from stages import fetch

    secret = "hf_crashcrashcrashcrashcrash12345"

    async def explode(ctx: object) -> None:
        raise RuntimeError(f"boom with {secret}")

    monkeypatch.setattr(fetch, "run", explode)
    runner, _, sink, store = _runner(tmp_path)
    await runner.handle(_message(_body(api_keys={"huggingface_token": secret})))
    interrupted = [e for e in sink.events if e.type is EventType.JOB_INTERRUPTED]
    assert interrupted and interrupted[0].data["stage"] == "fetch"
    assert interrupted[0].data["code"] == "internal_error"
    state = store.paths("job-1").ledger.read_text()
    assert '"fetch"' in state and "internal_error" in state and secret not in state
    assert all(secret not in e.model_dump_json() for e in sink.events)


def _abandoned_run(store: JobStore, lost_runs: int) -> None:
    """A ledger as a worker killed mid-fetch leaves it: its run still open, fetch running."""
    now = utcnow()
    ledger = Ledger(
        job_id="job-1",
        model_type=ModelType.TINY,
        created_at=now,
        updated_at=now,
        open_run="token-of-a-dead-worker",
        lost_runs=lost_runs,
    )
    fetch = ledger.stage(StageName.FETCH)
    fetch.status, fetch.attempts, fetch.started_at = StageStatus.RUNNING, 1, now
    store.save_ledger(ledger)


async def test_a_run_ended_by_the_runner_is_closed_and_counts_as_no_lost_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a run that fails (preflight) through the runner's own code WHEN it ends THEN the
    ledger has no open run, so the next delivery would not take it for a dead worker's."""
    _litterbox_unavailable(monkeypatch)
    runner, _, _, store = _runner(tmp_path)
    await runner.handle(_message(_body(output={"method": "litterbox"})))
    ledger = store.load_ledger("job-1")
    assert ledger is not None and (ledger.open_run, ledger.lost_runs) == (None, 0)


async def test_a_run_left_open_by_a_dead_worker_is_counted_and_the_job_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a run left open by a worker that died WHEN the job is received again, below the
    limit THEN that run counts as lost (1) and the job runs (here: to its preflight failure)."""
    _litterbox_unavailable(monkeypatch)
    runner, _, sink, store = _runner(tmp_path)
    _abandoned_run(store, lost_runs=0)
    await runner.handle(_message(_body(output={"method": "litterbox"}), receive_count=2))
    ledger = store.load_ledger("job-1")
    assert ledger is not None and (ledger.open_run, ledger.lost_runs) == (None, 1)
    assert sink.events[0].type is EventType.JOB_ACCEPTED
    assert sink.events[-1].data["code"] == "unsupported"


async def test_a_job_that_keeps_killing_its_worker_fails_with_worker_lost_before_the_dlq(
    tmp_path: Path,
) -> None:
    """GIVEN a job whose last two runs died with their worker (limit 2 under maxReceiveCount 3)
    WHEN it is received the third time THEN nothing runs; one job.failed says worker_lost,
    names the stage it died in and is not retryable; the message is left for the DLQ."""
    runner, queue, sink, store = _runner(tmp_path)
    _abandoned_run(store, lost_runs=1)
    await runner.handle(_message(_body(), receive_count=3))
    assert [e.type for e in sink.events] == [EventType.JOB_FAILED]
    failed = sink.events[0].data
    assert (failed["code"], failed["stage"], failed["retryable"]) == ("worker_lost", "fetch", False)
    assert "2 times during fetch" in failed["message"]
    assert queue.visibility == [("msg-1", 0)] and queue.deleted == []
    ledger = store.load_ledger("job-1")
    assert ledger is not None and ledger.status is JobStatus.FAILED
    assert ledger.stage(StageName.FETCH).attempts == 1, "the stage ran again"
    assert ledger.open_run is None

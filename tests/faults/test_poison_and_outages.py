"""Poison messages reach the DLQ with one final failure; an SNS outage loses no event."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.enums import EventType, JobStatus, StageName
from infra.local_stack import LocalStack, subscribe_queue
from infra.logging import configure_logging
from infra.volume import JobStore
from loraq.app import run_worker
from loraq.demo import demo_request, upload_dataset
from tests.conftest import drain_events, queue_depth, send_job, wait_for_terminal
from tests.faults.harness import WorkerProcess, journal, wait_until

pytestmark = pytest.mark.slow


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[str]:
    """A dataset host that answers 503 to everything (a transient fault that never clears)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dataset.zip"
    finally:
        server.shutdown()


def test_poison_message_reaches_the_dlq_with_one_final_failure(
    stack: LocalStack, tmp_path: Path, broken_server: str
) -> None:
    """GIVEN a job whose dataset host always fails transiently WHEN a worker keeps receiving it
    THEN each of the first maxReceiveCount-1 attempts publishes job.interrupted with a retry
    delay, the last publishes one job.failed (retryable false), and SQS moves it to the DLQ."""
    send_job(stack, demo_request(broken_server, stack, job_id="poison"))
    worker = WorkerProcess(stack, tmp_path, "w", tmp_path)
    try:
        events = wait_for_terminal(stack, {"poison"}, 120)
        wait_until(lambda: queue_depth(stack, stack.dlq_url) == 1, 60, "the DLQ to get it")
        events += drain_events(stack)
    finally:
        worker.stop()
    failed = [e for e in events if e.type is EventType.JOB_FAILED]
    assert len(failed) == 1
    assert failed[0].data["retryable"] is False and failed[0].data["stage"] == "fetch"
    assert failed[0].data["code"] == "dataset_download_failed"
    assert failed[0].data["field"] == "input.dataset.images_url"
    retries = [e for e in events if e.type is EventType.JOB_INTERRUPTED]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert all(e.data["retry_in_s"] >= 1 for e in retries)
    assert queue_depth(stack, stack.queue_url) == 0
    ledger = JobStore(tmp_path).load_ledger("poison")
    assert ledger is not None and ledger.status is JobStatus.FAILED
    assert ledger.stage(StageName.FETCH).attempts == 3


def test_sns_outage_does_not_fail_training_and_every_event_arrives_later(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN the SNS topic gone for the whole job WHEN the worker trains THEN the job still
    succeeds (journal on the volume complete); once the topic is back, the redelivered message
    republishes, the outbox flushes, and subscribers get every event, the terminal one last."""
    sns = stack.client("sns")
    sns.delete_topic(TopicArn=stack.topic_arn)
    send_job(stack, demo_request(upload_dataset(stack), stack, job_id="outage", epochs=2))
    settings = stack.worker_settings(
        tmp_path, visibility_timeout=10, progress_interval_s=0, retry_base_delay_s=3
    )
    log_path = tmp_path / "worker.log"

    async def scenario() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop=stop))
        store = JobStore(tmp_path)

        def finished() -> bool:
            ledger = store.load_ledger("outage")
            return ledger is not None and ledger.status is JobStatus.SUCCEEDED

        def gave_up() -> bool:
            return "terminal_event_undelivered" in log_path.read_text()

        await asyncio.to_thread(wait_until, finished, 120, "training to finish")
        await asyncio.to_thread(wait_until, gave_up, 60, "the terminal event to be held back")
        # The log line comes just before the delayed copy is sent and the original deleted:
        # wait for that swap to settle (0 would mean acked without a terminal event).
        await asyncio.to_thread(
            wait_until,
            lambda: queue_depth(stack, stack.queue_url) == 1,
            30,
            "exactly one message (the held-back copy) on the queue",
        )
        # SNS comes back; the message is redelivered within retry_base_delay_s.
        sns.create_topic(Name=stack.topic_arn.rsplit(":", 1)[1])
        watch = subscribe_queue(stack, "outage-watch")
        events = await asyncio.to_thread(wait_for_terminal, stack, {"outage"}, 60, watch)
        stop.set()
        await worker
        # Every progress and stage event in the journal reached subscribers, in order; the
        # terminal event that could not go out was replayed once, and came last.
        journaled = [e.id for e in journal(tmp_path, "outage") if not e.type.is_terminal]
        delivered = [e.id for e in events]
        assert [i for i in delivered if i in journaled] == journaled
        assert [e.type for e in events].count(EventType.JOB_SUCCEEDED) == 1
        assert events[-1].type is EventType.JOB_SUCCEEDED
        assert store.load_ledger("outage").stage(StageName.TRAIN).attempts == 1  # type: ignore[union-attr]

    with log_path.open("w") as log:
        configure_logging("INFO", stream=log)
        try:
            asyncio.run(scenario())
        finally:
            configure_logging("INFO")


def test_a_job_that_kills_its_worker_every_time_fails_with_worker_lost_not_silently(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a job whose runs die with their worker (SIGKILL right after fetch, twice: the limit
    under the local queue's maxReceiveCount of 3) WHEN a third worker receives it THEN it runs
    nothing, publishes one job.failed with worker_lost naming fetch, SQS dead-letters the
    message, and the same worker goes on to run the next job to success."""
    url = upload_dataset(stack)
    send_job(stack, demo_request(url, stack, job_id="killer", epochs=1))
    marker = tmp_path / "paused-fetch"
    for run in (1, 2):
        worker = WorkerProcess(
            stack, tmp_path, f"doomed-{run}", tmp_path, LORAQ_TEST_PAUSE_AFTER="fetch"
        )
        try:
            wait_until(marker.exists, 120, f"run {run} to reach the end of fetch")
        finally:
            worker.stop()  # SIGKILL: the run ends with no outcome, as under the OOM killer
        marker.unlink()
    survivor = WorkerProcess(stack, tmp_path, "survivor", tmp_path)
    try:
        events = wait_for_terminal(stack, {"killer"}, 120)
        wait_until(lambda: queue_depth(stack, stack.dlq_url) == 1, 60, "the DLQ to get it")
        send_job(stack, demo_request(url, stack, job_id="after-the-killer", epochs=1))
        events += wait_for_terminal(stack, {"after-the-killer"}, 180)
        assert survivor.alive
    finally:
        survivor.stop()
    failed = [e for e in events if e.subject == "killer" and e.type.is_terminal]
    assert [e.type for e in failed] == [EventType.JOB_FAILED]
    data = failed[0].data
    assert (data["code"], data["stage"], data["retryable"]) == ("worker_lost", "fetch", False)
    ledger = JobStore(tmp_path).load_ledger("killer")
    assert ledger is not None and ledger.status is JobStatus.FAILED
    # The third run started no stage: fetch was tried by the two doomed runs only.
    assert (ledger.lost_runs, ledger.stage(StageName.FETCH).attempts) == (2, 2)
    assert ledger.stage(StageName.CAPTION).attempts == 0
    nxt = [e.type for e in events if e.subject == "after-the-killer" and e.type.is_terminal]
    assert nxt == [EventType.JOB_SUCCEEDED]

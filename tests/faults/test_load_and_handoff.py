"""Load with random kills, and the 12-hour hand-off, on real worker processes."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from contracts.enums import EventType, JobStatus, StageName
from infra.local_stack import LocalStack
from infra.volume import JobStore
from loraq.demo import demo_request, upload_dataset
from tests.conftest import drain_events, queue_depth, send_job, wait_for_terminal
from tests.faults.harness import WorkerProcess, journal, progress_steps, wait_until

pytestmark = pytest.mark.slow

JOBS = 30
WORKERS = 3
KILLS = 3


def _holder_of(volume: Path, worker: str) -> str | None:
    store = JobStore(volume)
    for job_id in store.job_ids():
        lease = store.read_lease(job_id)
        if lease is not None and lease.worker_id == worker:
            return job_id
    return None


def test_three_workers_thirty_jobs_random_kills_all_succeed_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN 30 small jobs and 3 workers on one volume WHEN a random worker busy with a job is
    killed with SIGKILL three times (and restarted) THEN all 30 succeed, each trained to
    completion exactly once, none reaches the DLQ, and every job's journal is complete."""
    url = upload_dataset(stack, count=2)  # two steps a job: the launches are what is tested
    ids = [f"load-{i:02d}" for i in range(JOBS)]
    for job_id in ids:
        send_job(stack, demo_request(url, stack, job_id=job_id, epochs=1, save_every_n_epochs=1))
    rng = random.Random(7)
    workers = {f"w{i}": WorkerProcess(stack, tmp_path, f"w{i}", tmp_path) for i in range(WORKERS)}
    killed_jobs: set[str] = set()
    try:
        for kill in range(KILLS):
            # Kill a worker while it holds a job (a different job each time).
            def busy_victim() -> bool:
                return any(
                    (job := _holder_of(tmp_path, name)) and job not in killed_jobs
                    for name in workers
                )

            wait_until(busy_victim, 120, "a worker busy with a job")
            candidates = [
                n for n in workers if (j := _holder_of(tmp_path, n)) and j not in killed_jobs
            ]
            victim = rng.choice(candidates)
            job = _holder_of(tmp_path, victim)
            workers[victim].kill(signal.SIGKILL)
            workers[victim].wait(10)
            if job:
                killed_jobs.add(job)
            workers[victim] = WorkerProcess(stack, tmp_path, f"{victim}-r{kill}", tmp_path)
        events = wait_for_terminal(stack, set(ids), 600)
        wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, 60, "every message acked")
        events += drain_events(stack)
    finally:
        for worker in workers.values():
            worker.stop()
    assert len(killed_jobs) == KILLS
    store = JobStore(tmp_path)
    for job_id in ids:
        ledger = store.load_ledger(job_id)
        assert ledger is not None and ledger.status is JobStatus.SUCCEEDED, job_id
        assert ledger.stage(StageName.TRAIN).completions == 1, job_id
        log = (tmp_path / "jobs" / job_id / "logs" / "train.log").read_text()
        assert log.count("TRAINING COMPLETE!") == 1, job_id
        types = {e.type for e in journal(tmp_path, job_id)}
        assert {EventType.JOB_ACCEPTED, EventType.STAGE_COMPLETED, EventType.JOB_SUCCEEDED} <= types
        completed = {
            e.data["stage"]
            for e in journal(tmp_path, job_id)
            if e.type is EventType.STAGE_COMPLETED
        }
        assert completed == {s.value for s in StageName}, job_id
    succeeded = [e for e in events if e.type is EventType.JOB_SUCCEEDED]
    assert sorted({e.subject for e in succeeded}) == ids
    assert queue_depth(stack, stack.dlq_url) == 0


def test_a_job_outliving_its_receipt_is_handed_to_a_continuation_and_survives_a_kill(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a receipt limit shorter than the job WHEN the worker hands the job off (continuation
    sent, original deleted) and is then killed THEN a second worker resumes from the
    continuation and the job succeeds once; no message is left behind."""
    send_job(
        stack,
        demo_request(
            upload_dataset(stack),
            stack,
            job_id="long",
            epochs=16,
            save_every_n_epochs=16,
            checkpoint_every_n_epochs=1,
        ),
    )
    first = WorkerProcess(stack, tmp_path, "first", tmp_path, LORAQ_HANDOFF_AFTER_S="15")
    second = None
    try:
        wait_until(lambda: "handed_off" in first.log_path.read_text(), 120, "the hand-off")
        wait_until(
            lambda: max(progress_steps(journal(tmp_path, "long")), default=0) >= 20,
            120,
            "training past the first checkpoints",
        )
        first.kill(signal.SIGKILL)
        first.wait(10)
        assert queue_depth(stack, stack.queue_url) == 1  # the continuation, and only it
        second = WorkerProcess(stack, tmp_path, "second", tmp_path)
        events = wait_for_terminal(stack, {"long"}, 300)
        wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, 60, "the continuation acked")
    finally:
        first.stop()
        if second:
            second.stop()
    assert [e.type for e in events].count(EventType.JOB_SUCCEEDED) == 1
    ledger = JobStore(tmp_path).load_ledger("long")
    assert ledger is not None and ledger.status is JobStatus.SUCCEEDED
    assert ledger.stage(StageName.TRAIN).completions == 1

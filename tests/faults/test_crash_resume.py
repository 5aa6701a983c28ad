"""Nothing lost: real worker processes killed by SIGKILL/SIGTERM, real moto, real trainer."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from contracts.enums import EventType, JobStatus, StageName, StageStatus
from infra.local_stack import LocalStack
from infra.volume import JobStore
from loraq.demo import demo_request, upload_dataset
from tests.conftest import drain_events, queue_depth, send_job, wait_for_terminal
from tests.faults.harness import (
    WorkerProcess,
    journal,
    journal_has,
    progress_steps,
    trainer_pids,
    wait_until,
)

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 8  # 8 images, batch 1, accumulation 1
EPOCHS = 3


def _job(stack: LocalStack, job_id: str, epochs: int = EPOCHS) -> dict:
    training = {"checkpoint_every_n_epochs": 1, "save_every_n_epochs": epochs}
    return demo_request(upload_dataset(stack), stack, job_id=job_id, epochs=epochs, **training)


def _assert_finished_once(volume: Path, job_id: str, events: list) -> None:
    ledger = JobStore(volume).load_ledger(job_id)
    assert ledger is not None and ledger.status is JobStatus.SUCCEEDED
    assert all(r.status is StageStatus.COMPLETED for r in ledger.stages.values())
    assert all(r.completions == 1 for r in ledger.stages.values()), "a completed stage ran again"
    succeeded = [e for e in events if e.subject == job_id and e.type is EventType.JOB_SUCCEEDED]
    assert len(succeeded) == 1
    captions = list((volume / "jobs" / job_id / "dataset" / "images").glob("*.txt"))
    assert captions and all(c.read_text().count("lqshape") == 1 for c in captions)


@pytest.mark.parametrize(
    "stage",
    [
        StageName.FETCH,
        StageName.CAPTION,
        StageName.CONFIGURE,
        StageName.PROVISION,
        StageName.PUBLISH,
    ],
)
def test_sigkill_after_a_stage_wrote_its_outputs_resumes_without_redoing_completed_stages(
    stack: LocalStack, tmp_path: Path, stage: StageName
) -> None:
    """GIVEN a worker killed with SIGKILL right after ``stage`` wrote its outputs, before the
    ledger recorded it WHEN a new worker receives the redelivered message THEN the job succeeds
    once, that stage ran twice and every stage before it once, and no stage completed twice."""
    job_id = f"kill-{stage.value}"
    send_job(stack, _job(stack, job_id, epochs=1))
    first = WorkerProcess(stack, tmp_path, "first", tmp_path, LORAQ_TEST_PAUSE_AFTER=stage.value)
    second = None
    try:
        wait_until(lambda: (tmp_path / f"paused-{stage.value}").exists(), 120, f"{stage} done")
        first.kill(signal.SIGKILL)
        first.wait(10)
        second = WorkerProcess(stack, tmp_path, "second", tmp_path)
        events = wait_for_terminal(stack, {job_id}, 180)
        # The message is deleted right after the terminal event: wait for that, then stop.
        wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, 30, "the message acked")
    finally:
        first.stop()
        if second:
            second.stop()
    _assert_finished_once(tmp_path, job_id, events)
    ledger = JobStore(tmp_path).load_ledger(job_id)
    assert ledger is not None
    for name, record in ledger.stages.items():
        expected = 2 if name is stage else 1
        assert record.attempts == expected, (name, record.attempts)
    train_runs = (tmp_path / "jobs" / job_id / "output").iterdir()
    assert len(list(train_runs)) == 1, "training ran again"
    assert queue_depth(stack, stack.dlq_url) == 0


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a worker killed with SIGKILL mid-training, after a checkpoint WHEN a new worker
    takes the redelivered message THEN no rank of the old trainer survives, training resumes
    from that checkpoint, at most one checkpoint interval of steps is redone, and it succeeds."""
    job_id = "kill-train"
    send_job(stack, _job(stack, job_id))
    first = WorkerProcess(stack, tmp_path, "first", tmp_path)
    second = None
    try:
        wait_until(
            lambda: (
                journal_has(tmp_path, job_id, lambda e: e.type is EventType.JOB_CHECKPOINTED)
                and max(progress_steps(journal(tmp_path, job_id)), default=0) >= STEPS_PER_EPOCH + 3
            ),
            180,
            "a checkpoint and three more steps",
        )
        first.kill(signal.SIGKILL)
        first.wait(10)
        config = str(tmp_path / "jobs" / job_id / "config" / "train.toml")
        wait_until(lambda: not trainer_pids(config), 30, "the orphaned trainer to die")
        before = journal(tmp_path, job_id)
        last_step = max(progress_steps(before))
        checkpoint = max(
            int(e.data["step"]) for e in before if e.type is EventType.JOB_CHECKPOINTED
        )
        second = WorkerProcess(stack, tmp_path, "second", tmp_path)
        events = wait_for_terminal(stack, {job_id}, 180)
    finally:
        first.stop()
        if second:
            second.stop()
    _assert_finished_once(tmp_path, job_id, events)
    after = journal(tmp_path, job_id)[len(before) :]
    resumed_first = progress_steps(after)[0]
    assert resumed_first == checkpoint + 1, "training restarted instead of resuming"
    # Progress events are throttled, so the journal may show a checkpoint newer than the last
    # progress event before the kill: the step reached is the later of the two.
    redone = max(last_step, checkpoint) - checkpoint
    assert 0 <= redone <= STEPS_PER_EPOCH
    assert max(progress_steps(after)) == STEPS_PER_EPOCH * EPOCHS
    ledger = JobStore(tmp_path).load_ledger(job_id)
    assert ledger is not None and ledger.stage(StageName.TRAIN).attempts == 2


def test_sigterm_mid_training_checkpoints_hands_back_and_a_second_worker_continues(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a worker training a job WHEN it gets SIGTERM THEN it checkpoints via save_quit,
    publishes job.interrupted, makes the message visible at once and exits; a second worker
    continues the step count from that checkpoint and the job succeeds."""
    job_id = "term-train"
    send_job(stack, _job(stack, job_id))
    first = WorkerProcess(stack, tmp_path, "first", tmp_path)
    second = None
    try:
        wait_until(
            lambda: max(progress_steps(journal(tmp_path, job_id)), default=0) >= 3,
            180,
            "three training steps",
        )
        first.kill(signal.SIGTERM)
        assert first.wait(60) == 0
        before = journal(tmp_path, job_id)
        interrupted = [e for e in before if e.type is EventType.JOB_INTERRUPTED]
        assert len(interrupted) == 1 and interrupted[0].data["stage"] == "train"
        checkpoint = [e for e in before if e.type is EventType.JOB_CHECKPOINTED][-1]
        assert checkpoint.data["step"] == interrupted[0].data["step"]
        visible = stack.client("sqs").get_queue_attributes(
            QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        assert visible == "1", "the message was not handed back at once"
        second = WorkerProcess(stack, tmp_path, "second", tmp_path)
        events = wait_for_terminal(stack, {job_id}, 180)
    finally:
        first.stop()
        if second:
            second.stop()
    _assert_finished_once(tmp_path, job_id, events)
    after = journal(tmp_path, job_id)[len(before) :]
    assert progress_steps(after)[0] == int(checkpoint.data["step"]) + 1


def test_two_workers_one_volume_same_job_twice_train_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN the same job sent twice and two workers on one volume WHEN both run THEN exactly
    one trainer launch happens and the job succeeds; the duplicate replays the stored result."""
    body = _job(stack, "dup-job")
    send_job(stack, body)
    send_job(stack, body)
    workers = [WorkerProcess(stack, tmp_path, f"w{i}", tmp_path) for i in range(2)]
    try:
        events = wait_for_terminal(stack, {"dup-job"}, 180)
        wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, 60, "both messages acked")
        events += drain_events(stack)
    finally:
        for worker in workers:
            worker.stop()
    ledger = JobStore(tmp_path).load_ledger("dup-job")
    assert ledger is not None and ledger.stage(StageName.TRAIN).attempts == 1
    log = (tmp_path / "jobs" / "dup-job" / "logs" / "train.log").read_text()
    assert log.count("TRAINING COMPLETE!") == 1
    assert len(list((tmp_path / "jobs" / "dup-job" / "output").iterdir())) == 1
    accepted = [e for e in journal(tmp_path, "dup-job") if e.type is EventType.JOB_ACCEPTED]
    assert len(accepted) == 1, "the duplicate started a second run"
    assert all(e.type is not EventType.JOB_FAILED for e in events)

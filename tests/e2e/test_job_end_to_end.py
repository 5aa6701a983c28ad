"""A real job through the real stack: moto SQS/SNS/S3 over HTTP, the tiny trainer, DeepSpeed."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file

from contracts.enums import EventType, StageName, StageStatus
from infra.local_stack import LocalStack
from infra.settings import Settings
from infra.volume import JobStore
from loraq.demo import demo_request, upload_dataset
from tests.conftest import queue_depth, run_worker_until_terminal, send_job
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.slow

HF_TOKEN = "hf_e2eSecretTokenThatMustNeverLeak0123456789"
GEMINI_KEY = "AIzaE2eSecretKeyThatMustNeverLeak_0123456789"
WANDB_KEY = "wandb-e2e-secret-key-that-must-never-leak-0123"


def _settings(stack: LocalStack, volume: Path) -> Settings:
    return stack.worker_settings(volume, visibility_timeout=30, progress_interval_s=0)


async def _run_until(stack: LocalStack, volume: Path, job_ids: set[str]) -> list:
    return await run_worker_until_terminal(stack, _settings(stack, volume), job_ids, 300)


async def test_malformed_message_fails_typed_and_the_next_job_succeeds(
    stack: LocalStack, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a malformed message, then the seed's body for a tiny job, on moto's SQS
    WHEN one worker runs
    THEN the malformed one gets a typed job.failed, the job's events arrive on the SNS-subscribed
    queue in order (accepted … succeeded), its LoRA loads with rank-8 A/B tensors, every stage
    completed once, both messages are gone from the queue, W&B's key reached the trainer, and
    no secret is written anywhere: volume, archive, logs or events."""
    bad_id = send_job(stack, "{this is not json")
    body = demo_request(
        upload_dataset(stack), stack, job_id="e2e-job", epochs=4, save_every_n_epochs=2
    )
    body["input"]["api_keys"] = {"huggingface_token": HF_TOKEN, "gemini_api_key": GEMINI_KEY}
    body["input"]["training"]["monitoring"] = {
        "enable_wandb": True,
        "wandb_api_key": WANDB_KEY,
        "wandb_tracker_name": "loraq-e2e",
        "wandb_run_name": "e2e-job",
    }
    send_job(stack, body)

    events = await _run_until(stack, tmp_path, {bad_id, "e2e-job"})

    failed = [e for e in events if e.subject == bad_id]
    assert [e.type for e in failed] == [EventType.JOB_FAILED]
    assert failed[0].data["code"] == "invalid_json" and failed[0].data["retryable"] is False

    job_events = sorted((e for e in events if e.subject == "e2e-job"), key=lambda e: e.time)
    types = [e.type for e in job_events]
    assert types[0] is EventType.JOB_ACCEPTED and types[-1] is EventType.JOB_SUCCEEDED
    stage_order = [
        (e.type, e.data["stage"])
        for e in job_events
        if e.type in (EventType.STAGE_STARTED, EventType.STAGE_COMPLETED)
    ]
    assert stage_order == [
        (t, s.value)
        for s in StageName
        for t in (EventType.STAGE_STARTED, EventType.STAGE_COMPLETED)
    ]
    progress = [e.data for e in job_events if e.type is EventType.JOB_PROGRESS]
    assert progress and progress[-1]["step"] == progress[-1]["total_steps"] == 32
    assert all(p["loss"] is not None and p["eta_s"] is not None for p in progress)
    assert any(e.type is EventType.JOB_CHECKPOINTED for e in job_events)
    for e in job_events:
        assert e.message_attributes()["model_type"] == "tiny"

    # The journal on the volume holds the same events, in the order they were published.
    store = JobStore(tmp_path)
    journal = store.read_events("e2e-job")
    assert [e.id for e in journal] == [e.id for e in sorted(job_events, key=lambda e: e.time)]

    result = job_events[-1].data
    assert result["status"] == "success" and result["latest_epoch"] == "epoch4"
    assert result["epochs_completed"] == 4 and result["output"]["download_method"] == "s3"
    lora_path = Path(result["output"]["network_volume_path"]) / "adapter_model.safetensors"
    tensors = load_file(lora_path)
    a_keys = [k for k in tensors if k.endswith("lora_A.weight")]
    assert a_keys and len(a_keys) == len([k for k in tensors if k.endswith("lora_B.weight")])
    for key in a_keys:
        assert tensors[key].shape[0] == 8
        assert tensors[key.replace("lora_A", "lora_B")].shape[1] == 8
    with urllib.request.urlopen(result["output"]["safetensors_url"]) as reply:
        assert reply.read() == lora_path.read_bytes()

    ledger = store.load_ledger("e2e-job")
    assert ledger is not None
    assert all(
        r.status is StageStatus.COMPLETED and r.completions == 1 for r in ledger.stages.values()
    )
    assert queue_depth(stack, stack.queue_url) == 0 and queue_depth(stack, stack.dlq_url) == 0

    captions = sorted((tmp_path / "jobs" / "e2e-job" / "dataset" / "images").glob("*.txt"))
    assert captions and all(c.read_text().startswith("lqshape, a ") for c in captions)

    train_log = (tmp_path / "jobs" / "e2e-job" / "logs" / "train.log").read_text()
    assert "W&B API key is configured" in train_log
    leaks = find_secrets(
        [HF_TOKEN, GEMINI_KEY, WANDB_KEY],
        roots=[tmp_path],
        logs="".join(capfd.readouterr()),
        events=events,
    )
    assert leaks == []

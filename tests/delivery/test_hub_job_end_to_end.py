"""A real job delivered to the Hub: moto SQS/SNS/S3, the tiny trainer, the local Hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import hf_hub_download

from contracts.enums import EventType, JobStatus
from contracts.events import CloudEvent
from contracts.status import JobStatusView
from infra.local_stack import LocalStack
from infra.loss_chart import render_loss_chart
from infra.updates_files import HISTORY_FILE, LOSS_CHART_FILE, STATUS_FILE
from infra.volume import JobStore
from loraq.demo import demo_request, upload_dataset
from tests.conftest import run_worker_until_terminal, send_job
from tests.delivery.conftest import WRITE_TOKEN
from tests.hub_server import LocalHub
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.slow

JOB = "e2e-hub-job"


async def test_a_job_with_output_method_huggingface_lands_in_the_users_repo(
    stack: LocalStack, hub: LocalHub, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a tiny job asking for output.method huggingface with a write token
    WHEN one worker runs it against the local Hub
    THEN it succeeds, the private repo alice/loraq-<job> holds the newest LoRA (the volume's
    bytes), its card and the chart of the job's own losses, UPDATES/ holds the final status
    with the link and the whole journal, and the token is on no file."""
    body = demo_request(upload_dataset(stack), stack, job_id=JOB, epochs=2, save_every_n_epochs=1)
    body["input"]["output"] = {"method": "huggingface", "huggingface": {"token": WRITE_TOKEN}}
    send_job(stack, body)

    settings = stack.worker_settings(
        tmp_path, visibility_timeout=30, progress_interval_s=0, hf_endpoint=hub.url
    )
    events = await run_worker_until_terminal(stack, settings, {JOB}, 300)

    terminal = [e for e in events if e.type.is_terminal]
    assert [e.type for e in terminal] == [EventType.JOB_SUCCEEDED], terminal[0].data
    output = terminal[0].data["output"]
    repo_id = f"alice/loraq-{JOB}"
    assert output["download_method"] == "huggingface"
    assert output["repo_url"] == f"{hub.url}/{repo_id}"
    repo = hub.repo(repo_id)
    assert repo is not None and repo.private

    lora = Path(output["network_volume_path"]) / "adapter_model.safetensors"
    got = hf_hub_download(
        repo_id, lora.name, endpoint=hub.url, token=WRITE_TOKEN, local_dir=tmp_path / "dl"
    )
    assert Path(got).read_bytes() == lora.read_bytes()
    assert output["safetensors_url"].endswith(f"/{repo_id}/resolve/main/{lora.name}")

    card = repo.files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["instance_prompt"] == "lqshape" and "lora" in meta["tags"]
    journal = JobStore(tmp_path).read_events(JOB)
    points = [
        (e.data["step"], e.data["loss"])
        for e in journal
        if e.type is EventType.JOB_PROGRESS and e.data["loss"] is not None
    ]
    assert points and repo.files["loss_chart.png"] == render_loss_chart(points)

    # UPDATES/: the sink the worker attached for this job; its final status carries the link.
    status = JobStatusView.model_validate_json(repo.files[STATUS_FILE])
    assert status.status is JobStatus.SUCCEEDED and status.download_url == output["download_url"]
    history = [
        CloudEvent.model_validate_json(line)
        for line in repo.files[HISTORY_FILE].split(b"\n")
        if line
    ]
    assert [e.id for e in history] == [e.id for e in journal]
    assert repo.files[LOSS_CHART_FILE].startswith(b"\x89PNG")
    leaks = find_secrets(
        [WRITE_TOKEN],
        roots=[tmp_path],
        logs="".join(capfd.readouterr()),
        events=events,
        files=repo.files,
    )
    assert leaks == []

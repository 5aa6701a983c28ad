"""The huggingface delivery through ``stages.publish.run``: a real context on a temp volume, a
real safetensors file, the real huggingface_hub client and the local Hub."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from huggingface_hub import hf_hub_download
from safetensors.numpy import load_file, save_file

from contracts.enums import ErrorCode, EventType, ModelType, OutputMethod, StageName
from contracts.events import CloudEvent, ProgressData
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.loss_chart import render_loss_chart
from infra.redact import Redactor
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from stages import publish
from stages.context import StageContext
from stages.errors import Permanent, Retryable
from tests.delivery.conftest import READ_TOKEN, WRITE_TOKEN
from tests.hub_server import LocalHub

JOB = "job-hub-1"
RUN = "20260101_00-00-00"
LOSSES = [(1, 0.9), (2, 0.7), (3, 0.65), (4, 0.5)]


def _context(tmp_path: Path, hub_url: str, **request: Any) -> StageContext:
    """A tiny job whose train stage left two epochs, with progress events on the volume."""
    body: dict[str, Any] = {
        "model_type": "tiny",
        "dataset": {"type": "images", "images_url": "https://x.test/i.zip", "trigger_word": "zkw"},
        "training": {"epochs": 2, "learning_rate": 1e-4, "save_every_n_epochs": 1},
        **request,
    }
    job = JobRequest.model_validate({"input": body}).input
    store = JobStore(tmp_path / "volume")
    paths = store.paths(JOB)
    run_dir = paths.output / RUN
    for epoch in (1, 2):
        folder = run_dir / f"epoch{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        weights = {"lora_A.weight": np.full((4, 8), epoch, dtype=np.float32)}
        save_file(weights, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "epoch": epoch}))
    if not paths.events.exists():
        for step, loss in LOSSES:
            data = ProgressData(job_id=JOB, epoch=1, step=step, total_steps=4, loss=loss)
            store.append_event(CloudEvent.of(EventType.JOB_PROGRESS, data, source="test"))
    now = utcnow()
    ledger = Ledger(job_id=JOB, model_type=ModelType.TINY, created_at=now, updated_at=now)
    ledger.stage(StageName.TRAIN).outputs.update(
        {
            "model_dir": str(run_dir / "epoch2"),
            "lora_path": str(run_dir / "epoch2" / "adapter_model.safetensors"),
            "epochs_completed": 2,
        }
    )

    async def emit(event_type: EventType, data: Any) -> None:
        return None

    return StageContext(
        job_id=JOB,
        request=job,
        paths=paths,
        store=store,
        settings=Settings(
            queue_url="http://unused", volume=tmp_path / "volume", hf_endpoint=hub_url
        ),
        ledger=ledger,
        emit=emit,
        stop_requested=asyncio.Event(),
        redact=Redactor(job.secret_values()),
    )


def _hub_output(token: str = WRITE_TOKEN, **huggingface: Any) -> dict[str, Any]:
    return {"output": {"method": "huggingface", "huggingface": {"token": token, **huggingface}}}


def _front_matter(card: bytes) -> dict[str, Any]:
    text = card.decode()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(meta, dict)
    return meta


def _all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


async def test_publish_commits_lora_config_card_and_chart_in_one_commit(
    hub: LocalHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a trained job and a write token WHEN publish runs with method huggingface THEN a
    private repo holds the newest LoRA, its config, the card and the chart after one commit,
    the result's URLs download that LoRA, and the token is nowhere on the volume or in logs."""
    ctx = _context(tmp_path, hub.url, **_hub_output())
    outcome = await publish.run(ctx)
    assert outcome.outputs["delivered_by"] == "huggingface"

    result = ctx.store.load_result(JOB)
    assert result is not None
    out = result.output
    lora = "adapter_model.safetensors"
    assert out.download_method is OutputMethod.HUGGINGFACE and out.expires_in_days is None
    assert out.repo_url == f"{hub.url}/alice/loraq-{JOB}"
    assert out.safetensors_url == f"{out.repo_url}/resolve/main/{lora}"
    assert out.download_url == f"{out.safetensors_url}?download=true"
    assert result.latest_epoch == "epoch2" and result.epochs_completed == 2

    repo = hub.repo(f"alice/loraq-{JOB}")
    assert repo is not None and repo.private
    assert sorted(repo.files) == ["README.md", "adapter_config.json", lora, "loss_chart.png"]
    assert len(hub.commit_requests(repo.repo_id)) == 1
    assert repo.files["loss_chart.png"] == render_loss_chart(LOSSES)
    assert repo.lfs_paths == {lora, "loss_chart.png"}  # through LFS, as on the Hub
    assert len(hub.lfs_uploads(repo.repo_id)) == 2

    got = hf_hub_download(
        repo.repo_id, lora, endpoint=hub.url, token=WRITE_TOKEN, local_dir=tmp_path / "dl"
    )
    assert load_file(got)["lora_A.weight"][0, 0] == 2.0  # the newest epoch's weights

    meta = _front_matter(repo.files["README.md"])
    assert meta["instance_prompt"] == "zkw" and "lora" in meta["tags"]
    assert meta["pipeline_tag"] == "text-to-image"
    card = repo.files["README.md"].decode()
    assert "![Training loss](loss_chart.png)" in card and "| `learning_rate` | `0.0001` |" in card

    assert WRITE_TOKEN.encode() not in _all_bytes_under(tmp_path / "volume")
    assert WRITE_TOKEN not in capsys.readouterr().out


async def test_a_rerun_creates_no_second_repo_and_no_second_commit(
    hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a job already published WHEN publish runs again (a redelivery after a crash) THEN
    the repo is not created again, no commit is made, and the result is the same."""
    await publish.run(_context(tmp_path, hub.url, **_hub_output()))
    first = JobStore(tmp_path / "volume").load_result(JOB)
    repo = hub.repo(f"alice/loraq-{JOB}")
    assert repo is not None
    head = repo.head

    ctx = _context(tmp_path, hub.url, **_hub_output())
    await publish.run(ctx)
    assert ctx.store.load_result(JOB) == first
    assert repo.head == head and len(repo.commits) == 2  # the repo's first, then ours
    assert len(hub.commit_requests(repo.repo_id)) == 1
    assert len(hub.lfs_uploads(repo.repo_id)) == 2  # the first run's LoRA and chart only
    creates = hub.requests(lambda r: r.path == "/api/repos/create")
    assert [r.status for r in creates] == [200, 409]


async def test_a_public_named_repo_gets_every_epoch(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN repo_id, private false and all_epochs WHEN published THEN the named repo is public
    and holds each epoch under epochN/ besides the newest at the top."""
    request = _hub_output(repo_id="alice/my-lora", private=False, all_epochs=True)
    ctx = _context(tmp_path, hub.url, **request)
    await publish.run(ctx)
    repo = hub.repo("alice/my-lora")
    assert repo is not None and not repo.private
    assert {p for p in repo.files if p.startswith("epoch")} == {
        "epoch1/adapter_model.safetensors",
        "epoch1/adapter_config.json",
        "epoch2/adapter_model.safetensors",
        "epoch2/adapter_config.json",
    }
    # Public: downloadable without a token.
    got = hf_hub_download(
        "alice/my-lora",
        "epoch1/adapter_model.safetensors",
        endpoint=hub.url,
        token=False,
        local_dir=tmp_path / "dl",
    )
    assert load_file(got)["lora_A.weight"][0, 0] == 1.0
    result = ctx.store.load_result(JOB)
    assert result is not None and result.output.repo_url == f"{hub.url}/alice/my-lora"


async def test_a_read_only_token_fails_on_the_token_field(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN a read-only token WHEN publish runs THEN the job fails permanently naming
    output.huggingface.token, without the token in the message, and no repo appears."""
    with pytest.raises(Permanent) as failed:
        await publish.run(_context(tmp_path, hub.url, **_hub_output(token=READ_TOKEN)))
    assert failed.value.code is ErrorCode.PUBLISH_FAILED
    assert failed.value.field == "output.huggingface.token"
    assert READ_TOKEN not in failed.value.message and "write role" in failed.value.message
    assert hub.repo(f"alice/loraq-{JOB}") is None


async def test_someone_elses_repo_fails_on_the_token_field(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN bob's public repo WHEN alice's job names it THEN the commit is refused (403) and
    the failure points at the token, with bob's repo untouched."""
    from pydantic import SecretStr

    from infra.hub_upload import HubUploader
    from tests.delivery.conftest import BOB_TOKEN

    HubUploader(SecretStr(BOB_TOKEN), hub.url).ensure_repo("bob/lora", private=False)
    with pytest.raises(Permanent) as failed:
        await publish.run(_context(tmp_path, hub.url, **_hub_output(repo_id="bob/lora")))
    assert failed.value.field == "output.huggingface.token"
    assert hub.commit_requests("bob/lora") == []


async def test_an_invalid_repo_id_fails_on_the_repo_id_field(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(Permanent) as failed:
        await publish.run(_context(tmp_path, hub.url, **_hub_output(repo_id="alice/bad--name")))
    assert failed.value.field == "output.huggingface.repo_id"


async def test_an_unreachable_hub_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(Retryable) as failed:
        await publish.run(_context(tmp_path, dead, **_hub_output()))
    assert failed.value.code is ErrorCode.PUBLISH_FAILED


async def test_a_storage_outage_during_the_lora_upload_is_retryable(
    hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN LFS storage answering 503 to each first PUT and its 5 retries WHEN publish
    runs THEN the job fails Retryable (huggingface_hub wraps the 503 in a bare RuntimeError,
    which used to read as permanent), no signed URL is in the message, nothing is committed;
    the retry publishes."""
    hub.fail_lfs_uploads(6)
    with pytest.raises(Retryable) as failed:
        await publish.run(_context(tmp_path, hub.url, **_hub_output()))
    assert failed.value.code is ErrorCode.PUBLISH_FAILED
    assert "503" in failed.value.message and "ticket" not in failed.value.message
    repo_id = f"alice/loraq-{JOB}"
    assert hub.commit_requests(repo_id) == [] and hub.lfs_uploads(repo_id) == []

    outcome = await publish.run(_context(tmp_path, hub.url, **_hub_output()))
    assert outcome.outputs["delivered_by"] == "huggingface"
    assert len(hub.commit_requests(repo_id)) == 1


async def test_auto_with_a_write_token_delivers_to_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN method auto and a write token in api_keys WHEN publish runs THEN the Hub is tried
    first and delivers; nothing fell through."""
    request = {"output": {"method": "auto"}, "api_keys": {"huggingface_token": WRITE_TOKEN}}
    ctx = _context(tmp_path, hub.url, **request)
    outcome = await publish.run(ctx)
    assert outcome.outputs["delivered_by"] == "huggingface"
    assert outcome.outputs["fell_through"] is None
    assert hub.repo(f"alice/loraq-{JOB}") is not None

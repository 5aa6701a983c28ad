"""litterbox, transfer.sh and ``auto``'s fall-through, through the publish stage.

The stage runs for real (a job directory on a temp volume, the train stage's outputs in the
ledger, the real aiohttp client); the hosts are the local servers in ``tests/temp_hosts.py``,
which parse the real upload forms and serve the files back.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save_file

from contracts.enums import ErrorCode, ModelType, StageName, StageStatus
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from stages import publish
from stages.context import StageContext
from stages.delivery.record import RECORD_FILE, DeliveryRecord
from stages.errors import Permanent, Retryable
from tests.temp_hosts import LocalLitterbox, LocalTransferSh

JOB = "job-temp-1"
RUN_DIR = "20260101_10-00-00"
LORA = "adapter_model.safetensors"
NO_TOKEN = "huggingface: no token in the request"


@pytest.fixture
async def litterbox(tmp_path: Path) -> AsyncIterator[LocalLitterbox]:
    host = LocalLitterbox(tmp_path / "litterbox-files")
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture
async def transfer_sh(tmp_path: Path) -> AsyncIterator[LocalTransferSh]:
    host = LocalTransferSh(tmp_path / "transfer-files")
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def _trained(volume: Path) -> tuple[Path, Path]:
    """Two saved epochs as diffusion-pipe leaves them; the newest is what gets published."""
    run = volume / "jobs" / JOB / "output" / RUN_DIR
    for epoch in (1, 2):
        folder = run / f"epoch{epoch}"
        folder.mkdir(parents=True)
        # Random, so the zip cannot shrink it below the small limits the tests set (16 KiB).
        weights = np.random.default_rng(epoch).standard_normal((64, 64), dtype=np.float32)
        save_file({"lora_A.weight": weights}, str(folder / LORA))
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return run / "epoch2", run / "epoch2" / LORA


def _context(
    volume: Path,
    litterbox: LocalLitterbox,
    transfer_sh: LocalTransferSh,
    method: str,
    **settings: Any,
) -> StageContext:
    request = JobRequest.model_validate(
        {
            "input": {
                "job_id": JOB,
                "model_type": "tiny",
                "dataset": {"type": "precaptioned", "images_url": "https://x.test/d.zip"},
                "output": {"method": method},
            }
        }
    ).input
    store = JobStore(volume)
    model_dir = volume / "jobs" / JOB / "output" / RUN_DIR / "epoch2"
    if not model_dir.exists():
        _trained(volume)
    now = utcnow()
    ledger = Ledger(job_id=JOB, model_type=ModelType.TINY, created_at=now, updated_at=now)
    train = ledger.stage(StageName.TRAIN)
    train.status = StageStatus.COMPLETED
    train.outputs = {
        "model_dir": str(model_dir),
        "lora_path": str(model_dir / LORA),
        "epochs_completed": 2,
    }

    async def emit(*_: object) -> None:
        return None

    base: dict[str, Any] = {
        "litterbox_url": litterbox.url,
        "transfer_sh_url": transfer_sh.url,
        "transient_retry_wait_s": 0,
    }
    return StageContext(
        job_id=JOB,
        request=request,
        paths=store.paths(JOB),
        store=store,
        settings=Settings(queue_url="http://unused", volume=volume, **(base | settings)),
        ledger=ledger,
        emit=emit,
        stop_requested=asyncio.Event(),
    )


async def _download_zip(url: str) -> zipfile.ZipFile:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, url
        return zipfile.ZipFile(io.BytesIO(await response.read()))


def _result(volume: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((volume / "jobs" / JOB / "result.json").read_text())
    return data


async def test_litterbox_delivers_a_zip_that_downloads_and_holds_the_lora(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN a trained job asking for litterbox WHEN publish runs THEN one upload with
    litterbox's form (reqtype, time=72h, fileToUpload, a Content-Length), the result links to a
    zip holding the newest epoch's LoRA byte for byte, and the temp zip is gone."""
    ctx = _context(tmp_path, litterbox, transfer_sh, "litterbox")
    outcome = await publish.run(ctx)

    assert outcome.outputs == {
        "download_url_set": True,
        "delivered_by": "litterbox",
        "fell_through": None,
    }
    [upload] = litterbox.uploads
    assert upload.fields == {"reqtype": "fileupload", "time": "72h"}
    assert (upload.file_field, upload.filename) == ("fileToUpload", f"{JOB}_epoch2.zip")
    assert upload.content_length is not None and upload.content_length > upload.size
    output = _result(tmp_path)["output"]
    assert output["download_method"] == "litterbox" and output["expires_in_days"] == 3.0
    assert output["safetensors_url"] is None
    assert output["archive_size_mb"] == round(upload.size / 1024**2, 3)
    archive = await _download_zip(output["download_url"])
    assert sorted(archive.namelist()) == ["epoch2/adapter_config.json", f"epoch2/{LORA}"]
    lora = archive.read(f"epoch2/{LORA}")
    assert lora == (ctx.paths.output / RUN_DIR / "epoch2" / LORA).read_bytes()
    expected = np.random.default_rng(2).standard_normal((64, 64), dtype=np.float32)
    assert np.array_equal(load_safetensors(lora)["lora_A.weight"], expected)
    assert list(ctx.paths.work.iterdir()) == [] and transfer_sh.attempts == 0


async def test_auto_without_a_hub_token_skips_the_hub_and_says_why(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN ``auto`` and no Hugging Face token WHEN publish runs THEN litterbox delivers and
    the reason the Hub was skipped is in the note and the stage's outputs."""
    outcome = await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    assert outcome.outputs["delivered_by"] == "litterbox"
    assert outcome.outputs["fell_through"] == NO_TOKEN
    assert NO_TOKEN in _result(tmp_path)["output"]["note"]
    assert len(litterbox.uploads) == 1 and transfer_sh.attempts == 0


async def test_auto_falls_through_to_transfer_sh_when_the_archive_is_too_big_for_litterbox(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN an archive over litterbox's limit WHEN ``auto`` publishes THEN nothing is sent to
    litterbox, transfer.sh gets the zip (field filedata, Max-Days 14), and the note says why."""
    ctx = _context(tmp_path, litterbox, transfer_sh, "auto", litterbox_max_bytes=1000)
    outcome = await publish.run(ctx)

    assert litterbox.attempts == 0
    [upload] = transfer_sh.uploads
    assert upload.file_field == "filedata" and upload.headers["Max-Days"] == "14"
    output = _result(tmp_path)["output"]
    assert output["download_method"] == "transfer_sh" and output["expires_in_days"] == 14.0
    fell = str(outcome.outputs["fell_through"])
    assert fell.startswith(NO_TOKEN + "; litterbox: the archive is ")
    assert "litterbox takes at most 1000 bytes" in fell and fell in output["note"]
    archive = await _download_zip(output["download_url"])
    assert f"epoch2/{LORA}" in archive.namelist()


async def test_auto_falls_through_when_litterbox_keeps_answering_500(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN litterbox answering 500 to everything WHEN ``auto`` publishes THEN litterbox was
    tried three times, transfer.sh delivers, and the note names the 500."""
    litterbox.fail_status = 500
    outcome = await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    assert litterbox.attempts == 3 and litterbox.uploads == []
    assert outcome.outputs["delivered_by"] == "transfer_sh" and len(transfer_sh.uploads) == 1
    assert "litterbox: upload to litterbox failed 3 times (last: HTTP 500" in str(
        outcome.outputs["fell_through"]
    )


async def test_one_500_is_retried_within_the_stage(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN litterbox failing once with 503 WHEN publish runs THEN the second attempt
    delivers, without falling through."""
    litterbox.fail_status, litterbox.fail_times = 503, 1
    outcome = await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    assert (litterbox.attempts, len(litterbox.uploads)) == (2, 1)
    assert outcome.outputs["delivered_by"] == "litterbox" and transfer_sh.attempts == 0


async def test_when_both_hosts_fail_one_typed_failure_lists_both_reasons(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN litterbox answering an error text with 200 and transfer.sh answering 500 WHEN
    ``auto`` publishes THEN one retryable publish_failed on output.method names both, and no
    result is written."""
    litterbox.error_text = "Something went wrong.\nPlease try again later."
    transfer_sh.fail_status = 500
    with pytest.raises(Retryable) as failed:
        await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    error = failed.value
    assert (error.code, error.field) == (ErrorCode.PUBLISH_FAILED, "output.method")
    assert error.message == (
        "no delivery method succeeded: "
        f"{NO_TOKEN}; "
        "litterbox: litterbox answered without a link: Something went wrong.; "
        "transfer_sh: upload to transfer.sh failed 3 times "
        "(last: HTTP 500: Internal Server Error)"
    )
    assert not (tmp_path / "jobs" / JOB / "result.json").exists()


async def test_explicit_litterbox_with_an_oversize_archive_fails_for_good(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN method litterbox and an archive over its limit WHEN publish runs THEN a permanent
    publish_failed that says the sizes, before anything is sent."""
    ctx = _context(tmp_path, litterbox, transfer_sh, "litterbox", litterbox_max_bytes=1000)
    with pytest.raises(Permanent) as failed:
        await publish.run(ctx)
    assert failed.value.code is ErrorCode.PUBLISH_FAILED
    assert failed.value.field == "output.method"
    assert "litterbox takes at most 1000 bytes" in failed.value.message
    assert litterbox.attempts == 0 and list(ctx.paths.work.iterdir()) == []


async def test_a_413_from_the_host_is_permanent(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN transfer.sh's proxy refusing the body as too large (our limit let it pass) WHEN
    publish runs THEN one attempt and a permanent failure naming the 413."""
    transfer_sh.max_bytes = 100
    with pytest.raises(Permanent) as failed:
        await publish.run(_context(tmp_path, litterbox, transfer_sh, "transfer_sh"))
    assert failed.value.message == "transfer.sh refused the archive as too large (HTTP 413)"
    assert transfer_sh.attempts == 1


async def test_a_rerun_after_success_reuses_the_link_instead_of_uploading_again(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN transfer.sh delivered and the worker died before the ledger said so WHEN publish
    runs again THEN no second upload and the same link; the deletion URL stays on the volume,
    out of the result. A changed archive is uploaded again."""
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "transfer_sh"))
    first = _result(tmp_path)["output"]
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "transfer_sh"))
    assert len(transfer_sh.uploads) == 1 and _result(tmp_path)["output"] == first

    record = json.loads((tmp_path / "jobs" / JOB / RECORD_FILE).read_text())
    assert record["output"]["download_url"] == first["download_url"]
    assert record["delete_url"].startswith(first["download_url"] + "/")
    assert record["delete_url"] not in json.dumps(first)

    # Another method asked for the same job: the record is for transfer.sh, so litterbox uploads.
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "litterbox"))
    assert len(litterbox.uploads) == 1

    lora = tmp_path / "jobs" / JOB / "output" / RUN_DIR / "epoch2" / LORA
    save_file({"lora_A.weight": np.zeros((8, 4), dtype=np.float32)}, str(lora))
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "litterbox"))
    assert len(litterbox.uploads) == 2


async def test_a_recorded_link_past_half_its_life_is_not_reused(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN a litterbox upload recorded 40 of its 72 hours ago WHEN publish runs again THEN it
    uploads afresh (a link about to expire is no result) and records the new one."""
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "litterbox"))
    path = tmp_path / "jobs" / JOB / RECORD_FILE
    record = DeliveryRecord.model_validate_json(path.read_text())
    aged = timedelta(hours=40)
    path.write_text(
        record.model_copy(
            update={
                "uploaded_at": record.uploaded_at - aged,
                "expires_at": record.expires_at - aged,
            }
        ).model_dump_json()
    )
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "litterbox"))
    assert len(litterbox.uploads) == 2
    fresh = DeliveryRecord.model_validate_json(path.read_text())
    assert fresh.output.download_url == _result(tmp_path)["output"]["download_url"]
    assert fresh.output.download_url != record.output.download_url


async def test_a_host_refusing_the_upload_with_a_4xx_fails_for_good(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN transfer.sh answering 403 WHEN publish runs THEN one attempt, a permanent failure
    quoting the status and the reply's first line."""
    transfer_sh.fail_status = 403
    with pytest.raises(Permanent) as failed:
        await publish.run(_context(tmp_path, litterbox, transfer_sh, "transfer_sh"))
    assert failed.value.message == ("transfer.sh refused the upload: HTTP 403: Forbidden")
    assert transfer_sh.attempts == 1


async def test_an_auto_rerun_goes_back_to_the_host_that_took_the_upload(
    tmp_path: Path, litterbox: LocalLitterbox, transfer_sh: LocalTransferSh
) -> None:
    """GIVEN ``auto`` fell through to transfer.sh and the worker died before the ledger said so
    WHEN publish runs again with litterbox healthy THEN transfer.sh's recorded link is reused:
    nothing goes to litterbox and nothing is uploaded twice."""
    litterbox.fail_status = 500
    await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    first = _result(tmp_path)["output"]
    assert first["download_method"] == "transfer_sh"

    litterbox.fail_status = None
    attempts = litterbox.attempts
    outcome = await publish.run(_context(tmp_path, litterbox, transfer_sh, "auto"))
    assert outcome.outputs["delivered_by"] == "transfer_sh"
    assert litterbox.attempts == attempts and litterbox.uploads == []
    assert len(transfer_sh.uploads) == 1
    assert _result(tmp_path)["output"]["download_url"] == first["download_url"]

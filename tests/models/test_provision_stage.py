"""The provision stage as the pipeline runs it: token from the request, Hub from the settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import ErrorCode, EventType, ModelType
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from stages import provision
from stages.context import StageContext
from stages.errors import Permanent
from tests.hub_server import LocalHub
from tests.models.conftest import TOKEN


def _context(
    tmp_path: Path, hub_url: str, model_type: str, api_keys: dict[str, str]
) -> StageContext:
    request = JobRequest.model_validate(
        {
            "input": {
                "model_type": model_type,
                "dataset": {"type": "images", "images_url": "https://x.test/i.zip"},
                "api_keys": api_keys,
            }
        }
    ).input
    store = JobStore(tmp_path)
    now = utcnow()

    async def emit(event_type: EventType, data: Any) -> None:
        return None

    return StageContext(
        job_id="job-1",
        request=request,
        paths=store.paths("job-1"),
        store=store,
        settings=Settings(queue_url="http://unused", volume=tmp_path, hf_endpoint=hub_url),
        ledger=Ledger(
            job_id="job-1", model_type=ModelType(model_type), created_at=now, updated_at=now
        ),
        emit=emit,
        stop_requested=asyncio.Event(),
    )


async def test_the_stage_downloads_with_the_requests_token_and_records_how(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a Flux job carrying a token with access WHEN the stage runs THEN the weights land in
    the volume's models/flux and the outputs say they were downloaded."""
    ctx = _context(tmp_path, local_hub.url, "flux", {"huggingface_token": TOKEN})
    outcome = await provision.run(ctx)
    assert outcome.outputs["weights"] == str(tmp_path / "models" / "flux")
    assert outcome.outputs["provisioned_by"] == "downloaded"
    assert (
        isinstance(outcome.outputs["downloaded_bytes"], int)
        and outcome.outputs["downloaded_bytes"] > 0
    )

    again = await provision.run(_context(tmp_path, local_hub.url, "flux", {}))
    assert again.outputs["provisioned_by"] == "marker"


async def test_the_stage_refuses_a_gated_model_without_a_token(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a Flux job without a token WHEN the stage runs THEN it fails permanently with the
    token's field, so the sender knows what to add."""
    with pytest.raises(Permanent) as refused:
        await provision.run(_context(tmp_path, local_hub.url, "flux", {}))
    assert refused.value.code is ErrorCode.PROVISION_FAILED
    assert refused.value.field == "input.api_keys.huggingface_token"


async def test_tiny_needs_nothing(tmp_path: Path) -> None:
    """GIVEN the built-in model WHEN the stage runs THEN nothing is fetched from anywhere."""
    outcome = await provision.run(_context(tmp_path, "http://127.0.0.1:9", "tiny", {}))
    assert outcome.outputs == {"weights": "builtin"}

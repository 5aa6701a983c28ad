"""A job directory with videos, its stage context, and the local Gemini server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import StageName
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from stages.context import StageContext
from tests.gemini_server import GeminiState, gemini_server
from tests.media import write_video

GEMINI_KEY = "AIzaCaptionTestKeyThatMustNeverLeak_0123456789"


@pytest.fixture
def gemini() -> Iterator[tuple[str, GeminiState]]:
    with gemini_server(GEMINI_KEY) as served:
        yield served


def make_request(dataset_type: str = "videos", key: str | None = GEMINI_KEY) -> JobRequest:
    body: dict[str, Any] = {
        "model_type": "wan13",
        "dataset": {
            "type": dataset_type,
            "videos_url": "https://videos.test/v.zip",
            **({"images_url": "https://images.test/i.zip"} if dataset_type == "both" else {}),
            "trigger_word": "lqclip",
        },
        "output": {"method": "local"},
    }
    if key is not None:
        body["api_keys"] = {"gemini_api_key": key}
    return JobRequest.model_validate({"input": body})


def make_context(
    volume: Path, base_url: str, request: JobRequest | None = None, **settings: Any
) -> StageContext:
    store = JobStore(volume)
    now = utcnow()
    request = request or make_request()
    events: list[tuple[Any, Any]] = []

    async def emit(event_type: Any, data: Any) -> None:
        events.append((event_type, data))

    values: dict[str, Any] = {
        "queue_url": "http://unused",
        "volume": volume,
        "gemini_base_url": base_url,
        "gemini_poll_interval_s": 0.01,
        "gemini_retry_wait_s": 0.01,
        **settings,
    }
    return StageContext(
        job_id="cap-1",
        request=request.input,
        paths=store.paths("cap-1"),
        store=store,
        settings=Settings(**values),
        ledger=Ledger(
            job_id="cap-1", model_type=request.input.model_type, created_at=now, updated_at=now
        ),
        emit=emit,
        stop_requested=asyncio.Event(),
    )


def add_videos(ctx: StageContext, names: list[str]) -> list[Path]:
    folder = ctx.paths.dataset / "videos"
    return [write_video(folder / name) for name in names]


__all__ = ["GEMINI_KEY", "StageName", "add_videos", "make_context", "make_request"]

"""A dataset whose videos need Gemini captions, sent without a Gemini key, is refused first."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import ErrorCode, EventType, StageName
from contracts.request import JobRequest
from infra.local_stack import LocalStack
from stages.errors import Permanent
from stages.pipeline import preflight, run_stages
from tests.captioning.conftest import GEMINI_KEY, make_context, make_request
from tests.conftest import run_worker_until_terminal, send_job


@pytest.mark.parametrize("dataset_type", ["videos", "both"])
def test_preflight_refuses_videos_to_caption_without_a_key(dataset_type: str) -> None:
    """GIVEN a videos/both dataset and no api_keys.gemini_api_key WHEN preflight runs
    THEN it refuses with invalid_request on input.api_keys.gemini_api_key."""
    with pytest.raises(Permanent) as refused:
        preflight(make_request(dataset_type, key=None).input)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert refused.value.field == "input.api_keys.gemini_api_key"


def test_preflight_accepts_a_key_or_precaptioned_videos() -> None:
    """GIVEN a key, or precaptioned videos without one WHEN preflight runs THEN it passes."""
    preflight(make_request("videos").input)
    preflight(make_request("precaptioned", key=None).input)


def _images_request(key: str | None = None) -> JobRequest:
    body: dict[str, Any] = {
        "model_type": "sdxl",
        "dataset": {"type": "images", "images_url": "https://images.test/i.zip"},
        "output": {"method": "local"},
    }
    if key is not None:
        body["api_keys"] = {"gemini_api_key": key}
    return JobRequest.model_validate({"input": body})


def test_images_need_a_key_only_when_gemini_captions_them() -> None:
    """GIVEN an images dataset without a Gemini key WHEN preflight runs THEN JoyCaption (the
    default image backend) accepts it, and a worker whose image backend is Gemini refuses it
    with invalid_request on input.api_keys.gemini_api_key."""
    preflight(_images_request().input)
    preflight(_images_request(GEMINI_KEY).input, image_backend="gemini")
    with pytest.raises(Permanent, match="images") as refused:
        preflight(_images_request().input, image_backend="gemini")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert refused.value.field == "input.api_keys.gemini_api_key"


async def test_the_workers_image_backend_is_checked_before_the_first_stage(
    tmp_path: Path,
) -> None:
    """GIVEN a worker whose image backend is Gemini and an images job without a key
    WHEN the pipeline runs THEN it refuses before any stage starts (nothing is downloaded)."""
    ctx = make_context(
        tmp_path, "http://127.0.0.1:9", _images_request(), caption_image_backend="gemini"
    )
    started: list[StageName] = []

    async def hook(name: StageName, body: Callable[[], Awaitable[None]]) -> None:
        started.append(name)
        await body()

    with pytest.raises(Permanent) as refused:
        await run_stages(ctx, lambda ledger: None, hook)
    assert refused.value.field == "input.api_keys.gemini_api_key" and started == []


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dataset_host() -> Iterator[tuple[str, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/videos.zip", handler
    finally:
        server.shutdown()


async def test_a_worker_refuses_it_before_any_download(
    stack: LocalStack, tmp_path: Path, dataset_host: tuple[str, type[_Counting]]
) -> None:
    """GIVEN a Wan videos job without a Gemini key on the real queue WHEN a worker runs
    THEN it publishes job.failed (invalid_request, input.api_keys.gemini_api_key, not
    retryable) and the dataset host never saw a request."""
    url, handler = dataset_host
    body = make_request("videos", key=None).model_dump(mode="json")
    body["input"]["dataset"]["videos_url"] = url
    body["input"]["job_id"] = "no-key"
    send_job(stack, body)
    settings = stack.worker_settings(tmp_path, visibility_timeout=30)
    events = await run_worker_until_terminal(stack, settings, {"no-key"}, 60)

    failed = [e for e in events if e.type is EventType.JOB_FAILED]
    assert len(failed) == 1 and failed[0].data["code"] == "invalid_request"
    assert failed[0].data["field"] == "input.api_keys.gemini_api_key"
    assert failed[0].data["retryable"] is False and handler.hits == 0

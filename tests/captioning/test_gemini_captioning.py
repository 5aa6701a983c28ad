"""The caption stage with the real google-genai client against the local Gemini server."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import structlog

from contracts.enums import ErrorCode
from infra.logging import configure_logging
from stages import caption
from stages.errors import Permanent, Retryable
from tests.captioning.conftest import GEMINI_KEY, add_videos, make_context, make_request
from tests.gemini_server import GeminiState
from tests.media import write_image

Served = tuple[str, GeminiState]


async def test_each_video_gets_its_own_caption_with_the_trigger_word_once(
    tmp_path: Path, gemini: Served
) -> None:
    """GIVEN three videos without captions WHEN the caption stage runs twice
    THEN each has a caption naming it, led by the trigger word exactly once, every uploaded
    file was deleted, and the second run calls Gemini no more (captions are kept)."""
    url, state = gemini
    ctx = make_context(tmp_path, url)
    videos = add_videos(ctx, ["a.mp4", "b.webm", "c.mov"])

    outcome = await caption.run(ctx)
    await caption.run(ctx)

    for video in videos:
        text = video.with_suffix(".txt").read_text()
        assert text == f"lqclip, a short clip named {video.stem}, filmed in daylight"
    assert outcome.outputs["captioned"] == 3 and outcome.outputs["caption_skipped_count"] == 0
    assert state.calls["generate"] == 3 and sorted(state.deleted) == ["a.mp4", "b.webm", "c.mov"]
    assert state.files == {}


async def test_a_caption_written_before_a_crash_is_kept(tmp_path: Path, gemini: Served) -> None:
    """GIVEN one video already captioned by an earlier (crashed) attempt WHEN the stage runs
    THEN only the other video goes to Gemini and the earlier caption is untouched."""
    url, state = gemini
    ctx = make_context(tmp_path, url)
    done, todo = add_videos(ctx, ["done.mp4", "todo.mp4"])
    done.with_suffix(".txt").write_text("lqclip, written before the crash")

    await caption.run(ctx)

    assert done.with_suffix(".txt").read_text() == "lqclip, written before the crash"
    assert "todo" in todo.with_suffix(".txt").read_text()
    assert state.calls["generate"] == 1


async def test_throttling_is_retried_honouring_retry_after(tmp_path: Path, gemini: Served) -> None:
    """GIVEN Gemini answers the first three generate calls 429 with Retry-After 0.2 s
    WHEN one video is captioned THEN it succeeds, and the waits were the server's (≥ 0.6 s),
    not the 10 ms backoff configured for calls without Retry-After."""
    url, state = gemini
    state.throttle_first, state.retry_after_s = 3, 0.2
    ctx = make_context(tmp_path, url)
    (video,) = add_videos(ctx, ["slow.mp4"])

    started = time.monotonic()
    await caption.run(ctx)

    assert time.monotonic() - started >= 0.6
    assert state.generate_calls == 4 and video.with_suffix(".txt").exists()


async def test_throttling_that_never_ends_is_a_retryable_failure(
    tmp_path: Path, gemini: Served
) -> None:
    """GIVEN Gemini throttles every call WHEN the attempts run out THEN the stage raises a
    retryable failure (SQS delivers the job again later) naming the throttling."""
    url, state = gemini
    state.throttle_first = 1000
    ctx = make_context(tmp_path, url, gemini_max_attempts=2)
    add_videos(ctx, ["a.mp4"])

    with pytest.raises(Retryable, match="RESOURCE_EXHAUSTED") as failed:
        await caption.run(ctx)
    assert failed.value.code is ErrorCode.INTERNAL_ERROR and state.generate_calls == 2


async def test_a_failed_file_is_skipped_with_a_warning(tmp_path: Path, gemini: Served) -> None:
    """GIVEN three videos, one of which Gemini marks FAILED WHEN the stage runs
    THEN the other two are captioned, the failed one is removed from the dataset and named in
    the stage's outputs (decision: skip with a warning, like any unreadable upload)."""
    url, state = gemini
    state.failed_files = {"broken.mp4"}
    ctx = make_context(tmp_path, url)
    good_a, broken, good_b = add_videos(ctx, ["a.mp4", "broken.mp4", "b.mp4"])

    outcome = await caption.run(ctx)

    assert good_a.with_suffix(".txt").exists() and good_b.with_suffix(".txt").exists()
    assert not broken.exists() and not broken.with_suffix(".txt").exists()
    assert outcome.outputs["caption_skipped"] == "broken.mp4"
    assert outcome.outputs["captioned"] == 2 and "broken.mp4" in state.deleted


async def test_a_dataset_whose_every_video_failed_is_invalid(
    tmp_path: Path, gemini: Served
) -> None:
    """GIVEN a single video that Gemini marks FAILED WHEN the stage runs THEN the job fails
    permanently with dataset_invalid on the videos URL, naming the file and the reason."""
    url, state = gemini
    state.failed_files = {"only.mp4"}
    ctx = make_context(tmp_path, url)
    add_videos(ctx, ["only.mp4"])

    with pytest.raises(Permanent, match=r"only\.mp4") as failed:
        await caption.run(ctx)
    assert failed.value.code is ErrorCode.DATASET_INVALID
    assert failed.value.field == "dataset.videos_url"


@pytest.mark.parametrize("limit", [1, 3])
async def test_the_concurrency_limit_holds(tmp_path: Path, gemini: Served, limit: int) -> None:
    """GIVEN six videos and 100 ms per generate call WHEN captioned with caption_concurrency K
    THEN the server saw exactly K generate calls in flight at most (the limit is reached and
    never exceeded)."""
    url, state = gemini
    state.latency_s = 0.1
    state.hold_until_in_flight = limit  # reached for sure, not by the host's timing
    ctx = make_context(tmp_path, url, caption_concurrency=limit)
    add_videos(ctx, [f"v{i}.mp4" for i in range(6)])

    await caption.run(ctx)

    assert state.max_in_flight == limit and state.calls["generate"] == 6


async def test_a_retired_model_falls_back_to_the_next(tmp_path: Path, gemini: Served) -> None:
    """GIVEN the configured model answers 404 WHEN captioning THEN the fallback model is used."""
    url, state = gemini
    ctx = make_context(
        tmp_path, url, gemini_model="gemini-0-retired", gemini_fallback_models=["gemini-2.5-flash"]
    )
    (video,) = add_videos(ctx, ["a.mp4"])

    await caption.run(ctx)

    assert video.with_suffix(".txt").exists() and state.calls["generate"] == 1


async def test_a_wrong_key_fails_the_job_naming_the_key_field(
    tmp_path: Path, gemini: Served
) -> None:
    """GIVEN a request whose Gemini key the service rejects WHEN the stage runs
    THEN it fails permanently with invalid_request on input.api_keys.gemini_api_key."""
    url, _ = gemini
    ctx = make_context(tmp_path, url, make_request(key="AIzaWrongKeyWrongKeyWrongKey"))
    add_videos(ctx, ["a.mp4"])

    with pytest.raises(Permanent) as failed:
        await caption.run(ctx)
    assert failed.value.code is ErrorCode.INVALID_REQUEST
    assert failed.value.field == "input.api_keys.gemini_api_key"
    assert "AIzaWrongKey" not in failed.value.message


async def test_the_key_goes_only_to_gemini_never_to_logs_or_files(
    tmp_path: Path, gemini: Served, capfd: pytest.CaptureFixture[str]
) -> None:
    """GIVEN JSON logging on and a FAILED file among the videos WHEN the stage runs
    THEN the key travelled only in x-goog-api-key headers, and no log line or file on the
    volume contains it."""
    lines = io.StringIO()
    configure_logging("DEBUG", stream=lines)
    url, state = gemini
    state.failed_files = {"bad.mp4"}
    ctx = make_context(tmp_path, url)
    add_videos(ctx, ["good.mp4", "bad.mp4"])

    try:
        await caption.run(ctx)
    finally:
        structlog.reset_defaults()  # the next test must not write into this buffer

    captured = capfd.readouterr()
    assert "caption_skipped" in lines.getvalue()  # the warning was logged
    assert GEMINI_KEY not in lines.getvalue() + captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert GEMINI_KEY.encode() not in path.read_bytes(), path
    for headers in state.headers_seen:
        leaked = {k for k, v in headers.items() if GEMINI_KEY in v and k != "x-goog-api-key"}
        assert not leaked


async def test_images_go_to_gemini_when_it_is_the_image_backend(
    tmp_path: Path, gemini: Served
) -> None:
    """GIVEN a worker whose caption_image_backend is gemini and a 'both' dataset with an
    uncaptioned image and video WHEN the stage runs THEN both are captioned by Gemini, the image
    sent as an image with the image prompt, the video with the video prompt."""
    url, state = gemini
    ctx = make_context(
        tmp_path,
        url,
        make_request("both"),
        caption_image_backend="gemini",
        gemini_image_prompt="Describe this still image.",
    )
    (video,) = add_videos(ctx, ["a.mp4"])
    image = write_image(ctx.paths.dataset / "images" / "photo.png")

    outcome = await caption.run(ctx)

    assert image.with_suffix(".txt").read_text().startswith("lqclip, a short clip named photo")
    assert video.with_suffix(".txt").exists() and outcome.outputs["captioned"] == 2
    assert state.generated["photo.png"] == ("image/png", "Describe this still image.")
    assert state.generated["a.mp4"][0] == "video/mp4"
    assert state.generated["a.mp4"][1] == ctx.settings.gemini_prompt

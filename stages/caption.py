"""Caption: make sure every media file has its ``<stem>.txt`` and the trigger word leads it.

The trigger word is prepended once (``"<trigger>, caption"``): a caption that already starts
with it is left alone, so re-running after a crash never doubles it.

Videos without a caption in ``videos``/``both`` datasets are captioned by Gemini, each caption
written (atomically, trigger word included) the moment it arrives: a crashed or retried stage
captions only what is still missing. A video Gemini cannot process (its file goes ``FAILED``,
or the model rejects it) is skipped, not fatal: it is removed from the dataset, named in the
stage's outputs (``caption_skipped``) and logged as a warning, the same treatment as any other
unreadable file in the upload; only a dataset left with nothing fails. Images without captions
need an image backend (JoyCaption), which this worker does not have yet: that stays a clear
``unsupported`` failure, found here because captions are only known after the download.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from contracts.enums import DatasetType, ErrorCode, StageName
from infra.volume import atomic_write_text
from stages.captioners import Captioner, CaptionError, CaptionFault, caption_files
from stages.context import StageContext, StageOutcome
from stages.errors import Permanent, Retryable, StageFailure
from stages.fetch import CAPTION_SUFFIX, IMAGE_SUFFIXES, VIDEO_SUFFIXES

NAME = StageName.CAPTION
GEMINI_KEY_FIELD = "input.api_keys.gemini_api_key"
CAPTIONED_TYPES = frozenset({DatasetType.VIDEOS, DatasetType.BOTH})

log = structlog.get_logger(__name__)


async def run(ctx: StageContext) -> StageOutcome:
    dataset = ctx.request.dataset
    missing = [m for m in _media_files(ctx.paths.dataset) if not _caption_path(m).exists()]
    skipped: list[str] = []
    if dataset.type is not DatasetType.PRECAPTIONED:
        images = [m for m in missing if m.suffix.lower() in IMAGE_SUFFIXES]
        if images:
            raise Permanent(
                ErrorCode.UNSUPPORTED,
                f"{len(images)} images have no caption and this worker has no image captioning "
                "backend; send <name>.txt captions and use dataset.type 'precaptioned'",
                field="dataset.type",
            )
        videos = [m for m in missing if m.suffix.lower() in VIDEO_SUFFIXES]
        if videos and dataset.type in CAPTIONED_TYPES:
            skipped = await _caption_videos(ctx, videos)
    media = _media_files(ctx.paths.dataset)
    if not media:
        raise Permanent(
            ErrorCode.DATASET_INVALID,
            f"no usable media left after captioning; skipped: {', '.join(skipped)}",
            field="dataset.videos_url",
        )
    for item in media:
        _apply_trigger(item, dataset.trigger_word)
    return StageOutcome(
        {
            "captioned": len(media),
            "missing_captions": len(missing),
            "caption_skipped": ", ".join(skipped) or None,
            "caption_skipped_count": len(skipped),
        }
    )


async def _caption_videos(ctx: StageContext, videos: list[Path]) -> list[str]:
    """Caption ``videos`` with Gemini; remove and return the ones it could not process."""
    key = ctx.request.api_keys.gemini_api_key
    if key is None:  # preflight refuses this first; kept so the stage never calls without one
        raise Permanent(
            ErrorCode.INVALID_REQUEST, "videos need a Gemini key", field=GEMINI_KEY_FIELD
        )
    from stages.captioners.gemini import GeminiCaptioner, GeminiOptions  # google-genai is heavy

    trigger = ctx.request.dataset.trigger_word
    captioner: Captioner = GeminiCaptioner(key, GeminiOptions.from_settings(ctx.settings))
    try:
        rejected = await caption_files(
            captioner,
            videos,
            ctx.settings.caption_concurrency,
            lambda path, text: atomic_write_text(_caption_path(path), with_trigger(text, trigger)),
        )
    except CaptionError as exc:
        raise _stage_failure(exc) from None
    finally:
        await captioner.aclose()
    for path, error in sorted(rejected.items()):
        log.warning("caption_skipped", file=path.name, reason=error.message)
        path.unlink(missing_ok=True)
    return [p.name for p in sorted(rejected)]


def _stage_failure(exc: CaptionError) -> StageFailure:
    if exc.fault is CaptionFault.AUTH:
        return Permanent(ErrorCode.INVALID_REQUEST, exc.message, field=GEMINI_KEY_FIELD)
    # NO_MODEL is the worker's configuration and TRANSIENT the service's state: neither is the
    # request's fault, and a later delivery (after a fix, or the quota refilled) can pass.
    return Retryable(ErrorCode.INTERNAL_ERROR, f"video captioning: {exc.message}")


def _apply_trigger(item: Path, trigger: str | None) -> None:
    caption_path = _caption_path(item)
    exists = caption_path.exists()
    caption = caption_path.read_text(encoding="utf-8", errors="replace").strip() if exists else ""
    final = with_trigger(caption, trigger)
    if final != caption or not exists:
        atomic_write_text(caption_path, final)


def with_trigger(caption: str, trigger: str | None) -> str:
    caption = " ".join(caption.split())
    if not trigger:
        return caption
    if caption == trigger or caption.startswith(f"{trigger},"):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _caption_path(media: Path) -> Path:
    return media.with_suffix(CAPTION_SUFFIX)


def _media_files(dataset_dir: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    if not dataset_dir.exists():
        return []
    return sorted(p for p in dataset_dir.rglob("*") if p.suffix.lower() in suffixes)

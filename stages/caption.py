"""Caption: make sure every media file has its ``<stem>.txt`` and the trigger word leads it.

The trigger word is prepended once (``"<trigger>, caption"``): a caption that already starts
with it is left alone, so re-running after a crash never doubles it.

Which files get a generated caption depends on ``dataset.type``: images in ``images``/``both``
datasets, videos in ``videos``/``both``; any other file without a caption (and every file of a
``precaptioned`` dataset) gets the trigger word alone. Images are captioned by the worker's
``caption_image_backend``: JoyCaption (default; a local model, provisioned into
``models/joycaption/`` on first use like base weights, loaded once for the stage and freed
before it returns, so the trainer gets the GPU back) or Gemini (with the request's key, as
videos always are).

Each caption is written (atomically, trigger word included) the moment it exists: a crashed or
retried stage captions only what is still missing. A file the backend cannot read (a corrupt
image, a video Gemini marks ``FAILED``, an empty answer) is skipped, not fatal: it is removed
from the dataset, named in the stage's outputs (``caption_skipped``) and logged as a warning,
the same treatment as any other unreadable file in the upload; only a dataset left with nothing
fails.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import SecretStr

from contracts.enums import DatasetType, ErrorCode, StageName
from contracts.pass_through import is_control_char
from infra.hub import HubClient
from infra.volume import MODELS_DIR, atomic_write_text
from stages.captioners import (
    Captioner,
    CaptionError,
    CaptionFault,
    caption_files,
    caption_in_batches,
)
from stages.context import StageContext, StageOutcome
from stages.errors import Interrupted, Permanent, Retryable, StageFailure
from stages.fetch import CAPTION_SUFFIX, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from stages.provision import provision_model
from stages.registry import joycaption_spec

NAME = StageName.CAPTION
GEMINI_KEY_FIELD = "input.api_keys.gemini_api_key"
VIDEO_CAPTIONED_TYPES = frozenset({DatasetType.VIDEOS, DatasetType.BOTH})
IMAGE_CAPTIONED_TYPES = frozenset({DatasetType.IMAGES, DatasetType.BOTH})

log = structlog.get_logger(__name__)


async def run(ctx: StageContext) -> StageOutcome:
    dataset = ctx.request.dataset
    missing = [m for m in _media_files(ctx.paths.dataset) if not _caption_path(m).exists()]
    skipped: list[Path] = []
    images = [m for m in missing if m.suffix.lower() in IMAGE_SUFFIXES]
    if images and dataset.type in IMAGE_CAPTIONED_TYPES:
        skipped += await _caption_images(ctx, images)
    videos = [m for m in missing if m.suffix.lower() in VIDEO_SUFFIXES]
    if videos and dataset.type in VIDEO_CAPTIONED_TYPES:
        skipped += _drop(await _caption_with_gemini(ctx, videos, ctx.settings.gemini_prompt))
    media = _media_files(ctx.paths.dataset)
    if not media:
        kind = "images" if any(p.suffix.lower() in IMAGE_SUFFIXES for p in skipped) else "videos"
        raise Permanent(
            ErrorCode.DATASET_INVALID,
            "no usable media left after captioning; skipped: " + ", ".join(p.name for p in skipped),
            field=f"dataset.{kind}_url",
        )
    for item in media:
        _apply_trigger(item, dataset.trigger_word)
    return StageOutcome(
        {
            "captioned": len(media),
            "missing_captions": len(missing),
            "caption_skipped": ", ".join(p.name for p in skipped) or None,
            "caption_skipped_count": len(skipped),
        }
    )


async def _caption_images(ctx: StageContext, images: list[Path]) -> list[Path]:
    if ctx.settings.caption_image_backend == "gemini":
        return _drop(await _caption_with_gemini(ctx, images, ctx.settings.gemini_image_prompt))
    return _drop(await _caption_with_joycaption(ctx, images))


async def _caption_with_joycaption(
    ctx: StageContext, images: list[Path]
) -> dict[Path, CaptionError]:
    """Caption ``images`` in batches with JoyCaption; return the ones it could not read."""
    # transformers and torch take seconds to import: only a job with images to caption pays.
    from stages.captioners.joycaption import JoyCaptioner, JoyCaptionOptions

    folder = await _joycaption_weights(ctx)
    options = JoyCaptionOptions.from_settings(ctx.settings)
    try:
        captioner = await JoyCaptioner.open(folder, options)
        try:
            return await caption_in_batches(
                captioner,
                images,
                options.batch_size,
                _caption_writer(ctx.request.dataset.trigger_word),
                ctx.stop_requested.is_set,
            )
        finally:
            # Before training: the captioner's GPU memory must be free when the trainer starts.
            await captioner.aclose()
    except CaptionError as exc:
        raise _stage_failure(exc, "image") from None


async def _joycaption_weights(ctx: StageContext) -> Path:
    """The folder to load JoyCaption from, provisioned from the Hub the first time.

    Same lock, checks and marker as base weights, so of the workers sharing a volume one
    downloads and the others wait. A failure here is the worker's (its settings, the Hub, the
    volume), never the request's: the job is retried rather than failed for good.
    """
    settings = ctx.settings
    if settings.joycaption_dir is not None:
        return settings.joycaption_dir
    spec = joycaption_spec(settings.joycaption_repo_id, settings.joycaption_revision)
    models_dir = ctx.store.volume / MODELS_DIR / spec.model_type.value
    try:
        await provision_model(
            spec,
            models_dir,
            HubClient(settings.hf_endpoint),
            None,  # a public repository: the request's Hub token is not sent for it
            should_stop=ctx.stop_requested.is_set,
            retry_wait_s=settings.transient_retry_wait_s,
        )
    except StageFailure as failure:
        raise Retryable(
            ErrorCode.PROVISION_FAILED, f"image captioning: {failure.message}"
        ) from None
    except Interrupted as stop:
        raise Interrupted(stop.reason, stage=NAME) from None
    return models_dir / spec.sources[0].subdir


async def _caption_with_gemini(
    ctx: StageContext, files: list[Path], prompt: str
) -> dict[Path, CaptionError]:
    """Caption ``files`` with Gemini; return the ones it could not process."""
    key = _gemini_key(ctx)
    from stages.captioners.gemini import GeminiCaptioner, GeminiOptions  # google-genai is heavy

    options = dataclasses.replace(GeminiOptions.from_settings(ctx.settings), prompt=prompt)
    captioner: Captioner = GeminiCaptioner(key, options)
    try:
        return await caption_files(
            captioner,
            files,
            ctx.settings.caption_concurrency,
            _caption_writer(ctx.request.dataset.trigger_word),
        )
    except CaptionError as exc:
        raise _stage_failure(exc, "Gemini") from None
    finally:
        await captioner.aclose()


def _gemini_key(ctx: StageContext) -> SecretStr:
    key = ctx.request.api_keys.gemini_api_key
    if key is None:  # preflight refuses this first; kept so the stage never calls without one
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            "captioning with Gemini needs a Gemini key",
            field=GEMINI_KEY_FIELD,
        )
    return key


def _caption_writer(trigger: str | None) -> Callable[[Path, str], None]:
    """Each caption is written the moment it arrives, trigger word first: a crash keeps it."""

    def write(path: Path, text: str) -> None:
        atomic_write_text(_caption_path(path), with_trigger(text, trigger))

    return write


def _drop(rejected: dict[Path, CaptionError]) -> list[Path]:
    """Remove the files no caption could be made for; return them, sorted."""
    for path, error in sorted(rejected.items()):
        log.warning("caption_skipped", file=path.name, reason=error.message)
        path.unlink(missing_ok=True)
    return sorted(rejected)


def _stage_failure(exc: CaptionError, what: str) -> StageFailure:
    if exc.fault is CaptionFault.AUTH:
        return Permanent(ErrorCode.INVALID_REQUEST, exc.message, field=GEMINI_KEY_FIELD)
    # NO_MODEL is the worker's configuration and TRANSIENT the service's (or the GPU's) state:
    # neither is the request's fault, and a later delivery (after a fix, or the quota refilled)
    # can pass.
    return Retryable(ErrorCode.INTERNAL_ERROR, f"{what} captioning: {exc.message}")


def _apply_trigger(item: Path, trigger: str | None) -> None:
    caption_path = _caption_path(item)
    exists = caption_path.exists()
    caption = caption_path.read_text(encoding="utf-8", errors="replace").strip() if exists else ""
    final = with_trigger(caption, trigger)
    if final != caption or not exists:
        atomic_write_text(caption_path, final)


def normalise_caption(text: str) -> str:
    """One line of NFC text with no control characters: what every caption file holds.

    diffusion-pipe reads a caption file whole (``f.read().strip()``, utils/dataset.py line 753
    at 8f83dbf) as one caption, so a newline is only noise inside it; NUL, ESC, CR, the line
    and paragraph separators and the bidirectional overrides are refused in the trigger word
    and replaced by a space here, wherever the caption came from (the upload, Gemini,
    JoyCaption). Whitespace runs become one space.
    """
    text = unicodedata.normalize("NFC", text)
    cleaned = "".join(" " if is_control_char(char) else char for char in text)
    return " ".join(cleaned.split())


def with_trigger(caption: str, trigger: str | None) -> str:
    caption = normalise_caption(caption)
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

"""The stage pipeline: run what the ledger does not already record as completed.

The ledger is written before a stage starts (``running``, attempts + 1) and after it finished
(``completed`` with its outputs), never in between: a crash leaves ``running``, and the next
runner does that stage again from scratch, trusting nothing it left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

from contracts.enums import DatasetType, ErrorCode, EventType, OutputMethod, StageName, StageStatus
from contracts.events import StageData
from contracts.ledger import Ledger, StageError, StageRecord
from contracts.request import JobInput
from infra.settings import ImageCaptionBackend
from infra.volume import utcnow
from stages import caption, configure, fetch, model_budget, provision, publish, train
from stages.context import StageContext
from stages.errors import Interrupted, Permanent, Retryable, StageFailure
from stages.registry import spec_for

STAGES: tuple[ModuleType, ...] = (fetch, caption, configure, provision, train, publish)
assert tuple(m.NAME for m in STAGES) == tuple(StageName), "pipeline order is StageName's order"

# Wraps each stage: logging context and timing live here, not inside the stages.
StageHook = Callable[[StageName, Callable[[], Awaitable[None]]], Awaitable[None]]


def preflight(
    request: JobInput,
    image_backend: ImageCaptionBackend = "joycaption",
    *,
    gpu_memory_gib: float | None = None,
) -> None:
    """Refuse, before any download, a request that this worker can never complete.

    ``image_backend`` is the worker's ``caption_image_backend`` and ``gpu_memory_gib`` its
    GPU's memory (None: unknown, so only what upstream refuses on any GPU is refused);
    ``run_stages`` checks both again with the worker's own settings before the first stage
    they matter to. ``loraq config`` passes the worker's settings here directly.
    """
    _check_media(request)
    _check_captioning(request, image_backend)
    if request.output.method not in publish.SUPPORTED_METHODS:
        supported = ", ".join(sorted(m.value for m in publish.SUPPORTED_METHODS))
        raise Permanent(
            ErrorCode.UNSUPPORTED,
            f"output method '{request.output.method}' is not available on this worker "
            f"(available: {supported})",
            field="output.method",
        )
    if request.output.method is OutputMethod.S3 and request.output.s3 is None:
        raise Permanent(ErrorCode.INVALID_REQUEST, "output.s3 is required", field="output.s3")
    # Last: it builds the TOML tables, which only a request that passed the rest deserves.
    model_budget.check(request, gpu_memory_gib)


def _check_media(request: JobInput) -> None:
    """The dataset against what the model trains on (the registry's images/videos flags)."""
    spec = spec_for(request.model_type)
    dataset = request.dataset
    if dataset.videos_url and not spec.videos:
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            f"{spec.display_name} trains on images only; remove dataset.videos_url",
            field="dataset.videos_url",
        )
    if spec.videos_only and (dataset.images_url or dataset.type is DatasetType.IMAGES):
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            f"{spec.display_name} trains on videos only",
            field="dataset.type",
        )
    if dataset.videos_url and request.training.video_clip_mode == "multiple":
        # Accepted by the seed, but diffusion-pipe's extract_clips (models/base.py at the pinned
        # commit) has it commented out and raises NotImplementedError while caching latents.
        raise Permanent(
            ErrorCode.UNSUPPORTED,
            "video_clip_mode 'multiple' is not implemented by the pinned diffusion-pipe; use "
            "'single_beginning' or 'single_middle'",
            field="training.video_clip_mode",
        )
    if dataset.videos_url and max(request.training.frame_buckets, default=1) <= 1:
        # diffusion-pipe never puts a video in the 1-frame bucket: every video would be dropped.
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            "videos need a frame bucket above 1 (for example [1, 33])",
            field="training.frame_buckets",
        )


def _check_captioning(request: JobInput, image_backend: ImageCaptionBackend) -> None:
    """Media that Gemini captions need the caller's Gemini key: say so before downloading."""
    if request.api_keys.gemini_api_key is not None:
        return
    kind = request.dataset.type
    if kind in caption.VIDEO_CAPTIONED_TYPES:
        what = "videos captioned by Gemini"
    elif kind in caption.IMAGE_CAPTIONED_TYPES and image_backend == "gemini":
        what = "images captioned by Gemini on this worker"
    else:
        return
    raise Permanent(
        ErrorCode.INVALID_REQUEST,
        f"dataset.type '{kind}' has its {what}: send "
        "api_keys.gemini_api_key, or send captions and use dataset.type 'precaptioned'",
        field=caption.GEMINI_KEY_FIELD,
    )


def _record_failure(
    ctx: StageContext,
    record: StageRecord,
    failure: StageFailure,
    save_ledger: Callable[[Ledger], None],
) -> None:
    failure.message = ctx.redact(failure.message)
    record.status = StageStatus.FAILED
    record.error = StageError(
        code=failure.code,
        message=failure.message,
        field=failure.field,
        retryable=failure.retryable,
    )
    save_ledger(ctx.ledger)


async def run_stages(
    ctx: StageContext, save_ledger: Callable[[Ledger], None], hook: StageHook
) -> None:
    if ctx.ledger.stage(StageName.CAPTION).status is not StageStatus.COMPLETED:
        # Which captioner images get is the worker's setting, unknown to a bare preflight.
        _check_captioning(ctx.request, ctx.settings.caption_image_backend)
    if ctx.ledger.stage(StageName.TRAIN).status is not StageStatus.COMPLETED:
        # The GPU is this worker's: a job resumed here after training needs none of it. The
        # driver is asked off the loop (nvidia-smi may take a second).
        gpu = await asyncio.to_thread(model_budget.gpu_memory_gib, ctx.settings.gpu_memory_gib)
        model_budget.check(ctx.request, gpu)
    for module in STAGES:
        name: StageName = module.NAME
        record = ctx.ledger.stage(name)
        if record.status is StageStatus.COMPLETED:
            continue
        if ctx.stop_requested.is_set():
            raise Interrupted("the worker is shutting down", stage=name)
        record.status = StageStatus.RUNNING
        record.attempts += 1
        record.started_at = utcnow()
        record.error = None
        save_ledger(ctx.ledger)
        await ctx.emit(
            EventType.STAGE_STARTED,
            StageData(job_id=ctx.job_id, stage=name, attempt=record.attempts),
        )
        started = time.monotonic()

        async def body(module: ModuleType = module, record: StageRecord = record) -> None:
            outcome = await module.run(ctx)
            record.outputs = dict(outcome.outputs)

        try:
            await hook(name, body)
        except StageFailure as failure:
            _record_failure(ctx, record, failure, save_ledger)
            raise
        except (Interrupted, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug in a stage: this attempt fails, the stage is known
            crash = Retryable(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            _record_failure(ctx, record, crash, save_ledger)
            raise crash from exc
        record.status = StageStatus.COMPLETED
        record.completions += 1
        record.completed_at = utcnow()
        save_ledger(ctx.ledger)
        await ctx.emit(
            EventType.STAGE_COMPLETED,
            StageData(
                job_id=ctx.job_id,
                stage=name,
                attempt=record.attempts,
                duration_s=round(time.monotonic() - started, 3),
            ),
        )

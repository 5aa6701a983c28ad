"""Fetch: download each dataset zip and extract it safely into ``dataset/images|videos``.

Idempotent: anything a crashed attempt left is removed first, and each media folder appears
under its final name only after extraction finished (extract into ``work/``, then rename). The
one exception is a download cut short: its bytes stay in ``work/<kind>.zip.partial`` and the
next try (a retry here, or a later delivery) resumes it when the server allows ranges.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from contracts.enums import ErrorCode, StageName
from infra.archive import UnsafeArchive, safe_extract
from infra.download import (
    DownloadFailed,
    DownloadRefused,
    Pace,
    check_endpoint,
    download_http,
)
from infra.s3 import S3Objects, parse_s3_url, s3_client
from infra.settings import Settings
from stages.context import StageContext, StageOutcome
from stages.errors import Permanent, Retryable
from stages.media import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from stages.media import VIDEO_SUFFIXES as VIDEO_SUFFIXES
from stages.media import problem_with

NAME = StageName.FETCH
CAPTION_SUFFIX = ".txt"

log = structlog.get_logger(__name__)


async def run(ctx: StageContext) -> StageOutcome:
    dataset = ctx.request.dataset
    ctx.paths.work.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str | int | float | bool | None] = {}
    for kind, url, suffixes in (
        ("images", dataset.images_url, IMAGE_SUFFIXES),
        ("videos", dataset.videos_url, VIDEO_SUFFIXES),
    ):
        final = ctx.paths.dataset / kind
        shutil.rmtree(final, ignore_errors=True)
        if url is None:
            continue
        field = f"dataset.{kind}_url"
        archive = ctx.paths.work / f"{kind}.zip"
        size = await _download(ctx, url, archive, field)
        count, rejected = _extract(
            archive, ctx.paths.work / f"{kind}.partial", final, suffixes, field
        )
        archive.unlink(missing_ok=True)
        outputs[f"{kind}_count"] = count
        # The warning travels in the ledger (stage outputs) and the log: unreadable files were
        # dropped, the rest of the dataset trains.
        outputs[f"{kind}_rejected"] = ", ".join(rejected) or None
        outputs[f"{kind}_rejected_count"] = len(rejected)
        if rejected:
            log.warning("media_rejected", kind=kind, files=rejected)
        outputs[f"{kind}_bytes"] = size
    return StageOutcome(outputs)


async def _download(ctx: StageContext, url: str, dest: Path, field: str) -> int:
    settings = ctx.settings
    # One pace per dataset: its deadline covers every attempt, waits between them included.
    pace = Pace(
        settings.download_min_rate_bytes_s,
        settings.download_rate_window_s,
        settings.download_deadline_s,
    )
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(DownloadFailed),
        stop=stop_after_attempt(4),
        wait=wait_exponential(multiplier=settings.transient_retry_wait_s, max=20),
        reraise=True,
    )
    try:
        async with asyncio.timeout(settings.download_deadline_s):
            async for attempt in retrying:
                with attempt:
                    return await _download_once(ctx, url, dest, pace)
    except DownloadRefused as exc:
        raise Permanent(ErrorCode.DATASET_DOWNLOAD_FAILED, str(exc), field=field) from exc
    except DownloadFailed as exc:
        raise Retryable(ErrorCode.DATASET_DOWNLOAD_FAILED, str(exc), field=field) from exc
    except TimeoutError as exc:  # a connect or a wait between attempts ran into the deadline
        raise Permanent(ErrorCode.DATASET_DOWNLOAD_FAILED, str(pace.late()), field=field) from exc
    raise AssertionError("unreachable")


async def _download_once(ctx: StageContext, url: str, dest: Path, pace: Pace) -> int:
    settings = ctx.settings
    if url.startswith("s3://"):
        return await _download_s3(ctx, url, dest, pace)
    return await download_http(
        url, dest, max_bytes=settings.max_download_bytes, allow=settings.fetch_allow, pace=pace
    )


async def _download_s3(ctx: StageContext, url: str, dest: Path, pace: Pace) -> int:
    """Read as the tenant (``dataset.s3``), or as the worker from a bucket the operator listed.

    The worker's own role can read more than any one tenant may (other tenants' outputs among
    it): reading with it anywhere would make the worker a confused deputy.
    """
    try:
        bucket, key = parse_s3_url(url)
    except ValueError as exc:
        raise DownloadRefused(str(exc)) from exc
    settings, own = ctx.settings, ctx.request.dataset.s3
    if own is not None:
        if own.endpoint_url:
            await check_endpoint(own.endpoint_url, settings.fetch_allow)
        async with s3_client(
            endpoint_url=own.endpoint_url,
            region=own.region,
            access_key=own.access_key.get_secret_value(),
            secret_key=own.secret_key.get_secret_value(),
        ) as client:
            return await _read_object(S3Objects(client), bucket, key, dest, pace, settings)
    if bucket not in settings.dataset_buckets:
        raise DownloadRefused(
            f"the worker reads s3:// datasets with its own role only from the buckets its "
            f"operator lists (LORAQ_DATASET_BUCKETS), and '{bucket}' is not one: give "
            "dataset.s3 credentials or a presigned https:// URL"
        )
    if ctx.s3 is None:
        raise DownloadRefused("s3:// URLs need the worker's S3 access")
    return await _read_object(ctx.s3, bucket, key, dest, pace, settings)


async def _read_object(
    s3: S3Objects, bucket: str, key: str, dest: Path, pace: Pace, settings: Settings
) -> int:
    try:
        return await s3.download_to(bucket, key, dest, settings.max_download_bytes, pace)
    except (DownloadRefused, DownloadFailed):
        raise
    except Exception as exc:  # anything else botocore raises: another try would not help
        raise DownloadRefused(f"cannot read s3://{bucket}/{key}: {exc}") from exc


def _extract(
    archive: Path, partial: Path, final: Path, suffixes: frozenset[str], field: str
) -> tuple[int, list[str]]:
    """Extract, drop what is not media, then drop media that does not open; return both."""
    shutil.rmtree(partial, ignore_errors=True)
    try:
        files = safe_extract(archive, partial)
    except UnsafeArchive as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise Permanent(ErrorCode.DATASET_INVALID, str(exc), field=field) from exc
    media = [f for f in files if f.suffix.lower() in suffixes]
    for stray in files:
        if stray.suffix.lower() not in suffixes and stray.suffix.lower() != CAPTION_SUFFIX:
            stray.unlink()
    _lower_caption_suffixes(files)
    rejected = _drop_unreadable(media, partial)
    usable = [m for m in media if m.exists()]
    if not usable:
        shutil.rmtree(partial, ignore_errors=True)
        why = f"; unreadable: {', '.join(rejected)}" if rejected else ""
        raise Permanent(
            ErrorCode.DATASET_INVALID,
            f"the archive holds no usable files ({', '.join(sorted(suffixes))}){why}",
            field=field,
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(final)
    return len(usable), rejected


def _lower_caption_suffixes(files: list[Path]) -> None:
    """``img_1.TXT`` becomes ``img_1.txt``: diffusion-pipe pairs a caption with its image by
    ``image_file.with_suffix('.txt')`` (utils/dataset.py at 8f83dbf, lines 650-655), which is
    case-sensitive, so an upper-case caption would silently train on the trigger word alone.
    (Names that differ only in case were already told apart by the extractor.)"""
    for caption in files:
        if caption.suffix.lower() == CAPTION_SUFFIX and caption.suffix != CAPTION_SUFFIX:
            if not caption.exists():
                continue
            target = caption.with_suffix(CAPTION_SUFFIX)
            if target.exists():
                caption.unlink()
            else:
                caption.rename(target)


def _drop_unreadable(media: list[Path], root: Path) -> list[str]:
    """Remove media that does not open (and its caption); return their archive paths."""
    rejected = []
    for item in media:
        if problem_with(item) is not None:
            item.unlink()
            item.with_suffix(CAPTION_SUFFIX).unlink(missing_ok=True)
            rejected.append(str(item.relative_to(root)))
    return sorted(rejected)

"""``s3://`` dataset downloads that resume, like HTTP ones: ``Range`` plus ``IfMatch`` on the ETag.

S3 serves byte ranges for every object and its ETag is a strong validator, so a transfer cut
short (a dropped connection, a killed worker) continues where its ``.partial`` ends, through the
same ``PartialDownload`` sidecar as HTTP downloads. ``IfMatch`` makes S3 refuse (412) a range
of an object that changed since; then, or when the ``Content-Range`` does not continue the held
bytes exactly, the download starts over from zero.

Errors come back as ``infra.download``'s two kinds: refused (no such key or bucket, access
denied, over the size cap: retrying cannot help) or failed (throttling, 5xx, the network).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from infra.download import DownloadFailed, DownloadRefused, Pace
from infra.partial_download import PartialDownload, Representation, ResumePoint, url_key

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
# The object changed since the held bytes were written, or they already cover all of it.
_STALE = frozenset({"PreconditionFailed", "412", "InvalidRange", "416"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)


class _Stale(Exception):
    """The held bytes cannot be continued: start over."""


async def download_object(
    s3: Any, bucket: str, key: str, dest: Path, max_bytes: int, pace: Pace | None = None
) -> int:
    """Stream ``s3://bucket/key`` into ``dest``; returns the byte count.

    On a transient failure ``<dest>.partial`` and its sidecar stay for the next attempt.
    """
    url = f"s3://{bucket}/{key}"
    partial = PartialDownload(dest)
    point = partial.resume_point(url)
    if point is not None and point.offset == point.representation.total:
        return partial.finish()  # all bytes arrived; the rename did not
    reply = await _resumed(s3, bucket, key, point) if point is not None and point.offset else None
    if reply is None:
        point = None
        reply = await _get(s3, bucket, key)
    total = point.representation.total if point else int(reply.get("ContentLength", 0))
    if total > max_bytes:
        reply["Body"].close()
        partial.discard()
        raise DownloadRefused(f"object is {total} bytes, over the {max_bytes}-byte limit")
    if point is None:
        partial.restart(Representation(url_key(url), str(reply.get("ETag", "")), total))
    offset = point.offset if point else 0
    return await _stream(reply, partial, offset, total, max_bytes, pace or Pace())


async def _resumed(s3: Any, bucket: str, key: str, point: ResumePoint) -> dict[str, Any] | None:
    """The rest of the object after the held bytes, or None when they cannot be continued."""
    held = point.representation
    try:
        reply = await _get(s3, bucket, key, Range=f"bytes={point.offset}-", IfMatch=held.validator)
    except _Stale:
        return None
    match = _CONTENT_RANGE.match(str(reply.get("ContentRange", "")))
    if match is None or (int(match[1]), int(match[3])) != (point.offset, held.total):
        reply["Body"].close()
        return None
    return reply


async def _get(s3: Any, bucket: str, key: str, **extra: str) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = await s3.get_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if extra and code in _STALE:
            raise _Stale(code) from exc
        if code in _TRANSIENT:
            raise DownloadFailed(f"cannot read s3://{bucket}/{key}: {exc}") from exc
        raise DownloadRefused(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:  # the endpoint unreachable, a timeout
        raise DownloadFailed(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    return reply


async def _stream(
    reply: dict[str, Any],
    partial: PartialDownload,
    start: int,
    total: int,
    max_bytes: int,
    pace: Pace,
) -> int:
    received = start
    pace.restart_window()
    try:
        with partial.open_at(start) as out:
            async with reply["Body"] as stream:
                while chunk := await _read(stream, pace):
                    received += len(chunk)
                    if received > max_bytes:
                        partial.discard()
                        raise DownloadRefused(f"object exceeds the {max_bytes}-byte limit")
                    out.write(chunk)
                    pace.observe(len(chunk))
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"connection broke after {received} of {total} bytes: {exc}") from exc
    if received != total:
        raise DownloadFailed(f"truncated: {received} of {total} bytes")
    return partial.finish()


async def _read(stream: Any, pace: Pace) -> bytes:
    """The next chunk within the pace's window and deadline (``infra.download.Pace``)."""
    while True:
        try:
            async with asyncio.timeout(pace.read_timeout()):
                chunk: bytes = await stream.read(_CHUNK)
                return chunk
        except TimeoutError:
            pace.check(time.monotonic())

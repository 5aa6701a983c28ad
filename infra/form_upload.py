"""A file sent to a host as a multipart form (``curl -F field=@file``), streamed from disk.

Temporary file hosts take uploads of up to 10 GiB, so the file is never read into memory:
aiohttp streams the open file in chunks, and since every part's size is known it sends a
``Content-Length`` (PHP hosts such as litterbox do not accept chunked form bodies). Only the
reply's first ``MAX_REPLY_BYTES`` are kept: a host answering with a large error page cannot
fill the worker's memory either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

MAX_REPLY_BYTES = 64 * 1024
# No total limit: a 10 GiB upload takes as long as it takes. A stalled connection is still
# caught: connecting is bounded, and so is the wait for the reply once the body was sent
# (hosts copy the upload into their storage before answering, hence minutes, not seconds).
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=900)


class HostUnreachable(Exception):
    """No reply came back (refused, reset, DNS, timeout): another attempt may pass."""


@dataclass(frozen=True)
class HostReply:
    status: int
    text: str
    headers: CIMultiDict[str]


@dataclass(frozen=True)
class FilePart:
    field: str
    path: Path
    filename: str
    content_type: str = "application/octet-stream"


async def post_form(
    url: str,
    *,
    fields: Sequence[tuple[str, str]],
    file: FilePart,
    headers: Mapping[str, str] | None = None,
    timeout: aiohttp.ClientTimeout = TIMEOUT,
) -> HostReply:
    """POST the text fields then the file (in that order, as browsers and curl send them).

    Redirects are not followed: the body cannot be sent twice, and a host that moved is a
    configuration error to report, not to chase.
    """
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    try:
        with file.path.open("rb") as stream:
            form.add_field(
                file.field, stream, filename=file.filename, content_type=file.content_type
            )
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    url, data=form, headers=dict(headers or {}), allow_redirects=False
                ) as response,
            ):
                body = await _read_bounded(response.content)
                return HostReply(
                    status=response.status,
                    text=body.decode("utf-8", errors="replace"),
                    headers=CIMultiDict(response.headers),
                )
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise HostUnreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc


async def _read_bounded(content: aiohttp.StreamReader) -> bytes:
    chunks: list[bytes] = []
    kept = 0
    while kept < MAX_REPLY_BYTES:
        chunk = await content.read(MAX_REPLY_BYTES - kept)
        if not chunk:
            break
        chunks.append(chunk)
        kept += len(chunk)
    return b"".join(chunks)

"""Dataset downloads over HTTP(S) and S3: streamed to disk, capped in size, guarded against SSRF.

A dataset URL comes from the internet, so before connecting we resolve its host and refuse
loopback, private, link-local (the cloud metadata address) and multicast addresses unless the
operator allowed them (``LORAQ_FETCH_ALLOW``). Redirects are followed by hand so each hop is
checked the same way. A broken transfer resumes with a range request where the server allows it
(see ``infra/partial_download.py`` for what a resume may trust).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlparse

import aiohttp
import structlog

from infra.partial_download import PartialDownload, Representation, ResumePoint, url_key

MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_IGNORED_RANGE = "the server answered 200: it ignored the range, or the file changed"

log = structlog.get_logger(__name__)


class DownloadRefused(Exception):
    """The URL is not allowed (scheme, address, size): retrying cannot help."""


class DownloadFailed(Exception):
    """A transient failure (connection, 5xx, timeout): another attempt may pass."""


def _allowed(address: str, allow: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return ip.is_global and not ip.is_multicast


async def check_url(url: str, allow: list[str]) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise DownloadRefused(f"unsupported URL: {parsed.scheme}://")
    if parsed.hostname in allow:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DownloadFailed(f"cannot resolve {parsed.hostname}: {exc}") from exc
    for info in infos:
        address = str(info[4][0])
        if not _allowed(address, allow):
            raise DownloadRefused(
                f"{parsed.hostname} resolves to a non-public address ({address}); refused"
            )


async def download_http(url: str, dest: Path, *, max_bytes: int, allow: list[str]) -> int:
    """Stream ``url`` into ``dest``; returns the byte count.

    Bytes land in ``<dest>.partial`` first. When a transfer breaks they stay there, and the next
    call for the same URL (the fetch stage's retry, or another delivery after a worker crash)
    asks only for the rest, if the server supports ranges and gave a validator.
    """
    partial = PartialDownload(dest)
    try:
        return await _download(url, partial, max_bytes, allow)
    except DownloadRefused:
        partial.discard()  # retrying cannot help, so the bytes are only clutter on the volume
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"connection failed: {exc}") from exc


async def _download(url: str, partial: PartialDownload, max_bytes: int, allow: list[str]) -> int:
    point = partial.resume_point(url)
    if point is not None and point.offset == point.representation.total:
        return partial.finish()  # a crash came between the last byte and the rename
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if point is not None:
            reply = await _get(session, url, allow, _range_headers(point))
            async with reply:
                if reply.status == 206:
                    problem = _range_problem(reply, point)
                    if problem is None:
                        log.info("download_resuming", offset=point.offset)
                        total = point.representation.total
                        return await _receive(reply, partial, point.offset, total, max_bytes)
                    log.info("download_restarting", reason=problem)
                elif reply.status == 200:
                    log.info("download_restarting", reason=_IGNORED_RANGE)
                    return await _fresh(reply, partial, url, max_bytes)
                else:
                    log.info("download_restarting", reason=f"server answered {reply.status}")
        reply = await _get(session, url, allow, {})
        async with reply:
            if reply.status != 200:
                raise DownloadFailed(f"server answered {reply.status} to a plain GET")
            return await _fresh(reply, partial, url, max_bytes)


async def _get(
    session: aiohttp.ClientSession, url: str, allow: list[str], headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """GET ``url``, following redirects by hand so every hop passes the SSRF check."""
    # identity: a range counts bytes of the encoded body, and sizes must be comparable.
    headers = {"Accept-Encoding": "identity", **headers}
    for _ in range(MAX_REDIRECTS + 1):
        await check_url(url, allow)
        reply = await session.get(url, allow_redirects=False, headers=headers)
        if reply.status in (301, 302, 303, 307, 308):
            reply.release()
            url = urljoin(url, reply.headers.get("Location", ""))
            continue
        if reply.status in (200, 206) or (reply.status == 416 and "Range" in headers):
            return reply
        reply.release()
        if reply.status >= 500 or reply.status == 429:
            raise DownloadFailed(f"server answered {reply.status}")
        raise DownloadRefused(f"server answered {reply.status}")
    raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects")


def _range_headers(point: ResumePoint) -> dict[str, str]:
    return {"Range": f"bytes={point.offset}-", "If-Range": point.representation.validator}


def _range_problem(reply: aiohttp.ClientResponse, point: ResumePoint) -> str | None:
    """Why this 206 cannot be appended to the bytes held, or None when it continues them."""
    expected = point.representation
    match = _CONTENT_RANGE.fullmatch(reply.headers.get("Content-Range", "").strip())
    if match is None:
        return "a 206 without a usable Content-Range"
    start, end, total = (int(group) for group in match.groups())
    if (start, end, total) != (point.offset, expected.total - 1, expected.total):
        return (
            f"Content-Range {start}-{end}/{total} does not continue "
            f"{point.offset} of {expected.total} bytes"
        )
    if reply.content_length is not None and reply.content_length != end - start + 1:
        return "Content-Length disagrees with Content-Range"
    if _encoded(reply):
        return "the range is content-encoded"
    etag = reply.headers.get("ETag")
    if etag is not None and etag != expected.validator and _is_etag(expected.validator):
        return "the ETag changed"
    return None


async def _fresh(
    reply: aiohttp.ClientResponse, partial: PartialDownload, url: str, max_bytes: int
) -> int:
    """Take a 200 from byte zero, recording how a later attempt could resume it."""
    total = None if _encoded(reply) else reply.content_length
    if total is not None and total > max_bytes:
        raise DownloadRefused(f"{total} bytes is over the {max_bytes}-byte limit")
    validator, why_not = _validator(reply)
    if validator is None or total is None:
        log.info("download_not_resumable", reason=why_not or "the server sent no Content-Length")
        partial.restart(None)
    else:
        partial.restart(Representation(url_key(url), validator, total))
    return await _receive(reply, partial, 0, total, max_bytes)


async def _receive(
    reply: aiohttp.ClientResponse,
    partial: PartialDownload,
    offset: int,
    total: int | None,
    max_bytes: int,
) -> int:
    """Append the body to the partial file from ``offset``; rename it once it is all there."""
    if total is not None and total > max_bytes:
        raise DownloadRefused(f"{total} bytes is over the {max_bytes}-byte limit")
    written = offset
    try:
        with partial.open_at(offset) as out:
            async for chunk in reply.content.iter_chunked(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadRefused(f"download exceeds the {max_bytes}-byte limit")
                out.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise DownloadFailed(
            f"connection broke after {written} bytes ({_resume_note(partial)}): {exc}"
        ) from exc
    if total is not None and written != total:
        raise DownloadFailed(f"truncated: {written} of {total} bytes ({_resume_note(partial)})")
    return partial.finish()


def _resume_note(partial: PartialDownload) -> str:
    if partial.sidecar.exists():
        return "kept; the next attempt asks for the rest"
    return "not resumable; the next attempt starts over"


def _validator(reply: aiohttp.ClientResponse) -> tuple[str | None, str]:
    """The If-Range value a resume would send, or None and why there is none."""
    accept = {token.strip().lower() for token in reply.headers.get("Accept-Ranges", "").split(",")}
    if "bytes" not in accept:
        return None, "the server does not announce Accept-Ranges: bytes"
    if _encoded(reply):
        return None, "the body is content-encoded"
    etag = reply.headers.get("ETag")
    if etag is not None:
        if not _is_etag(etag):
            # If-Range needs a strong validator (RFC 9110 13.1.5): a weak one may match new bytes.
            return None, "only a weak ETag: no way to know the bytes still match"
        return etag, ""
    modified = reply.headers.get("Last-Modified")
    if modified is not None and _strong_date(modified, reply.headers.get("Date")):
        return modified, ""
    return None, "no ETag or strong Last-Modified: no way to know the bytes still match"


def _is_etag(value: str) -> bool:
    """A strong entity tag (quoted, not ``W/``), as opposed to a weak one or an HTTP date."""
    return value.startswith('"')


def _strong_date(modified: str, date: str | None) -> bool:
    """RFC 9110 8.8.2.2: Last-Modified is strong when at least a second older than Date."""
    if date is None:
        return False
    try:
        return (parsedate_to_datetime(date) - parsedate_to_datetime(modified)).total_seconds() >= 1
    except (TypeError, ValueError):
        return False


def _encoded(reply: aiohttp.ClientResponse) -> bool:
    return reply.headers.get("Content-Encoding", "identity").lower() != "identity"

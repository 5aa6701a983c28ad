"""Dataset downloads over HTTP(S) and S3: streamed to disk, capped in size, guarded against SSRF.

A dataset URL comes from the internet, so before connecting we resolve its host and refuse
loopback, private, link-local (the cloud metadata address) and multicast addresses unless the
operator allowed them (``LORAQ_FETCH_ALLOW``). Redirects are followed by hand so each hop is
checked the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from urllib.parse import urljoin, urlparse

import aiohttp

MAX_REDIRECTS = 5
_CHUNK = 1 << 20


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
    """Stream ``url`` into ``dest``; returns the byte count. ``dest`` is partial on failure."""
    try:
        return await _follow(url, dest, max_bytes=max_bytes, allow=allow)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"connection failed: {exc}") from exc


async def _follow(url: str, dest: Path, *, max_bytes: int, allow: list[str]) -> int:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(MAX_REDIRECTS + 1):
            await check_url(url, allow)
            async with session.get(url, allow_redirects=False) as reply:
                if reply.status in (301, 302, 303, 307, 308):
                    url = urljoin(url, reply.headers.get("Location", ""))
                    continue
                if reply.status >= 500 or reply.status == 429:
                    raise DownloadFailed(f"server answered {reply.status}")
                if reply.status != 200:
                    raise DownloadRefused(f"server answered {reply.status}")
                return await _stream(reply, dest, max_bytes)
    raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects")


async def _stream(reply: aiohttp.ClientResponse, dest: Path, max_bytes: int) -> int:
    declared = reply.content_length
    if declared is not None and declared > max_bytes:
        raise DownloadRefused(f"{declared} bytes is over the {max_bytes}-byte limit")
    written = 0
    try:
        with dest.open("wb") as out:
            async for chunk in reply.content.iter_chunked(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadRefused(f"download exceeds the {max_bytes}-byte limit")
                out.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise DownloadFailed(f"connection broke after {written} bytes: {exc}") from exc
    if declared is not None and written != declared:
        raise DownloadFailed(f"truncated: {written} of {declared} bytes")
    return written

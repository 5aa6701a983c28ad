"""Dataset downloads over HTTP(S) and S3: streamed to disk, capped in size, guarded against SSRF.

A dataset URL comes from the internet, so before connecting we resolve its host and refuse
loopback, private, link-local (the cloud metadata address) and multicast addresses unless the
operator allowed them (``LORAQ_FETCH_ALLOW``). Redirects are followed by hand so each hop is
checked the same way. A broken transfer resumes with a range request where the server allows it
(see ``infra/partial_download.py`` for what a resume may trust).

The address check is bound to the connection: the session's resolver (``AllowedResolver``)
filters the addresses a name resolves to, and aiohttp connects only to what it returns, so a
name whose answer changes between a check and the connect (DNS rebinding) cannot slip
through. IP literals never reach a resolver, so ``check_url`` checks those itself.

A transfer must keep a minimum rate over each window and a dataset has a total deadline
(``Pace``): a server trickling bytes cannot hold a worker's slot for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlparse

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from infra.partial_download import PartialDownload, Representation, ResumePoint, url_key

MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_IGNORED_RANGE = "the server answered 200: it ignored the range, or the file changed"

log = structlog.get_logger(__name__)


class DownloadRefused(Exception):
    """The URL is not allowed (scheme, address, size): retrying cannot help."""


class DownloadFailed(Exception):
    """A transient failure (connection, 5xx, timeout): another attempt may pass."""


class TooSlow(DownloadRefused):
    """The transfer fell under the minimum rate, or the dataset's deadline passed."""


class AddressRefused(OSError):
    """Every address a name resolved to is non-public: raised inside aiohttp's connect."""


def _allowed(address: str, allow: list[str]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) aside
    for entry in allow:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return ip.is_global and not ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AllowedResolver(AbstractResolver):
    """Resolves with ``inner`` and keeps only the addresses the SSRF rules allow.

    aiohttp connects to what this returns and nothing else, so the check and the connection
    see the same answer. Host names listed in ``allow`` are trusted whatever they resolve to.
    """

    def __init__(self, allow: list[str], inner: AbstractResolver | None = None) -> None:
        self._allow = allow
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host in self._allow:
            return answers
        kept = [answer for answer in answers if _allowed(answer["host"], self._allow)]
        if not kept:
            refused = ", ".join(sorted({answer["host"] for answer in answers}))
            raise AddressRefused(f"{host} resolves to a non-public address ({refused}); refused")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def check_url(url: str, allow: list[str]) -> None:
    """The checks a URL gets before any connection: scheme, host, and IP literals' addresses.

    Names are checked by ``AllowedResolver`` as aiohttp connects.
    """
    try:
        parsed = urlparse(url)
        host, _ = parsed.hostname, parsed.port
    except ValueError as exc:
        raise DownloadRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not host:
        raise DownloadRefused(f"unsupported URL: {parsed.scheme}://")
    if host in allow or not _is_ip_literal(host):
        return
    if not _allowed(host, allow):
        raise DownloadRefused(f"{host} resolves to a non-public address ({host}); refused")


async def check_endpoint(url: str, allow: list[str]) -> None:
    """``check_url`` plus a lookup of the name, for clients loraq cannot give a resolver.

    botocore opens its own connections, so a tenant's S3 ``endpoint_url`` is checked by
    resolving it here; the connection may resolve again (the rebinding window this leaves is
    the reason HTTP downloads use ``AllowedResolver`` instead).
    """
    check_url(url, allow)
    host = urlparse(url).hostname or ""
    if host in allow or _is_ip_literal(host):
        return
    resolver = AllowedResolver(allow)
    try:
        await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except AddressRefused as exc:
        raise DownloadRefused(str(exc)) from exc
    except OSError as exc:
        raise DownloadFailed(f"cannot resolve {host}: {exc}") from exc
    finally:
        await resolver.close()


@dataclass
class Pace:
    """The slowest a transfer may go, and when the whole dataset must be in.

    The rate is checked per window (bytes since the window began), not per chunk, so a server
    that pauses for a moment between bursts is not punished; a read that waits a whole
    window for any byte fails too.
    """

    min_rate: int = 64 * 1024
    window_s: float = 60.0
    deadline_s: float = 4 * 3600.0
    _deadline: float = field(default=0.0, init=False)
    _window_start: float = field(default=0.0, init=False)
    _window_bytes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.deadline_s
        self.restart_window()

    def restart_window(self) -> None:
        self._window_start, self._window_bytes = time.monotonic(), 0

    def read_timeout(self) -> float:
        """How long one read may wait: to the end of this window, or to the deadline."""
        now = time.monotonic()
        self.check(now)
        return max(0.001, min(self._window_start + self.window_s, self._deadline) - now)

    def observe(self, count: int) -> None:
        self._window_bytes += count
        self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Raise ``TooSlow`` past the deadline or when a finished window fell under the rate."""
        if now >= self._deadline:
            raise self.late()
        if now - self._window_start >= self.window_s:
            rate = self._window_bytes / (now - self._window_start)
            if rate < self.min_rate:
                raise TooSlow(
                    f"the transfer ran at {rate:.0f} bytes/s, under the minimum of "
                    f"{self.min_rate} bytes/s over {self.window_s:g} s"
                )
            self.restart_window()

    def late(self) -> TooSlow:
        return TooSlow(f"the dataset was not downloaded within {self.deadline_s:g} s")

    def seconds_left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())


async def download_http(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    allow: list[str],
    pace: Pace | None = None,
    resolver: AbstractResolver | None = None,
) -> int:
    """Stream ``url`` into ``dest``; returns the byte count.

    Bytes land in ``<dest>.partial`` first. When a transfer breaks they stay there, and the next
    call for the same URL (the fetch stage's retry, or another delivery after a worker crash)
    asks only for the rest, if the server supports ranges and gave a validator. ``resolver``
    is the name lookup the SSRF filter wraps (tests give one whose answer changes).
    """
    partial = PartialDownload(dest)
    pace = pace or Pace()
    try:
        return await _download(url, partial, max_bytes, allow, pace, resolver)
    except DownloadRefused:
        partial.discard()  # retrying cannot help, so the bytes are only clutter on the volume
        raise
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, AddressRefused):
            partial.discard()
            raise DownloadRefused(str(exc.os_error)) from exc
        raise DownloadFailed(f"connection failed: {exc}") from exc
    except aiohttp.InvalidURL as exc:
        partial.discard()
        raise DownloadRefused(f"not a valid URL: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DownloadFailed(f"connection failed: {exc}") from exc


async def _download(
    url: str,
    partial: PartialDownload,
    max_bytes: int,
    allow: list[str],
    pace: Pace,
    resolver: AbstractResolver | None,
) -> int:
    point = partial.resume_point(url)
    if point is not None and point.offset == point.representation.total:
        return partial.finish()  # a crash came between the last byte and the rename
    # Each read is bounded by the pace (window and deadline); connecting by sock_connect.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    connector = aiohttp.TCPConnector(resolver=AllowedResolver(allow, resolver))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        if point is not None:
            reply = await get_checked(session, url, allow, _range_headers(point), pace)
            async with reply:
                if reply.status == 206:
                    problem = _range_problem(reply, point)
                    if problem is None:
                        log.info("download_resuming", offset=point.offset)
                        total = point.representation.total
                        return await _receive(reply, partial, point.offset, total, max_bytes, pace)
                    log.info("download_restarting", reason=problem)
                elif reply.status == 200:
                    log.info("download_restarting", reason=_IGNORED_RANGE)
                    return await _fresh(reply, partial, url, max_bytes, pace)
                else:
                    log.info("download_restarting", reason=f"server answered {reply.status}")
        reply = await get_checked(session, url, allow, {}, pace)
        async with reply:
            if reply.status != 200:
                raise DownloadFailed(f"server answered {reply.status} to a plain GET")
            return await _fresh(reply, partial, url, max_bytes, pace)


async def get_checked(
    session: aiohttp.ClientSession,
    url: str,
    allow: list[str],
    headers: dict[str, str],
    pace: Pace,
) -> aiohttp.ClientResponse:
    """GET ``url``, following redirects by hand so every hop passes the SSRF check."""
    # identity: a range counts bytes of the encoded body, and sizes must be comparable.
    headers = {"Accept-Encoding": "identity", **headers}
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allow)
        wait = min(pace.window_s, pace.seconds_left())
        try:
            async with asyncio.timeout(wait):
                reply = await session.get(url, allow_redirects=False, headers=headers)
        except TimeoutError as exc:
            if pace.seconds_left() <= 0:
                raise pace.late() from exc
            raise DownloadFailed(f"no response within {wait:g} s") from exc
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
    reply: aiohttp.ClientResponse, partial: PartialDownload, url: str, max_bytes: int, pace: Pace
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
    return await _receive(reply, partial, 0, total, max_bytes, pace)


async def _receive(
    reply: aiohttp.ClientResponse,
    partial: PartialDownload,
    offset: int,
    total: int | None,
    max_bytes: int,
    pace: Pace,
) -> int:
    """Append the body to the partial file from ``offset``; rename it once it is all there."""
    if total is not None and total > max_bytes:
        raise DownloadRefused(f"{total} bytes is over the {max_bytes}-byte limit")
    written = offset
    pace.restart_window()
    try:
        with partial.open_at(offset) as out:
            while chunk := await _read(reply, pace):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadRefused(f"download exceeds the {max_bytes}-byte limit")
                out.write(chunk)
                pace.observe(len(chunk))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise DownloadFailed(
            f"connection broke after {written} bytes ({_resume_note(partial)}): {exc}"
        ) from exc
    if total is not None and written != total:
        raise DownloadFailed(f"truncated: {written} of {total} bytes ({_resume_note(partial)})")
    return partial.finish()


async def _read(reply: aiohttp.ClientResponse, pace: Pace) -> bytes:
    """The next chunk, waiting no longer than the pace allows; b"" at the end of the body."""
    while True:
        try:
            async with asyncio.timeout(pace.read_timeout()):
                return await reply.content.readany()
        except TimeoutError:
            # The window (or the deadline) ended while waiting: it fails here if too few bytes
            # came in it; a burst earlier in the window carries the wait into the next one.
            pace.check(time.monotonic())


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

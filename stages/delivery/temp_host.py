"""Upload the model zip to a temporary file host (litterbox, transfer.sh); return its link.

Both hosts take one multipart form and answer with the link as plain text; what differs (URL,
form fields, headers, size limit, lifetime) is a ``TempHost`` that each method's module builds.
The size limit is checked before uploading, so an archive the host would refuse fails at once
(permanently: ``auto`` falls through to the next host) instead of after gigabytes were sent.
A reply without a link is a failure even with HTTP 200: catbox answers errors that way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from contracts.enums import OutputMethod
from contracts.result import OutputInfo
from infra.form_upload import FilePart, HostReply, HostUnreachable, post_form
from stages.context import StageContext
from stages.delivery import Bundle, DeliveryError
from stages.delivery import record as records
from stages.delivery.archive import archive_for_download

# In-stage attempts on 5xx, throttling and dropped connections; then the job's own retry.
ATTEMPTS = 3
_TRANSIENT = frozenset({408, 425, 429})
_SHOWN_CHARS = 200

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TempHost:
    method: OutputMethod
    name: str
    url: str
    max_bytes: int
    lifetime: timedelta
    fields: tuple[tuple[str, str], ...]
    file_field: str
    headers: tuple[tuple[str, str], ...] = ()
    note: str = ""


class _Transient(Exception):
    """Worth another attempt now: the host is down, overloaded or dropped the connection."""


async def deliver_to(host: TempHost, ctx: StageContext, bundle: Bundle) -> OutputInfo:
    archive = await archive_for_download(ctx, bundle)
    try:
        return await _deliver_archive(host, ctx, bundle, archive)
    finally:
        archive.unlink(missing_ok=True)  # the volume keeps the model folder, not a second copy


async def _deliver_archive(
    host: TempHost, ctx: StageContext, bundle: Bundle, archive: Path
) -> OutputInfo:
    size = archive.stat().st_size
    sha256 = await asyncio.to_thread(records.sha256_of, archive)
    path = records.record_path(ctx.paths.root)
    if (reused := records.reuse(path, host.method, sha256, size)) is not None:
        log.info("delivery_reused", job_id=ctx.job_id, method=host.method.value)
        return reused
    _check_size(host, size)
    started = time.monotonic()
    link, delete_url = await _upload(ctx, host, archive)
    log.info(
        "delivery_uploaded",
        job_id=ctx.job_id,
        method=host.method.value,
        bytes=size,
        seconds=round(time.monotonic() - started, 3),
    )
    output = OutputInfo(
        download_url=link,
        safetensors_url=None,
        download_method=host.method,
        expires_in_days=round(host.lifetime / timedelta(days=1), 2),
        archive_size_mb=round(size / 1024**2, 3),
        note=host.note,
        network_volume_path=str(bundle.model_dir),
    )
    records.remember(
        path,
        method=host.method,
        sha256=sha256,
        size=size,
        lifetime=host.lifetime,
        delete_url=delete_url,
        output=output,
    )
    return output


def _check_size(host: TempHost, size: int) -> None:
    if size > host.max_bytes:
        raise DeliveryError(
            f"the archive is {_human(size)}; {host.name} takes at most {_human(host.max_bytes)}",
            retryable=False,
        )


async def _upload(ctx: StageContext, host: TempHost, archive: Path) -> tuple[str, str | None]:
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=ctx.settings.transient_retry_wait_s, max=30),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return _link_from(host, await _post(host, archive))
    except _Transient as exc:
        raise DeliveryError(
            f"upload to {host.name} failed {ATTEMPTS} times (last: {exc})", retryable=True
        ) from exc
    raise AssertionError("unreachable")


async def _post(host: TempHost, archive: Path) -> HostReply:
    part = FilePart(host.file_field, archive, archive.name, "application/zip")
    try:
        reply = await post_form(host.url, fields=host.fields, file=part, headers=dict(host.headers))
    except HostUnreachable as exc:
        raise _Transient(str(exc)) from exc
    if reply.status >= 500 or reply.status in _TRANSIENT:
        raise _Transient(f"HTTP {reply.status}: {_first_line(reply.text)}")
    if reply.status == 413:
        raise DeliveryError(
            f"{host.name} refused the archive as too large (HTTP 413)", retryable=False
        )
    if not 200 <= reply.status < 300:
        raise DeliveryError(
            f"{host.name} refused the upload: HTTP {reply.status}: {_first_line(reply.text)}",
            retryable=False,
        )
    return reply


def _link_from(host: TempHost, reply: HostReply) -> tuple[str, str | None]:
    """The link (the reply's first line) and, where the host sends one, its deletion URL."""
    lines = reply.text.strip().splitlines()
    link = lines[0].strip() if lines else ""
    if not _is_link(link):
        raise DeliveryError(
            f"{host.name} answered without a link: {_first_line(reply.text)}", retryable=True
        )
    delete_url = reply.headers.get("X-Url-Delete")
    return link, delete_url if delete_url and _is_link(delete_url) else None


def _is_link(text: str) -> bool:
    parsed = urlparse(text)
    return (
        parsed.scheme in ("https", "http")
        and bool(parsed.netloc)
        and not any(c.isspace() for c in text)
    )


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return "(empty reply)"
    line = lines[0].strip()
    return line if len(line) <= _SHOWN_CHARS else line[:_SHOWN_CHARS] + "…"


def _human(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.2f} {unit}"
    return f"{size} bytes"

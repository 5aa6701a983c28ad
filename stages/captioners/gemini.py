"""Video captions from Gemini through ``google-genai``'s async client.

Per file: upload (resumable), poll ``files.get`` until ``ACTIVE``, ``generate_content`` with the
file and the prompt, then delete the file (always: uploads count against the project's storage
until they expire). Each call is retried on 429 and 5xx, waiting what the reply's
``Retry-After`` (or Google's ``RetryInfo.retryDelay``) asks, else an exponential backoff: the
client's own retries are off by default, and throttling is the normal state of a busy key.
Models are tried in order: a 404 (the model was retired) moves on to the next name.

The API key lives only in the client object; no message built here contains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mimetypes
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from google import genai
from google.genai import errors, types
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from infra.settings import Settings
from stages.captioners import CaptionError, CaptionFault

log = structlog.get_logger(__name__)
T = TypeVar("T")

_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)
_VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}


@dataclass(frozen=True)
class GeminiOptions:
    models: tuple[str, ...]
    prompt: str
    base_url: str | None = None
    active_timeout_s: float = 300.0
    poll_interval_s: float = 2.0
    max_attempts: int = 6
    retry_wait_s: float = 2.0
    retry_max_wait_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GeminiOptions:
        models = dict.fromkeys([settings.gemini_model, *settings.gemini_fallback_models])
        return cls(
            models=tuple(models),
            prompt=settings.gemini_prompt,
            base_url=settings.gemini_base_url,
            active_timeout_s=settings.gemini_active_timeout_s,
            poll_interval_s=settings.gemini_poll_interval_s,
            max_attempts=settings.gemini_max_attempts,
            retry_wait_s=settings.gemini_retry_wait_s,
            retry_max_wait_s=settings.gemini_retry_max_wait_s,
        )


class GeminiCaptioner:
    """A ``Captioner`` for videos (any file type Gemini accepts)."""

    def __init__(self, api_key: SecretStr, options: GeminiOptions) -> None:
        http = types.HttpOptions(base_url=options.base_url) if options.base_url else None
        self._client = genai.Client(api_key=api_key.get_secret_value(), http_options=http)
        self._options = options

    async def caption(self, media: Path) -> str:
        mime = _VIDEO_TYPES.get(media.suffix.lower()) or mimetypes.guess_type(media.name)[0]
        aio = self._client.aio
        uploaded = await self._call(
            lambda: aio.files.upload(file=media, config={"mime_type": mime}), media
        )
        assert uploaded.name is not None  # the service always names what it stored
        try:
            ready = await self._wait_active(uploaded.name, media)
            return await self._generate(ready, media)
        finally:
            await self._delete(uploaded.name)

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    async def _wait_active(self, name: str, media: Path) -> types.File:
        deadline = time.monotonic() + self._options.active_timeout_s
        while True:
            file = await self._call(lambda: self._client.aio.files.get(name=name), media)
            if file.state is types.FileState.ACTIVE:
                return file
            if file.state is types.FileState.FAILED:
                reason = file.error.message if file.error and file.error.message else "FAILED"
                raise CaptionError(
                    CaptionFault.FILE_REJECTED, f"Gemini could not process {media.name}: {reason}"
                )
            if time.monotonic() > deadline:
                raise CaptionError(
                    CaptionFault.TRANSIENT,
                    f"{media.name} was still {file.state} after "
                    f"{self._options.active_timeout_s:g} s at Gemini",
                )
            await asyncio.sleep(self._options.poll_interval_s)

    async def _generate(self, file: types.File, media: Path) -> str:
        for model in self._options.models:
            try:
                reply = await self._call(
                    functools.partial(self._generate_once, model, file), media, model_404_ok=True
                )
            except _ModelMissing:
                log.warning("gemini_model_missing", model=model)
                continue
            text = " ".join((reply.text or "").split())
            if not text:
                raise CaptionError(
                    CaptionFault.FILE_REJECTED, f"Gemini returned no caption for {media.name}"
                )
            return text
        raise CaptionError(
            CaptionFault.NO_MODEL,
            f"none of the configured Gemini models exists: {', '.join(self._options.models)}",
        )

    async def _generate_once(self, model: str, file: types.File) -> types.GenerateContentResponse:
        contents: list[types.PartUnion] = [file, self._options.prompt]
        return await self._client.aio.models.generate_content(model=model, contents=contents)

    async def _delete(self, name: str) -> None:
        # Best effort: the file expires on its own after 48 h; a failed delete loses no caption.
        with contextlib.suppress(errors.APIError, *_NETWORK_ERRORS):
            await self._client.aio.files.delete(name=name)

    async def _call(
        self,
        call: Callable[[], Awaitable[T]],
        media: Path,
        *,
        model_404_ok: bool = False,
    ) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._options.max_attempts),
            wait=self._wait,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except errors.APIError as exc:
            if model_404_ok and exc.code == 404:
                raise _ModelMissing from exc
            raise _classify(exc, media) from exc
        except _NETWORK_ERRORS as exc:
            raise CaptionError(
                CaptionFault.TRANSIENT, f"Gemini unreachable for {media.name}: {exc!r}"
            ) from exc
        raise AssertionError("unreachable")

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the server's word if it gave one, else backoff."""
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_s(exc) if isinstance(exc, errors.APIError) else None
        if asked is None:
            asked = self._options.retry_wait_s * 2 ** (state.attempt_number - 1)
        return min(asked, self._options.retry_max_wait_s)


class _ModelMissing(Exception):
    """This model name answered 404: try the next one."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, errors.APIError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, _NETWORK_ERRORS)


def _classify(exc: errors.APIError, media: Path) -> CaptionError:
    """google-genai's error → what the job should do about it."""
    what = f"Gemini {exc.code} {exc.status or ''}: {exc.message or ''}".strip()
    if exc.code in (401, 403) or "API_KEY_INVALID" in str(exc.message):
        return CaptionError(CaptionFault.AUTH, f"Gemini refused the API key ({what})")
    if exc.code == 429 or exc.code >= 500:
        return CaptionError(CaptionFault.TRANSIENT, f"{what} (retries exhausted)")
    return CaptionError(CaptionFault.FILE_REJECTED, f"{media.name}: {what}")


_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def retry_after_s(exc: errors.APIError) -> float | None:
    """The wait the reply asked for: the ``Retry-After`` header (seconds) or ``retryDelay``."""
    headers = getattr(exc.response, "headers", None)
    header = headers.get("Retry-After") if headers is not None else None
    if header:
        with contextlib.suppress(ValueError):
            return max(0.0, float(header))
    for detail in _details(exc.details):
        if (match := _DELAY.match(str(detail.get("retryDelay", "")))) is not None:
            return float(match[1])
    return None


def _details(body: Any) -> list[dict[str, Any]]:
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []

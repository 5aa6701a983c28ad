"""Captioning backends behind two small protocols, and the loops that drive them.

A remote backend (Gemini) captions one file at a time; ``caption_files`` runs up to
``concurrency`` of them at once (the limit that keeps a job inside the API's rate limits). A
local model (JoyCaption) captions a batch per forward pass; ``caption_in_batches`` feeds it one
batch after another. Both hand each caption to the caller as soon as it exists, so a crash
loses at most the captions still in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from contracts.enums import StageName
from stages.errors import Interrupted


class Captioner(Protocol):
    """Turns one media file into one caption; ``aclose`` releases the backend's resources."""

    async def caption(self, media: Path) -> str: ...

    async def aclose(self) -> None: ...


class BatchCaptioner(Protocol):
    """Turns several media files into captions in one call; a file it cannot read maps to a
    ``FILE_REJECTED`` error instead of a caption, and any other fault is raised."""

    async def caption_batch(self, media: Sequence[Path]) -> Mapping[Path, str | CaptionError]: ...

    async def aclose(self) -> None: ...


class CaptionFault(StrEnum):
    """Why a file got no caption: what the stage does about it depends only on this."""

    # The file itself is the problem (the service could not process it): skip it, warn.
    FILE_REJECTED = "file_rejected"
    # The service refused the credentials: the request is wrong, no retry can help.
    AUTH = "auth"
    # No configured model exists any more: the worker's settings need changing.
    NO_MODEL = "no_model"
    # Throttling, 5xx, network, a file that never became ready: try the job again later.
    TRANSIENT = "transient"


class CaptionError(Exception):
    def __init__(self, fault: CaptionFault, message: str) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message


# Most severe first: when several files fail at once, the job reports the one that decides.
_SEVERITY = (CaptionFault.AUTH, CaptionFault.NO_MODEL, CaptionFault.TRANSIENT)


async def caption_files(
    captioner: Captioner,
    files: Sequence[Path],
    concurrency: int,
    on_caption: Callable[[Path, str], None],
) -> dict[Path, CaptionError]:
    """Caption ``files`` with at most ``concurrency`` in flight; return the rejected ones.

    ``on_caption`` runs for each caption as it arrives. A rejected file does not stop the
    others; any other fault cancels the rest and is raised (the most severe one).
    """
    limit = asyncio.Semaphore(concurrency)
    rejected: dict[Path, CaptionError] = {}

    async def one(path: Path) -> None:
        async with limit:
            try:
                text = await captioner.caption(path)
            except CaptionError as exc:
                if exc.fault is not CaptionFault.FILE_REJECTED:
                    raise
                rejected[path] = exc
                return
        on_caption(path, text)

    try:
        async with asyncio.TaskGroup() as group:
            for path in files:
                group.create_task(one(path))
    except* CaptionError as failures:
        errors = [e for e in failures.exceptions if isinstance(e, CaptionError)]
        raise min(errors, key=lambda e: _SEVERITY.index(e.fault)) from None
    return rejected


async def caption_in_batches(
    captioner: BatchCaptioner,
    files: Sequence[Path],
    batch_size: int,
    on_caption: Callable[[Path, str], None],
    should_stop: Callable[[], bool],
) -> dict[Path, CaptionError]:
    """Caption ``files`` ``batch_size`` at a time; return the rejected ones.

    Between batches ``should_stop`` is asked: a stopping worker raises ``Interrupted`` there,
    and what was captioned so far is kept for the next attempt.
    """
    rejected: dict[Path, CaptionError] = {}
    for start in range(0, len(files), batch_size):
        if should_stop():
            raise Interrupted("the worker is shutting down", stage=StageName.CAPTION)
        results = await captioner.caption_batch(files[start : start + batch_size])
        for path, result in results.items():
            if isinstance(result, CaptionError):
                rejected[path] = result
            else:
                on_caption(path, result)
    return rejected

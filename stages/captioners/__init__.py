"""Captioning backends behind one small protocol, and the bounded fan-out that drives them.

A backend captions one file at a time; ``caption_files`` runs up to ``concurrency`` of them at
once (the limit that keeps a job inside the API's rate limits) and hands each caption to the
caller as soon as it exists, so a crash loses at most the captions still in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Captioner(Protocol):
    """Turns one media file into one caption; ``aclose`` releases the backend's resources."""

    async def caption(self, media: Path) -> str: ...

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

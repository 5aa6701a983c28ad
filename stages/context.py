"""What a stage receives: the request, its job directory, settings and the adapters it may use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.enums import EventType, StageName
from contracts.ledger import Ledger, Scalar
from contracts.request import JobInput
from infra.s3 import S3Objects
from infra.settings import Settings
from infra.volume import JobPaths, JobStore

Emit = Callable[[EventType, Any], Awaitable[None]]


@dataclass
class StageOutcome:
    """What a stage leaves for later stages; recorded in the ledger once it completed."""

    outputs: dict[str, Scalar] = field(default_factory=dict)


@dataclass
class StageContext:
    job_id: str
    request: JobInput
    paths: JobPaths
    store: JobStore
    settings: Settings
    ledger: Ledger
    emit: Emit
    # Set by the worker's shutdown: long stages save their progress and raise Interrupted.
    stop_requested: asyncio.Event
    s3: S3Objects | None = None
    # Masks the request's secrets: every message a stage records passes through it.
    redact: Callable[[str], str] = str

    def output_of(self, stage: StageName, key: str) -> Scalar:
        return self.ledger.stage(stage).outputs.get(key)

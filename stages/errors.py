"""Typed failures: a stage says whether trying again could help, and which input was wrong."""

from __future__ import annotations

from contracts.enums import ErrorCode, StageName


class StageFailure(Exception):
    retryable: bool = False

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Permanent(StageFailure):
    """Bad input or an unsupported request: retrying cannot succeed, fail the job now."""

    retryable = False


class Retryable(StageFailure):
    """A transient fault (network, 5xx, throttling, a crashed trainer): another attempt may pass."""

    retryable = True


class Interrupted(Exception):
    """The stage stopped because the worker is shutting down; its progress is saved."""

    def __init__(
        self, reason: str, *, stage: StageName | None = None, step: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        self.step = step

"""The stage ledger (``state.json``) and the lease (``lease.json``): what the volume remembers.

The ledger is the truth about a job: a stage's outputs are trusted only if the ledger says the
stage completed, and the ledger is written only after those outputs are fully on disk.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from contracts.enums import ErrorCode, JobStatus, ModelType, StageName, StageStatus

Scalar = str | int | float | bool | None


class StageError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    field: str | None = None
    retryable: bool


class StageRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: StageStatus = StageStatus.PENDING
    attempts: int = 0
    completions: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    outputs: dict[str, Scalar] = Field(default_factory=dict)
    error: StageError | None = None


class Ledger(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    model_type: ModelType
    status: JobStatus = JobStatus.RUNNING
    created_at: datetime
    updated_at: datetime
    deliveries: int = 0
    # Attempts that ended in a failure; the retry policy counts these, not SQS receives.
    failed_attempts: int = 0
    # The run in progress (its lease token), cleared whenever a run ends through the worker's own
    # code. Still set when the next run opens: that run's worker died without an outcome.
    open_run: str | None = None
    # Runs that ended that way (SIGKILL, the kernel's OOM killer, a lost machine, a lost lease).
    lost_runs: int = 0
    # The terminal event reached every sink: a leftover continuation can then go silently.
    terminal_published: bool = False
    # Set when the job failed for good: what ``loraq.job.failed`` said, replayed on redelivery.
    error: StageError | None = None
    failed_stage: StageName | None = None
    stages: dict[StageName, StageRecord] = Field(
        default_factory=lambda: {name: StageRecord() for name in StageName}
    )

    def stage(self, name: StageName) -> StageRecord:
        return self.stages.setdefault(name, StageRecord())

    def is_completed(self, name: StageName) -> bool:
        return self.stage(name).status is StageStatus.COMPLETED

    def last_started_stage(self) -> StageName | None:
        """The unfinished stage that started last: where a run that vanished was."""
        started = [
            (record.started_at, name)
            for name, record in self.stages.items()
            if record.started_at is not None and record.status is not StageStatus.COMPLETED
        ]
        return max(started)[1] if started else None


class Lease(BaseModel):
    """Who runs a job now. Taken atomically; a live lease held by another worker means hands off."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    worker_id: str
    # One per acquisition: a worker running several slots must not mistake a second delivery
    # of a job for the run it already has.
    token: str
    acquired_at: datetime
    expires_at: datetime

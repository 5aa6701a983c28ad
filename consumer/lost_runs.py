"""Runs that ended with their worker's death: how they are counted, and how a job fails of them.

The job runner (a job that keeps killing its workers) and the dead-letter sweep (a job SQS
dead-lettered while its worker was dead) both end a job this way; one place says how.
"""

from __future__ import annotations

from contracts.enums import ErrorCode, StageStatus
from contracts.ledger import Ledger, StageError

# Why a run dies without a word: nothing else kills a worker without letting it report.
CAUSE = "killed without warning: out of host or GPU memory, or the machine was lost"


def count_lost_run(ledger: Ledger) -> bool:
    """Close a run its worker left open, counting it as lost; False when none was open."""
    if ledger.open_run is None:
        return False
    ledger.lost_runs += 1
    ledger.open_run = None
    return True


def mark_worker_lost(ledger: Ledger, what_happened: str) -> StageError:
    """Mark the stage the last run died in as failed with ``worker_lost``; return the error.

    ``what_happened`` is given the stage as `` during <stage>`` (empty when none had started).
    """
    stage = ledger.last_started_stage()
    where = f" during {stage.value}" if stage is not None else ""
    error = StageError(
        code=ErrorCode.WORKER_LOST,
        message=what_happened.format(where=where, cause=CAUSE),
        retryable=False,
    )
    if stage is not None:
        record = ledger.stage(stage)
        record.status, record.error = StageStatus.FAILED, error
    return error

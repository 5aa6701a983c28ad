"""Start-up reconciliation: a worker clears what its own earlier incarnation left behind.

After a crash, leases it held would keep its jobs locked until they expire, and the ledger
still says their stages are ``running``. A starting worker recognises its own leases (same
worker id: a restarted container keeps its pod name; or same host and a pid that no longer
exists) and breaks them at once, and marks those half-done stages ``pending`` so the ledger
tells the truth. Leases of other live workers are never touched.
"""

from __future__ import annotations

import os
import socket

import structlog

from contracts.enums import JobStatus, StageStatus
from contracts.ledger import Lease
from infra.volume import JobStore

log = structlog.get_logger("loraq.reconcile")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_own_stale_lease(lease: Lease, worker_id: str, hostname: str | None = None) -> bool:
    if lease.worker_id == worker_id:
        return True
    host, _, pid = lease.worker_id.rpartition("-")
    if host != (hostname or socket.gethostname()) or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _pid_alive(int(pid))


def reconcile(store: JobStore, worker_id: str) -> list[str]:
    """Break this worker's stale leases; returns the job ids it released."""
    released = []
    for job_id in store.job_ids():
        lease = store.read_lease(job_id)
        if lease is None or not is_own_stale_lease(lease, worker_id):
            continue
        if not store.break_lease(job_id, lease):
            continue
        ledger = store.load_ledger(job_id)
        if ledger is not None and ledger.status is JobStatus.RUNNING:
            for record in ledger.stages.values():
                if record.status is StageStatus.RUNNING:
                    record.status = StageStatus.PENDING
            store.save_ledger(ledger)
        released.append(job_id)
        log.info("stale_lease_broken", job_id=job_id, holder=lease.worker_id)
    return released

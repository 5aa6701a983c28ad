"""The job store: atomic files, a lease one runner at a time, an event log that survives tears."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from contracts.enums import EventType, ModelType
from contracts.events import CloudEvent, ProgressData
from contracts.ledger import Ledger
from infra.volume import JobStore, LeaseHeld, atomic_write_text, utcnow


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    """GIVEN a file rewritten twice WHEN done THEN the final content, no temp files."""
    target = tmp_path / "a" / "state.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_lease_excludes_a_second_runner_until_it_expires(tmp_path: Path) -> None:
    """GIVEN a live lease WHEN another runner asks THEN refused; after release, granted."""
    store = JobStore(tmp_path)
    first = store.acquire_lease("job", "worker-a", ttl_s=60)
    with pytest.raises(LeaseHeld) as held:
        store.acquire_lease("job", "worker-b", ttl_s=60)
    assert held.value.lease.worker_id == "worker-a"
    # The same worker id is not enough: a second slot of worker-a is refused too.
    with pytest.raises(LeaseHeld):
        store.acquire_lease("job", "worker-a", ttl_s=60)
    store.release_lease(first)
    assert store.acquire_lease("job", "worker-b", ttl_s=60).worker_id == "worker-b"


def test_expired_lease_is_taken_over_and_the_old_owner_cannot_renew(tmp_path: Path) -> None:
    """GIVEN an expired lease WHEN another runner takes it THEN the old owner's renewal fails."""
    store = JobStore(tmp_path)
    old = store.acquire_lease("job", "worker-a", ttl_s=60)
    lease = store.read_lease("job")
    assert lease is not None
    expired = lease.model_copy(update={"expires_at": utcnow() - timedelta(seconds=1)})
    atomic_write_text(store.paths("job").lease, expired.model_dump_json())
    new = store.acquire_lease("job", "worker-b", ttl_s=60)
    assert not store.renew_lease(old, ttl_s=60)
    assert store.renew_lease(new, ttl_s=60)
    store.release_lease(old)  # releasing a lost lease must not remove the new owner's
    assert store.read_lease("job") is not None


def test_torn_event_line_is_skipped(tmp_path: Path) -> None:
    """GIVEN an events.jsonl whose last line was torn by a crash WHEN read THEN it is skipped."""
    store = JobStore(tmp_path)
    event = CloudEvent.of(EventType.JOB_PROGRESS, ProgressData(job_id="j", step=1), source="s")
    store.append_event(event)
    with store.paths("j").events.open("a") as out:
        out.write('{"specversion": "1.0", "id": "tor')
    assert [e.id for e in store.read_events("j")] == [event.id]


def test_ledger_round_trips(tmp_path: Path) -> None:
    """GIVEN a saved ledger WHEN loaded THEN it has every stage, pending."""
    store = JobStore(tmp_path)
    now = utcnow()
    store.save_ledger(Ledger(job_id="j", model_type=ModelType.TINY, created_at=now, updated_at=now))
    loaded = store.load_ledger("j")
    assert loaded is not None and len(loaded.stages) == 6
    assert store.load_ledger("missing") is None


def test_reconcile_breaks_only_this_workers_stale_leases(tmp_path: Path) -> None:
    """GIVEN leases of this worker's dead incarnation, of a live process on this host and of
    another host WHEN a worker starts THEN only its own stale leases are broken and their
    running stages are marked pending."""
    import os
    import socket

    from consumer.reconcile import reconcile
    from contracts.enums import StageName, StageStatus

    store = JobStore(tmp_path)
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above pid_max on this machine: no such process
    store.acquire_lease("mine-restarted", "pod-a", ttl_s=600)
    store.acquire_lease("mine-dead-pid", f"{host}-{dead_pid}", ttl_s=600)
    store.acquire_lease("live-neighbour", f"{host}-{os.getppid()}", ttl_s=600)
    store.acquire_lease("other-host", "elsewhere-1", ttl_s=600)
    now = utcnow()
    ledger = Ledger(
        job_id="mine-dead-pid", model_type=ModelType.TINY, created_at=now, updated_at=now
    )
    ledger.stage(StageName.TRAIN).status = StageStatus.RUNNING
    store.save_ledger(ledger)

    released = reconcile(store, "pod-a")

    assert released == ["mine-dead-pid", "mine-restarted"]
    assert store.read_lease("live-neighbour") is not None
    assert store.read_lease("other-host") is not None
    reloaded = store.load_ledger("mine-dead-pid")
    assert reloaded is not None and reloaded.stage(StageName.TRAIN).status is StageStatus.PENDING

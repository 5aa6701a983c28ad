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

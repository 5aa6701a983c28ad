"""The job store on the shared volume: paths, atomic writes, the ledger, the lease, the log.

Layout (DESIGN.md): ``jobs/<job_id>/{request.json,state.json,lease.json,events.jsonl,
result.json,dataset/,config/,output/}``. Every file a resume would trust is written to a temp
file and renamed into place, so a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.enums import ModelType
from contracts.events import CloudEvent
from contracts.ledger import Lease, Ledger
from contracts.result import JobResult

# Every name on the volume is spelled here once.
JOBS_DIR = "jobs"
MODELS_DIR = "models"
REQUEST_FILE = "request.json"
LEDGER_FILE = "state.json"
LEASE_FILE = "lease.json"
LEASE_LOCK_FILE = ".lease.lock"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
DATASET_DIR = "dataset"
CONFIG_DIR = "config"
OUTPUT_DIR = "output"
WORK_DIR = "work"


def utcnow() -> datetime:
    return datetime.now(UTC)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_model(path: Path, model: BaseModel) -> None:
    atomic_write_text(path, model.model_dump_json(indent=2))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @property
    def request(self) -> Path:
        return self.root / REQUEST_FILE

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def lease(self) -> Path:
        return self.root / LEASE_FILE

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE

    @property
    def dataset(self) -> Path:
        return self.root / DATASET_DIR

    @property
    def config(self) -> Path:
        return self.root / CONFIG_DIR

    @property
    def output(self) -> Path:
        return self.root / OUTPUT_DIR

    @property
    def work(self) -> Path:
        """Scratch space (downloads in flight); never trusted on resume."""
        return self.root / WORK_DIR


class LeaseHeld(Exception):
    """Another live runner holds the job."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(
            f"job {lease.job_id} is leased by {lease.worker_id} until {lease.expires_at}"
        )
        self.lease = lease


@dataclass(frozen=True)
class LeaseToken:
    """Proof of ownership: the worker id alone is not enough when one worker runs several slots."""

    job_id: str
    worker_id: str
    token: str


class JobStore:
    def __init__(self, volume: Path) -> None:
        self.volume = volume
        (volume / JOBS_DIR).mkdir(parents=True, exist_ok=True)
        (volume / MODELS_DIR).mkdir(parents=True, exist_ok=True)

    def paths(self, job_id: str) -> JobPaths:
        return JobPaths(self.volume / JOBS_DIR / job_id)

    def models_dir(self, model_type: ModelType) -> Path:
        return self.volume / MODELS_DIR / model_type.value

    # -- the ledger -------------------------------------------------------------------------
    def load_ledger(self, job_id: str) -> Ledger | None:
        path = self.paths(job_id).ledger
        if not path.exists():
            return None
        return Ledger.model_validate_json(path.read_text())

    def save_ledger(self, ledger: Ledger) -> None:
        ledger.updated_at = utcnow()
        atomic_write_model(self.paths(ledger.job_id).ledger, ledger)

    def save_request(self, job_id: str, redacted_request: dict[str, Any]) -> None:
        atomic_write_text(self.paths(job_id).request, json.dumps(redacted_request, indent=2))

    # -- the result and the event log ------------------------------------------------------
    def load_result(self, job_id: str) -> JobResult | None:
        path = self.paths(job_id).result
        if not path.exists():
            return None
        return JobResult.model_validate_json(path.read_text())

    def save_result(self, result: JobResult) -> None:
        atomic_write_model(self.paths(result.job_id).result, result)

    def append_event(self, event: CloudEvent) -> None:
        """Append one line; a torn last line (crash mid-write) is skipped by ``read_events``."""
        path = self.paths(event.subject).events
        path.parent.mkdir(parents=True, exist_ok=True)
        line = event.model_dump_json() + "\n"
        with path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def read_events(self, job_id: str) -> list[CloudEvent]:
        path = self.paths(job_id).events
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(CloudEvent.model_validate_json(line))
            except ValueError:
                continue
        return events

    # -- the lease ---------------------------------------------------------------------------
    @contextmanager
    def _lease_lock(self, job_id: str) -> Iterator[None]:
        # POSIX record locks work across NFSv4 clients (EFS), unlike a check-then-write race.
        paths = self.paths(job_id)
        paths.root.mkdir(parents=True, exist_ok=True)
        with (paths.root / LEASE_LOCK_FILE).open("a+") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    def read_lease(self, job_id: str) -> Lease | None:
        path = self.paths(job_id).lease
        try:
            return Lease.model_validate_json(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def acquire_lease(self, job_id: str, worker_id: str, ttl_s: int) -> LeaseToken:
        """Take the job, or raise ``LeaseHeld`` if another runner's lease is still live."""
        with self._lease_lock(job_id):
            current = self.read_lease(job_id)
            now = utcnow()
            if current is not None and current.expires_at > now:
                raise LeaseHeld(current)
            token = LeaseToken(job_id, worker_id, uuid.uuid4().hex)
            self._write_lease(token, now, ttl_s)
            return token

    def renew_lease(self, token: LeaseToken, ttl_s: int) -> bool:
        """Extend our lease; False if it was lost (expired and taken by another runner)."""
        with self._lease_lock(token.job_id):
            current = self.read_lease(token.job_id)
            if current is None or current.token != token.token:
                return False
            self._write_lease(token, current.acquired_at, ttl_s)
            return True

    def job_ids(self) -> list[str]:
        return sorted(p.name for p in (self.volume / JOBS_DIR).iterdir() if p.is_dir())

    def break_lease(self, job_id: str, expected: Lease) -> bool:
        """Remove a lease known to be stale, unless it changed since it was judged."""
        with self._lease_lock(job_id):
            current = self.read_lease(job_id)
            if current is None or current.token != expected.token:
                return False
            self.paths(job_id).lease.unlink(missing_ok=True)
            return True

    def release_lease(self, token: LeaseToken) -> None:
        with self._lease_lock(token.job_id):
            current = self.read_lease(token.job_id)
            if current is not None and current.token == token.token:
                self.paths(token.job_id).lease.unlink(missing_ok=True)

    def _write_lease(self, token: LeaseToken, acquired_at: datetime, ttl_s: int) -> None:
        lease = Lease(
            job_id=token.job_id,
            worker_id=token.worker_id,
            token=token.token,
            acquired_at=acquired_at,
            expires_at=utcnow() + timedelta(seconds=ttl_s),
        )
        atomic_write_model(self.paths(token.job_id).lease, lease)

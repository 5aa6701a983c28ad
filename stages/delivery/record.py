"""The last upload to a temporary host, so a publish re-run reuses its link instead of uploading.

litterbox and transfer.sh cannot deduplicate: every upload is a new file and a new link. A
worker that dies after the upload but before the ledger records publish as completed would
upload the same archive again on the next delivery. So after each successful upload
``delivery.json`` (in the job directory, written by rename) records the method, the archive's
SHA-256 and size, and the result; a re-run for the same method with a byte-identical archive
(the zip is deterministic: same files, same timestamps) returns the recorded result while the
link still has at least half its life left. Otherwise it uploads again and replaces the record.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from contracts.enums import OutputMethod
from contracts.result import OutputInfo
from infra.volume import atomic_write_model, utcnow

RECORD_FILE = "delivery.json"
_CHUNK = 1 << 20


class DeliveryRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: OutputMethod
    sha256: str
    size: int
    uploaded_at: datetime
    expires_at: datetime
    # transfer.sh's X-Url-Delete: kept for operators (``curl -X DELETE``), never in the result,
    # which travels to subscribers and may end up public.
    delete_url: str | None = None
    output: OutputInfo

    def reusable(self, method: OutputMethod, sha256: str, size: int, now: datetime) -> bool:
        same = (self.method, self.sha256, self.size) == (method, sha256, size)
        half_life = (self.expires_at - self.uploaded_at) / 2
        return same and self.expires_at - now >= half_life


def record_path(job_dir: Path) -> Path:
    return job_dir / RECORD_FILE


def load(path: Path) -> DeliveryRecord | None:
    """The record, or None when there is none or it cannot be read (then: upload again)."""
    try:
        return DeliveryRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def save(path: Path, record: DeliveryRecord) -> None:
    atomic_write_model(path, record)


def reuse(path: Path, method: OutputMethod, sha256: str, size: int) -> OutputInfo | None:
    """The recorded result for this very archive, with the days its link has left; else None."""
    previous = load(path)
    now = utcnow()
    if previous is None or not previous.reusable(method, sha256, size, now):
        return None
    left = (previous.expires_at - now) / timedelta(days=1)
    return previous.output.model_copy(update={"expires_in_days": round(left, 2)})


def remember(
    path: Path,
    *,
    method: OutputMethod,
    sha256: str,
    size: int,
    lifetime: timedelta,
    delete_url: str | None,
    output: OutputInfo,
) -> None:
    uploaded = utcnow()
    save(
        path,
        DeliveryRecord(
            method=method,
            sha256=sha256,
            size=size,
            uploaded_at=uploaded,
            expires_at=uploaded + lifetime,
            delete_url=delete_url,
            output=output,
        ),
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

"""A download in flight on the volume: ``<dest>.partial`` and a sidecar naming what it is part of.

A resume may append to bytes already on disk only when it can prove which file they came from.
The sidecar (``<dest>.partial.json``, written atomically) records a hash of the full URL (never
the URL: presigned query strings are credentials), the server's validator (sent back as
``If-Range``) and the total size. No sidecar, or one for another URL, means start from zero.
The final name appears only once the data is complete and size-checked, so nothing ever takes
a half-written file for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from infra.volume import atomic_write_text


@dataclass(frozen=True)
class Representation:
    """What the bytes in ``.partial`` are a prefix of."""

    url_sha256: str
    validator: str
    total: int


@dataclass(frozen=True)
class ResumePoint:
    offset: int
    representation: Representation


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class PartialDownload:
    """The ``.partial`` data file and its sidecar beside ``dest``."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.data = dest.with_name(dest.name + ".partial")
        self.sidecar = dest.with_name(dest.name + ".partial.json")

    def resume_point(self, url: str) -> ResumePoint | None:
        """The bytes already held for ``url`` and what they belong to; None: start from zero."""
        representation = self._load()
        try:
            size = self.data.stat().st_size
        except OSError:
            return None
        if representation is None or representation.url_sha256 != url_key(url):
            return None
        if size > representation.total:
            return None
        return ResumePoint(size, representation)

    def restart(self, representation: Representation | None) -> None:
        """Empty the data file and record what it will hold (None: these bytes cannot resume)."""
        # The old sidecar goes first: it must never describe bytes of another file.
        self.sidecar.unlink(missing_ok=True)
        self.data.write_bytes(b"")
        if representation is not None:
            atomic_write_text(self.sidecar, json.dumps(asdict(representation)))

    def open_at(self, offset: int) -> IO[bytes]:
        """The data file positioned at ``offset``, anything past it cut (unbuffered: what was
        written is on disk, so the size a crash leaves is the size that was received)."""
        out = self.data.open("r+b", buffering=0)
        out.seek(offset)
        out.truncate()
        return out

    def finish(self) -> int:
        """Flush the data to disk, give it its final name; returns its size."""
        with self.data.open("rb") as data:
            os.fsync(data.fileno())
            size = os.fstat(data.fileno()).st_size
        self.data.replace(self.dest)
        self.sidecar.unlink(missing_ok=True)
        return size

    def discard(self) -> None:
        self.sidecar.unlink(missing_ok=True)
        self.data.unlink(missing_ok=True)

    def _load(self) -> Representation | None:
        try:
            raw = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        url_sha256, validator, total = raw.get("url_sha256"), raw.get("validator"), raw.get("total")
        if not (isinstance(url_sha256, str) and isinstance(validator, str) and validator):
            return None
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            return None
        return Representation(url_sha256, validator, total)

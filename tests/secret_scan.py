"""After a test job: look for every secret the request carried, everywhere it could have landed.

The volume (every file, read as bytes, and inside every zip: the delivered archive holds the
dataset and configs), the captured logs, the events and any Hub repository's files (the model
card, ``UPDATES/``). A secret counts as found in its plain, percent-encoded and JSON-escaped
forms, so a value that went through ``urlencode`` or ``json.dumps`` is not missed.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from contracts.events import CloudEvent


def _forms(secret: str) -> set[bytes]:
    return {
        secret.encode(),
        quote(secret, safe="").encode(),
        json.dumps(secret)[1:-1].encode(),
    }


def _blobs_in(name: str, data: bytes) -> Iterable[tuple[str, bytes]]:
    yield name, data
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    yield from _blobs_in(f"{name}!{member}", archive.read(member))
        except zipfile.BadZipFile:
            return


def find_secrets(
    secrets: Iterable[str],
    *,
    roots: Iterable[Path] = (),
    logs: str = "",
    events: Iterable[CloudEvent] = (),
    files: Mapping[str, bytes] | None = None,
) -> list[str]:
    """``"<secret #i> in <where>"`` for each secret found; empty when nothing leaked."""
    forms = [(index, _forms(secret)) for index, secret in enumerate(secrets)]
    blobs: list[tuple[str, bytes]] = [("logs", logs.encode())]
    blobs += [(f"event {e.id}", e.model_dump_json().encode()) for e in events]
    blobs += [(f"hub:{name}", data) for name, data in (files or {}).items()]
    for root in roots:
        blobs += [(str(p), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    found = []
    for name, data in blobs:
        for where, blob in _blobs_in(name, data):
            found += [
                f"secret #{index} in {where}"
                for index, variants in forms
                if any(form in blob for form in variants)
            ]
    return found

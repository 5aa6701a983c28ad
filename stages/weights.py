"""A model type's weights folder on the shared volume: its marker and its checks.

```
models/
  .<type>.lock      one downloader per model type (stages/weights_lock.py)
  <type>/
    .complete       written last, atomically, after verification: per source the commit and
                    every file with its size
    <subdir>/…      one folder per Hub source, in the repository's own layout
```
A folder is trusted when its marker's files are all there with their recorded sizes, or, with
no marker (a volume filled by hand, an rsync, ``hf download``), when every file the loader
reads is present and sound. Either check only stats files and reads safetensors headers: it
runs before every job, without the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

from infra.hub import LOCAL_DIR_METADATA
from infra.volume import atomic_write_text, utcnow
from stages.registry import HubSource, ModelSpec

MARKER_FILE = ".complete"
_SAFETENSORS_INDEX = ".safetensors.index.json"


class SourceRecord(BaseModel):
    repo_id: str
    revision: str
    commit: str
    subdir: str
    files: dict[str, int]


class Marker(BaseModel):
    model_type: str
    completed_at: datetime
    sources: list[SourceRecord]


@dataclass(frozen=True)
class Findings:
    """A look at a weights folder: paths (relative to ``models/<type>/``) to fetch, damaged
    files a new download replaces, and contents no download can fix (another variant)."""

    missing: tuple[str, ...] = ()
    damaged: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.missing or self.damaged or self.wrong)

    def describe(self) -> str:
        parts = [f"missing {p}" for p in self.missing[:5]]
        parts += [f"damaged {p}" for p in self.damaged[:5]]
        return "; ".join([*parts, *self.wrong])


def marker_path(models_dir: Path) -> Path:
    return models_dir / MARKER_FILE


# -- the marker ---------------------------------------------------------------------------------
def read_marker(spec: ModelSpec, models_dir: Path) -> Marker | None:
    """The marker, if it is there and still describes the folder: every file, every size."""
    try:
        marker = Marker.model_validate_json(marker_path(models_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    records = {(r.repo_id, r.subdir): r for r in marker.sources}
    for source in spec.sources:
        record = records.get((source.repo_id, source.subdir))
        if record is None or not set(source.required) <= set(record.files):
            return None
        folder = models_dir / source.subdir
        if any(file_size(folder / path) != size for path, size in record.files.items()):
            return None
    return marker


def write_marker(spec: ModelSpec, models_dir: Path, records: list[SourceRecord]) -> Marker:
    marker = Marker(model_type=spec.model_type.value, completed_at=utcnow(), sources=records)
    atomic_write_text(marker_path(models_dir), marker.model_dump_json(indent=2))
    return marker


def file_size(path: Path) -> int | None:
    """The size of a regular file; None when it is absent (or unreadable)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


# -- the loader's files -------------------------------------------------------------------------
def inspect(spec: ModelSpec, models_dir: Path) -> Findings:
    """Check every file diffusion-pipe's loader reads, as it would find them."""
    found = [inspect_source(source, models_dir) for source in spec.sources]
    return Findings(
        tuple(p for f in found for p in f.missing),
        tuple(p for f in found for p in f.damaged),
        tuple(p for f in found for p in f.wrong),
    )


def inspect_source(source: HubSource, models_dir: Path) -> Findings:
    folder = models_dir / source.subdir
    missing: list[str] = []
    damaged: list[str] = []
    wrong: list[str] = []
    wanted = list(source.required)
    for index in (p for p in source.required if p.endswith(_SAFETENSORS_INDEX)):
        wanted += _shards(folder, index, wrong)
    for relative in dict.fromkeys(wanted):
        path = folder / relative
        if not path.is_file():
            missing.append(f"{source.subdir}/{relative}")
        elif path.suffix == ".safetensors" and _safetensors_problem(path) is not None:
            damaged.append(f"{source.subdir}/{relative}")
    for relative, expected in source.expect_json.items():
        if (problem := _json_mismatch(folder / relative, expected)) is not None:
            wrong.append(f"{source.subdir}/{relative}: {problem}")
    return Findings(tuple(missing), tuple(damaged), tuple(wrong))


def _shards(folder: Path, index: str, wrong: list[str]) -> list[str]:
    """The shard files a ``*.safetensors.index.json`` names, relative to the source folder."""
    path = folder / index
    if not path.is_file():
        return []
    try:
        names = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        wrong.append(f"{index}: not a safetensors index")
        return []
    # Shard names are relative to the index's own folder (``transformer/`` in a diffusers repo).
    return [str(PurePosixPath(index).parent / name) for name in names]


def _safetensors_problem(path: Path) -> str | None:
    """A truncated or foreign file fails here, reading the header only (a few KB)."""
    try:
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or header_len > 100 * 1024 * 1024:
                return "not a safetensors file"
            header = json.loads(f.read(header_len))
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "not a safetensors file"
    needed = 8 + header_len + end
    size = path.stat().st_size
    return None if size >= needed else f"truncated ({size} of {needed} bytes)"


def _json_mismatch(path: Path, expected: Mapping[str, Any]) -> str | None:
    if not path.is_file():
        return None  # reported as missing when the loader needs it
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return "not valid JSON"
    for key, value in expected.items():
        if data.get(key) != value:
            return f"{key} is {data.get(key)!r}, expected {value!r} (another model variant?)"
    return None


def remove_orphaned_partials(folder: Path) -> int:
    """Delete temporary files a killed download left behind; returns the bytes freed.

    huggingface_hub names each in-flight file uniquely, so a partial file from a dead process is
    never picked up again; under the lock nobody else is writing them.
    """
    freed = 0
    metadata = folder / LOCAL_DIR_METADATA
    if metadata.is_dir():
        for partial in metadata.rglob("*.incomplete"):
            freed += file_size(partial) or 0
            partial.unlink(missing_ok=True)
    return freed

"""Safe zip extraction: the archive comes from the internet, so it is hostile until proven not.

No entry may escape the target (zip slip, absolute paths, symlinks); entry count, total size
and compression ratio are capped (zip bombs); folders are flattened with unique names; system
files (``__MACOSX``, ``.DS_Store``, hidden files) are dropped.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20


class UnsafeArchive(Exception):
    """The archive is malformed or hostile; the message says which rule it broke."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_total_bytes: int = 50 * 1024**3
    max_ratio: float = 200.0


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _flat_name(name: str, taken: set[str]) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None
    stem, suffix = path.stem, path.suffix
    candidate = path.name
    counter = 1
    while candidate.lower() in taken:
        counter += 1
        candidate = f"{stem}_{counter}{suffix}"
    taken.add(candidate.lower())
    return candidate


def _check_entry(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"absolute path in archive: {info.filename!r}")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchive(f"path escapes the dataset folder: {info.filename!r}")
    if _is_symlink(info):
        raise UnsafeArchive(f"symbolic link in archive: {info.filename!r}")
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        raise UnsafeArchive(f"suspicious compression ratio for {info.filename!r}")


def safe_extract(archive: Path, target: Path, limits: ArchiveLimits | None = None) -> list[Path]:
    """Extract into ``target`` (created, must be empty); returns the files written."""
    limits = limits or ArchiveLimits()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeArchive(f"not a readable zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchive(f"{len(infos)} entries is over the limit of {limits.max_entries}")
        for info in infos:
            _check_entry(info, limits)
        if sum(i.file_size for i in infos) > limits.max_total_bytes:
            raise UnsafeArchive("uncompressed size is over the limit")
        target.mkdir(parents=True, exist_ok=False)
        return _extract_flat(zf, infos, target, limits)


def _extract_flat(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], target: Path, limits: ArchiveLimits
) -> list[Path]:
    taken: set[str] = set()
    written: list[Path] = []
    total = 0
    for info in infos:
        if info.is_dir():
            continue
        name = _flat_name(info.filename, taken)
        if name is None:
            continue
        dest = target / name
        try:
            with zf.open(info) as src, dest.open("wb") as out:
                # Count real bytes: a forged header must not let a bomb through.
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > limits.max_total_bytes:
                        raise UnsafeArchive("uncompressed size is over the limit")
                    out.write(chunk)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise UnsafeArchive(f"corrupt entry {info.filename!r}: {exc}") from exc
        written.append(dest)
    return written

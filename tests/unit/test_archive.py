"""Safe extraction: hostile archives are refused with the rule they broke; good ones flatten."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from infra.archive import ArchiveLimits, UnsafeArchive, safe_extract


def _zip(tmp_path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_nested_folders_flatten_with_unique_names_and_junk_is_dropped(tmp_path: Path) -> None:
    """GIVEN nested folders, duplicates and macOS junk WHEN extracted THEN a flat unique set."""
    archive = _zip(
        tmp_path,
        {
            "a/img.png": b"1",
            "b/img.png": b"2",
            "a/img.txt": b"cap",
            "__MACOSX/a/._img.png": b"x",
            ".DS_Store": b"x",
            "a/.hidden.png": b"x",
        },
    )
    written = safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in written) == ["img.png", "img.txt", "img_2.png"]


@pytest.mark.parametrize(
    ("entries", "symlink", "rule"),
    [
        ({"../evil.png": b"x"}, None, "escapes"),
        ({"/abs/evil.png": b"x"}, None, "absolute"),
        ({"ok.png": b"x"}, "link.png", "symbolic link"),
        ({"bomb.png": b"\0" * 5_000_000}, None, "compression ratio"),
    ],
)
def test_hostile_archives_are_refused(
    tmp_path: Path, entries: dict[str, bytes], symlink: str | None, rule: str
) -> None:
    """GIVEN a hostile archive WHEN extracted THEN UnsafeArchive names the rule; nothing written."""
    with pytest.raises(UnsafeArchive, match=rule):
        safe_extract(_zip(tmp_path, entries, symlink), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_entry_count_cap(tmp_path: Path) -> None:
    """GIVEN more entries than allowed WHEN extracted THEN refused before writing."""
    archive = _zip(tmp_path, {f"{i}.png": b"" for i in range(20)})
    with pytest.raises(UnsafeArchive, match="entries"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_entries=10))


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    """GIVEN a truncated download WHEN extracted THEN it is refused as unreadable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", b"x" * 1000)
    path = tmp_path / "t.zip"
    path.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(UnsafeArchive):
        safe_extract(path, tmp_path / "out")

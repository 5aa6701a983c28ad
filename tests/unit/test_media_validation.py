"""Unreadable media is dropped at fetch with a warning; nothing usable fails the dataset."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from contracts.enums import ErrorCode
from stages import fetch
from stages.errors import Permanent
from stages.media import problem_with
from tests.captioning.conftest import make_context
from tests.media import VIDEO_CODECS, write_image, write_video


@pytest.mark.parametrize("suffix", sorted(VIDEO_CODECS))
def test_every_supported_video_type_passes(tmp_path: Path, suffix: str) -> None:
    """GIVEN a tiny real clip in each supported container WHEN checked THEN it is usable."""
    assert problem_with(write_video(tmp_path / f"clip{suffix}")) is None


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "photo.png", "photo.jpg"])
def test_bytes_that_are_not_media_are_refused(tmp_path: Path, name: str) -> None:
    """GIVEN an HTML error page saved under a media name WHEN checked THEN a reason is given."""
    path = tmp_path / name
    path.write_bytes(b"<html>403 Forbidden</html>")
    assert problem_with(path)


def test_a_truncated_video_is_refused(tmp_path: Path) -> None:
    """GIVEN an MP4 cut to its first 200 bytes WHEN checked THEN it is unusable."""
    path = write_video(tmp_path / "clip.mp4")
    path.write_bytes(path.read_bytes()[:200])
    assert problem_with(path)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Path]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields that folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root.joinpath("port").write_text(str(server.server_address[1]))
    try:
        yield root
    finally:
        server.shutdown()


async def test_fetch_drops_unreadable_files_and_lists_them(tmp_path: Path, serve: Path) -> None:
    """GIVEN a videos zip with two good clips (MKV, AVI), a fake MP4 and its caption
    WHEN fetch runs THEN the fake and its caption are gone, the good clips remain, and the
    stage's outputs name the fake as rejected."""
    good = {n: write_video(tmp_path / "src" / n).read_bytes() for n in ("a.mkv", "b.avi")}
    members = {**good, "sub/fake.mp4": b"not a video", "sub/fake.txt": b"a caption"}
    (serve / "v.zip").write_bytes(_zip(members))
    port = (serve / "port").read_text()
    ctx = make_context(tmp_path / "vol", "http://unused", fetch_allow=["127.0.0.1"])
    dataset = ctx.request.dataset.model_copy(
        update={"videos_url": f"http://127.0.0.1:{port}/v.zip"}
    )
    ctx.request = ctx.request.model_copy(update={"dataset": dataset})

    outcome = await fetch.run(ctx)

    videos = ctx.paths.dataset / "videos"
    assert sorted(p.name for p in videos.rglob("*") if p.is_file()) == ["a.mkv", "b.avi"]
    assert outcome.outputs["videos_count"] == 2
    assert outcome.outputs["videos_rejected"] == "fake.mp4"  # folders are flattened


async def test_fetch_fails_a_dataset_with_nothing_usable(tmp_path: Path, serve: Path) -> None:
    """GIVEN an images zip whose only image is corrupt WHEN fetch runs THEN dataset_invalid,
    naming the URL field and the unreadable file."""
    image = write_image(tmp_path / "src" / "p.png").read_bytes()
    (serve / "i.zip").write_bytes(_zip({"p.png": image[:30]}))
    port = (serve / "port").read_text()
    ctx = make_context(tmp_path / "vol", "http://unused", fetch_allow=["127.0.0.1"])
    dataset = ctx.request.dataset.model_copy(
        update={"images_url": f"http://127.0.0.1:{port}/i.zip", "videos_url": None}
    )
    ctx.request = ctx.request.model_copy(update={"dataset": dataset})

    with pytest.raises(Permanent, match=r"p\.png") as failed:
        await fetch.run(ctx)
    assert failed.value.code is ErrorCode.DATASET_INVALID
    assert failed.value.field == "dataset.images_url"

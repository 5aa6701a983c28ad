"""Resumable dataset downloads against a real HTTP origin on 127.0.0.1 that breaks transfers.

The origin speaks HTTP/1.0 with ranges the way S3 or nginx do (ETag, Accept-Ranges, 206 with
Content-Range, If-Range); it can cut a response after K bytes. It waits until the client holds
those K bytes on disk before cutting, so the resume point is exact rather than timing-dependent.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.download import DownloadFailed, DownloadRefused, download_http
from loraq.sample_data import image_dataset_zip
from stages import fetch
from tests.captioning.conftest import make_context

ALLOW = ["127.0.0.1"]
CAP = 1 << 30


@dataclass
class Origin:
    """What the server serves and what it saw; tests change it between attempts."""

    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = None
    ranges: bool = True
    # (K, path): cut the next response after K body bytes, once ``path`` holds K bytes.
    cuts: list[tuple[int, Path]] = field(default_factory=list)
    content_range_shift: int = 0  # a broken 206: Content-Range starts this far off
    redirect_ranges_to: str | None = None  # answer range requests with a redirect here
    requests: list[dict[str, str]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    def ranged(self, headers: dict[str, str]) -> int | None:
        """The start of the range this request gets, or None for the whole body (200)."""
        match = re.fullmatch(r"bytes=(\d+)-", headers.get("Range", ""))
        if not self.ranges or match is None:
            return None
        if_range = headers.get("If-Range")
        if if_range is not None and if_range not in (self.etag, self.last_modified):
            return None  # RFC 9110: the validator no longer matches, send the whole new file
        return int(match[1])


class _Server(ThreadingHTTPServer):
    origin: Origin


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        origin = self.server.origin
        headers = dict(self.headers.items())
        origin.requests.append(headers)
        if origin.redirect_ranges_to and "Range" in headers:
            self.send_response(302)
            self.send_header("Location", origin.redirect_ranges_to)
            self.end_headers()
            origin.sent.append(0)
            return
        start = origin.ranged(headers)
        part = origin.body if start is None else origin.body[start:]
        self.send_response(200 if start is None else 206)
        self.send_header("Content-Length", str(len(part)))
        if start is not None:
            first = start + origin.content_range_shift
            self.send_header(
                "Content-Range", f"bytes {first}-{len(origin.body) - 1}/{len(origin.body)}"
            )
        if origin.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if origin.etag:
            self.send_header("ETag", origin.etag)
        if origin.last_modified:
            self.send_header("Last-Modified", origin.last_modified)
        self.end_headers()
        self._send(origin, part)

    def _send(self, origin: Origin, part: bytes) -> None:
        # Recorded before writing: the client can read the last byte (and the test assert)
        # before this thread runs again.
        if not origin.cuts:
            origin.sent.append(len(part))
            self.wfile.write(part)
            return
        count, held = origin.cuts.pop(0)
        origin.sent.append(count)
        self.wfile.write(part[:count])
        self.wfile.flush()
        deadline = time.monotonic() + 10
        while _size(held) < count and time.monotonic() < deadline:
            time.sleep(0.005)  # waits on a condition: the client has written what it received
        self.close_connection = True  # HTTP/1.0: the socket closes short of Content-Length


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@pytest.fixture
def origin() -> Iterator[tuple[Origin, str]]:
    """A served random body; yields it and the server's base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.origin = Origin(body=_random(300_000, seed=1))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server.origin, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _random(size: int, seed: int) -> bytes:
    blocks = (hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _partial(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial.json")


async def test_the_fetch_stage_retry_asks_only_for_the_missing_bytes(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a dataset zip whose first response is cut after K bytes
    WHEN the fetch stage runs THEN its retry sends Range: bytes=K- with the first response's
    ETag as If-Range, the server sends only the rest, and every image extracts byte-identical."""
    served, base = origin
    served.body = image_dataset_zip(count=24, size=96)
    cut = len(served.body) // 3
    ctx = make_context(tmp_path / "vol", "http://unused", fetch_allow=ALLOW)
    ctx.settings = ctx.settings.model_copy(update={"transient_retry_wait_s": 0})
    served.cuts.append((cut, _partial(ctx.paths.work / "images.zip")))
    dataset = ctx.request.dataset.model_copy(
        update={"images_url": f"{base}/data.zip", "videos_url": None}
    )
    ctx.request = ctx.request.model_copy(update={"dataset": dataset})

    outcome = await fetch.run(ctx)

    assert [r.get("Range") for r in served.requests] == [None, f"bytes={cut}-"]
    assert served.requests[1]["If-Range"] == '"v1"'
    assert served.sent == [cut, len(served.body) - cut]
    assert outcome.outputs["images_count"] == 24
    with zipfile.ZipFile(io.BytesIO(served.body)) as archive:
        expected = {name: _sha(archive.read(name)) for name in archive.namelist()}
    extracted = ctx.paths.dataset / "images"
    assert {p.name: _sha(p.read_bytes()) for p in extracted.iterdir()} == expected
    assert not list(ctx.paths.work.glob("images.zip*"))


async def test_a_partial_left_by_a_crashed_attempt_resumes(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN an attempt cut off after K bytes (its partial and sidecar left on disk, as a crashed
    worker would leave them) WHEN a new call downloads the same URL THEN it asks for K- only and
    the result is byte-identical; the sidecar never held the URL's query string."""
    served, base = origin
    url = f"{base}/data.zip?X-Amz-Signature=topsecret"
    dest = tmp_path / "data.zip"
    served.cuts.append((120_000, _partial(dest)))

    with pytest.raises(DownloadFailed, match="next attempt asks for the rest"):
        await download_http(url, dest, max_bytes=CAP, allow=ALLOW)
    assert not dest.exists() and _partial(dest).stat().st_size == 120_000
    sidecar = _sidecar(dest).read_text()
    assert "topsecret" not in sidecar and "127.0.0.1" not in sidecar
    assert json.loads(sidecar)["total"] == len(served.body)

    size = await download_http(url, dest, max_bytes=CAP, allow=ALLOW)

    assert size == len(served.body) and _sha(dest.read_bytes()) == _sha(served.body)
    assert served.requests[1]["Range"] == "bytes=120000-"
    assert served.sent == [120_000, len(served.body) - 120_000]
    assert not _partial(dest).exists() and not _sidecar(dest).exists()


async def test_a_last_modified_date_is_the_validator_when_there_is_no_etag(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a server with ranges, no ETag and a Last-Modified well before its Date
    WHEN a cut transfer resumes THEN If-Range carries that date and only the rest is sent."""
    served, base = origin
    served.etag = None
    served.last_modified = formatdate(time.time() - 3600, usegmt=True)
    dest = tmp_path / "data.zip"
    served.cuts.append((50_000, _partial(dest)))

    with pytest.raises(DownloadFailed):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)
    await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    assert served.requests[1]["If-Range"] == served.last_modified
    assert served.sent[1] == len(served.body) - 50_000
    assert _sha(dest.read_bytes()) == _sha(served.body)


@pytest.mark.parametrize("without", ["ranges", "validator"])
async def test_a_server_that_cannot_resume_starts_over(
    tmp_path: Path, origin: tuple[Origin, str], without: str
) -> None:
    """GIVEN a server without Accept-Ranges, or without ETag and Last-Modified
    WHEN a transfer is cut THEN the error says it cannot resume, and the next call asks for the
    whole file (no Range) and gets it right."""
    served, base = origin
    if without == "ranges":
        served.ranges = False
    else:
        served.etag = None
    dest = tmp_path / "data.zip"
    served.cuts.append((100_000, _partial(dest)))

    with pytest.raises(DownloadFailed, match="not resumable"):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)
    assert not _sidecar(dest).exists()
    await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    assert "Range" not in served.requests[1]
    assert served.sent == [100_000, len(served.body)]
    assert _sha(dest.read_bytes()) == _sha(served.body)


async def test_a_file_changed_between_attempts_is_fetched_anew(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a cut transfer of version 1 WHEN the file changes (new ETag) before the retry
    THEN the server answers the If-Range request with 200 and the result is exactly version 2."""
    served, base = origin
    dest = tmp_path / "data.zip"
    served.cuts.append((100_000, _partial(dest)))
    with pytest.raises(DownloadFailed):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    served.body, served.etag = _random(250_000, seed=2), '"v2"'
    await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    assert served.requests[1]["If-Range"] == '"v1"'
    assert len(served.requests) == 2 and served.sent[1] == 250_000
    assert _sha(dest.read_bytes()) == _sha(served.body)
    assert not _sidecar(dest).exists()


async def test_a_206_that_does_not_continue_the_bytes_is_not_appended(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a server whose 206 names the wrong Content-Range WHEN resuming THEN nothing of it is
    appended: a plain GET starts over and the result is byte-identical."""
    served, base = origin
    dest = tmp_path / "data.zip"
    served.cuts.append((100_000, _partial(dest)))
    with pytest.raises(DownloadFailed):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    served.content_range_shift = 7
    await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    assert [r.get("Range") for r in served.requests] == [None, "bytes=100000-", None]
    assert _sha(dest.read_bytes()) == _sha(served.body)


async def test_the_size_cap_counts_the_bytes_already_held(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a partial of 100 000 bytes WHEN the resume would pass a cap that the remaining bytes
    alone stay under THEN it is refused and the partial is removed."""
    served, base = origin
    dest = tmp_path / "data.zip"
    served.cuts.append((100_000, _partial(dest)))
    with pytest.raises(DownloadFailed):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    with pytest.raises(DownloadRefused, match="limit"):
        await download_http(f"{base}/d", dest, max_bytes=len(served.body) - 1, allow=ALLOW)
    assert not _partial(dest).exists() and not _sidecar(dest).exists() and not dest.exists()


async def test_a_resume_redirected_to_a_private_address_is_refused(
    tmp_path: Path, origin: tuple[Origin, str]
) -> None:
    """GIVEN a partial download WHEN the range request is redirected to a private address THEN the
    SSRF check refuses the hop and nothing is left on disk."""
    served, base = origin
    dest = tmp_path / "data.zip"
    served.cuts.append((100_000, _partial(dest)))
    with pytest.raises(DownloadFailed):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)

    served.redirect_ranges_to = "http://10.255.255.1/d"
    with pytest.raises(DownloadRefused, match="non-public"):
        await download_http(f"{base}/d", dest, max_bytes=CAP, allow=ALLOW)
    assert len(served.requests) == 2
    assert not _partial(dest).exists() and not _sidecar(dest).exists()

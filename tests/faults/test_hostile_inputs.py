"""Hostile datasets and URLs: each ends in a typed job.failed and the worker stays healthy.

A corpus generated here (zip slip, absolute paths, symlinks, a zip bomb, too many entries, a
truncated zip, an HTML page, unreadable images, the cloud metadata address, a redirect to a
non-allowed address) is sent at once to one in-process worker, followed by a valid tiny job.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contracts.enums import EventType
from infra.archive import ArchiveLimits
from infra.local_stack import LocalStack
from infra.settings import Settings
from loraq.demo import demo_request, upload_dataset
from loraq.sample_data import image_dataset_zip
from tests.conftest import queue_depth, run_worker_until_terminal, send_job
from tests.traps import trap_listener

pytestmark = pytest.mark.slow

FIELD = "input.dataset.images_url"
INVALID = "dataset_invalid"
REFUSED = "dataset_download_failed"
HTML_PAGE = b"<!doctype html><html><body><h1>Access denied</h1></body></html>"


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _symlink_zip() -> bytes:
    link = zipfile.ZipInfo("link.png")
    link.create_system = 3  # Unix: external_attr carries the mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip([(link, b"/etc/passwd")])


def _corpus(abs_name: str) -> dict[str, tuple[bytes, str, str]]:
    """job id → (archive bytes, expected code, the rule the message names); all on S3."""
    limits = ArchiveLimits()
    valid = image_dataset_zip(2)
    return {
        "hostile-zip-slip": (
            _zip([("../evil.png", b"x" * 64), ("ok.txt", b"a")]),
            INVALID,
            "path escapes",
        ),
        "hostile-absolute": (_zip([(abs_name, b"x" * 64)]), INVALID, "absolute path"),
        "hostile-symlink": (_symlink_zip(), INVALID, "symbolic link"),
        # 16 MiB of zeros deflates to ~16 KiB: a ratio of ~1000, over the cap.
        "hostile-zip-bomb": (
            _zip([("bomb.png", bytes(16 * 1024**2))]),
            INVALID,
            "compression ratio",
        ),
        "hostile-many-entries": (
            _zip([(f"e{i}.txt", b"") for i in range(limits.max_entries + 1)]),
            INVALID,
            "over the limit",
        ),
        "hostile-truncated": (valid[: len(valid) // 2], INVALID, "not a readable zip"),
        "hostile-unreadable": (
            _zip([(f"noise_{i}.png", os.urandom(2048)) for i in range(3)]),
            INVALID,
            "no usable files",
        ),
    }


class _Handler(BaseHTTPRequestHandler):
    redirect_to = ""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(HTML_PAGE)))
        self.end_headers()
        self.wfile.write(HTML_PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listener on 127.0.0.3 (not allowed): any connection the worker made would queue here."""
    with trap_listener() as listener:
        yield listener


@pytest.fixture
def http_servers(trap: socket.socket) -> Iterator[dict[str, str]]:
    """An HTML page on 127.0.0.1, and on 127.0.0.2 a 302 to the trap on 127.0.0.3."""
    port = trap.getsockname()[1]
    handler = type("Handler", (_Handler,), {"redirect_to": f"http://127.0.0.3:{port}/x.zip"})
    servers = [ThreadingHTTPServer((host, 0), handler) for host in ("127.0.0.1", "127.0.0.2")]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        html, redirect = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers)
        yield {"html": f"{html}/dataset.zip", "redirect": f"{redirect}/redirect/dataset.zip"}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _presigned(stack: LocalStack, key: str, body: bytes) -> str:
    s3 = stack.client("s3")
    s3.put_object(Bucket=stack.bucket, Key=key, Body=body, ContentType="application/zip")
    url: str = s3.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": key}, ExpiresIn=3600
    )
    return url


def _settings(stack: LocalStack, volume: Path) -> Settings:
    return stack.worker_settings(
        volume,
        fetch_allow=["127.0.0.1", "127.0.0.2"],
        visibility_timeout=10,
        progress_interval_s=0,
        transient_retry_wait_s=0.05,
        retry_base_delay_s=1,
    )


def _evil_files(roots: list[Path], since: float) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("evil.png"):
            if path.lstat().st_mtime >= since:
                found.append(path)
    tmp_evil = Path("/tmp/evil.png")
    if tmp_evil.exists() and tmp_evil.lstat().st_mtime >= since:
        found.append(tmp_evil)
    return found


async def test_hostile_archives_and_urls_fail_typed_and_the_worker_stays_healthy(
    stack: LocalStack,
    tmp_path: Path,
    http_servers: dict[str, str],
    trap: socket.socket,
) -> None:
    """GIVEN hostile archives (zip slip, absolute path, symlink, bomb, 10k+ entries, truncated,
    HTML body, unreadable images) and hostile URLs (the metadata address, a redirect to a
    non-allowed loopback address) as separate jobs, then a valid tiny job, on moto's SQS
    WHEN one in-process worker runs them
    THEN each hostile job ends in exactly one non-retryable job.failed with the expected code
    on input.dataset.images_url, nothing is written outside the job directories, no connection
    reaches the refused address, the valid job succeeds after all of them and the queue is empty."""
    started = time.time() - 1
    volume = tmp_path / "volume"
    abs_target = Path("/tmp") / f"loraq-hostile-{uuid.uuid4().hex[:8]}.png"
    expected: dict[str, tuple[str, str]] = {}
    for job_id, (body, code, rule) in _corpus(str(abs_target)).items():
        url = _presigned(stack, f"hostile/{job_id}.zip", body)
        send_job(stack, demo_request(url, stack, job_id=job_id, epochs=1))
        expected[job_id] = (code, rule)
    urls = {
        "hostile-html-body": (http_servers["html"], INVALID, "not a readable zip"),
        "hostile-metadata": (
            "http://169.254.169.254/latest/meta-data/",
            REFUSED,
            "non-public address",
        ),
        "hostile-redirect": (
            http_servers["redirect"],
            REFUSED,
            "127.0.0.3 resolves to a non-public",
        ),
    }
    for job_id, (url, code, rule) in urls.items():
        send_job(stack, demo_request(url, stack, job_id=job_id, epochs=1))
        expected[job_id] = (code, rule)
    send_job(stack, demo_request(upload_dataset(stack, count=2), stack, job_id="valid", epochs=1))

    events = await run_worker_until_terminal(
        stack, _settings(stack, volume), {*expected, "valid"}, 240
    )

    for job_id, (code, rule) in expected.items():
        terminal = [e for e in events if e.subject == job_id and e.type.is_terminal]
        assert [e.type for e in terminal] == [EventType.JOB_FAILED], job_id
        data = terminal[0].data
        assert data["retryable"] is False, (job_id, data)
        assert (data["code"], data["field"]) == (code, FIELD), (job_id, data)
        assert rule in data["message"], (job_id, data)
    # One attempt each: no retry was scheduled (job.interrupted) and nothing succeeded.
    assert not [
        e
        for e in events
        if e.subject in expected and e.type in (EventType.JOB_SUCCEEDED, EventType.JOB_INTERRUPTED)
    ]

    valid = [e for e in events if e.subject == "valid" and e.type.is_terminal]
    assert [e.type for e in valid] == [EventType.JOB_SUCCEEDED]
    last_failure = max(e.time for e in events if e.subject in expected and e.type.is_terminal)
    assert valid[0].time > last_failure

    # Nothing escaped a job directory, and the refused address was never connected to.
    assert _evil_files([tmp_path.parent, volume.parent], started) == []
    assert not abs_target.exists()
    with pytest.raises(BlockingIOError):
        trap.accept()
    assert queue_depth(stack, stack.queue_url) == 0
    assert queue_depth(stack, stack.dlq_url) == 0

"""Downloads cannot be held open by a trickle, and the SSRF check is the connection's own lookup.

Real sockets on loopback: a server that sends one byte at a time under a large Content-Length,
one that never answers, and a name whose answer changes between lookups (DNS rebinding), with
a listener on the refused address that must never see a connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from contracts.enums import ErrorCode
from infra.download import (
    AllowedResolver,
    DownloadFailed,
    DownloadRefused,
    Pace,
    TooSlow,
    check_url,
    download_http,
)
from infra.partial_download import PartialDownload
from stages import fetch
from stages.errors import Permanent
from tests.captioning.conftest import make_context
from tests.traps import trap_listener

BODY = b"z" * 4096


class _Handler(BaseHTTPRequestHandler):
    """``/trickle``: 10 MB announced, one byte every 50 ms; ``/silent``: no reply at all;
    anything else: ``BODY`` at once."""

    stop = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/silent":
            self.stop.wait(10)
            return
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            while not self.stop.is_set():
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                self.stop.wait(0.05)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    handler = type("Handler", (_Handler,), {"stop": threading.Event()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield "127.0.0.1", httpd.server_address[1]
    finally:
        handler.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def trap(server: tuple[str, int]) -> Iterator[socket.socket]:
    """A listener on 127.0.0.3 at the server's port: where a rebound name would connect."""
    with trap_listener(port=server[1]) as listener:
        yield listener


class Rebinding(AbstractResolver):
    """Answers each lookup of any name with the next list of addresses (the last one repeats)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in addresses
        ]

    async def close(self) -> None:
        pass


ALLOW = ["127.0.0.1"]


async def test_a_name_that_rebinds_is_checked_at_each_connection(
    server: tuple[str, int], trap: socket.socket, tmp_path: Path
) -> None:
    """GIVEN a name that resolves to an allowed address, then to a refused one (127.0.0.3) WHEN
    downloaded twice THEN the first succeeds, the second is refused by the lookup aiohttp itself
    connects with, and the refused address never sees a connection."""
    url = f"http://rebind.test:{server[1]}/d.zip"
    resolver = Rebinding(["127.0.0.1"], ["127.0.0.3"])

    size = await download_http(url, tmp_path / "a", max_bytes=10**6, allow=ALLOW, resolver=resolver)
    assert size == len(BODY)
    with pytest.raises(DownloadRefused, match=r"127\.0\.0\.3"):
        await download_http(url, tmp_path / "b", max_bytes=10**6, allow=ALLOW, resolver=resolver)

    assert resolver.lookups == 2  # one lookup per connection: the one that was filtered
    with pytest.raises(BlockingIOError):
        trap.accept()
    assert not (tmp_path / "b").exists() and not PartialDownload(tmp_path / "b").data.exists()


async def test_a_mixed_answer_keeps_only_the_allowed_addresses(
    server: tuple[str, int], trap: socket.socket
) -> None:
    """GIVEN a name answering a refused address before an allowed one WHEN resolved for a
    connection THEN only the allowed one is returned, so aiohttp cannot try the other."""
    resolver = AllowedResolver(ALLOW, Rebinding(["127.0.0.3", "127.0.0.1", "169.254.169.254"]))
    kept = await resolver.resolve("mixed.test", server[1])
    assert [answer["host"] for answer in kept] == ["127.0.0.1"]


def test_ip_literals_are_refused_before_any_connection() -> None:
    for url in ("http://169.254.169.254/latest", "http://[::1]:80/x", "http://10.0.0.1/x"):
        with pytest.raises(DownloadRefused, match="non-public"):
            check_url(url, [])
    check_url("http://203.0.113.9/x", ["203.0.113.0/24"])
    check_url("http://names-are-checked-at-connect.test/x", [])


async def test_a_trickle_fails_as_too_slow_within_a_window(
    server: tuple[str, int], tmp_path: Path
) -> None:
    """GIVEN a server sending ~20 bytes/s under a 10 MB Content-Length WHEN downloaded with a
    1 KiB/s minimum over 0.5 s windows THEN it fails as TooSlow (a refusal: retrying the same
    server would trickle again), the rate is in the message and no partial file is kept."""
    url = f"http://127.0.0.1:{server[1]}/trickle"
    pace = Pace(min_rate=1024, window_s=0.5, deadline_s=60)
    dest = tmp_path / "d.zip"
    with pytest.raises(TooSlow, match=r"bytes/s, under the minimum of 1024"):
        await download_http(url, dest, max_bytes=10**8, allow=ALLOW, pace=pace)
    assert not dest.exists() and not PartialDownload(dest).data.exists()
    assert pace.seconds_left() > 50  # the window failed it, not the deadline


async def test_the_deadline_bounds_a_transfer_that_keeps_the_rate(
    server: tuple[str, int], tmp_path: Path
) -> None:
    """GIVEN a trickle that meets a 1 byte/s minimum WHEN the dataset's deadline is 1 s THEN the
    download fails as TooSlow naming the deadline."""
    url = f"http://127.0.0.1:{server[1]}/trickle"
    pace = Pace(min_rate=1, window_s=0.3, deadline_s=1.0)
    with pytest.raises(TooSlow, match="not downloaded within 1 s"):
        await download_http(url, tmp_path / "d.zip", max_bytes=10**8, allow=ALLOW, pace=pace)


async def test_a_server_that_never_answers_is_a_transient_failure(
    server: tuple[str, int], tmp_path: Path
) -> None:
    """GIVEN a server that accepts and never sends a status line WHEN downloaded THEN the wait
    ends after one window as a retryable DownloadFailed (the next attempt may find it up)."""
    pace = Pace(min_rate=1, window_s=0.5, deadline_s=60)
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match=r"no response within 0\.5 s"):
        await download_http(
            f"http://127.0.0.1:{server[1]}/silent",
            tmp_path / "d.zip",
            max_bytes=10**6,
            allow=ALLOW,
            pace=pace,
        )
    assert time.monotonic() - started < 30  # bounded by the window, not by the server


async def test_the_fetch_stage_fails_a_trickle_as_a_permanent_download_failure(
    server: tuple[str, int], tmp_path: Path
) -> None:
    """GIVEN the worker's rate settings and a trickling images_url WHEN the fetch stage runs THEN
    it fails once with dataset_download_failed on dataset.images_url, not retried."""
    ctx = make_context(
        tmp_path / "vol",
        "http://unused",
        fetch_allow=ALLOW,
        download_min_rate_bytes_s=1024,
        download_rate_window_s=0.5,
        transient_retry_wait_s=0.01,
    )
    dataset = ctx.request.dataset.model_copy(
        update={"images_url": f"http://127.0.0.1:{server[1]}/trickle", "videos_url": None}
    )
    ctx.request = ctx.request.model_copy(update={"dataset": dataset})
    with pytest.raises(Permanent) as caught:
        await fetch.run(ctx)
    assert caught.value.code is ErrorCode.DATASET_DOWNLOAD_FAILED
    assert caught.value.field == "dataset.images_url"
    assert "under the minimum" in caught.value.message

"""``loraq watch JOB --repo REPO``: a job followed through its Hub repo's ``UPDATES/status.json``.

The watch runs in a pseudo-terminal, as a user runs it, against the local Hub, while the
worker's own UPDATES sink (``infra.hub_updates.HubUpdatesSink``) commits the job's status there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from contracts.events import CloudEvent
from infra.hub import HubUnavailable
from infra.hub_status_poll import HubStatusPoller, retry_after_s
from infra.hub_updates import HubUpdatesSink
from infra.hub_upload import HubUploader
from infra.updates_files import STATUS_FILE
from loraq.cli import main
from loraq.hub_watch import backoff_s
from tests.cli.conftest import failed, progress, start_events, succeeded
from tests.cli.pty_process import PtyProcess, loraq_argv
from tests.hub_server import HubRepo, LocalHub

JOB = "ohwx-7"
REPO = "alice/loraq-ohwx-7"
URL = "http://127.0.0.1:9/loraq-local/loras/ohwx-7/ohwx-7.zip?X-Amz-Signature=5e6f7a8b"
WRITE_TOKEN = "hf_watchHubAliceWriteToken012345"
READ_TOKEN = "hf_watchHubAliceReadToken0123456"
STRANGER_TOKEN = "hf_watchHubStrangerToken01234567"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """The worker's side of one job: its real UPDATES sink, committing when told to."""

    def __init__(self, hub: LocalHub, job_id: str) -> None:
        self.clock = Clock()
        self.sink = HubUpdatesSink(
            HubUploader(SecretStr(WRITE_TOKEN), endpoint=hub.url),
            job_id,
            repo_id=REPO,
            clock=self.clock,
            interval_s=60,
            secrets=[WRITE_TOKEN],
        )

    async def commit(self, events: list[CloudEvent]) -> None:
        """Publish ``events`` once the sink's commit interval has passed: they are committed."""
        self.clock.now += 60
        for event in events:
            await self.sink.publish(event)
        await self.sink.wait_idle()


@pytest.fixture
async def workers(hub: LocalHub) -> AsyncIterator[Callable[[str], Worker]]:
    """Workers for jobs on the hub; their sinks are closed at the end, as a runner does."""
    started: list[Worker] = []

    def start(job_id: str) -> Worker:
        started.append(Worker(hub, job_id))
        return started[-1]

    yield start
    for worker in started:
        await worker.sink.close()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    """alice's private, still empty repo for the job; her read token is all the watch has."""
    local = LocalHub().start()
    local.add_token(WRITE_TOKEN, "alice", write=True)
    local.add_token(READ_TOKEN, "alice")
    local.add_token(STRANGER_TOKEN, "mallory")
    local.add_repo(HubRepo(REPO, private=True))
    try:
        yield local
    finally:
        local.stop()


def _start(started: list[PtyProcess], hub: LocalHub, job_id: str = JOB) -> PtyProcess:
    env = dict(os.environ, HF_TOKEN=READ_TOKEN)
    # A topic in the environment (what `loraq stack` prints) does not get in --repo's way.
    env["LORAQ_TOPIC_ARN"] = "arn:aws:sns:us-east-1:000000000000:loraq-events"
    argv = ["watch", job_id, "--repo", REPO, "--hf-endpoint", hub.url, "--interval", "0.5"]
    process = PtyProcess(loraq_argv(*argv), env)
    started.append(process)
    return process


async def _shows(process: PtyProcess, text: str) -> None:
    await asyncio.to_thread(process.wait_for, text, 60)


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.05)


def _status_heads(hub: LocalHub) -> int:
    marker = f"/{REPO}/resolve/main/{STATUS_FILE}"
    return len(hub.requests(lambda r: r.method == "HEAD" and r.path == marker))


def _assert_no_token(text: str) -> None:
    for token in (WRITE_TOKEN, READ_TOKEN, STRANGER_TOKEN):
        assert token not in text


async def test_progress_shows_then_the_success_ends_it_with_the_link(
    hub: LocalHub, watches: list[PtyProcess], workers: Callable[[str], Worker]
) -> None:
    """GIVEN `loraq watch ohwx-7 --repo alice/loraq-ohwx-7` in a terminal, the repo still empty
    WHEN the worker's UPDATES sink commits the job's start and progress, then its success
    THEN the watch waits for the first update, shows the stage, percent, step/total and loss as
    they are committed, ends with the download link and exit 0, and never prints a token."""
    worker = workers(JOB)
    watch = _start(watches, hub)
    await _shows(watch, f"waiting for the first update of job {JOB}")

    await worker.commit([*start_events(JOB), progress(JOB, 8, loss=0.75)])
    await _shows(watch, "step 8/32")
    await worker.commit([progress(JOB, 16, loss=0.4321)])
    await _shows(watch, "step 16/32")
    await worker.commit([succeeded(JOB, URL)])

    assert await asyncio.to_thread(watch.wait, 30) == 0
    screen = watch.text
    assert f"watching job {JOB} through {REPO}" in screen
    assert "train  25.0%  step 8/32  loss 0.7500" in screen
    assert "50.0%" in screen and "loss 0.4321" in screen
    assert f"job {JOB} succeeded" in screen
    assert f"download:    {URL}\n" in screen
    _assert_no_token(watch.raw)


async def test_an_unchanged_status_is_not_downloaded_again(
    hub: LocalHub, watches: list[PtyProcess], workers: Callable[[str], Worker]
) -> None:
    """GIVEN a watch that has shown step 8
    WHEN polls go by, one after a commit that leaves status.json alone (the repo's commit moves)
    THEN each poll is one HEAD and the file is not fetched again; a changed status is fetched
    once and shown; Ctrl-C then ends the watch with 130, the job going on."""
    worker = workers(JOB)
    await worker.commit([*start_events(JOB), progress(JOB, 8)])
    watch = _start(watches, hub)
    await _shows(watch, "step 8/32")
    fetched, polled = len(hub.file_gets(REPO, STATUS_FILE)), _status_heads(hub)
    assert fetched == 1

    uploader = HubUploader(SecretStr(WRITE_TOKEN), endpoint=hub.url)
    card = {"README.md": b"---\nlicense: mit\n---\n# a LoRA\n"}
    assert uploader.commit(REPO, card, "model card") is not None
    await _until(lambda: _status_heads(hub) >= polled + 3)
    assert len(hub.file_gets(REPO, STATUS_FILE)) == fetched

    await worker.commit([progress(JOB, 24)])
    await _shows(watch, "step 24/32")
    assert len(hub.file_gets(REPO, STATUS_FILE)) == fetched + 1

    watch.interrupt(signal.SIGINT)
    assert await asyncio.to_thread(watch.wait, 30) == 130
    assert f"stopped watching; job {JOB} goes on" in watch.text


async def test_a_failed_job_shows_the_code_field_and_message(
    hub: LocalHub, watches: list[PtyProcess], workers: Callable[[str], Worker]
) -> None:
    """GIVEN a repo reused for job ohwx-7, still holding the previous job's final status
    WHEN the watch starts, then ohwx-7 starts and fails
    THEN the old status is not taken for this job's; the failure prints code, field and
    message, exit 1."""
    previous = workers("ohwx-6")
    await previous.commit([*start_events("ohwx-6"), succeeded("ohwx-6", URL)])
    watch = _start(watches, hub)
    await _shows(watch, f"holds job ohwx-6's status: waiting for the first update of job {JOB}")

    await workers(JOB).commit([*start_events(JOB)[:2], failed(JOB)])

    assert await asyncio.to_thread(watch.wait, 30) == 1
    screen = watch.text
    assert f"job {JOB} failed" in screen
    assert "code:     dataset_invalid" in screen
    assert "field:    input.dataset.images_url" in screen
    assert "message:  the zip holds no images" in screen
    assert "job ohwx-6 succeeded" not in screen


async def test_sigterm_stops_a_watch_that_waits_for_the_first_update(
    hub: LocalHub, watches: list[PtyProcess]
) -> None:
    """GIVEN a watch waiting for a job that has not reported WHEN it gets SIGTERM THEN exit 130."""
    watch = _start(watches, hub)
    await _shows(watch, "waiting for the first update")

    watch.interrupt(signal.SIGTERM)

    assert await asyncio.to_thread(watch.wait, 30) == 130
    assert f"stopped watching; job {JOB} goes on" in watch.text


def test_an_unknown_repo_or_no_access_is_exit_2_without_the_token(
    hub: LocalHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN the local Hub WHEN the repo does not exist, or the token is not one that may read
    it, or nothing answers at the endpoint, or --repo comes with --topic-arn
    THEN exit 2 with a clear message and no token in it."""
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    args = ["watch", JOB, "--hf-endpoint", hub.url, "--interval", "0.5"]

    assert main([*args, "--repo", "alice/no-such-repo"]) == 2
    out, err = capsys.readouterr()
    assert "loraq watch: alice/no-such-repo: repository not found" in err
    _assert_no_token(out + err)

    monkeypatch.setenv("HF_TOKEN", STRANGER_TOKEN)
    assert main([*args, "--repo", REPO]) == 2
    out, err = capsys.readouterr()
    assert "private and HF_TOKEN does not grant it" in err
    _assert_no_token(out + err)

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert main(["watch", JOB, "--repo", REPO, "--hf-endpoint", nobody]) == 2
    out, err = capsys.readouterr()
    assert "the Hub could not be reached (check --hf-endpoint)" in err
    _assert_no_token(out + err)

    with pytest.raises(SystemExit) as refused:
        main([*args, "--repo", REPO, "--topic-arn", "arn:aws:sns:us-east-1:0:t"])
    assert refused.value.code == 2


class _Scripted(ThreadingHTTPServer):
    """Answers each HEAD with the next scripted (status, headers) and records when it came:
    a Hub that throttles and fails, which the local Hub cannot be made to do."""

    daemon_threads = True

    def __init__(self, replies: list[tuple[int, dict[str, str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.replies = replies
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Scripted

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_HEAD(self) -> None:
        with self.server.lock:
            self.server.arrivals.append(time.monotonic())
            status, headers = self.server.replies.pop(0)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[tuple[int, dict[str, str]]]], _Scripted]]:
    servers: list[_Scripted] = []

    def start(replies: list[tuple[int, dict[str, str]]]) -> _Scripted:
        server = _Scripted(replies)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_throttled_or_failing_hub_stretches_the_wait(
    scripted: Callable[[list[tuple[int, dict[str, str]]]], _Scripted],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a Hub that answers 503, then 429 asking for 3 s, then 404 RepoNotFound
    WHEN watched every 0.5 s THEN it waits 1 s (doubled), then the 3 s asked for, says so each
    time, and ends with exit 2 at the 404."""
    server = scripted(
        [
            (503, {}),
            (429, {"Retry-After": "3"}),
            (404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}),
        ]
    )

    code = main(["watch", JOB, "--repo", REPO, "--hf-endpoint", server.url, "--interval", "0.5"])

    assert code == 2
    out = capsys.readouterr().out
    assert "the Hub answered 503; trying again in 1s" in out
    assert "the Hub answered 429; trying again in 3s" in out
    first, second, third = server.arrivals
    assert second - first >= 1.0 and third - second >= 3.0


def test_the_backoff_doubles_up_to_five_minutes_and_honours_retry_after() -> None:
    assert [backoff_s(10, n, None) for n in (1, 2, 3, 5, 9)] == [20, 40, 80, 300, 300]
    assert backoff_s(10, 1, 120) == 120


def test_a_poll_raises_unavailable_with_the_wait_the_hub_asked_for(
    scripted: Callable[[list[tuple[int, dict[str, str]]]], _Scripted],
) -> None:
    server = scripted([(429, {"Retry-After": "7"}), (502, {})])
    poller = HubStatusPoller(REPO, endpoint=server.url)

    with pytest.raises(HubUnavailable) as throttled:
        poller.poll()
    assert retry_after_s(throttled.value) == 7
    with pytest.raises(HubUnavailable) as failing:
        poller.poll()
    assert retry_after_s(failing.value) is None

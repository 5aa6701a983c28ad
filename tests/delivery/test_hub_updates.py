"""UPDATES/ in the user's repo, through the real huggingface_hub client and the local Hub."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from consumer.events import EventPublisher
from contracts.enums import ErrorCode, EventType, JobStatus, ModelType, OutputMethod, StageName
from contracts.events import (
    AcceptedData,
    CloudEvent,
    EventData,
    FailedData,
    ProgressData,
    StageData,
    SucceededData,
)
from contracts.request import JobInput
from contracts.result import OutputInfo
from contracts.status import JobStatusView
from infra.hub import HubAccessDenied, HubUnavailable
from infra.hub_updates import HubUpdatesSink, updates_sink_for, updates_target
from infra.hub_upload import HubUploader, default_repo_id
from infra.settings import Settings
from infra.updates_files import HISTORY_FILE, LOSS_CHART_FILE, README_FILE, STATUS_FILE
from infra.volume import JobStore
from tests.delivery.conftest import READ_TOKEN, WRITE_TOKEN
from tests.hub_server import LocalHub

JOB = "ohwx-42"
REPO = default_repo_id("alice", JOB)
DOWNLOAD = "https://hub.example/alice/loraq-ohwx-42/resolve/main/adapter_model.safetensors"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemorySink:
    name = "memory"

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    async def publish(self, event: CloudEvent) -> None:
        self.events.append(event)


def _event(event_type: EventType, data: EventData) -> CloudEvent:
    return CloudEvent.of(event_type, data, source="test", model_type="tiny")


def _progress(step: int, loss: float = 0.5) -> CloudEvent:
    return _event(
        EventType.JOB_PROGRESS,
        ProgressData(
            job_id=JOB, step=step, total_steps=40, loss=loss, eta_s=120.0, percent=step * 2.5
        ),
    )


def _succeeded() -> CloudEvent:
    output = OutputInfo(
        download_url=DOWNLOAD, safetensors_url=DOWNLOAD, download_method=OutputMethod.HUGGINGFACE
    )
    data = SucceededData(
        job_id=JOB,
        model_type=ModelType.TINY,
        model_name="Tiny",
        epochs_completed=4,
        latest_epoch="epoch4",
        output=output,
    )
    return _event(EventType.JOB_SUCCEEDED, data)


def _sink(
    hub: LocalHub, token: str = WRITE_TOKEN, clock: Clock | None = None, **kwargs: object
) -> HubUpdatesSink:
    return HubUpdatesSink(
        HubUploader(SecretStr(token), endpoint=hub.url),
        JOB,
        repo_id=None,
        clock=clock or Clock(),
        secrets=[token],
        **kwargs,  # type: ignore[arg-type]
    )


def _files(hub: LocalHub) -> dict[str, bytes]:
    repo = hub.repo(REPO)
    assert repo is not None
    return dict(repo.files)


def _commits(hub: LocalHub) -> int:
    return len(hub.commit_requests(REPO))


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


async def test_events_become_status_history_readme_and_chart(hub: LocalHub) -> None:
    """GIVEN a job's events WHEN the sink closes THEN UPDATES/ holds the folded status, every
    event, a README naming the stage and a PNG chart, in a private repo named for the job."""
    sink = _sink(hub)
    events = [
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY)),
        _event(EventType.STAGE_STARTED, StageData(job_id=JOB, stage=StageName.TRAIN)),
        *[_progress(step, loss=1.0 / step) for step in range(1, 11)],
    ]
    for event in events:
        await sink.publish(event)
    await sink.close()

    files = _files(hub)
    status = JobStatusView.model_validate_json(files[STATUS_FILE])
    assert (status.step, status.percent) == (10, 25.0)
    assert status.loss == pytest.approx(0.1)
    assert status.stage is StageName.TRAIN and status.status is JobStatus.RUNNING
    lines = files[HISTORY_FILE].decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in events]
    readme = files[README_FILE].decode()
    assert "train" in readme and "step 10 of 40" in readme and "0.1000" in readme
    assert files[LOSS_CHART_FILE].startswith(b"\x89PNG\r\n\x1a\n")
    repo = hub.repo(REPO)
    assert repo is not None and repo.private
    assert sink.repo_id == REPO


async def test_events_within_the_interval_make_one_commit(hub: LocalHub) -> None:
    """GIVEN a first commit WHEN 20 progress events come within the interval THEN no commit;
    once the interval has passed, the next event brings ONE commit holding all of them."""
    clock = Clock()
    sink = _sink(hub, clock=clock, interval_s=60)
    await sink.publish(
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))
    )
    await sink.wait_idle()
    assert _commits(hub) == 1  # the first event goes out at once

    for step in range(1, 21):
        clock.now += 2.5
        await sink.publish(_progress(step))
        await sink.wait_idle()
    assert _commits(hub) == 1

    clock.now += 10  # 60 s after the first commit
    await sink.publish(_progress(21))
    await sink.wait_idle()
    assert _commits(hub) == 2
    assert len(_files(hub)[HISTORY_FILE].decode().splitlines()) == 22
    await sink.close()


async def test_a_stage_change_goes_out_after_a_quarter_interval(hub: LocalHub) -> None:
    """GIVEN a recent commit WHEN a stage starts 15 s later THEN it is committed then, without
    waiting for the whole minute."""
    clock = Clock()
    sink = _sink(hub, clock=clock, interval_s=60)
    await sink.publish(
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))
    )
    await sink.wait_idle()
    await sink.publish(
        _event(EventType.STAGE_STARTED, StageData(job_id=JOB, stage=StageName.FETCH))
    )
    await sink.wait_idle()
    assert _commits(hub) == 1
    clock.now += 15
    await sink.publish(
        _event(EventType.STAGE_COMPLETED, StageData(job_id=JOB, stage=StageName.FETCH))
    )
    await sink.wait_idle()
    assert _commits(hub) == 2
    await sink.close()


async def test_pending_events_are_committed_when_the_interval_ends(hub: LocalHub) -> None:
    """GIVEN events waiting for the interval WHEN no further event comes THEN the background
    task commits them once the interval is over (real clock, a short interval)."""
    sink = HubUpdatesSink(
        HubUploader(SecretStr(WRITE_TOKEN), endpoint=hub.url), JOB, repo_id=None, interval_s=2
    )
    await sink.publish(
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))
    )
    await sink.wait_idle()
    await sink.publish(_progress(1))
    await sink.wait_idle()
    assert _commits(hub) == 1  # waiting for the interval, with no event to come

    async def second_commit() -> None:
        while _commits(hub) < 2:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(second_commit(), timeout=15)
    status = JobStatusView.model_validate_json(_files(hub)[STATUS_FILE])
    assert status.step == 1
    await sink.close()


async def test_a_terminal_event_is_committed_at_once_with_the_download_link(
    hub: LocalHub,
) -> None:
    """GIVEN progress waiting for the interval WHEN the job succeeds THEN publish returns only
    after a commit whose status and README carry the download link."""
    clock = Clock()
    sink = _sink(hub, clock=clock, interval_s=60)
    await sink.publish(
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))
    )
    await sink.wait_idle()
    await sink.publish(_progress(40))
    await sink.publish(_succeeded())
    assert _commits(hub) == 2
    files = _files(hub)
    status = JobStatusView.model_validate_json(files[STATUS_FILE])
    assert status.status is JobStatus.SUCCEEDED and status.download_url == DOWNLOAD
    assert DOWNLOAD in files[README_FILE].decode()
    await sink.close()
    assert _commits(hub) == 2  # nothing left for the final flush


async def test_a_read_only_token_warns_once_and_never_holds_back_the_job(
    hub: LocalHub, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    """GIVEN a read-only token WHEN a whole job is published with the sink attached THEN no
    exception, SNS still gets every event, one warning without the token, and no repo."""
    store, sns = JobStore(tmp_path), MemorySink()
    publisher = EventPublisher(store, [sns], source="t", progress_interval_s=0)
    publisher.attach(JOB, _sink(hub, token=READ_TOKEN))
    await publisher.publish(
        EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB), model_type=ModelType.TINY
    )
    for step in (1, 2, 3):
        await publisher.publish(
            EventType.JOB_PROGRESS, ProgressData(job_id=JOB, step=step), model_type="tiny"
        )
    failed = FailedData(job_id=JOB, code=ErrorCode.TRAINING_FAILED, message="boom", retryable=False)
    await publisher.publish(EventType.JOB_FAILED, failed, model_type="tiny")
    await publisher.detach(JOB)

    assert len(sns.events) == 5 and publisher.undelivered == 0
    assert hub.repo(REPO) is None
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == ["hub_updates_failed"]
    assert READ_TOKEN not in json.dumps(logs, default=str)
    # Switched off after the refusal: one try (whoami, create), not one per event.
    assert len(hub.requests(lambda r: r.path == "/api/repos/create")) == 1


async def test_no_file_in_the_repo_holds_the_token(hub: LocalHub) -> None:
    """GIVEN a failure message that (by a bug upstream) echoes the token WHEN committed THEN
    no file in the repository contains the token."""
    sink = _sink(hub)
    await sink.publish(
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))
    )
    await sink.publish(_progress(3))
    leak = f"upload refused for Authorization: Bearer {WRITE_TOKEN}"
    await sink.publish(
        _event(
            EventType.JOB_FAILED,
            FailedData(job_id=JOB, code=ErrorCode.PUBLISH_FAILED, message=leak, retryable=False),
        )
    )
    await sink.close()
    files = _files(hub)
    assert set(files) >= {STATUS_FILE, HISTORY_FILE, README_FILE, LOSS_CHART_FILE}
    for path, data in files.items():
        assert WRITE_TOKEN.encode() not in data, path
    status = JobStatusView.model_validate_json(files[STATUS_FILE])
    assert status.error is not None and "Bearer ***" in status.error.message
    assert "publish_failed" in files[README_FILE].decode()


def _request(**output: object) -> JobInput:
    return JobInput.model_validate(
        {
            "model_type": "tiny",
            "dataset": {"type": "precaptioned", "images_url": "https://example.com/d.zip"},
            "api_keys": {"huggingface_token": WRITE_TOKEN},
            "output": output,
        }
    )


async def test_a_resumed_job_commits_its_whole_history(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN a journal from an earlier delivery WHEN the job resumes with the sink THEN
    history.jsonl starts with the journal's events, then the new ones."""
    store = JobStore(tmp_path)
    earlier = [
        _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY)),
        _progress(1),
        _progress(2),
    ]
    for event in earlier:
        store.append_event(event)
    settings = Settings(queue_url="q", volume=tmp_path, hf_endpoint=hub.url)
    sink = updates_sink_for(JOB, _request(method="auto"), settings=settings, store=store)
    assert sink is not None
    resumed = _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, resumed=True))
    await sink.publish(resumed)
    await sink.close()
    lines = _files(hub)[HISTORY_FILE].decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in [*earlier, resumed]]


def test_updates_only_for_jobs_that_publish_to_the_hub_with_a_token() -> None:
    """GIVEN requests WHEN asked for their updates' repo THEN only a token together with the
    huggingface or auto method, or an explicit repo, gets one."""
    assert updates_target(_request(method="huggingface")) is not None
    assert updates_target(_request(method="auto")) is not None
    assert updates_target(_request(method="local")) is None
    explicit = updates_target(
        _request(method="local", huggingface={"repo_id": "alice/mine", "private": False})
    )
    assert explicit is not None and (explicit.repo_id, explicit.private) == ("alice/mine", False)
    tokenless = JobInput.model_validate(
        {
            "model_type": "tiny",
            "dataset": {"type": "precaptioned", "images_url": "https://example.com/d.zip"},
            "output": {"method": "huggingface"},
        }
    )
    assert updates_target(tokenless) is None


def test_updates_can_be_switched_off(tmp_path: Path) -> None:
    """GIVEN LORAQ_UPDATES_ENABLED=false WHEN a Hub job starts THEN it gets no sink."""
    settings = Settings(queue_url="q", volume=tmp_path, updates_enabled=False)
    sink = updates_sink_for(
        JOB, _request(method="huggingface"), settings=settings, store=JobStore(tmp_path)
    )
    assert sink is None


class FakeUploader:
    """Our own uploader interface, for what the local Hub cannot do: hang, or fail on cue."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.release = threading.Event()
        self.release.set()
        self.attempts = 0
        self.commits: list[dict[str, bytes | Path]] = []

    def whoami(self) -> str:
        return "alice"

    def ensure_repo(self, repo_id: str, *, private: bool) -> str:
        return f"http://hub.test/{repo_id}"

    def commit(self, repo_id: str, files: Mapping[str, bytes | Path], message: str) -> str:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.release.wait(timeout=30)
        self.commits.append(dict(files))
        return f"commit-{len(self.commits)}"

    def last_status(self) -> JobStatusView:
        data = self.commits[-1][STATUS_FILE]
        assert isinstance(data, bytes)
        return JobStatusView.model_validate_json(data)


def _accepted() -> CloudEvent:
    return _event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB, model_type=ModelType.TINY))


async def test_a_hanging_hub_delays_the_terminal_event_only_up_to_the_timeout(
    logs: list[MutableMapping[str, Any]],
) -> None:
    """GIVEN a Hub that hangs on commit WHEN the terminal event comes THEN publish returns after
    the flush timeout without raising; once the Hub answers, close commits the final status
    after the stale one, never before it."""
    uploader = FakeUploader()
    uploader.release.clear()
    sink = HubUpdatesSink(uploader, JOB, repo_id=None, clock=Clock(), flush_timeout_s=0.3)
    await sink.publish(_accepted())
    started = time.monotonic()
    await sink.publish(_succeeded())
    assert time.monotonic() - started < 5
    uploader.release.set()
    await sink.close()
    assert uploader.last_status().status is JobStatus.SUCCEEDED
    assert uploader.last_status().download_url == DOWNLOAD
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["hub_updates_failed"]


async def test_a_throttled_flush_is_retried_at_the_next_one() -> None:
    """GIVEN the Hub answers 429 once WHEN the next flush comes THEN it commits everything."""
    uploader, clock = FakeUploader(HubUnavailable("alice/x: the Hub answered 429")), Clock()
    sink = HubUpdatesSink(uploader, JOB, repo_id=None, clock=clock, interval_s=60)
    await sink.publish(_accepted())
    await sink.wait_idle()
    assert uploader.commits == []
    clock.now += 60
    await sink.publish(_progress(1))
    await sink.wait_idle()
    assert len(uploader.commits) == 1 and uploader.last_status().step == 1
    await sink.close()


async def test_a_refused_token_switches_the_updates_off_for_the_job() -> None:
    """GIVEN the Hub refuses the token WHEN more events and the end come THEN no more tries."""
    uploader, clock = FakeUploader(HubAccessDenied("denied", gated=False)), Clock()
    sink = HubUpdatesSink(uploader, JOB, repo_id="alice/mine", clock=clock, interval_s=0)
    await sink.publish(_accepted())
    await sink.wait_idle()
    for step in (1, 2):
        await sink.publish(_progress(step))
    await sink.publish(_succeeded())
    await sink.close()
    assert uploader.attempts == 1 and uploader.commits == []

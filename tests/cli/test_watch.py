"""``loraq watch`` against the real local stack, in a pseudo-terminal, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local_stack import LocalStack
from infra.volume import JobStore
from loraq.cli import main
from tests.cli.conftest import (
    failed,
    progress,
    publish,
    start_events,
    succeeded,
    watch_queues,
    watch_subscriptions,
)
from tests.cli.pty_process import PtyProcess, loraq_argv

URL = "http://127.0.0.1:9/loraq-local/loras/job-7/job-7.zip?X-Amz-Signature=0f1e2d3c"


@pytest.fixture
def watch_pty(stack: LocalStack) -> Iterator[list[PtyProcess]]:
    started: list[PtyProcess] = []
    yield started
    for process in started:
        process.close()


def _start(started: list[PtyProcess], *args: str) -> PtyProcess:
    process = PtyProcess(loraq_argv("watch", *args), dict(os.environ))
    started.append(process)
    return process


async def _subscribed(process: PtyProcess, job_id: str) -> None:
    await asyncio.to_thread(process.wait_for, f"watching job {job_id}", 60)


def _assert_cleaned_up(stack: LocalStack) -> None:
    assert watch_queues(stack) == []
    assert watch_subscriptions(stack) == []


async def test_a_job_that_succeeds_shows_progress_then_the_link(
    stack: LocalStack, watch_pty: list[PtyProcess]
) -> None:
    """GIVEN `loraq watch job-7` running in a terminal, subscribed to the topic
    WHEN a worker's events for job-7 (and another job's success) are published through SNS
    THEN the display shows the stage, percent, step/total and loss as progress arrives, ends with
    the download link and exit 0, and its temporary queue and subscription are gone."""
    watch = _start(watch_pty, "job-7")
    await _subscribed(watch, "job-7")
    [sub] = watch_subscriptions(stack)
    attrs = stack.client("sns").get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])
    assert json.loads(attrs["Attributes"]["FilterPolicy"]) == {"job_id": ["job-7"]}
    assert attrs["Attributes"]["RawMessageDelivery"] == "true"

    await publish(stack, [succeeded("job-8", "http://127.0.0.1:9/other.zip")])
    await publish(stack, [*start_events("job-7"), progress("job-7", 8, loss=0.75)])
    await asyncio.to_thread(watch.wait_for, "step 8/32", 30)
    await publish(stack, [progress("job-7", 16, loss=0.4321)])
    await asyncio.to_thread(watch.wait_for, "step 16/32", 30)
    await publish(stack, [succeeded("job-7", URL)])

    assert await asyncio.to_thread(watch.wait, 30) == 0
    screen = watch.text
    assert "train" in screen and "50.0%" in screen and "loss 0.4321" in screen
    assert "fetch completed" in screen
    assert f"download:    {URL}\n" in screen
    assert "job job-7 succeeded" in screen and "other.zip" not in screen
    _assert_cleaned_up(stack)


async def test_a_job_that_fails_shows_the_code_and_field(
    stack: LocalStack, watch_pty: list[PtyProcess]
) -> None:
    """GIVEN a watch on job-9 WHEN job-9 fails THEN it prints code, field, message; exit 1."""
    watch = _start(watch_pty, "job-9")
    await _subscribed(watch, "job-9")
    await publish(stack, [*start_events("job-9")[:2], failed("job-9")])

    assert await asyncio.to_thread(watch.wait, 30) == 1
    screen = watch.text
    assert "job job-9 failed" in screen
    assert "code:     dataset_invalid" in screen
    assert "field:    input.dataset.images_url" in screen
    assert "message:  the zip holds no images" in screen
    _assert_cleaned_up(stack)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_ctrl_c_stops_the_watch_and_removes_its_queue(
    stack: LocalStack, watch_pty: list[PtyProcess], signum: int
) -> None:
    """GIVEN a watch in the middle of a job WHEN the user presses Ctrl-C (SIGINT), the watch is
    terminated (SIGTERM) or its terminal is closed (SIGHUP)
    THEN it exits 130 saying the job goes on, with no queue or subscription left behind."""
    watch = _start(watch_pty, "job-5")
    await _subscribed(watch, "job-5")
    await publish(stack, [*start_events("job-5"), progress("job-5", 4)])
    await asyncio.to_thread(watch.wait_for, "step 4/32", 30)
    assert len(watch_queues(stack)) == 1

    watch.interrupt(signum)

    assert await asyncio.to_thread(watch.wait, 30) == 130
    assert "stopped watching; job job-5 goes on" in watch.text
    _assert_cleaned_up(stack)


def _journal(volume: Path, job_id: str, *, finished: bool) -> None:
    store = JobStore(volume)
    events = [*start_events(job_id), progress(job_id, 24, loss=0.25)]
    for item in [*events, succeeded(job_id, URL)] if finished else events:
        store.append_event(item)


def test_a_finished_job_replayed_from_the_volume_ends_at_once(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN job-3's journal on the volume ending in success (published before any watch)
    WHEN `loraq watch job-3 --volume DIR` runs with its output to a pipe
    THEN it prints one plain line per event and the link, exits 0 and leaves no queue."""
    _journal(tmp_path, "job-3", finished=True)

    assert main(["watch", "job-3", "--volume", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert any(line.endswith("fetch started") for line in lines)
    assert any("train  75.0%  step 24/32  loss 0.2500" in line for line in lines)
    assert f"  download:    {URL}" in lines
    _assert_cleaned_up(stack)


def test_without_a_topic_an_unfinished_journal_is_shown_and_refused(
    stack: LocalStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN no topic and a running job's journal WHEN watched THEN its events and exit 2."""
    monkeypatch.delenv("LORAQ_TOPIC_ARN")
    _journal(tmp_path, "job-4", finished=False)

    assert main(["watch", "job-4", "--volume", str(tmp_path)]) == 2

    out = capsys.readouterr().out
    assert "step 24/32" in out and "LORAQ_TOPIC_ARN" in out
    assert main(["watch", "job-4"]) == 2  # nothing to watch with at all


def test_a_topic_that_does_not_exist_is_exit_2_without_leftovers(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a topic ARN that names no topic WHEN watched THEN exit 2, the temp queue removed."""
    missing = stack.topic_arn.replace("loraq-events", "no-such-topic")

    assert main(["watch", "job-6", "--topic-arn", missing]) == 2

    assert "loraq watch:" in capsys.readouterr().err
    _assert_cleaned_up(stack)

"""``loraq watch JOB_ID``: follow one job live until it succeeds (exit 0) or fails (exit 1).

Events come from the SNS topic through a temporary queue (``infra.topic_watch``), which is
removed again however the watch ends (the job ended, Ctrl-C, SIGTERM). SNS delivers only what
is published after subscribing, so ``--volume`` replays the job's journal too: *after*
subscribing, so that no event can fall between the two; events seen twice (journal and topic)
are shown once. A job that already finished is shown at once.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from datetime import datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from contracts.enums import EventType, JobStatus
from contracts.events import CloudEvent
from contracts.request import JOB_ID_PATTERN
from contracts.status import JobStatusView
from infra.aws import AwsClients
from infra.topic_watch import TopicWatch
from infra.volume import JOBS_DIR, JobStore
from infra.watch_sweep import sweep_abandoned_watches
from loraq import status_text
from loraq.watch_display import WatchDisplay, make_display

# 2: nothing to watch with (arguments), or AWS refused or could not be reached.
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130
# Long polls keep the request rate low; Ctrl-C cancels one in flight at once.
_POLL_S = 10


class _Follower:
    """Folds the job's events into its status, once each, and shows each one."""

    def __init__(self, job_id: str, display: WatchDisplay) -> None:
        self.view = JobStatusView(job_id=job_id)
        self.display = display
        self._seen: set[str] = set()
        self._last_progress: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.view.status is not JobStatus.RUNNING

    def apply(self, event: CloudEvent) -> None:
        if event.id in self._seen or event.subject != self.view.job_id or self.finished:
            return
        self._seen.add(event.id)
        if event.type is EventType.JOB_PROGRESS:
            # A standard queue may reorder: an older progress event must not move the bar back.
            if self._last_progress is not None and event.time < self._last_progress:
                return
            self._last_progress = event.time
        self.view = self.view.fold(event)
        self.display.event(event, self.view)

    def replay(self, volume: Path) -> None:
        for event in JobStore(volume).read_events(self.view.job_id):
            self.apply(event)


def cancel_on_stop_signals() -> None:
    """SIGTERM, and SIGHUP (the terminal was closed), end the watch like Ctrl-C does: through
    cancellation, so the queue is removed before the process goes."""
    task = asyncio.current_task()
    if task is not None:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)


async def _follow(follower: _Follower, topic_arn: str, volume: Path | None) -> None:
    async with AwsClients() as aws:
        await _sweep(aws, topic_arn, follower.display)
        async with TopicWatch(aws.sqs, aws.sns, topic_arn, follower.view.job_id) as watch:
            await _receive_until_finished(follower, watch, volume)


async def _sweep(aws: AwsClients, topic_arn: str, display: WatchDisplay) -> None:
    """Best-effort: a watch without the rights to list queues still works."""
    try:
        removed = await sweep_abandoned_watches(aws.sqs, aws.sns, topic_arn)
    except (BotoCoreError, ClientError):
        return
    if removed:
        display.note(f"removed {len(removed)} abandoned watch queue(s): {', '.join(removed)}")


async def _receive_until_finished(
    follower: _Follower, watch: TopicWatch, volume: Path | None
) -> None:
    follower.display.note(f"watching job {follower.view.job_id} ({watch.queue_name})")
    if volume is not None:
        follower.replay(volume)
    while not follower.finished:
        # One batch may hold several events out of order (a standard queue does not keep it).
        for event in sorted(await watch.receive(_POLL_S), key=lambda e: e.time):
            follower.apply(event)


async def _watch(follower: _Follower, topic_arn: str | None, volume: Path | None) -> int:
    cancel_on_stop_signals()
    if topic_arn is None:
        assert volume is not None
        follower.replay(volume)
        if not follower.finished:
            follower.display.note(
                "the job has not finished: set --topic-arn or LORAQ_TOPIC_ARN to follow it live"
            )
            return EXIT_USAGE
    else:
        await _follow(follower, topic_arn, volume)
    return EXIT_SUCCEEDED if follower.view.status is JobStatus.SUCCEEDED else EXIT_FAILED


def watch_command(job_id: str, topic_arn: str | None, volume: Path | None) -> int:
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        print(f"loraq watch: {job_id!r} is not a job id", file=sys.stderr)
        return EXIT_USAGE
    if topic_arn is None and volume is None:
        print("loraq watch: set --topic-arn (or LORAQ_TOPIC_ARN) or --volume", file=sys.stderr)
        return EXIT_USAGE
    if volume is not None and not (volume / JOBS_DIR).is_dir():
        print(f"loraq watch: {volume} is not a loraq volume (no {JOBS_DIR}/)", file=sys.stderr)
        return EXIT_USAGE
    display = make_display(job_id)
    follower = _Follower(job_id, display)
    try:
        code = asyncio.run(_watch(follower, topic_arn, volume))
    except (KeyboardInterrupt, asyncio.CancelledError):
        display.close()
        display.note(f"stopped watching; job {job_id} goes on")
        return EXIT_STOPPED
    except (BotoCoreError, ClientError) as exc:
        display.close()
        print(f"loraq watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        display.close()
    for line in status_text.outcome_lines(follower.view):
        display.note(line)
    return code

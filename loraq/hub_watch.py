"""``loraq watch JOB_ID --repo REPO_ID``: follow a job through its Hub repo, with no AWS access.

The worker commits the job's status to ``UPDATES/status.json`` in the job's own repo at most
once per ``updates_commit_interval_s`` (60 s by default; a stage change after a quarter of it,
the end at once), so this follows the job at that grain with only a token that can read the
repo. A poll costs one metadata request every ``--interval`` seconds, and a download only when
the status changed (``infra.hub_status_poll``). A repo without the file is a job that has not
reported yet: the watch waits for it. A 429, a 5xx or the network stretch the wait (doubling up
to five minutes, never less than the Hub's ``Retry-After``) rather than end the watch: it
outlives an outage, and never turns one into a burst of requests. Only a Hub that never answered
at all ends it at once (exit 2): that is a wrong endpoint far more often than an outage.
"""

from __future__ import annotations

import asyncio
import re
import sys

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils._validators import validate_repo_id
from pydantic import SecretStr

from contracts.enums import JobStatus
from contracts.request import JOB_ID_PATTERN
from contracts.status import JobStatusView
from infra.hub import HubAccessDenied, HubError, HubNotFound, HubUnavailable
from infra.hub_status_poll import HubStatusPoller, HubUnreachable, StatusPoll, retry_after_s
from infra.redact import Redactor
from loraq import status_text
from loraq.watch import (
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    EXIT_USAGE,
    cancel_on_stop_signals,
)
from loraq.watch_display import WatchDisplay, make_display

DEFAULT_INTERVAL_S = 10.0
# Faster polls would only spend the user's Hub request quota (shared with their other tools):
# the worker commits once a minute at most.
MIN_INTERVAL_S = 0.5
_MAX_BACKOFF_S = 300.0


def backoff_s(interval_s: float, failures: int, asked_s: float | None) -> float:
    """The wait after ``failures`` unavailable polls in a row (the Hub may ask for longer)."""
    # The exponent is bounded: a day-long outage must not overflow a float.
    wait = min(_MAX_BACKOFF_S, interval_s * 2.0 ** min(failures, 30))
    return max(wait, asked_s or 0.0)


class _HubFollower:
    """Polls the status until the job ends, showing each new one."""

    def __init__(
        self, job_id: str, poller: HubStatusPoller, display: WatchDisplay, interval_s: float
    ) -> None:
        self.view = JobStatusView(job_id=job_id)
        self._poller = poller
        self._display = display
        self._interval = interval_s
        self._said: set[str] = set()
        self._answered = False

    async def run(self) -> None:
        cancel_on_stop_signals()
        self._display.note(
            f"watching job {self.view.job_id} through {self._poller.repo_id} "
            f"(UPDATES/status.json, every {self._interval:g}s)"
        )
        failures = 0
        while self.view.status is JobStatus.RUNNING:
            try:
                poll = await asyncio.to_thread(self._poller.poll)
            except HubUnavailable as exc:
                if isinstance(exc, HubUnreachable) and not self._answered:
                    raise
                failures += 1
                wait = backoff_s(self._interval, failures, retry_after_s(exc))
                self._display.note(f"{exc}; trying again in {status_text.duration(wait)}")
                await asyncio.sleep(wait)
                continue
            failures, self._answered = 0, True
            self._take(poll)
            if self.view.status is JobStatus.RUNNING:
                await asyncio.sleep(self._interval)

    def _take(self, poll: StatusPoll) -> None:
        job_id = self.view.job_id
        if not poll.exists:
            self._once(f"waiting for the first update of job {job_id}")
        elif poll.view is not None and poll.view.job_id != job_id:
            # A repo reused for a new job holds the last one's status until the new one reports.
            self._once(
                f"{self._poller.repo_id} holds job {poll.view.job_id}'s status: "
                f"waiting for the first update of job {job_id}"
            )
        elif poll.view is not None:
            self.view = poll.view
            self._display.status(poll.view)

    def _once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._display.note(text)


def _refusal(exc: HubError, repo_id: str) -> str:
    if isinstance(exc, HubNotFound):
        return f"{repo_id}: repository not found, or private and HF_TOKEN does not grant it"
    if isinstance(exc, HubAccessDenied):
        return f"{repo_id}: access refused; HF_TOKEN must grant read access ({exc})"
    if isinstance(exc, HubUnreachable):
        return f"the Hub could not be reached (check --hf-endpoint): {exc}"
    return str(exc)


def _check(job_id: str, repo_id: str, interval_s: float) -> str | None:
    """What is wrong with the arguments, if anything."""
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        return f"{job_id!r} is not a job id"
    if interval_s < MIN_INTERVAL_S:
        return f"--interval must be at least {MIN_INTERVAL_S:g} seconds"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return f"{repo_id!r} is not a Hub repository id (namespace/name)"
    return None


def hub_watch_command(
    job_id: str,
    repo_id: str,
    *,
    endpoint: str | None,
    token: str | None,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> int:
    problem = _check(job_id, repo_id, interval_s)
    if problem is not None:
        print(f"loraq watch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    poller = HubStatusPoller(repo_id, endpoint=endpoint, token=SecretStr(token) if token else None)
    display = make_display(job_id)
    follower = _HubFollower(job_id, poller, display, interval_s)
    try:
        asyncio.run(follower.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        display.close()
        display.note(f"stopped watching; job {job_id} goes on")
        return EXIT_STOPPED
    except HubError as exc:
        display.close()
        # huggingface_hub's messages name the URL, not the token; masked all the same.
        message = Redactor([token] if token else [])(_refusal(exc, repo_id))
        print(f"loraq watch: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        display.close()
    for line in status_text.outcome_lines(follower.view):
        display.note(line)
    return EXIT_SUCCEEDED if follower.view.status is JobStatus.SUCCEEDED else EXIT_FAILED

"""A job's progress in ``UPDATES/`` of the user's own Hub repo: status, history, README, chart.

One ``HubUpdatesSink`` per running job. Each event is folded into the job's ``JobStatusView``
and appended to its history at once (in memory); the files are committed in batches by a
background task, so the training loop never waits on the network:

- at most one commit per ``interval_s`` (``LORAQ_UPDATES_COMMIT_INTERVAL_S``, 60 s: at most 60
  commits an hour per job). The Hub's documented limits (huggingface.co/docs/hub/rate-limits)
  count Hub API calls per 5-minute window, 1,000 for a free account; a flush costs two or three
  (preupload, commit, and once whoami and create). Commits also have an hourly quota of their
  own, which the Hub reports in its 429 replies (128 an hour per repo for a free account);
  60 an hour leaves room for the LoRA's own commits to the same repo;
- the first event goes out at once (the user sees the job start, and a bad token shows up
  early), a stage change after a quarter of the interval;
- a terminal event flushes at once and is awaited: the final status carries the download link.

The user's repo is not ours to guarantee. A bad or read-only token, a missing namespace or a
rate limit must never hold back the job: every error is logged (once, with the token masked)
and swallowed. Errors that another attempt can fix (429, 5xx, the network) are retried at the
next flush; the others switch the sink off for the rest of the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from pydantic import SecretStr

from contracts.enums import EventType, JobStatus, OutputMethod
from contracts.events import CloudEvent
from contracts.request import JobInput
from contracts.status import JobStatusView, fold_events
from infra.hub import HubAccessDenied, HubNotFound, HubUnavailable
from infra.hub_upload import HubInvalidRepo, HubUploader, default_repo_id
from infra.redact import Redactor
from infra.settings import Settings
from infra.updates_files import LOSS_CHART_FILE, loss_chart, loss_points, text_files
from infra.volume import JobStore

log = structlog.get_logger("loraq.updates")

# Events worth showing before the interval is over: a new stage, a stop.
_NEWS = frozenset({EventType.STAGE_STARTED, EventType.STAGE_COMPLETED, EventType.JOB_INTERRUPTED})
# HTTP statuses that a later attempt can get past.
_TRANSIENT_STATUSES = frozenset({408, 409, 423, 425, 429})


class UpdatesUploader(Protocol):
    """What the sink needs of ``infra.hub_upload.HubUploader`` (blocking calls)."""

    def whoami(self) -> str: ...

    def ensure_repo(self, repo_id: str, *, private: bool) -> str: ...

    def commit(
        self, repo_id: str, files: Mapping[str, bytes | Path], message: str
    ) -> str | None: ...


@dataclass(frozen=True)
class UpdatesTarget:
    """Where a job's updates go: the repo its LoRA is published to."""

    token: SecretStr
    repo_id: str | None  # None: ``default_repo_id(<the token's user>, job_id)``
    private: bool


def updates_target(request: JobInput) -> UpdatesTarget | None:
    """The job's repo when it carries a Hub token and publishes to the Hub (or may: ``auto``)."""
    token = request.huggingface_token()
    hub = request.output.huggingface
    to_hub = request.output.method in (OutputMethod.HUGGINGFACE, OutputMethod.AUTO)
    if token is None or not (to_hub or (hub is not None and hub.repo_id)):
        return None
    return UpdatesTarget(
        token=token,
        repo_id=hub.repo_id if hub else None,
        private=hub.private if hub else True,
    )


def updates_sink_for(
    job_id: str, request: JobInput, *, settings: Settings, store: JobStore
) -> HubUpdatesSink | None:
    """The sink for a job that starts running here, or None when it has no updates to make."""
    target = updates_target(request)
    if not settings.updates_enabled or target is None:
        return None
    return HubUpdatesSink(
        HubUploader(target.token, endpoint=settings.hf_endpoint),
        job_id,
        repo_id=target.repo_id,
        private=target.private,
        # A resumed job's history is complete: what earlier deliveries published comes first.
        history=store.read_events(job_id),
        interval_s=settings.updates_commit_interval_s,
        secrets=request.secret_values(),
    )


class HubUpdatesSink:
    name = "hub-updates"

    def __init__(
        self,
        uploader: UpdatesUploader,
        job_id: str,
        *,
        repo_id: str | None,
        private: bool = True,
        history: Sequence[CloudEvent] = (),
        interval_s: float = 60.0,
        secrets: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self._uploader = uploader
        self._job_id = job_id
        self._repo_id = repo_id
        self._private = private
        own = [event for event in history if event.subject == job_id]
        self._history = own
        self._seen = {event.id for event in own}
        self._view = fold_events(job_id, own)
        self._interval = interval_s
        self._secrets = list(secrets)
        self._redact = Redactor(self._secrets)
        self._clock = clock
        self._timeout = flush_timeout_s
        self._dirty = self._news = self._off = self._warned = self._closing = False
        self._last_flush: float | None = None
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Pushes run in threads that a timeout can abandon but not stop: they are serialised,
        # and a snapshot older than one already committed is dropped, so the repo never goes
        # back in time.
        self._push_lock = threading.Lock()
        self._snapshots = 0
        self._pushed = 0
        self._repo_ready = False
        self._chart: tuple[int, bytes] | None = None

    @property
    def repo_id(self) -> str | None:
        """The repo written to (known once the first flush asked the Hub whose token it is)."""
        return self._repo_id

    @property
    def view(self) -> JobStatusView:
        return self._view

    async def publish(self, event: CloudEvent) -> None:
        """Take the event into the status and history; commit later, or now if it is terminal."""
        if event.subject != self._job_id or event.id in self._seen or self._off:
            return
        self._seen.add(event.id)
        self._history.append(event)
        self._view = self._view.fold(event)
        self._dirty = True
        if event.type.is_terminal:
            await self._flush()
            return
        self._news = self._news or event.type in _NEWS
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name=f"hub-updates-{self._job_id}")
        self._idle.clear()
        self._wake.set()

    async def close(self) -> None:
        """Stop batching and commit what is not committed yet (awaited, bounded)."""
        # The batching task is asked to stop, not cancelled: it ends after a commit under way
        # (bounded by the timeout), so that commit is neither abandoned nor raced.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._flush()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no commit is running or due now (tests synchronise on it)."""
        if self._task is not None:
            await self._idle.wait()

    # -- batching ---------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            delay = self._delay()
            if delay == 0:
                await self._flush()
                continue
            self._idle.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _delay(self) -> float | None:
        """Seconds until the next commit is due; 0: now; None: nothing to commit."""
        if self._off or not self._dirty:
            return None
        if self._last_flush is None:
            return 0.0
        gap = self._interval / 4 if self._news else self._interval
        return max(0.0, self._last_flush + gap - self._clock())

    async def _flush(self) -> None:
        # Bounded as a whole, waiting for a commit already under way included: a terminal
        # event's flush runs while the job's message waits to be acknowledged.
        try:
            async with asyncio.timeout(self._timeout):
                await self._flush_once()
        except TimeoutError as exc:
            self._failed(exc)

    async def _flush_once(self) -> None:
        async with self._flush_lock:
            if self._off or not self._dirty:
                return
            self._dirty = self._news = False
            self._last_flush = self._clock()
            self._snapshots += 1
            snapshot = (self._snapshots, self._view, list(self._history))
            try:
                await asyncio.to_thread(self._push, *snapshot)
            except asyncio.CancelledError:
                self._dirty = True  # timed out or cancelled: the next flush commits it
                raise
            except Exception as exc:  # the user's repo never fails the job
                self._dirty = True
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        transient = _is_transient(exc)
        if not transient:
            self._off = True
        if self._warned and transient:
            log.info("hub_updates_retry_failed", job_id=self._job_id, error=self._describe(exc))
            return
        self._warned = True
        log.warning(
            "hub_updates_failed",
            job_id=self._job_id,
            repo_id=self._repo_id,
            error=self._describe(exc),
            retry="at the next flush" if transient else "never: updates are off for this job",
        )

    def _describe(self, exc: Exception) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")

    # -- in a worker thread -----------------------------------------------------------------
    def _push(self, seq: int, view: JobStatusView, history: list[CloudEvent]) -> None:
        with self._push_lock:
            if seq <= self._pushed:
                return
            repo_id = self._ensure_repo()
            files: dict[str, bytes | Path] = dict(text_files(view, history, self._secrets))
            files[LOSS_CHART_FILE] = self._loss_chart(history)
            self._uploader.commit(repo_id, files, _message(view))
            self._pushed = seq

    def _ensure_repo(self) -> str:
        if self._repo_id is None:
            self._repo_id = default_repo_id(self._uploader.whoami(), self._job_id)
        if not self._repo_ready:
            self._uploader.ensure_repo(self._repo_id, private=self._private)
            self._repo_ready = True
        return self._repo_id

    def _loss_chart(self, history: list[CloudEvent]) -> bytes:
        # Rendering takes a tenth of a second: only when a new loss came in.
        count = len(loss_points(history))
        if self._chart is None or self._chart[0] != count:
            self._chart = (count, loss_chart(history))
        return self._chart[1]


def _message(view: JobStatusView) -> str:
    if view.status is not JobStatus.RUNNING:
        return f"UPDATES: job {view.status.value}"
    percent = f" {view.percent:.0f}%" if view.percent is not None else ""
    return f"UPDATES: {view.stage.value if view.stage else 'queued'}{percent}"


def _is_transient(exc: Exception) -> bool:
    """Whether a later flush may get past ``exc``.

    Refusals are not: a bad or read-only token, another user's namespace, an invalid repo name
    (401, 403, 404, 400: ``infra.hub``'s access-denied, not-found and invalid-repo kinds).
    Anything else (throttling, the Hub's 5xx, a conflict, the network, a timeout) is retried at
    the next flush: one call a minute is cheap, a job's updates lost to a passing outage are not.
    """
    if isinstance(exc, HubUnavailable | TimeoutError):
        return True
    if isinstance(exc, HubAccessDenied | HubNotFound | HubInvalidRepo | ValueError):
        return False
    for error in (exc, exc.__cause__):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            return status in _TRANSIENT_STATUSES
    return True

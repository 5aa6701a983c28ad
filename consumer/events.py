"""Publishing events: the job's journal first, then every sink, with throttling and retries.

``events.jsonl`` on the volume is the record: an event is appended there before any sink sees
it. Worker-wide sinks (SNS) are retried with backoff; what still cannot be delivered waits in
an outbox and goes out before the next event. Progress is throttled per job; terminal events
are never dropped: if they cannot be delivered, ``publish`` raises, and the caller keeps the
message so that a redelivery publishes the stored result again.

Per-job sinks (the Hub's ``UPDATES/`` in the user's own repo) are attached while a job runs on
this worker and are best-effort by design: the user's repo is not ours to guarantee (a read-only
token, a rate limit), so they get each event once, their errors are logged and swallowed, and
they are neither in the outbox nor in the terminal guarantee.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from contracts.enums import EventType
from contracts.events import CloudEvent, EventData, ProgressData
from contracts.request import JobInput
from infra.volume import JobStore

log = structlog.get_logger("loraq.events")


class EventSink(Protocol):
    name: str

    async def publish(self, event: CloudEvent) -> None: ...


class JobSink(EventSink, Protocol):
    """A sink for one job's events; ``close`` delivers what it still holds and stops it."""

    async def close(self) -> None: ...


# Builds the job's own sinks when it starts running here (None: it has none). Injected by the
# composition root, so the consumer never learns where they write.
JobSinkFactory = Callable[[str, JobInput], JobSink | None]


class EventsUndelivered(Exception):
    """A terminal event could not reach every sink."""


class EventPublisher:
    def __init__(
        self,
        store: JobStore,
        sinks: list[EventSink],
        *,
        source: str,
        progress_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        send_attempts: int = 3,
    ) -> None:
        self._store = store
        self._sinks = sinks
        self._source = source
        self._interval = progress_interval_s
        self._clock = clock
        self._attempts = send_attempts
        self._last_progress: dict[str, float] = {}
        self._outbox: list[tuple[EventSink, CloudEvent]] = []
        self._job_sinks: dict[str, list[JobSink]] = {}

    def attach(self, job_id: str, sink: JobSink) -> None:
        """Send ``job_id``'s events to ``sink`` too, until ``detach`` (best-effort, see above)."""
        self._job_sinks.setdefault(job_id, []).append(sink)

    async def detach(self, job_id: str) -> None:
        """Close and forget the job's sinks: each gets its final flush, awaited here."""
        for sink in self._job_sinks.pop(job_id, []):
            try:
                await sink.close()
            except Exception as exc:  # best-effort: a user's repo never fails the job
                log.warning("job_sink_close_failed", sink=sink.name, job_id=job_id, error=str(exc))

    async def publish(
        self, event_type: EventType, data: EventData, *, model_type: str | None
    ) -> None:
        event = CloudEvent.of(event_type, data, source=self._source, model_type=model_type)
        if self._throttled(event_type, data):
            return
        self._store.append_event(event)
        log.info("event", event_type=event_type.value, job_id=event.subject, data=event.data)
        await self._flush_outbox()
        failed = [sink for sink in self._sinks if not await self._send(sink, event)]
        # Before the terminal guarantee can raise: the job's own sinks show the outcome even
        # while SNS is down (they are detached before the held-back event is published again).
        await self._send_to_job_sinks(event)
        if failed and event_type.is_terminal:
            raise EventsUndelivered(f"{event_type} not delivered to {[s.name for s in failed]}")
        self._outbox.extend((sink, event) for sink in failed)
        if event_type.is_terminal:
            self._last_progress.pop(event.subject, None)

    def _throttled(self, event_type: EventType, data: EventData) -> bool:
        if event_type is not EventType.JOB_PROGRESS or not isinstance(data, ProgressData):
            return False
        now = self._clock()
        last = self._last_progress.get(data.job_id)
        final = data.total_steps is not None and data.step >= data.total_steps
        if last is not None and now - last < self._interval and not final:
            return True
        self._last_progress[data.job_id] = now
        return False

    async def _send(self, sink: EventSink, event: CloudEvent) -> bool:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=2),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await sink.publish(event)
        except Exception as exc:  # any sink failure: the event waits in the outbox
            log.warning(
                "event_undelivered",
                sink=sink.name,
                event_type=event.type.value,
                job_id=event.subject,
                error=str(exc),
            )
            return False
        return True

    async def _send_to_job_sinks(self, event: CloudEvent) -> None:
        for sink in self._job_sinks.get(event.subject, []):
            try:
                await sink.publish(event)
            except Exception as exc:  # best-effort by design: logged, never retried here
                log.warning(
                    "job_sink_undelivered",
                    sink=sink.name,
                    event_type=event.type.value,
                    job_id=event.subject,
                    error=str(exc),
                )

    async def _flush_outbox(self) -> None:
        pending, self._outbox = self._outbox, []
        for sink, event in pending:
            try:
                await sink.publish(event)
            except Exception:
                self._outbox.append((sink, event))

    @property
    def undelivered(self) -> int:
        return len(self._outbox)

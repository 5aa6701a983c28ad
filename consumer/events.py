"""Publishing events: the job's journal first, then every sink, with throttling and retries.

``events.jsonl`` on the volume is the record: an event is appended there before any sink sees
it. Sinks (SNS, later the Hub's ``UPDATES/``) are retried with backoff; what still cannot be
delivered waits in an outbox and goes out before the next event. Progress is throttled per job;
terminal events are never dropped: if they cannot be delivered, ``publish`` raises, and the
caller keeps the message so that a redelivery publishes the stored result again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from contracts.enums import EventType
from contracts.events import CloudEvent, EventData, ProgressData
from infra.volume import JobStore

log = structlog.get_logger("loraq.events")


class EventSink(Protocol):
    name: str

    async def publish(self, event: CloudEvent) -> None: ...


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

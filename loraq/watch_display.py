"""How ``loraq watch`` shows a job: a live progress bar in a terminal, one line per event elsewhere.

In a terminal (rich): the current stage, a bar with its percent, step/total, loss and an ETA that
counts down between events stay on the bottom line; stage changes, checkpoints and notes scroll
above it. In a pipe or a log file: one plain line per event, nothing rewritten, so the output
reads the same afterwards as it did live. Followed through the Hub (``status``), a whole status
comes at a time instead of an event: it moves the bar, and a stage change scrolls a line.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from contracts.enums import EventType
from contracts.events import CloudEvent
from contracts.status import JobStatusView
from loraq import status_text


class WatchDisplay(Protocol):
    def event(self, event: CloudEvent, view: JobStatusView) -> None: ...

    def status(self, view: JobStatusView) -> None:
        """A whole status read at once (``UPDATES/status.json``), not one event."""

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


def make_display(job_id: str, out: TextIO | None = None) -> WatchDisplay:
    stream = out or sys.stdout
    console = Console(file=stream, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveDisplay(console, job_id)
    return PlainDisplay(stream)


class PlainDisplay:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def event(self, event: CloudEvent, view: JobStatusView) -> None:
        self.note(status_text.event_line(event, view))

    def status(self, view: JobStatusView) -> None:
        self.note(status_text.snapshot_line(view))

    def note(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def close(self) -> None:
        """Nothing is held open: every line was written as it came."""


class _EtaColumn(ProgressColumn):
    """The worker's ETA, counted down since the event that carried it."""

    def render(self, task: Task) -> Text:
        eta_s, since = task.fields.get("eta_s"), task.fields.get("eta_since")
        if eta_s is None or since is None:
            return Text("eta -")
        return Text(f"eta {status_text.duration(eta_s - (time.monotonic() - since))}")


class LiveDisplay:
    def __init__(self, console: Console, job_id: str) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("{task.fields[stage]:<9}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("step {task.fields[steps]}"),
            TextColumn("loss {task.fields[loss]}"),
            _EtaColumn(),
            console=console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(
            job_id, total=100, stage="waiting", steps="-", loss="-", eta_s=None, eta_since=None
        )
        self._progress.start()
        self._open = True
        self._scrolled: tuple[object, ...] | None = None

    def event(self, event: CloudEvent, view: JobStatusView) -> None:
        if event.type is not EventType.JOB_PROGRESS:
            self.note(status_text.event_line(event, view))
        self._show(view, eta_since=time.monotonic())

    def status(self, view: JobStatusView) -> None:
        # Snapshots come a commit interval apart: a line scrolls up when the stage or the note
        # changed (what an event would have said), progress alone only moves the bar.
        scrolled = (view.status, view.stage, view.note)
        if scrolled != self._scrolled:
            self._scrolled = scrolled
            self.note(status_text.snapshot_line(view))
        # The ETA was the worker's when it folded its last event: count down from then.
        age_s = 0.0
        if view.updated_at is not None:
            age_s = max(0.0, (datetime.now(UTC) - view.updated_at).total_seconds())
        self._show(view, eta_since=time.monotonic() - age_s)

    def _show(self, view: JobStatusView, *, eta_since: float) -> None:
        self._progress.update(
            self._task,
            completed=view.percent or 0.0,
            stage=view.stage.value if view.stage else "waiting",
            steps=status_text.steps(view),
            loss=status_text.loss(view.loss),
            eta_s=view.eta_s,
            eta_since=eta_since,
        )
        self._progress.refresh()

    def note(self, text: str) -> None:
        # soft_wrap: a long URL stays one line that a terminal can select and open.
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._progress.stop()

"""A job's status and events as plain text lines: what ``loraq status`` and ``loraq watch`` print.

Plain strings only (no colour, no cursor control), so the same lines work in a terminal, a log
file and a pipe. URLs are always printed whole on a line of their own: they are made to be
copied.
"""

from __future__ import annotations

from datetime import UTC

from contracts.enums import EventType, JobStatus
from contracts.events import CloudEvent
from contracts.status import JobStatusView


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def steps(view: JobStatusView) -> str:
    if view.step is None:
        return "-"
    return f"{view.step}/{view.total_steps}" if view.total_steps else str(view.step)


def loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def progress_line(view: JobStatusView) -> str:
    """One line for the current state: stage, percent, step/total, loss, ETA."""
    return (
        f"{view.stage or 'queued'}  {percent(view.percent)}  step {steps(view)}  "
        f"loss {loss(view.loss)}  eta {duration(view.eta_s)}"
    )


def event_line(event: CloudEvent, view: JobStatusView) -> str:
    """One line per event, for a non-terminal output (``view`` is the status after it)."""
    stamp = f"{event.time:%H:%M:%S}"
    data = event.data
    if event.type is EventType.JOB_PROGRESS:
        return f"{stamp}  {progress_line(view)}"
    if event.type in (EventType.STAGE_STARTED, EventType.STAGE_COMPLETED):
        return f"{stamp}  {data['stage']} {event.type.value.rsplit('.', 1)[1]}"
    if event.type is EventType.JOB_CHECKPOINTED:
        return f"{stamp}  checkpoint {data['tag']} (step {data['step']})"
    if event.type is EventType.JOB_INTERRUPTED:
        retry = data.get("retry_in_s")
        later = f" (retried in {duration(retry)})" if retry is not None else ""
        return f"{stamp}  interrupted: {data['reason']}{later}"
    if event.type is EventType.JOB_ACCEPTED:
        resumed = " (resumed)" if data.get("resumed") else ""
        return f"{stamp}  accepted by {event.source}{resumed}"
    return f"{stamp}  {event.type.value.removeprefix('loraq.')}"


def snapshot_line(view: JobStatusView) -> str:
    """One line for a status read whole (the Hub's ``UPDATES/status.json``), stamped with the
    time of the last event folded into it, not the time it was read."""
    stamp = f"{view.updated_at:%H:%M:%S}" if view.updated_at is not None else "--:--:--"
    note = f"  ({view.note})" if view.note else ""
    return f"{stamp}  {progress_line(view)}{note}"


def outcome_lines(view: JobStatusView) -> list[str]:
    """How a finished job ended: the links to download, or what failed and where."""
    if view.status is JobStatus.SUCCEEDED:
        lines = [f"job {view.job_id} succeeded"]
        for label, value in (
            ("download", view.download_url),
            ("safetensors", view.safetensors_url),
            ("repo", view.repo_url),
        ):
            if value:
                lines.append(f"  {label + ':':<13}{value}")
        if view.expires_in_days is not None:
            lines.append(f"  {'expires in:':<13}{view.expires_in_days:g} days")
        return lines
    if view.status is JobStatus.FAILED and view.error is not None:
        error = view.error
        return [
            f"job {view.job_id} failed",
            f"  {'code:':<10}{error.code.value}",
            f"  {'field:':<10}{error.field or '-'}",
            f"  {'message:':<10}{error.message}",
        ]
    return []


def status_lines(view: JobStatusView) -> list[str]:
    """The whole status, one field a line (``loraq status``)."""
    rows = [
        ("job", view.job_id),
        ("status", view.status.value),
        ("model", view.model_type or "-"),
        ("stage", view.stage.value if view.stage else "-"),
        ("progress", f"{percent(view.percent)}  step {steps(view)}  epoch {view.epoch or '-'}"),
        ("loss", loss(view.loss)),
        ("eta", duration(view.eta_s)),
    ]
    if view.updated_at is not None:
        last = view.last_event.value if view.last_event else "-"
        updated = view.updated_at.astimezone(UTC)
        rows.append(("updated", f"{updated:%Y-%m-%d %H:%M:%S} UTC ({last})"))
    if view.note:
        rows.append(("note", view.note))
    lines = [f"{name + ':':<10}{value}" for name, value in rows]
    if view.status is not JobStatus.RUNNING:
        lines += outcome_lines(view)[1:]
    return lines

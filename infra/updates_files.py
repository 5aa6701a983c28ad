"""The files of ``UPDATES/`` in the user's Hub repo, rendered from the job's events.

Pure functions of the job's history: the same events always give the same bytes, so a flush
that has nothing new makes no commit (the Hub sees no change), and a worker that resumes a job
renders exactly what the previous one would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from contracts.enums import EventType, JobStatus
from contracts.events import CloudEvent
from contracts.status import JobStatusView
from infra.loss_chart import render_loss_chart
from infra.redact import MASK

UPDATES_DIR = "UPDATES"
STATUS_FILE = f"{UPDATES_DIR}/status.json"
HISTORY_FILE = f"{UPDATES_DIR}/history.jsonl"
README_FILE = f"{UPDATES_DIR}/README.md"
LOSS_CHART_FILE = f"{UPDATES_DIR}/loss.png"


def loss_points(history: Sequence[CloudEvent]) -> list[tuple[int, float]]:
    """(step, loss) of every progress event that reported a loss."""
    points = []
    for event in history:
        if event.type is EventType.JOB_PROGRESS and event.data.get("loss") is not None:
            points.append((int(event.data["step"]), float(event.data["loss"])))
    return points


def text_files(
    view: JobStatusView, history: Sequence[CloudEvent], secrets: Sequence[str]
) -> dict[str, bytes]:
    """status.json, history.jsonl and README.md, with every known secret of the job masked.

    Events are redacted where they are made; this is the second line, for the request's own
    secret values only. Pattern-based masking is deliberately not applied: it would also mask a
    presigned download link's signature, and the link is the result the user asked for.
    """
    history_text = "".join(event.model_dump_json() + "\n" for event in history)
    texts = {
        STATUS_FILE: view.model_dump_json(indent=2) + "\n",
        HISTORY_FILE: history_text,
        README_FILE: readme(view),
    }
    return {path: _mask(text, secrets).encode() for path, text in texts.items()}


def loss_chart(history: Sequence[CloudEvent]) -> bytes:
    return render_loss_chart(loss_points(history), title="Training loss")


def readme(view: JobStatusView) -> str:
    """What a person opening ``UPDATES/`` wants to know first."""
    rows = [
        ("Status", view.status.value),
        ("Stage", view.stage.value if view.stage else "waiting"),
        ("Progress", _progress(view)),
        ("Loss", f"{view.loss:.4f}" if view.loss is not None else "–"),
        ("ETA", _duration(view.eta_s) if view.status is JobStatus.RUNNING else "–"),
        ("Model type", view.model_type or "–"),
        ("Updated", view.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if view.updated_at else "–"),
    ]
    lines = [f"# Training status: `{view.job_id}`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    if view.download_url:
        lines += [f"**Download:** [{view.download_url}]({view.download_url})", ""]
        if view.safetensors_url and view.safetensors_url != view.download_url:
            lines += [f"LoRA file: [{view.safetensors_url}]({view.safetensors_url})", ""]
        if view.expires_in_days is not None:
            lines += [f"The links expire after {view.expires_in_days:g} days.", ""]
    if view.error is not None:
        where = f" in stage `{view.stage.value}`" if view.stage else ""
        field = f", field `{view.error.field}`" if view.error.field else ""
        headline = f"**Failed:** `{view.error.code.value}`{where}{field}"
        lines += [headline, "", _fenced(view.error.message), ""]
    if view.note and view.status is JobStatus.RUNNING:
        lines += [f"**Note:** {view.note}", ""]
    lines += [
        "![Training loss](loss.png)",
        "",
        "`status.json` is this status as JSON; `history.jsonl` holds every event of the job, one",
        "CloudEvent per line. loraq updates these files in batches while the job runs, and once",
        "more when it ends.",
        "",
    ]
    return "\n".join(lines)


def _progress(view: JobStatusView) -> str:
    if view.percent is None and view.step is None:
        return "–"
    parts = [f"{view.percent:.1f} %" if view.percent is not None else ""]
    if view.step is not None:
        total = f" of {view.total_steps}" if view.total_steps is not None else ""
        epoch = f", epoch {view.epoch}" if view.epoch is not None else ""
        parts.append(f"(step {view.step}{total}{epoch})")
    return " ".join(p for p in parts if p)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _fenced(text: str) -> str:
    # A message that holds a fence must not close ours (trainer output can hold anything).
    return "```\n" + text.replace("```", "'''") + "\n```"


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text

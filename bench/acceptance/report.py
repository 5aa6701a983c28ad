"""The run's bookkeeping: step rates from timestamps, results per model, the table, the JSON.

Pure functions over what the run collected (journal lines, trainer output with arrival times),
so the CPU tests feed them canned inputs. A rate is taken over a run's steps after its first
(the first carries compilation and warm-up), as steps per second of wall time between step
lines: through loraq from the job's own progress events, bare from the trainer's stdout as it
arrives. Both measure the same training loop on the same config; the ratio says what loraq's
supervision (the guard process, pipe reading, events) costs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

PROGRESS = "loraq.job.progress"
INTERRUPTED = "loraq.job.interrupted"
ACCEPTED = "loraq.job.accepted"


@dataclass(frozen=True)
class Sample:
    """One training step's line, and when it was seen (seconds, any common origin)."""

    at: float
    step: int


def steps_per_second(samples: Sequence[Sample]) -> float | None:
    """Steps per second after the first step; None with fewer than three steps to go on."""
    usable = list(samples)[1:]
    if len(usable) < 2:
        return None
    elapsed = usable[-1].at - usable[0].at
    steps = usable[-1].step - usable[0].step
    if elapsed <= 0 or steps <= 0:
        return None
    return steps / elapsed


def ratio(loraq: float | None, bare: float | None) -> float | None:
    if loraq is None or not bare:
        return None
    return loraq / bare


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def event_time(event: dict[str, Any]) -> float:
    return _time(event["time"])


def parse_journal(lines: Iterable[str]) -> list[dict[str, Any]]:
    """A job's ``events.jsonl``; a torn last line (a killed writer) is skipped."""
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def first_run_samples(events: Sequence[dict[str, Any]]) -> list[Sample]:
    """Progress of the job's first trainer run: up to a hand-back or a redelivery."""
    samples: list[Sample] = []
    accepted = 0
    for event in events:
        kind = event.get("type")
        if kind == ACCEPTED:
            accepted += 1
            if accepted > 1:
                break
        elif kind == INTERRUPTED:
            break
        elif kind == PROGRESS:
            step = int(event["data"]["step"])
            if samples and step <= samples[-1].step:
                break
            samples.append(Sample(_time(event["time"]), step))
    return samples


def steps_after(events: Sequence[dict[str, Any]], index: int) -> list[int]:
    """Progress steps from the ``index``-th event on (what a resumed run trained)."""
    return [int(e["data"]["step"]) for e in events[index:] if e.get("type") == PROGRESS]


def terminal(events: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    for event in reversed(events):
        if event.get("type") in ("loraq.job.succeeded", "loraq.job.failed"):
            return event
    return None


@dataclass
class ModelResult:
    model_type: str
    built: bool = False
    build_error: str | None = None
    exit: str = "not run"  # succeeded / failed <code> / timed out / not run
    error: str | None = None
    steps: int | None = None
    lora_file: str | None = None
    lora_tensors: int | None = None
    resumed_step: int | None = None
    loraq_steps_per_s: float | None = None
    bare_steps_per_s: float | None = None
    bare_exit: int | None = None
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return ratio(self.loraq_steps_per_s, self.bare_steps_per_s)


@dataclass
class FaultResult:
    model_type: str
    kind: str  # "sigkill mid-save" / "sigterm hand-back"
    ok: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def describe_exit(event: dict[str, Any] | None) -> tuple[str, str | None]:
    """(the table's exit cell, the failure message) from a job's terminal event."""
    if event is None:
        return "timed out", None
    if event["type"] == "loraq.job.succeeded":
        return "succeeded", None
    data = event.get("data", {})
    return f"failed {data.get('code', '?')}", data.get("message")


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    "model",
    "exit",
    "steps",
    "LoRA file",
    "tensors",
    "resumed at",
    "loraq steps/s",
    "bare steps/s",
    "loraq/bare",
)


def rows(results: Sequence[ModelResult]) -> list[list[str]]:
    return [
        [
            r.model_type,
            r.exit if r.built or r.model_type == "tiny" else "not built",
            _cell(r.steps),
            _cell(r.lora_file),
            _cell(r.lora_tensors),
            _cell(r.resumed_step),
            _cell(r.loraq_steps_per_s),
            _cell(r.bare_steps_per_s),
            _cell(r.ratio),
        ]
        for r in results
    ]


def render_table(results: Sequence[ModelResult], faults: Sequence[FaultResult] = ()) -> str:
    body = rows(results)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(COLUMNS)]
    line = "  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    for r in results:
        problem = r.build_error or r.error
        if problem:
            out.append(f"  {r.model_type}: {problem.strip().splitlines()[-1][:300]}")
    for fault in faults:
        verdict = "ok" if fault.ok else "FAILED"
        facts = ", ".join(f"{k}={v}" for k, v in fault.detail.items())
        out.append(f"{fault.kind} on {fault.model_type}: {verdict}  {facts}")
        if fault.error:
            out.append(f"  {fault.error}")
    return "\n".join(out)


def to_json(
    results: Sequence[ModelResult], faults: Sequence[FaultResult], meta: dict[str, Any]
) -> dict[str, Any]:
    models = []
    for r in results:
        entry = asdict(r)
        entry["loraq_over_bare"] = r.ratio
        models.append(entry)
    return {"meta": meta, "models": models, "faults": [asdict(f) for f in faults]}


def passed(results: Sequence[ModelResult], faults: Sequence[FaultResult]) -> bool:
    return all(r.exit == "succeeded" for r in results) and all(f.ok for f in faults)

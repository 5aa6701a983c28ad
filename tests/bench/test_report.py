"""The run's bookkeeping from canned inputs: rates, the ratio, exits, the table, the JSON."""

from __future__ import annotations

import json

from bench.acceptance import report
from bench.acceptance.report import FaultResult, ModelResult, Sample


def _event(kind: str, at: str, **data: object) -> dict:
    return {"type": f"loraq.{kind}", "time": f"2026-12-03T12:00:{at}Z", "data": data}


def test_the_rate_leaves_out_the_first_step() -> None:
    """GIVEN a slow first step (compilation) then one step a second WHEN the rate is taken
    THEN it is one step per second, not diluted by the first."""
    samples = [Sample(0.0, 1), Sample(30.0, 2), Sample(31.0, 3), Sample(32.0, 4), Sample(33.0, 5)]
    assert report.steps_per_second(samples) == 1.0


def test_too_few_steps_give_no_rate() -> None:
    assert report.steps_per_second([Sample(0, 1), Sample(1, 2)]) is None
    assert report.steps_per_second([]) is None


def test_the_ratio_needs_both_rates() -> None:
    assert report.ratio(2.0, 4.0) == 0.5
    assert report.ratio(None, 4.0) is None
    assert report.ratio(2.0, 0.0) is None


def test_only_the_first_trainer_run_counts_toward_the_rate() -> None:
    """GIVEN a journal where the job was handed back at step 3 and resumed WHEN the samples are
    taken THEN they stop at the hand-back."""
    events = [
        _event("job.accepted", "00"),
        _event("job.progress", "01", step=1),
        _event("job.progress", "02", step=2),
        _event("job.progress", "03", step=3),
        _event("job.interrupted", "04", step=3),
        _event("job.accepted", "10"),
        _event("job.progress", "20", step=4),
    ]
    samples = report.first_run_samples(events)
    assert [s.step for s in samples] == [1, 2, 3]
    assert samples[1].at - samples[0].at == 1.0
    assert report.steps_after(events, 5) == [4]


def test_a_torn_last_journal_line_is_skipped() -> None:
    lines = [json.dumps(_event("job.progress", "01", step=1)), '{"type": "loraq.job.pro']
    assert len(report.parse_journal(lines)) == 1


def test_exits_are_described_from_the_terminal_event() -> None:
    failed = _event("job.failed", "09", code="training_failed", message="the trainer exited 1")
    assert report.describe_exit(None) == ("timed out", None)
    assert report.describe_exit(_event("job.succeeded", "09")) == ("succeeded", None)
    assert report.describe_exit(failed) == ("failed training_failed", "the trainer exited 1")
    assert report.terminal([_event("job.progress", "01", step=1), failed]) is failed


def _results() -> list[ModelResult]:
    good = ModelResult(
        "flux",
        built=True,
        exit="succeeded",
        steps=8,
        lora_file="pytorch_lora_weights.safetensors",
        lora_tensors=36,
        resumed_step=8,
        loraq_steps_per_s=9.0,
        bare_steps_per_s=10.0,
    )
    broken = ModelResult("qwen", built=False, build_error="Traceback...\nKeyError: 'vae'")
    return [good, broken, ModelResult("tiny", exit="succeeded", steps=8)]


def test_the_table_has_a_row_per_model_and_names_each_failure() -> None:
    faults = [FaultResult("flux", "sigkill mid-save", ok=True, detail={"resumed_at": 8})]
    table = report.render_table(_results(), faults)
    lines = table.splitlines()

    assert lines[0].split()[:3] == ["model", "exit", "steps"]
    flux = next(line for line in lines if line.startswith("flux "))
    assert "pytorch_lora_weights.safetensors" in flux and "0.90" in flux and " 36 " in flux
    assert next(line for line in lines if line.startswith("qwen ")).split()[1] == "not"
    assert "qwen: KeyError: 'vae'" in table
    assert "sigkill mid-save on flux: ok  resumed_at=8" in table


def test_the_json_carries_the_ratio_and_the_verdict() -> None:
    results = _results()
    body = report.to_json(results, [], {"gpu": "H200"})

    assert body["models"][0]["loraq_over_bare"] == 0.9
    assert body["meta"] == {"gpu": "H200"}
    assert not report.passed(results, [])
    assert report.passed([results[0]], [FaultResult("flux", "sigterm hand-back", ok=True)])

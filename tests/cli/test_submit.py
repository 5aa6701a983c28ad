"""``loraq submit`` against the local stack's real SQS queue."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from contracts.request import JOB_ID_PATTERN
from infra.local_stack import LocalStack
from loraq.cli import main
from tests.conftest import queue_depth

SECRET = "hf_submitSecretTokenThatMustNotBePrinted0123"


def _request(**input_fields: Any) -> dict[str, Any]:
    return {
        "input": {
            "model_type": "tiny",
            "dataset": {"type": "precaptioned", "images_url": "http://127.0.0.1:9/shapes.zip"},
            "training": {"epochs": 2, "lora_rank": 8},
            "api_keys": {"huggingface_token": SECRET},
            "output": {"method": "local"},
            **input_fields,
        }
    }


def _write(tmp_path: Path, body: dict[str, Any] | str) -> str:
    path = tmp_path / "job.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


def _received(stack: LocalStack) -> list[dict[str, Any]]:
    reply = stack.client("sqs").receive_message(
        QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [json.loads(m["Body"]) for m in reply.get("Messages", [])]


def test_a_valid_request_is_sent_with_a_new_job_id_printed_alone(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a valid request without a job_id WHEN submitted
    THEN stdout is exactly the new id (fit for JOB=$(loraq submit …)), and the queue holds the
    body as given plus that id; no secret is printed."""
    request = _request()

    assert main(["submit", _write(tmp_path, request)]) == 0

    out, err = capsys.readouterr()
    job_id = out.strip()
    assert out == f"{job_id}\n" and re.match(JOB_ID_PATTERN, job_id)
    assert SECRET not in out + err
    [body] = _received(stack)
    assert body["input"].pop("job_id") == job_id
    assert body == request


def test_a_given_job_id_is_kept_and_the_queue_url_can_be_passed(
    stack: LocalStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LORAQ_QUEUE_URL")
    path = _write(tmp_path, _request(job_id="my-job.1"))

    assert main(["submit", path]) == 2  # no queue named anywhere: nothing sent
    assert main(["submit", path, "--queue-url", stack.queue_url]) == 0

    assert capsys.readouterr().out == "my-job.1\n"
    assert [b["input"]["job_id"] for b in _received(stack)] == ["my-job.1"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            _request(training={"epochs": 0}),
            "input.training.epochs",
            "input.training.epochs: Input should be greater than or equal to 1",
        ),
        (_request(outptu={}), "input.outptu", "input.outptu: Extra inputs are not permitted"),
        ("{not json", "-", "the body is not JSON"),
    ],
)
def test_an_invalid_request_names_the_field_and_sends_nothing(
    stack: LocalStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    body: dict[str, Any] | str,
    field: str,
    message: str,
) -> None:
    """GIVEN a request the worker would reject at parse time WHEN submitted
    THEN exit 2 with the same field and message the job.failed event would carry, the queue
    stays empty and the request's secret is not printed."""
    assert main(["submit", _write(tmp_path, body)]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert f"  field:   {field}\n" in err
    assert f"  message: {message}" in err
    assert SECRET not in err
    assert queue_depth(stack, stack.queue_url) == 0


def test_a_missing_file_is_reported(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert queue_depth(stack, stack.queue_url) == 0

"""The filter policies documented in docs/events.md select what they say, on SNS → SQS (moto).

The policies and the ``aws sns`` commands are read from the page itself, so the documentation
cannot drift from what is tested; events go out through the worker's real SNS sink.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from contracts.enums import ErrorCode, EventType, ModelType, OutputMethod
from contracts.events import AcceptedData, CloudEvent, EventData, FailedData, ProgressData
from contracts.events import SucceededData as Succeeded
from contracts.result import OutputInfo
from infra.aws import AwsClients
from infra.local_stack import LocalStack, subscribe_queue
from infra.sns import SnsEventSink
from tests.conftest import drain_events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"
JOB = "ohwx-flux-2025-06-01"  # the job the page's one-job example names
TERMINAL = ["loraq.job.succeeded", "loraq.job.failed"]


def _documented() -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON policies of the page's filter-policy section, and its commands' JSON texts."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### Filter policies") : text.index("Waiting for one job's outcome")]
    policies = [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", section, re.S)]
    commands = re.findall(r"--attribute(?:s|-value) '(\{.*?\})'", section)
    return policies, commands


def _key(policy: dict[str, Any]) -> str:
    return json.dumps(policy, sort_keys=True)


# What each documented policy must let through, of the events published below.
EXPECTED = {
    _key({"job_id": [JOB]}): {
        (JOB, "loraq.job.accepted"),
        (JOB, "loraq.job.progress"),
        (JOB, "loraq.job.succeeded"),
    },
    _key({"event_type": TERMINAL}): {
        (JOB, "loraq.job.succeeded"),
        ("shapes-sdxl", "loraq.job.failed"),
        ("ohwx-flux-2", "loraq.job.failed"),
        ("rejected-msg", "loraq.job.failed"),
    },
    _key({"model_type": ["flux"]}): {
        (JOB, "loraq.job.accepted"),
        (JOB, "loraq.job.progress"),
        (JOB, "loraq.job.succeeded"),
        ("ohwx-flux-2", "loraq.job.failed"),
    },
    _key({"model_type": ["flux"], "event_type": TERMINAL}): {
        (JOB, "loraq.job.succeeded"),
        ("ohwx-flux-2", "loraq.job.failed"),
    },
}


def _events() -> list[CloudEvent]:
    def event(kind: EventType, data: EventData, model: str | None) -> CloudEvent:
        return CloudEvent.of(kind, data, source="test", model_type=model)

    def failed(job_id: str) -> FailedData:
        return FailedData(
            job_id=job_id, code=ErrorCode.TRAINING_FAILED, message="x", retryable=False
        )

    output = OutputInfo(download_url="https://x/y", download_method=OutputMethod.S3)
    succeeded = Succeeded(
        job_id=JOB,
        model_type=ModelType.FLUX,
        model_name="Flux",
        epochs_completed=1,
        latest_epoch="epoch1",
        output=output,
    )
    return [
        event(EventType.JOB_ACCEPTED, AcceptedData(job_id=JOB), "flux"),
        event(EventType.JOB_PROGRESS, ProgressData(job_id=JOB, step=1), "flux"),
        event(EventType.JOB_ACCEPTED, AcceptedData(job_id="shapes-sdxl"), "sdxl"),
        event(EventType.JOB_FAILED, failed("shapes-sdxl"), "sdxl"),
        event(EventType.JOB_FAILED, failed("ohwx-flux-2"), "flux"),
        # A parse-time rejection: no model type, so no model_type attribute.
        event(EventType.JOB_FAILED, failed("rejected-msg"), None),
        event(EventType.JOB_SUCCEEDED, succeeded, "flux"),
    ]


def test_the_page_documents_the_tested_policies_and_valid_commands() -> None:
    """GIVEN docs/events.md WHEN its filter-policy section is read THEN it shows exactly the
    policies tested here, and each command's FilterPolicy is one of them, as valid JSON."""
    policies, commands = _documented()
    assert sorted(map(_key, policies)) == sorted(EXPECTED)
    assert len(commands) >= 3
    for text in commands:
        attributes = json.loads(text)
        if "FilterPolicy" in attributes:  # aws sns subscribe --attributes
            assert attributes["RawMessageDelivery"] == "true"
            attributes = json.loads(attributes["FilterPolicy"])
        assert _key(attributes) in EXPECTED


async def test_documented_policies_select_what_they_say(stack: LocalStack) -> None:
    """GIVEN one queue per documented policy WHEN the worker's SNS sink publishes events of
    several jobs and model types THEN each queue holds exactly the events its policy names."""
    policies, _ = _documented()
    queues = {
        _key(policy): subscribe_queue(stack, f"filtered-{i}", policy)
        for i, policy in enumerate(policies)
    }
    async with AwsClients() as aws:
        sink = SnsEventSink(aws.sns, stack.topic_arn)
        for event in _events():
            await sink.publish(event)
    for key, url in queues.items():
        received = [(e.subject, e.type.value) for e in drain_events(stack, url)]
        assert len(received) == len(set(received)), key
        assert set(received) == EXPECTED[key], key
    # The unfiltered watcher got everything: the filters, not the publishing, left events out.
    assert len(drain_events(stack)) == len(_events())

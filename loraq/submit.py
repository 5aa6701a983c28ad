"""``loraq submit job.json``: check a request here, then send it to the jobs queue.

The check is the worker's own parse (``consumer.messages.parse_request``), so a request that
passes here is not rejected at parse time there, and a bad one reports the same field and
message without a round trip through the queue. The body sent is the file's JSON with
``input.job_id`` filled in when it was missing, so the caller knows the id before any worker
does: stdout carries that id and nothing else (``JOB=$(loraq submit job.json)``).

The body travels with its secrets (``api_keys``): that is the request format. Nothing here
prints the body or any part of it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from consumer.messages import Rejection, parse_request
from infra.aws import AwsClients
from infra.queue import SqsJobQueue

EXIT_SENT, EXIT_NOT_SENT, EXIT_INVALID = 0, 1, 2


def _fail(message: str) -> None:
    print(f"loraq submit: {message}", file=sys.stderr)


def _check(path: Path) -> dict[str, Any] | None:
    """The request as JSON when it would pass the worker's parse; otherwise why not, on stderr."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {exc}")
        return None
    parsed = parse_request(text, message_id="-")
    if isinstance(parsed, Rejection):
        _fail(f"{path} is not a valid request ({parsed.code.value})")
        print(f"  field:   {parsed.field or '-'}", file=sys.stderr)
        print(f"  message: {parsed.message}", file=sys.stderr)
        return None
    raw: dict[str, Any] = json.loads(text)
    return raw


def with_job_id(raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The body with ``input.job_id`` set (a new UUID when it had none) and that id."""
    job_id = raw["input"].get("job_id") or str(uuid.uuid4())
    return {**raw, "input": {**raw["input"], "job_id": job_id}}, job_id


async def _send(queue_url: str, body: str) -> str:
    async with AwsClients() as aws:
        return await SqsJobQueue(aws.sqs, queue_url).send(body)


def submit_command(path: Path, queue_url: str | None) -> int:
    if not queue_url:
        _fail("no queue: pass --queue-url or set LORAQ_QUEUE_URL")
        return EXIT_INVALID
    raw = _check(path)
    if raw is None:
        return EXIT_INVALID
    body, job_id = with_job_id(raw)
    try:
        message_id = asyncio.run(_send(queue_url, json.dumps(body)))
    except (BotoCoreError, ClientError) as exc:
        _fail(f"job {job_id} was not sent: {exc}")
        return EXIT_NOT_SENT
    print(f"loraq submit: sent job {job_id} (SQS message {message_id})", file=sys.stderr)
    print(job_id, flush=True)
    return EXIT_SENT

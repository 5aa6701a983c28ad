"""Turn a raw SQS body into a request, or into a typed rejection naming the bad field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from contracts.enums import ErrorCode
from contracts.request import JOB_ID_PATTERN, JobRequest
from infra.redact import redact

_JOB_ID = re.compile(JOB_ID_PATTERN)


@dataclass(frozen=True)
class Rejection:
    job_id: str
    code: ErrorCode
    field: str | None
    message: str


def parse_request(body: str, message_id: str) -> JobRequest | Rejection:
    try:
        raw = json.loads(body)
    except json.JSONDecodeError as exc:
        return Rejection(message_id, ErrorCode.INVALID_JSON, None, f"the body is not JSON: {exc}")
    job_id = _claimed_job_id(raw) or message_id
    try:
        return JobRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        count = exc.error_count()
        more = f" (and {count - 1} more problems)" if count > 1 else ""
        # Pydantic echoes the input; it may hold a secret, so the message never includes it.
        message = redact(f"{field or 'the message body'}: {first['msg']}{more}")
        return Rejection(job_id, ErrorCode.INVALID_REQUEST, field, message)


def _claimed_job_id(raw: object) -> str | None:
    """A usable ``input.job_id`` even when the rest is invalid: the sender filters on it."""
    if isinstance(raw, dict) and isinstance(raw.get("input"), dict):
        job_id = raw["input"].get("job_id")
        if isinstance(job_id, str) and _JOB_ID.match(job_id):
            return job_id
    return None

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
# SQS's own ceiling (1 MiB since 2025; moto 5's ``sqs/constants.py`` MAXIMUM_MESSAGE_LENGTH
# agrees): no real message is larger, so a larger body came some other way and is refused.
MAX_BODY_BYTES = 1_048_576
# A valid request nests at most 8 deep (body, input, training, then pass-through values to
# contracts/pass_through.MAX_DEPTH); 32 leaves room and is far below json.loads recursing.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Rejection:
    job_id: str
    code: ErrorCode
    field: str | None
    message: str


def parse_request(body: str, message_id: str) -> JobRequest | Rejection:
    problem = body_problem(body)
    if problem is not None:
        return Rejection(message_id, ErrorCode.INVALID_JSON, None, problem)
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers over Python's 4,300-digit limit;
        # RecursionError is unreachable behind the depth check, kept as the last line.
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


def body_problem(body: str) -> str | None:
    """Why a body is refused before ``json.loads`` sees it: too large, or nested too deeply.

    ``json.loads`` recurses once per level: a body nested 10,000 deep raised RecursionError,
    which crashed the handler and the dead-letter sweep. Depth is counted on the raw text.
    """
    size = len(body.encode("utf-8", errors="surrogatepass"))
    if size > MAX_BODY_BYTES:
        return f"the body is {size} bytes; SQS carries at most {MAX_BODY_BYTES}"
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        return f"the body is nested more than {MAX_JSON_DEPTH} levels deep"
    return None


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings; stops counting past the limit."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _claimed_job_id(raw: object) -> str | None:
    """A usable ``input.job_id`` even when the rest is invalid: the sender filters on it."""
    if isinstance(raw, dict) and isinstance(raw.get("input"), dict):
        job_id = raw["input"].get("job_id")
        if isinstance(job_id, str) and _JOB_ID.match(job_id):
            return job_id
    return None

"""Hostile request bodies as the consumer parses them: each one typed rejection on its field.

These are the parse-time half of issue 10's corpus (the worker-level half, with a victim job and
a real trainer, is ``tests/faults/test_hostile_requests.py``). Each case is a body an attacker or
a careless user sent, and each must end as an ``invalid_request``/``invalid_json`` rejection with
the exact field, never an exception out of ``parse_request``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from consumer.messages import MAX_BODY_BYTES, Rejection, parse_request
from contracts.enums import ErrorCode
from contracts.request import JobRequest

VOLUME_RUN = "/volume/jobs/victim/output/20261203_00-00-00"


def _body(training: dict[str, Any] | None = None, **dataset: Any) -> dict[str, Any]:
    return {
        "input": {
            "job_id": "hostile",
            "model_type": "tiny",
            "dataset": {
                "type": "precaptioned",
                "images_url": "https://example.com/d.zip",
                **dataset,
            },
            "training": training or {},
        }
    }


# (case id, body, field the rejection must name)
CASES: list[tuple[str, dict[str, Any], str]] = [
    # 1. paths on the worker, at any depth and in every shape upstream reads them
    (
        "resume-abs",
        _body({"resume_from_checkpoint": VOLUME_RUN}),
        "training.resume_from_checkpoint",
    ),
    (
        "resume-rel",
        _body({"resume_from_checkpoint": "../../victim"}),
        "training.resume_from_checkpoint",
    ),
    (
        "init-from-existing",
        _body({"adapter": {"init_from_existing": VOLUME_RUN}}),
        "training.adapter.init_from_existing",
    ),
    (
        "eval-datasets",
        _body({"eval_datasets": [{"name": "x", "config": "/etc/passwd"}]}),
        "training.eval_datasets",
    ),
    ("output-dir", _body({"output_dir": "/tmp/x"}), "training.output_dir"),
    ("model-path", _body({"model": {"diffusion_model": "/etc"}}), "training.model.diffusion_model"),
    ("any-path-suffix", _body({"lora_path": "/x"}), "training.lora_path"),
    ("cache-dir", _body({"cache_dir": "/x"}), "training.cache_dir"),
    ("directory", _body({"directory": [{"path": "/x"}]}), "training.directory"),
    # 2. secrets where upstream reads none
    ("hf-token", _body({"monitoring": {"hf_token": "hf_abc"}}), "training.monitoring.hf_token"),
    ("aws-secret", _body({"aws_secret_access_key": "x"}), "training.aws_secret_access_key"),
    # 5. numbers that are not finite or not in range
    (
        "weight-decay-inf",
        _body({"optimizer_weight_decay": float("inf")}),
        "training.optimizer_weight_decay",
    ),
    ("betas-nan", _body({"optimizer_betas": [float("nan"), 0.99]}), "training.optimizer_betas.0"),
    ("lr-inf", _body({"learning_rate": float("inf")}), "training.learning_rate"),
    ("huge-int", _body({"some_count": 2**70}), "training.some_count"),
    # 6. what TOML cannot carry faithfully
    ("bell", _body({"caption_note": "bell\u0007end"}), "training.caption_note"),
    ("nul", _body({"caption_note": "nul\x00"}), "training.caption_note"),
    ("mixed-array", _body({"mixed": [1, "a"]}), "training.mixed"),
    # 8. URLs that cannot be fetched
    ("s3-no-key", _body(images_url="s3://bucket"), "dataset.images_url"),
    ("s3-bad-bucket", _body(images_url="s3://Bad_Bucket/x.zip"), "dataset.images_url"),
    ("ipv6-broken", _body(images_url="http://[::1/x.zip"), "dataset.images_url"),
    ("port-99999", _body(images_url="http://example.com:99999/x.zip"), "dataset.images_url"),
    ("url-control", _body(images_url="http://example.com/a\r\nHost: x"), "dataset.images_url"),
    ("url-huge", _body(images_url="https://example.com/" + "a" * 9000), "dataset.images_url"),
    ("file-scheme", _body(images_url="file:///etc/passwd"), "dataset.images_url"),
    # 9. control and line-separator characters in the trigger word
    (
        "trigger-controls",
        _body(trigger_word="ohwx\u0000\u001b[2J\r\u2028zz"),
        "dataset.trigger_word",
    ),
    ("trigger-bidi", _body(trigger_word="ohwx\u202e"), "dataset.trigger_word"),
    # 11. a 300 KB pass-through string
    ("long-string", _body({"caption_note": "a" * 300_000}), "training.caption_note"),
    # lists and tables bounded
    ("long-list", _body({"numbers": list(range(300))}), "training.numbers"),
    ("deep-table", _body({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}), "training.a.b.c.d.e.f"),
    # dataset.s3 needs both keys; output.s3 takes keys in pairs
    ("dataset-s3-no-secret", _body(s3={"access_key": "a"}), "dataset.s3.secret_key"),
]


def _reject(body: dict[str, Any] | str) -> Rejection:
    text = body if isinstance(body, str) else json.dumps(body)
    result = parse_request(text, "message-1")
    assert isinstance(result, Rejection), f"accepted: {text[:200]}"
    return result


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_hostile_body_is_one_rejection_on_its_field(body: dict[str, Any], field: str) -> None:
    """GIVEN a hostile body WHEN the consumer parses it THEN it is rejected as invalid_request,
    naming ``input.<field>``, with the sender's job id, and the message echoes no input value."""
    rejection = _reject(body)
    assert rejection.code is ErrorCode.INVALID_REQUEST
    assert rejection.field == f"input.{field}"
    assert rejection.job_id == "hostile"
    assert VOLUME_RUN not in rejection.message and "hf_abc" not in rejection.message


def test_json_nested_10000_deep_is_refused_before_json_loads() -> None:
    """GIVEN a body nested 10,000 levels (json.loads raised RecursionError on it) WHEN parsed
    THEN it is an invalid_json rejection under the message id, not an exception."""
    rejection = _reject('{"input": ' + "[" * 10_000 + "]" * 10_000 + "}")
    assert rejection.code is ErrorCode.INVALID_JSON
    assert "nested more than" in rejection.message and rejection.job_id == "message-1"


def test_a_body_over_sqs_limit_is_refused_with_its_size() -> None:
    body = json.dumps(_body({"note": "a" * 10})).replace("a" * 10, "a" * MAX_BODY_BYTES)
    rejection = _reject(body)
    assert rejection.code is ErrorCode.INVALID_JSON and "SQS carries at most" in rejection.message


def test_an_integer_over_pythons_digit_limit_is_invalid_json() -> None:
    rejection = _reject('{"input": {"job_id": "x", "n": ' + "9" * 5000 + "}}")
    assert rejection.code is ErrorCode.INVALID_JSON


def test_raw_1e999_is_refused_as_not_finite() -> None:
    """GIVEN ``1e999`` in the raw JSON (json.loads reads it as inf) WHEN parsed THEN refused on
    optimizer_weight_decay: it trained a LoRA whose 34,560 values were all non-finite."""
    text = json.dumps(_body({"optimizer_weight_decay": 0.5})).replace("0.5", "1e999")
    rejection = _reject(text)
    assert rejection.field == "input.training.optimizer_weight_decay"


def test_url_userinfo_never_reaches_the_stored_request() -> None:
    """GIVEN an images_url with user:PASS WHEN the request is stored THEN the password is
    neither in what is written to the volume nor outside the secrets to scrub."""
    body = _body(images_url="http://user:S3cretPASS@example.com/ds.zip")
    request = JobRequest.model_validate(body)
    assert "S3cretPASS" not in json.dumps(request.input.redacted())
    assert "S3cretPASS" in request.input.secret_values()


def test_wandb_key_travels_apart_from_the_pass_through_keys() -> None:
    """GIVEN monitoring.wandb_api_key WHEN parsed THEN it is a trainer secret, not a TOML value,
    and the stored request does not carry it."""
    body = _body({"monitoring": {"enable_wandb": True, "wandb_api_key": "wandb-SECRET-1"}})
    training = JobRequest.model_validate(body).input.training
    secrets = {name: value.get_secret_value() for name, value in training.trainer_secrets.items()}
    assert secrets == {"WANDB_API_KEY": "wandb-SECRET-1"}
    assert "wandb-SECRET-1" not in json.dumps(training.extra_keys)
    assert "wandb-SECRET-1" not in json.dumps(JobRequest.model_validate(body).input.redacted())


def test_dataset_s3_keys_are_secrets() -> None:
    body = _body(images_url="s3://tenant-data/d.zip", s3={"access_key": "AK1", "secret_key": "SK1"})
    job = JobRequest.model_validate(body).input
    assert {"AK1", "SK1"} <= set(job.secret_values())
    assert "SK1" not in json.dumps(job.redacted())

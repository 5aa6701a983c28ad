"""The request contract: the seed's bodies parse, bad ones name the field, secrets stay secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.enums import DatasetType, ModelType, OutputMethod
from contracts.request import JobRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "requests"
SEED_BODIES = sorted(FIXTURES.glob("seed_*.json"))
SECRETS = (
    "YOUR_GEMINI_API_KEY",
    "hf_YOUR_WRITE_TOKEN",
    "YOUR_ACCESS_KEY",
    "YOUR_SECRET_KEY",
    "hf_FLUXREADTOKENFLUXREADTOKEN1234",
    "AIzaSyExampleExampleExampleExample1234",
    "https://presigned-s3-url.com/upload",
)


def _minimal(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model_type": "tiny",
        "dataset": {"type": "precaptioned", "images_url": "https://example.com/d.zip"},
    }
    body.update(overrides)
    return {"input": body}


def _field_of(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.errors()[0]["loc"])


@pytest.mark.parametrize("path", SEED_BODIES, ids=lambda p: p.stem)
def test_seed_example_bodies_parse(path: Path) -> None:
    """GIVEN a request body from the seed's documentation WHEN parsed THEN it validates."""
    request = JobRequest.model_validate_json(path.read_text())
    assert request.input.model_type in ModelType


def test_documented_defaults_apply() -> None:
    """GIVEN only the required fields WHEN parsed THEN every documented default is filled in."""
    t = JobRequest.model_validate(_minimal()).input.training
    assert (t.epochs, t.learning_rate, t.batch_size, t.gradient_accumulation_steps) == (
        100,
        2e-5,
        1,
        4,
    )
    assert (t.gradient_clipping, t.warmup_steps, t.lora_rank, t.lora_dtype) == (
        1.0,
        100,
        32,
        "bfloat16",
    )
    assert (t.save_every_n_epochs, t.checkpoint_every_n_minutes, t.save_dtype) == (
        10,
        120,
        "bfloat16",
    )
    assert (t.optimizer_type, t.optimizer_betas, t.optimizer_weight_decay, t.optimizer_eps) == (
        "adamw_optimi",
        (0.9, 0.99),
        0.01,
        1e-8,
    )
    # None: the model's default, filled in by the registry (tests/models/test_configs_golden.py).
    assert (t.video_clip_mode, t.frame_buckets, t.resolution) == (None, [1, 33], None)
    assert (t.activation_checkpointing, t.caching_batch_size) == (True, 1)
    d = JobRequest.model_validate(_minimal()).input.dataset
    assert (d.image_repeats, d.video_repeats) == (1, 5)
    assert JobRequest.model_validate(_minimal()).input.output.method is OutputMethod.AUTO


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_minimal(model_type="sd15"), "input.model_type"),
        (
            _minimal(dataset={"type": "pictures", "images_url": "https://x/y.zip"}),
            "input.dataset.type",
        ),
        (_minimal(dataset={"type": "images"}), "input.dataset"),
        (_minimal(dataset={"type": "videos", "images_url": "https://x/y.zip"}), "input.dataset"),
        (
            _minimal(dataset={"type": "images", "images_url": "ftp://x/y.zip"}),
            "input.dataset.images_url",
        ),
        (_minimal(training={"epochs": 0}), "input.training.epochs"),
        (_minimal(training={"learning_rate": "fast"}), "input.training.learning_rate"),
        (_minimal(training={"alpha": 16}), "input.training.alpha"),
        (_minimal(training={"output_dir": "/tmp/x"}), "input.training.output_dir"),
        (_minimal(training={"flux_shift": None}), "input.training.flux_shift"),
        (_minimal(output={"method": "dropbox"}), "input.output.method"),
        (_minimal(output={"method": "s3"}), "input.output"),
        (_minimal(outptu={"method": "auto"}), "input.outptu"),
        (_minimal(job_id="../../etc"), "input.job_id"),
        ({"inputs": {}}, "input"),
        (_minimal(training={"adapter": {"alpha": 16}}), "input.training.adapter.alpha"),
        (_minimal(training={"adapter": {"rank": 4}}), "input.training.adapter.rank"),
        (_minimal(training={"model": "flux"}), "input.training.model"),
        (_minimal(training={"model": {"type": "sdxl"}}), "input.training.model.type"),
        (
            _minimal(training={"model": {"checkpoint_path": "/etc/passwd"}}),
            "input.training.model.checkpoint_path",
        ),
    ],
)
def test_invalid_request_names_the_field(body: dict[str, object], field: str) -> None:
    """GIVEN a request with one bad field WHEN parsed THEN the error names that field."""
    with pytest.raises(ValidationError) as caught:
        JobRequest.model_validate(body)
    assert _field_of(caught.value) == field


def test_alpha_is_refused_with_the_reason() -> None:
    """GIVEN ``training.alpha`` WHEN parsed THEN the message says diffusion-pipe forces alpha."""
    with pytest.raises(ValidationError, match="forces alpha = rank"):
        JobRequest.model_validate(_minimal(training={"alpha": 16}))


def test_unknown_training_keys_pass_through() -> None:
    """GIVEN undeclared keys SDXL reads WHEN parsed THEN they are kept for the TOML."""
    t = JobRequest.model_validate(
        _minimal(model_type="sdxl", training={"min_snr_gamma": 5, "model": {"v_pred": True}})
    ).input.training
    assert t.extra_keys == {"min_snr_gamma": 5, "model": {"v_pred": True}}


@pytest.mark.parametrize("path", SEED_BODIES, ids=lambda p: p.stem)
def test_secrets_never_serialise(path: Path) -> None:
    """GIVEN a request carrying secrets WHEN dumped (JSON, redacted) THEN no secret appears."""
    request = JobRequest.model_validate_json(path.read_text())
    dumps = [request.model_dump_json(), json.dumps(request.input.redacted())]
    for dumped in dumps:
        for secret in SECRETS:
            assert secret not in dumped


def test_secret_values_lists_every_secret() -> None:
    """GIVEN the S3 seed body WHEN asked for its secrets THEN each is listed (for scrubbing)."""
    request = JobRequest.model_validate_json((FIXTURES / "seed_s3_output.json").read_text())
    assert set(request.input.secret_values()) >= {
        "YOUR_ACCESS_KEY",
        "YOUR_SECRET_KEY",
        "hf_FLUXREADTOKENFLUXREADTOKEN1234",
        "AIzaSyExampleExampleExampleExample1234",
    }


def test_trigger_word_is_one_line() -> None:
    """GIVEN a multi-line trigger word WHEN parsed THEN it is refused on that field."""
    body = _minimal(
        dataset={"type": "images", "images_url": "https://x/y.zip", "trigger_word": "a\nb"}
    )
    with pytest.raises(ValidationError) as caught:
        JobRequest.model_validate(body)
    assert _field_of(caught.value) == "input.dataset.trigger_word"
    ok = JobRequest.model_validate(
        _minimal(dataset={"type": DatasetType.IMAGES.value, "images_url": "https://x/y.zip"})
    )
    assert ok.input.dataset.trigger_word is None


def test_nested_refusals_say_which_key_and_why() -> None:
    """GIVEN a refused key inside a pass-through table WHEN parsed THEN the message names it."""
    with pytest.raises(ValidationError, match=r"training\.adapter\.alpha\n  diffusion-pipe forces"):
        JobRequest.model_validate(_minimal(training={"adapter": {"alpha": 16}}))
    with pytest.raises(ValidationError, match=r"training\.model\n  must be an object"):
        JobRequest.model_validate(_minimal(training={"model": "flux"}))


def test_stored_request_drops_presigned_signatures() -> None:
    """GIVEN a presigned dataset URL WHEN the request is stored THEN its query string is gone."""
    body = _minimal(
        dataset={
            "type": "precaptioned",
            "images_url": "https://b.s3.amazonaws.com/d.zip?X-Amz-Signature=abc",
        }
    )
    stored = JobRequest.model_validate(body).input.redacted()
    assert stored["dataset"]["images_url"] == "https://b.s3.amazonaws.com/d.zip"

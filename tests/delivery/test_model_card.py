"""The model card: Hub metadata that parses, per model type, and the same bytes every time."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from contracts.enums import ModelType
from contracts.request import JobRequest
from stages.delivery.model_card import CardInput, render


def _card(model_type: ModelType, trigger: str | None = "zkw") -> CardInput:
    videos = model_type is ModelType.WAN14B_I2V
    request = JobRequest.model_validate(
        {
            "input": {
                "model_type": model_type.value,
                "dataset": {
                    "type": "videos" if videos else "images",
                    "images_url": "https://x.test/i.zip",
                    "videos_url": "https://x.test/v.zip",
                    "trigger_word": trigger,
                },
                "training": {"epochs": 20, "model": {"dtype": "bfloat16"}},
            }
        }
    ).input
    return CardInput(request, "job-1", "lora.safetensors", 20, "epoch20", "loss_chart.png")


def _meta(card: bytes) -> dict[str, Any]:
    meta = yaml.safe_load(card.decode().split("---\n")[1])
    assert isinstance(meta, dict)
    return meta


@pytest.mark.parametrize("model_type", list(ModelType))
def test_every_model_type_gets_metadata_the_hub_indexes(model_type: ModelType) -> None:
    """GIVEN any model type WHEN its card is rendered THEN the front matter is a YAML mapping
    with lora tags and the right pipeline, and rendering twice gives the same bytes."""
    card = render(_card(model_type))
    assert card == render(_card(model_type))
    meta = _meta(card)
    assert "lora" in meta["tags"] and meta["instance_prompt"] == "zkw"
    video = {ModelType.WAN13: "text-to-video", ModelType.WAN14B_T2V: "text-to-video"}
    video[ModelType.WAN14B_I2V] = "image-to-video"
    assert meta["pipeline_tag"] == video.get(model_type, "text-to-image")
    if model_type is ModelType.TINY:
        assert "base_model" not in meta and "license" not in meta
    else:
        assert meta["library_name"] == "diffusers" and "/" in meta["base_model"]
        assert meta["license"]


@pytest.mark.parametrize("trigger", ["yes", "1e3", "null", 'a "quoted": word'])
def test_a_trigger_word_stays_a_string(trigger: str) -> None:
    assert _meta(render(_card(ModelType.FLUX, trigger)))["instance_prompt"] == trigger


def test_no_trigger_word_leaves_instance_prompt_out() -> None:
    card = render(_card(ModelType.SDXL, None))
    assert "instance_prompt" not in _meta(card)
    assert b"without a trigger word" in card

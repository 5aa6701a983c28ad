"""The model card (``README.md``) of a LoRA repository, in the Hub's metadata conventions.

YAML front matter the Hub indexes (``base_model``, ``tags``, ``library_name``, ``pipeline_tag``,
``instance_prompt``, ``license``), then a body with the base model, the trigger word, the
training settings and the loss chart. Nothing in it depends on the clock or the machine: the
same job renders the same bytes, so re-publishing after a crash leaves the card unchanged and
the Hub gets no new commit.

The front matter is written as JSON values (JSON is a subset of YAML): no YAML emitter needed,
and every string is quoted, so a trigger word like ``yes`` or ``1e3`` stays a string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.enums import ModelType
from contracts.request import JobInput
from stages.registry import spec_for


@dataclass(frozen=True)
class _CardFacts:
    """What the Hub should know about LoRAs of one model type."""

    base_model: str | None
    pipeline_tag: str
    tags: tuple[str, ...]
    license: Mapping[str, str]


_DIFFUSION_PIPE = "https://github.com/tdrussell/diffusion-pipe"
_APACHE = {"license": "apache-2.0"}
_FACTS: dict[ModelType, _CardFacts] = {
    ModelType.FLUX: _CardFacts(
        "black-forest-labs/FLUX.1-dev",
        "text-to-image",
        ("flux",),
        {
            "license": "other",
            "license_name": "flux-1-dev-non-commercial-license",
            "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
        },
    ),
    ModelType.SDXL: _CardFacts(
        "stabilityai/stable-diffusion-xl-base-1.0",
        "text-to-image",
        ("stable-diffusion-xl",),
        {"license": "openrail++"},
    ),
    ModelType.WAN13: _CardFacts("Wan-AI/Wan2.1-T2V-1.3B", "text-to-video", ("wan",), _APACHE),
    ModelType.WAN14B_T2V: _CardFacts("Wan-AI/Wan2.1-T2V-14B", "text-to-video", ("wan",), _APACHE),
    ModelType.WAN14B_I2V: _CardFacts(
        "Wan-AI/Wan2.1-I2V-14B-480P", "image-to-video", ("wan",), _APACHE
    ),
    ModelType.QWEN: _CardFacts("Qwen/Qwen-Image", "text-to-image", ("qwen-image",), _APACHE),
    ModelType.Z_IMAGE_TURBO: _CardFacts(
        "Tongyi-MAI/Z-Image-Turbo", "text-to-image", ("z-image",), _APACHE
    ),
    # The built-in CPU model has no Hub base model and no license of its own.
    ModelType.TINY: _CardFacts(None, "text-to-image", ("loraq-tiny",), {}),
}


@dataclass(frozen=True)
class CardInput:
    """Everything the card shows; all of it comes from the job, none from the clock."""

    request: JobInput
    job_id: str
    lora_file: str
    epochs_completed: int
    latest_epoch: str
    loss_chart: str | None
    epoch_folders: Sequence[str] = ()


def front_matter(card: CardInput) -> dict[str, Any]:
    """The metadata block, as a mapping (what the Hub parses out of the YAML)."""
    facts = _FACTS[card.request.model_type]
    meta: dict[str, Any] = {}
    if facts.base_model:
        meta["base_model"] = facts.base_model
        meta["library_name"] = "diffusers"
    meta["pipeline_tag"] = facts.pipeline_tag
    library = ["diffusers"] if facts.base_model else []
    meta["tags"] = ["lora", *library, facts.pipeline_tag, *facts.tags, "diffusion-pipe", "loraq"]
    meta.update(facts.license)
    trigger = card.request.dataset.trigger_word
    if trigger:
        meta["instance_prompt"] = trigger
    return meta


def render(card: CardInput) -> bytes:
    """The whole ``README.md``."""
    meta = front_matter(card)
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in meta.items()), "---", ""]
    lines += _body(card, meta)
    return ("\n".join(lines) + "\n").encode()


def _body(card: CardInput, meta: Mapping[str, Any]) -> list[str]:
    spec = spec_for(card.request.model_type)
    base = meta.get("base_model")
    trigger = meta.get("instance_prompt")
    base_link = f"[{base}](https://huggingface.co/{base})" if base else spec.display_name
    lines = [f"# {spec.display_name} LoRA ({card.job_id})", ""]
    lines.append(
        f"A LoRA for {base_link}, trained with [diffusion-pipe]({_DIFFUSION_PIPE}) by loraq."
    )
    lines += ["", "## Trigger word", ""]
    lines.append(
        f"Use `{trigger}` in the prompt to trigger the trained concept."
        if trigger
        else "None: the LoRA was trained without a trigger word."
    )
    lines += ["", "## Files", ""]
    lines.append(f"- `{card.lora_file}`: the LoRA from {card.latest_epoch} (the newest)")
    for folder in card.epoch_folders:
        lines.append(f"- `{folder}/{card.lora_file}`: the LoRA saved at {folder}")
    lines += ["", "## Training", ""]
    lines.append(
        f"{card.epochs_completed} epochs completed; the newest saved LoRA is {card.latest_epoch}."
    )
    lines += ["", "| setting | value |", "|---|---|"]
    for key, value in sorted(card.request.training.model_dump(mode="json").items()):
        lines.append(f"| `{key}` | `{_cell(value)}` |")
    if card.loss_chart:
        lines += ["", "## Loss", "", f"![Training loss]({card.loss_chart})"]
    return lines


def _cell(value: Any) -> str:
    """A setting as compact JSON, safe inside a Markdown table cell."""
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")).replace("|", "\\|")

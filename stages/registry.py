"""The model registry: one row per model type, the only place that knows what a type needs.

Everything type-specific (display name, the ``[model]`` table, dtypes, dataset constraints,
resolution, the LoRA file it writes, the weights to provision) lives in ``MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.enums import ModelType


@dataclass(frozen=True)
class HubSource:
    """Weights on the Hugging Face Hub, downloaded into ``models/<type>/<subdir>``."""

    repo_id: str
    subdir: str
    allow_patterns: tuple[str, ...] = ()
    gated: bool = False


@dataclass(frozen=True)
class ModelSpec:
    model_type: ModelType
    display_name: str
    # The ``[model]`` table without paths; ``model_paths`` adds them from the models directory.
    model_table: dict[str, Any]
    path_keys: dict[str, str] = field(default_factory=dict)
    images: bool = True
    videos: bool = False
    videos_only: bool = False
    max_resolution: int = 4096
    lora_file: str = "adapter_model.safetensors"
    sources: tuple[HubSource, ...] = ()
    builtin: bool = False

    def model_paths(self, models_dir: Path) -> dict[str, Any]:
        """``[model]`` path keys pointing into this type's provisioned directory."""
        paths: dict[str, Any] = {}
        for key, relative in self.path_keys.items():
            paths[key] = str(models_dir / relative)
        return paths

    def required_paths(self, models_dir: Path) -> list[Path]:
        return [models_dir / relative for relative in self.path_keys.values()]


_WAN_PATTERNS = ("*.json", "*.pth", "*.safetensors", "google/*", "xlm-roberta-large/*")

MODELS: dict[ModelType, ModelSpec] = {
    spec.model_type: spec
    for spec in (
        ModelSpec(
            ModelType.TINY,
            "Tiny DiT (built-in, CPU)",
            {"type": "tiny", "dtype": "float32"},
            images=True,
            max_resolution=32,
            builtin=True,
        ),
        ModelSpec(
            ModelType.FLUX,
            "Flux",
            {"type": "flux", "dtype": "bfloat16", "transformer_dtype": "float8"},
            path_keys={"diffusers_path": "FLUX.1-dev"},
            sources=(HubSource("black-forest-labs/FLUX.1-dev", "FLUX.1-dev", gated=True),),
        ),
        ModelSpec(
            ModelType.SDXL,
            "SDXL",
            {"type": "sdxl", "dtype": "bfloat16"},
            path_keys={"checkpoint_path": "sd_xl_base_1.0.safetensors"},
            lora_file="lora.safetensors",
            sources=(
                HubSource(
                    "stabilityai/stable-diffusion-xl-base-1.0",
                    ".",
                    ("sd_xl_base_1.0.safetensors",),
                ),
            ),
        ),
        ModelSpec(
            ModelType.WAN13,
            "Wan 1.3B",
            {"type": "wan", "dtype": "bfloat16"},
            path_keys={"ckpt_path": "Wan2.1-T2V-1.3B"},
            videos=True,
            sources=(HubSource("Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1-T2V-1.3B", _WAN_PATTERNS),),
        ),
        ModelSpec(
            ModelType.WAN14B_T2V,
            "Wan 14B T2V",
            {"type": "wan", "dtype": "bfloat16", "transformer_dtype": "float8"},
            path_keys={"ckpt_path": "Wan2.1-T2V-14B"},
            videos=True,
            sources=(HubSource("Wan-AI/Wan2.1-T2V-14B", "Wan2.1-T2V-14B", _WAN_PATTERNS),),
        ),
        ModelSpec(
            ModelType.WAN14B_I2V,
            "Wan 14B I2V",
            {"type": "wan", "dtype": "bfloat16", "transformer_dtype": "float8"},
            path_keys={"ckpt_path": "Wan2.1-I2V-14B-480P"},
            images=False,
            videos=True,
            videos_only=True,
            sources=(
                HubSource("Wan-AI/Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-480P", _WAN_PATTERNS),
            ),
        ),
        ModelSpec(
            ModelType.QWEN,
            "Qwen Image",
            {"type": "qwen_image", "dtype": "bfloat16", "transformer_dtype": "float8"},
            path_keys={"diffusers_path": "Qwen-Image"},
            sources=(HubSource("Qwen/Qwen-Image", "Qwen-Image"),),
        ),
        ModelSpec(
            ModelType.Z_IMAGE_TURBO,
            "Z Image Turbo",
            {"type": "z_image", "dtype": "bfloat16"},
            path_keys={
                "diffusion_model": "split_files/diffusion_models/z_image_turbo_bf16.safetensors",
                "vae": "split_files/vae/ae.safetensors",
            },
            sources=(HubSource("Comfy-Org/z_image_turbo", "."),),
        ),
    )
}


def spec_for(model_type: ModelType) -> ModelSpec:
    return MODELS[model_type]

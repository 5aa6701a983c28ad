"""The model registry: one row per model type, the only place that knows what a type needs.

Everything type-specific lives in ``MODELS``: the display name (the response's ``model_name``),
diffusion-pipe's ``[model]`` table, the media the model trains on, the weights to provision from
the Hub and the files its loader reads, and the name of the LoRA file it writes.

The facts come from diffusion-pipe's source (``models/*.py``, ``docs/supported_models.md``):
- Flux loads a diffusers folder (``diffusers_path``) and saves its LoRA with diffusers'
  ``save_lora_weights``: ``pytorch_lora_weights.safetensors``, no ``adapter_config.json``.
- SDXL loads one checkpoint file (``checkpoint_path``) and saves a Kohya LoRA,
  ``lora.safetensors``.
- Wan loads the official checkpoint folder (``ckpt_path``) and detects the variant from its
  ``config.json`` (``model_type`` t2v/i2v, ``dim`` 1536/5120); i2v needs the CLIP weights and
  trains on videos only.
- Qwen-Image loads ``transformer/``, ``text_encoder/`` and ``vae/`` safetensors from a diffusers
  folder (tokenizer and configs ship with diffusion-pipe).
- Z-Image loads ComfyUI files: ``diffusion_model``, ``vae``, ``text_encoders`` (Qwen3 4B, type
  ``lumina2``) and, for Turbo, merges Ostris' de-distill training adapter (``merge_adapters``).
- Every other model saves ``adapter_model.safetensors`` (ComfyUI keys) + ``adapter_config.json``.

JoyCaption, the caption stage's image captioner, is provisioned the same way
(``joycaption_spec``): an ``AuxiliaryModel``, never a request's ``model_type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from contracts.enums import ModelType


class AuxiliaryModel(StrEnum):
    """Weights a stage runs besides the base model: provisioned like it, never trained."""

    JOYCAPTION = "joycaption"


@dataclass(frozen=True)
class Weights:
    """A path inside ``models/<type>/``; becomes an absolute path when the TOML is written."""

    relative: str


@dataclass(frozen=True)
class HubSource:
    """One Hub repository, downloaded into ``models/<type>/<subdir>/``.

    ``allow_patterns`` selects the files to download (huggingface_hub's fnmatch semantics), so the
    big files a loader never reads (Flux's single-file checkpoint, Wan's demo assets) stay on the
    Hub. ``required`` lists the files diffusion-pipe's loader opens: a pre-provisioned volume is
    accepted when they are all present and sound. ``expect_json`` pins values in a JSON file
    (Wan's ``config.json`` names the variant) so a folder holding another variant is refused.
    """

    repo_id: str
    subdir: str
    allow_patterns: tuple[str, ...]
    required: tuple[str, ...]
    gated: bool = False
    revision: str = "main"
    expect_json: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class CachedRepo:
    """Files a loader asks huggingface_hub for by repo id while it loads, instead of a path.

    They are provisioned into the Hugging Face cache on the volume (``models/hf-cache``), which
    the trainer reads with ``HF_HUB_OFFLINE=1``: so a provisioned volume trains without the Hub.
    ``allow_patterns`` must be the loader's own, since huggingface_hub's offline look-up refuses a
    snapshot missing any listed file they match; ``required`` are the files the loader opens.
    """

    repo_id: str
    allow_patterns: tuple[str, ...]
    required: tuple[str, ...]
    revision: str = "main"


@dataclass(frozen=True)
class ModelSpec:
    model_type: ModelType | AuxiliaryModel
    display_name: str
    # diffusion-pipe's ``[model]`` table; ``Weights`` leaves are resolved by ``model_table_for``.
    model_table: Mapping[str, Any]
    images: bool = True
    videos: bool = False
    videos_only: bool = False
    max_resolution: int = 4096
    lora_file: str = "adapter_model.safetensors"
    sources: tuple[HubSource, ...] = ()
    # Fetched by the loader through huggingface_hub (not in ``models/<type>/``): see CachedRepo.
    hub_cache: tuple[CachedRepo, ...] = ()
    builtin: bool = False
    # Latents and text embeddings are cached by a separate ``--cache_only`` run, recorded in
    # the ledger, so a crash after caching never pays for it again. ``tiny`` caches nothing.
    caches_latents: bool = True
    # diffusion-pipe resamples every video to the model's framerate before picking its frame
    # bucket (models/wan/wan.py ``WanPipeline.framerate``); None: the model takes no video.
    framerate: int | None = None
    # What a request that names neither gets: upstream's recommendations for the model.
    default_resolution: int = 1024
    default_video_clip_mode: str = "single_middle"
    # ``blocks_to_swap`` offloads transformer blocks to the CPU (upstream's ``enable_block_swap``
    # in models/flux.py, wan/wan.py, qwen_image.py, z_image.py at 8f83dbf; SDXL has none).
    block_swap: bool = False

    @property
    def gated(self) -> bool:
        return any(source.gated for source in self.sources)

    def model_table_for(self, models_dir: Path) -> dict[str, Any]:
        """The ``[model]`` table with every weight path made absolute under ``models_dir``."""
        resolved = _resolve(dict(self.model_table), models_dir)
        assert isinstance(resolved, dict)
        return resolved


def _resolve(value: Any, models_dir: Path) -> Any:
    if isinstance(value, Weights):
        return str(models_dir / value.relative)
    if isinstance(value, dict):
        return {key: _resolve(item, models_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, models_dir) for item in value]
    return value


# -- Wan 2.1: the official checkpoint folders (models/wan/configs.py names the files) ----------
_WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
_WAN_VAE = "Wan2.1_VAE.pth"
_WAN_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
_UMT5_TOKENIZER = tuple(
    f"google/umt5-xxl/{name}"
    for name in (
        "special_tokens_map.json",
        "spiece.model",
        "tokenizer.json",
        "tokenizer_config.json",
    )
)
_XLM_TOKENIZER = tuple(
    f"xlm-roberta-large/{name}"
    for name in (
        "sentencepiece.bpe.model",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    )
)
_WAN_PATTERNS = ("config.json", "diffusion_pytorch_model*", _WAN_T5, _WAN_VAE, "google/umt5-xxl/*")
_WAN_I2V_PATTERNS = (*_WAN_PATTERNS, _WAN_CLIP, "xlm-roberta-large/*")
# Wan 2.1 (t2v 1.3B/14B, i2v 14B) trains at 16 fps; only SkyReels and Wan 2.2 5B use 24.
_WAN_FRAMERATE = 16
# Upstream's example dataset trains at 512 (examples/dataset.toml line 8 at 8f83dbf); the i2v model
# is 480P: 1024 would quadruple the memory and time for no gain.
_WAN_RESOLUTION = 512
_WAN_SHARDED = ("config.json", "diffusion_pytorch_model.safetensors.index.json")


def _wan_table(folder: str, *, fp8: bool) -> dict[str, Any]:
    table: dict[str, Any] = {"type": "wan", "ckpt_path": Weights(folder), "dtype": "bfloat16"}
    if fp8:
        table["transformer_dtype"] = "float8"
    table["timestep_sample_method"] = "logit_normal"
    return table


# -- Z-Image Turbo: ComfyUI files + Ostris' training adapter ----------------------------------
_Z_DIR = "z_image_turbo"
_Z_MODEL = "split_files/diffusion_models/z_image_turbo_bf16.safetensors"
_Z_TEXT_ENCODER = "split_files/text_encoders/qwen_3_4b.safetensors"
_Z_VAE = "split_files/vae/ae.safetensors"
_Z_ADAPTER_DIR = "zimage_turbo_training_adapter"
# The version diffusion-pipe's documentation names (v2 exists; v1 is what it was tested with).
_Z_ADAPTER = "zimage_turbo_training_adapter_v1.safetensors"

_DIFFUSERS_FLUX = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors.index.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)

MODELS: dict[ModelType, ModelSpec] = {
    ModelType(spec.model_type): spec
    for spec in (
        ModelSpec(
            ModelType.TINY,
            "Tiny DiT (built-in, CPU)",
            {"type": "tiny", "dtype": "float32"},
            images=True,
            max_resolution=32,
            builtin=True,
            caches_latents=False,
        ),
        ModelSpec(
            ModelType.FLUX,
            "Flux",
            {
                "type": "flux",
                "diffusers_path": Weights("FLUX.1-dev"),
                "dtype": "bfloat16",
                "transformer_dtype": "float8",
                "flux_shift": True,
            },
            lora_file="pytorch_lora_weights.safetensors",
            block_swap=True,
            sources=(
                HubSource(
                    "black-forest-labs/FLUX.1-dev",
                    "FLUX.1-dev",
                    # The diffusers folders only: not the 23 GB single-file flux1-dev.safetensors.
                    (
                        "model_index.json",
                        "scheduler/*",
                        "text_encoder/*",
                        "text_encoder_2/*",
                        "tokenizer/*",
                        "tokenizer_2/*",
                        "transformer/*",
                        "vae/*",
                    ),
                    _DIFFUSERS_FLUX,
                    gated=True,
                ),
            ),
        ),
        ModelSpec(
            ModelType.SDXL,
            "SDXL",
            {
                "type": "sdxl",
                "checkpoint_path": Weights(
                    "stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
                ),
                "dtype": "bfloat16",
            },
            lora_file="lora.safetensors",
            sources=(
                HubSource(
                    "stabilityai/stable-diffusion-xl-base-1.0",
                    "stable-diffusion-xl-base-1.0",
                    ("sd_xl_base_1.0.safetensors",),
                    ("sd_xl_base_1.0.safetensors",),
                ),
            ),
            # models/sdxl.py:385 calls StableDiffusionXLPipeline.from_single_file(checkpoint)
            # with no config: diffusers infers this repo from the checkpoint's keys and takes
            # the pipeline's configs, tokenizers and scheduler from its snapshot, with these
            # patterns (diffusers 0.42.1 loaders/single_file.py:251, single_file_utils.py:172).
            hub_cache=(
                CachedRepo(
                    "stabilityai/stable-diffusion-xl-base-1.0",
                    ("**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"),
                    (
                        "model_index.json",
                        "scheduler/scheduler_config.json",
                        "text_encoder/config.json",
                        "text_encoder_2/config.json",
                        *(
                            f"{folder}/{name}"
                            for folder in ("tokenizer", "tokenizer_2")
                            for name in (
                                "merges.txt",
                                "special_tokens_map.json",
                                "tokenizer_config.json",
                                "vocab.json",
                            )
                        ),
                        "unet/config.json",
                        "vae/config.json",
                    ),
                ),
            ),
        ),
        ModelSpec(
            ModelType.WAN13,
            "Wan 1.3B",
            _wan_table("Wan2.1-T2V-1.3B", fp8=False),
            videos=True,
            framerate=_WAN_FRAMERATE,
            default_resolution=_WAN_RESOLUTION,
            block_swap=True,
            sources=(
                HubSource(
                    "Wan-AI/Wan2.1-T2V-1.3B",
                    "Wan2.1-T2V-1.3B",
                    _WAN_PATTERNS,
                    (
                        "config.json",
                        "diffusion_pytorch_model.safetensors",
                        _WAN_T5,
                        _WAN_VAE,
                        *_UMT5_TOKENIZER,
                    ),
                    expect_json={"config.json": {"model_type": "t2v", "dim": 1536}},
                ),
            ),
        ),
        ModelSpec(
            ModelType.WAN14B_T2V,
            "Wan 14B T2V",
            _wan_table("Wan2.1-T2V-14B", fp8=True),
            videos=True,
            framerate=_WAN_FRAMERATE,
            default_resolution=_WAN_RESOLUTION,
            block_swap=True,
            sources=(
                HubSource(
                    "Wan-AI/Wan2.1-T2V-14B",
                    "Wan2.1-T2V-14B",
                    _WAN_PATTERNS,
                    (*_WAN_SHARDED, _WAN_T5, _WAN_VAE, *_UMT5_TOKENIZER),
                    expect_json={"config.json": {"model_type": "t2v", "dim": 5120}},
                ),
            ),
        ),
        ModelSpec(
            ModelType.WAN14B_I2V,
            "Wan 14B I2V",
            _wan_table("Wan2.1-I2V-14B-480P", fp8=True),
            images=False,
            videos=True,
            videos_only=True,
            framerate=_WAN_FRAMERATE,
            default_resolution=_WAN_RESOLUTION,
            block_swap=True,
            # The first frame of each clip is the conditioning image (docs/supported_models.md
            # line 196 at 8f83dbf; models/base.py line 59 defaults to it too).
            default_video_clip_mode="single_beginning",
            sources=(
                HubSource(
                    "Wan-AI/Wan2.1-I2V-14B-480P",
                    "Wan2.1-I2V-14B-480P",
                    _WAN_I2V_PATTERNS,
                    (
                        *_WAN_SHARDED,
                        _WAN_T5,
                        _WAN_VAE,
                        _WAN_CLIP,
                        *_UMT5_TOKENIZER,
                        *_XLM_TOKENIZER,
                    ),
                    expect_json={"config.json": {"model_type": "i2v", "dim": 5120}},
                ),
            ),
        ),
        ModelSpec(
            ModelType.QWEN,
            "Qwen Image",
            {
                "type": "qwen_image",
                "diffusers_path": Weights("Qwen-Image"),
                "dtype": "bfloat16",
                "transformer_dtype": "float8",
                "timestep_sample_method": "logit_normal",
            },
            block_swap=True,
            sources=(
                HubSource(
                    "Qwen/Qwen-Image",
                    "Qwen-Image",
                    ("model_index.json", "text_encoder/*", "transformer/*", "vae/*"),
                    (
                        "text_encoder/model.safetensors.index.json",
                        "transformer/diffusion_pytorch_model.safetensors.index.json",
                        "vae/diffusion_pytorch_model.safetensors",
                    ),
                ),
            ),
        ),
        ModelSpec(
            ModelType.Z_IMAGE_TURBO,
            "Z Image Turbo",
            {
                "type": "z_image",
                "diffusion_model": Weights(f"{_Z_DIR}/{_Z_MODEL}"),
                "vae": Weights(f"{_Z_DIR}/{_Z_VAE}"),
                "text_encoders": [
                    {"path": Weights(f"{_Z_DIR}/{_Z_TEXT_ENCODER}"), "type": "lumina2"}
                ],
                "merge_adapters": [Weights(f"{_Z_ADAPTER_DIR}/{_Z_ADAPTER}")],
                "dtype": "bfloat16",
            },
            block_swap=True,
            sources=(
                HubSource(
                    "Comfy-Org/z_image_turbo",
                    _Z_DIR,
                    (_Z_MODEL, _Z_TEXT_ENCODER, _Z_VAE),
                    (_Z_MODEL, _Z_TEXT_ENCODER, _Z_VAE),
                ),
                HubSource(
                    "ostris/zimage_turbo_training_adapter",
                    _Z_ADAPTER_DIR,
                    (_Z_ADAPTER,),
                    (_Z_ADAPTER,),
                ),
            ),
        ),
    )
}


def spec_for(model_type: ModelType) -> ModelSpec:
    return MODELS[model_type]


# -- JoyCaption: the image captioner (stages/captioners/joycaption.py) ------------------------
JOYCAPTION_REPO = "fancyfeast/llama-joycaption-beta-one-hf-llava"


def joycaption_spec(repo_id: str = JOYCAPTION_REPO, revision: str = "main") -> ModelSpec:
    """The captioner's weights: one transformers snapshot (LLaVA: SigLIP + Llama 3.1, sharded).

    The repository is a worker setting, so the spec is built from it; the folder is
    ``models/joycaption/<repo name>/``, as the base models keep theirs.
    """
    return ModelSpec(
        AuxiliaryModel.JOYCAPTION,
        "JoyCaption (image captioner)",
        {},
        sources=(
            HubSource(
                repo_id,
                repo_id.rsplit("/", 1)[-1],
                ("*.json", "*.jinja", "*.safetensors"),
                # The processor's own config is preprocessor_config.json in older saves and
                # processor_config.json in newer ones: loading finds either, so neither is named.
                ("config.json", "model.safetensors.index.json", "tokenizer.json"),
                revision=revision,
            ),
        ),
    )

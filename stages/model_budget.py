"""What a job asks of one GPU, and roughly how long a step takes, per model type.

Why before launch: a job that cannot fit dies only after the download, the caching pass and the
model load (minutes to an hour of a paid GPU), and then dies the same way on every retry. The
arithmetic here runs in preflight, so a worker and ``loraq config`` refuse it alike, naming the
knobs that help.

What diffusion-pipe states at the pinned commit (8f83dbf) is a few anchor points, not a table:

- ``examples/wan_14b_min_vram.toml`` lines 1, 25, 31, 37: Wan 14B t2v trains on 512x512x81
  videos "with 24GB VRAM" with ``blocks_to_swap = 32``, an fp8 transformer and 'unsloth'
  activation checkpointing.
- ``docs/supported_models.md`` lines 387-391 and ``examples/qwen_image_24gb_vram.toml`` lines 30,
  37: a Qwen-Image LoRA on one 24GB GPU "will need block swapping" (8 blocks, fp8) at 640.
- ``README.md`` lines 129-143, ``examples/main_example.toml`` lines 37-41: block swapping lowers
  VRAM "but has a performance penalty"; ``examples/dataset.toml`` line 37: longer frame buckets
  want more than 24GB.
- ``models/base.py`` lines 438-439: ``enable_block_swap`` raises NotImplementedError unless the
  model has its own (``flux.py`` 406-419, ``wan/wan.py`` 386-392, ``qwen_image.py`` 491-497,
  ``z_image.py`` 95-101), which asserts at most blocks - 2 (Flux splits the count between
  double and single blocks: at most 34); ``train.py`` 576-583 enables it.
- ``docs/supported_models.md`` lines 65-66, 168-169, 363, 456-457: fp8 weights for Flux, Wan,
  Qwen-Image (``transformer_dtype``) and Z-Image (``diffusion_model_dtype``); none for SDXL
  (the summary table, line 5).

The rest is loraq's rough rule, set so that both 24GB statements hold (the tests check them, the
Qwen one both ways: it fits with 8 blocks swapped and not without):

    need = resident weights + LoRA training state + activations of the largest bucket + 3 GiB

resident weights: parameters x bytes (fp8: 1, bf16: 2) x the share of blocks not swapped;
LoRA state: rank x blocks x hidden x 24 parameters at 12 bytes (weights, gradients, optimizer);
activations, with checkpointing: tokens x hidden x 2 bytes x (blocks + 16) per sample, a token
being 16x16 pixels of a latent frame (Wan: 1 + (frames - 1) / 4 latent frames, its VAE stride);
without checkpointing 16 hidden-sized tensors per block. The 3 GiB is the CUDA context, the
allocator's slack and the weights fp8 keeps in bf16 (docs/supported_models.md line 377).

Time is rougher still: 4 passes (forward, recompute, backward) of 2 x parameters x tokens plus
attention's 4 x tokens^2 x hidden x blocks, per sample, at 35% of an H100 SXM's 989 TFLOP/s
dense BF16 (NVIDIA's datasheet), plus the swapped blocks crossing PCIe twice a micro-batch at
25 GB/s. Nothing here was measured on a GPU: it says "minutes or days", not "47 minutes".
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.enums import ErrorCode, ModelType
from contracts.request import JobInput
from infra.volume import JobPaths
from stages import configure
from stages.errors import Permanent
from stages.registry import spec_for

GIB = 1 << 30
OVERHEAD_GIB = 3.0
_LORA_PARAMS_PER_RANK_BLOCK_HIDDEN = 24
_LORA_BYTES_PER_PARAM = 12
_RECOMPUTE_TENSORS = 16  # hidden-sized tensors one block holds while it is recomputed
_PIXELS_PER_TOKEN = 16 * 16  # an 8x VAE and a 2x2 patch (Flux packs 2x2 latents: 64 channels)

REFERENCE_GPU = "an H100 SXM at 35% of its 989 TFLOP/s dense BF16"
_EFFECTIVE_FLOPS = 989e12 * 0.35
_PCIE_BYTES_S = 25e9
_PASSES = 4  # forward, recompute, backward (about twice a forward)


@dataclass(frozen=True)
class ModelNeeds:
    """The sizes the rule needs, each with where it comes from."""

    params_b: float
    hidden: int
    blocks: int
    # The most ``blocks_to_swap`` upstream's assertion allows; None: NotImplementedError.
    max_blocks_to_swap: int | None
    # The ``[model]`` key whose float8 stores the big weights in one byte; None: no fp8.
    fp8_key: str | None
    # Wan's VAE packs 4 frames into one latent frame (models/wan/configs.py vae_stride).
    temporal_stride: int = 1
    # Parameters also on the GPU, at the base dtype: SDXL trains its text encoders too.
    other_params_b: float = 0.0
    source: str = ""


_WAN_SOURCE = "models/wan/configs.py lines {lines} (dim, num_layers, vae_stride (4, 8, 8))"

NEEDS: dict[ModelType, ModelNeeds] = {
    ModelType.FLUX: ModelNeeds(
        params_b=11.9,
        hidden=3072,
        blocks=19 + 38,
        max_blocks_to_swap=34,
        fp8_key="transformer_dtype",
        source="configs/flux_dev_config.json: 24 heads x 128, 19 + 38 layers; 12B (model card)",
    ),
    ModelType.SDXL: ModelNeeds(
        params_b=2.6,
        hidden=640,
        blocks=70,
        max_blocks_to_swap=None,
        fp8_key=None,
        other_params_b=0.82,
        source="SDXL paper: 2.6B UNet, 817M text encoders (trained too: docs/supported_models.md "
        "line 50); 640 channels and 70 transformer blocks stand in for the UNet, roughly",
    ),
    ModelType.WAN13: ModelNeeds(
        params_b=1.3,
        hidden=1536,
        blocks=30,
        max_blocks_to_swap=28,
        fp8_key="transformer_dtype",
        temporal_stride=4,
        source=_WAN_SOURCE.format(lines="88-96"),
    ),
    ModelType.WAN14B_T2V: ModelNeeds(
        params_b=14.0,
        hidden=5120,
        blocks=40,
        max_blocks_to_swap=38,
        fp8_key="transformer_dtype",
        temporal_stride=4,
        source=_WAN_SOURCE.format(lines="63-71"),
    ),
    ModelType.WAN14B_I2V: ModelNeeds(
        params_b=14.0,
        hidden=5120,
        blocks=40,
        max_blocks_to_swap=38,
        fp8_key="transformer_dtype",
        temporal_stride=4,
        source=_WAN_SOURCE.format(lines="38-46"),
    ),
    ModelType.QWEN: ModelNeeds(
        params_b=20.4,
        hidden=3072,
        blocks=60,
        max_blocks_to_swap=58,
        fp8_key="transformer_dtype",
        source="configs/qwen_image/transformer/config.json: 24 heads x 128, 60 layers, so "
        "60 x 2 streams x 170M (attention, 4x MLP, 6x modulation) = 20.4B",
    ),
    ModelType.Z_IMAGE_TURBO: ModelNeeds(
        params_b=6.15,
        hidden=3840,
        blocks=30,
        max_blocks_to_swap=28,
        fp8_key="diffusion_model_dtype",
        source="not in diffusion-pipe: Z-Image's model card (6B) and transformer config "
        "(dim 3840, 30 layers)",
    ),
}


@dataclass(frozen=True)
class Bucket:
    """The largest sample the trainer will put on the GPU: its side, frames and batch."""

    side: int
    frames: int
    batch: int


@dataclass(frozen=True)
class Estimate:
    """GiB of one GPU at the request's settings, by what holds it, and seconds per step."""

    weights_gib: float
    lora_gib: float
    activations_gib: float
    overhead_gib: float
    bucket: Bucket
    seconds_per_step: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.lora_gib + self.activations_gib + self.overhead_gib

    def describe(self) -> str:
        b = self.bucket
        return (
            f"weights {self.weights_gib:.1f}, LoRA and optimizer {self.lora_gib:.1f}, "
            f"activations {self.activations_gib:.1f} at {b.side} px x {b.frames} frame(s) x "
            f"batch {b.batch}, overhead {self.overhead_gib:.1f}"
        )


def estimate(
    model_type: ModelType, train: Mapping[str, Any], dataset: Mapping[str, Any], *, videos: bool
) -> Estimate | None:
    """The need of the job whose TOML tables these are; None for a model with no GPU (tiny).

    Read from the tables, not the request, so pass-through keys (``resolutions``,
    ``blocks_to_swap``, ``transformer_dtype``...) count exactly where diffusion-pipe reads them.
    """
    needs = NEEDS.get(model_type)
    if needs is None:
        return None
    model = train.get("model", {})
    base = _bytes_per_param(model.get("dtype"))
    big = _bytes_per_param(model.get(needs.fp8_key, model.get("dtype"))) if needs.fp8_key else base
    swapped = _blocks_to_swap(train)
    kept = 1 - min(swapped, needs.blocks) / needs.blocks
    weights = needs.params_b * 1e9 * big * kept + needs.other_params_b * 1e9 * base
    rank = int(train.get("adapter", {}).get("rank", 32))
    lora = rank * needs.blocks * needs.hidden * _LORA_PARAMS_PER_RANK_BLOCK_HIDDEN
    bucket = largest_bucket(train, dataset, videos=videos)
    tokens = _tokens(needs, bucket)
    per_token = needs.hidden * 2 * (needs.blocks + _RECOMPUTE_TENSORS)
    if not train.get("activation_checkpointing", True):
        per_token = needs.hidden * 2 * needs.blocks * _RECOMPUTE_TENSORS
    swapped_bytes = needs.params_b * 1e9 * big * (1 - kept)
    return Estimate(
        weights_gib=weights / GIB,
        lora_gib=lora * _LORA_BYTES_PER_PARAM / GIB,
        activations_gib=tokens * bucket.batch * per_token / GIB,
        overhead_gib=OVERHEAD_GIB,
        bucket=bucket,
        seconds_per_step=_seconds_per_step(needs, train, bucket, swapped_bytes=swapped_bytes),
    )


def largest_bucket(train: Mapping[str, Any], dataset: Mapping[str, Any], *, videos: bool) -> Bucket:
    """The (side, frames, batch) holding the most pixels: the peak of the run's memory."""
    video_batch = int(train.get("micro_batch_size_per_gpu", 1))
    image_batch = int(train.get("image_micro_batch_size_per_gpu", video_batch))
    shapes: list[tuple[float, int]] = []
    if sizes := dataset.get("size_buckets"):
        shapes = [(math.sqrt(w * h), int(frames)) for w, h, frames in sizes]
    else:
        sides = [_side(r) for r in dataset.get("resolutions", [512])]
        frames = [int(f) for f in dataset.get("frame_buckets", [1])] if videos else [1]
        shapes = [(side, f) for side in sides for f in frames]
    candidates = [
        Bucket(round(side), f, image_batch if f == 1 else video_batch)
        for side, f in shapes
        if videos or f == 1
    ] or [Bucket(512, 1, image_batch)]
    return max(candidates, key=lambda b: b.side**2 * b.frames * b.batch)


def _side(resolution: Any) -> float:
    if isinstance(resolution, list | tuple):
        return math.sqrt(resolution[0] * resolution[1])
    return float(resolution)


def _tokens(needs: ModelNeeds, bucket: Bucket) -> float:
    latent_frames = 1 + (bucket.frames - 1) // needs.temporal_stride
    return bucket.side**2 / _PIXELS_PER_TOKEN * latent_frames


def _bytes_per_param(dtype: Any) -> float:
    name = str(dtype or "bfloat16")
    if name.startswith("float8"):
        return 1.0
    if name == "nf4":
        return 0.5
    return 4.0 if name == "float32" else 2.0


def _blocks_to_swap(train: Mapping[str, Any]) -> int:
    value = train.get("blocks_to_swap", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _seconds_per_step(
    needs: ModelNeeds, train: Mapping[str, Any], bucket: Bucket, *, swapped_bytes: float
) -> float:
    """One optimizer step of one GPU: its micro-batches x gradient accumulation, at the peak."""
    tokens = _tokens(needs, bucket)
    forward = 2 * needs.params_b * 1e9 * tokens + 4 * tokens**2 * needs.hidden * needs.blocks
    passes = _PASSES if train.get("activation_checkpointing", True) else _PASSES - 1
    micro_batches = int(train.get("gradient_accumulation_steps", 1))
    compute = passes * forward * bucket.batch * micro_batches / _EFFECTIVE_FLOPS
    return compute + 2 * swapped_bytes * micro_batches / _PCIE_BYTES_S


def check(request: JobInput, gpu_memory_gib: float | None) -> None:
    """Refuse what upstream refuses of ``blocks_to_swap``, then a job the GPU cannot hold.

    ``gpu_memory_gib`` None or 0: the GPU is unknown (or the operator turned this off), and
    only the block-swap rules apply.
    """
    needs = NEEDS.get(request.model_type)
    if needs is None:
        return
    configs = configure.build_configs(request, JobPaths(Path("/")), Path("/"), media={})
    _check_block_swap(request, needs, _blocks_to_swap(configs.train))
    if not gpu_memory_gib:
        return
    need = estimate(request.model_type, configs.train, configs.dataset, videos=has_videos(request))
    assert need is not None
    if need.total_gib > gpu_memory_gib:
        raise _too_big(request, needs, configs.train, need, gpu_memory_gib)


def has_videos(request: JobInput) -> bool:
    return request.dataset.videos_url is not None and spec_for(request.model_type).videos


def _check_block_swap(request: JobInput, needs: ModelNeeds, swapped: int) -> None:
    """Upstream asserts the limit only after the model has loaded: minutes of a paid GPU.

    (A model with no block swapping at all is refused at parse time, contracts/request.py.)
    """
    limit = needs.max_blocks_to_swap
    if limit is not None and swapped > limit:
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            f"{spec_for(request.model_type).display_name} swaps at most {limit} blocks; "
            f"training.blocks_to_swap is {swapped}",
            field="input.training.blocks_to_swap",
        )


def _too_big(
    request: JobInput,
    needs: ModelNeeds,
    train: Mapping[str, Any],
    need: Estimate,
    gpu_memory_gib: float,
) -> Permanent:
    spec = spec_for(request.model_type)
    t = request.training
    swapped = _blocks_to_swap(train)
    knobs = [f"training.resolution (now {need.bucket.side})"]
    if has_videos(request):
        knobs.append(f"training.frame_buckets (now {t.frame_buckets})")
    knobs += [
        f"training.batch_size (now {t.batch_size})",
        f"training.lora_rank (now {t.lora_rank})",
    ]
    can_swap = needs.max_blocks_to_swap is not None and swapped < needs.max_blocks_to_swap
    if can_swap:
        knobs.append(
            f"raise training.blocks_to_swap (now {swapped}, at most {needs.max_blocks_to_swap})"
        )
    model = train.get("model", {})
    if needs.fp8_key and not str(model.get(needs.fp8_key, "")).startswith("float8"):
        knobs.append(f"set training.{needs.fp8_key} to 'float8'")
    field = "input.training.resolution"
    if need.weights_gib + need.lora_gib + need.overhead_gib > gpu_memory_gib:
        field = "input.training.blocks_to_swap" if can_swap else "input.model_type"
    elif need.bucket.frames > 1:
        field = "input.training.frame_buckets"
    return Permanent(
        ErrorCode.OUT_OF_MEMORY,
        f"{spec.display_name} needs about {need.total_gib:.1f} GiB of GPU memory at these "
        f"settings ({need.describe()}; a rough estimate), more than this worker's "
        f"{gpu_memory_gib:.1f} GiB: lower " + ", ".join(knobs),
        field=field,
    )


def detected_gpu_memory_gib() -> float | None:
    """The smallest visible GPU's memory, from the driver; None without one.

    ``nvidia-smi``, not torch.cuda: the worker never initialises CUDA itself (the trainer owns
    the GPU, see stages/trainer/gpus.py). Every data-parallel rank holds a whole model, so the
    smallest of the GPUs the trainer will see is the one that must fit.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    argv = [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    if visible := os.environ.get("CUDA_VISIBLE_DEVICES"):
        argv += ["-i", visible]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return _smallest_gib(done.stdout.splitlines())


def _smallest_gib(lines: Sequence[str]) -> float | None:
    mib = [float(line) for line in (raw.strip() for raw in lines) if _is_number(line)]
    return min(mib) / 1024 if mib else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def gpu_memory_gib(setting: float | None) -> float | None:
    """The operator's ``LORAQ_GPU_MEMORY_GIB`` (0: no check), else what the driver says."""
    return setting if setting is not None else detected_gpu_memory_gib()

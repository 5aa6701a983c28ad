"""Where each miniature's files go: the layout ``provision`` leaves, file for file.

A plan lists every file of ``<volume>/models/<type>/`` with what fills it: a JSON config, a
tokenizer file, or weights that a builder writes (``bench/acceptance/builders.py``). The layout
step writes the plan with placeholder weights (a valid one-tensor safetensors file, a few bytes
for a torch pickle) and then provision's ``.complete`` marker, exactly as a download would end;
the builders later overwrite the placeholders and the marker is written again with the real
sizes. So the CPU tests check, on the placeholder volume, what the GPU run relies on: the paths
the registry requires, Wan's variant pins, and that a worker's provision check takes the folder
as ready without touching the network.

Files outside the model's folder are planned too: SDXL's configs in the volume's Hugging Face
cache (``models/hf-cache``: diffusers' ``from_single_file`` asks huggingface_hub for them by repo
id, and the trainer runs offline on that cache) and Qwen-Image's three configs inside the
acceptance copy of diffusion-pipe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

from bench.acceptance import configs as c
from bench.acceptance import safetensors_io
from bench.acceptance.tokenizers import (
    CLIP_VOCAB_SIZE,
    TokenizerFile,
    clip_tokenizer_files,
    t5_tokenizer_files,
    xlm_roberta_tokenizer_files,
)
from contracts.enums import ModelType
from stages import provision, weights
from stages.registry import ModelSpec, spec_for

# Recorded as the "commit" in the marker and the Hub cache's snapshot: these files never came
# from the Hub. Forty hex digits, the shape huggingface_hub expects of a commit id.
MINIATURE_COMMIT = hashlib.sha1(b"loraq acceptance miniature").hexdigest()
ONE_SHARD = "{stem}-00001-of-00001.safetensors"


class Kind(StrEnum):
    JSON = "json"  # content: the dict
    TEXT = "text"  # content: the text
    COPY = "copy"  # content: a path inside diffusion-pipe's tree
    WEIGHTS = "weights"  # safetensors, written by the builder named in ``component``
    INDEX = "index"  # a *.safetensors.index.json naming ``content`` (the shard file names)
    TORCH = "torch"  # a torch.save pickle (Wan's .pth files), written by ``component``


@dataclass(frozen=True)
class PlannedFile:
    path: str  # relative to the folder the plan is written into
    kind: Kind
    content: Any = None
    component: str | None = None


@dataclass(frozen=True)
class ModelPlan:
    model_type: ModelType
    files: tuple[PlannedFile, ...]
    # Files of a Hugging Face cache snapshot: (repo id, files relative to the snapshot).
    hub_cache: tuple[tuple[str, tuple[PlannedFile, ...]], ...] = ()
    # diffusion-pipe files replaced in the acceptance copy: path → new JSON from the original.
    dp_overrides: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(
        default_factory=dict
    )

    @property
    def spec(self) -> ModelSpec:
        return spec_for(self.model_type)

    def weights(self) -> list[PlannedFile]:
        return [f for f in self.files if f.kind in (Kind.WEIGHTS, Kind.TORCH)]


def _tokenizer(folder: str, files: list[TokenizerFile]) -> list[PlannedFile]:
    planned = []
    for file in files:
        path = f"{folder}/{file.name}"
        if file.copy_from is not None:
            planned.append(PlannedFile(path, Kind.COPY, file.copy_from))
        else:
            planned.append(PlannedFile(path, Kind.TEXT, file.text))
    return planned


def _sharded(folder: str, stem: str, component: str) -> list[PlannedFile]:
    """A ``save_pretrained``-style sharded checkpoint, in one shard (the registry names the
    index, and the loaders read the shards it lists)."""
    shard = ONE_SHARD.format(stem=stem)
    prefix = f"{folder}/" if folder else ""
    return [
        PlannedFile(f"{prefix}{stem}.safetensors.index.json", Kind.INDEX, (shard,)),
        PlannedFile(f"{prefix}{shard}", Kind.WEIGHTS, component=component),
    ]


def _flux() -> ModelPlan:
    root = "FLUX.1-dev"
    files = [
        PlannedFile(f"{root}/model_index.json", Kind.JSON, c.FLUX_MODEL_INDEX),
        PlannedFile(f"{root}/scheduler/scheduler_config.json", Kind.JSON, c.FLUX_SCHEDULER),
        PlannedFile(
            f"{root}/text_encoder/config.json", Kind.JSON, c.clip_text_config(CLIP_VOCAB_SIZE)
        ),
        PlannedFile(
            f"{root}/text_encoder/model.safetensors", Kind.WEIGHTS, component="flux.text_encoder"
        ),
        PlannedFile(f"{root}/text_encoder_2/config.json", Kind.JSON, c.t5_encoder_config()),
        *_sharded(f"{root}/text_encoder_2", "model", "flux.text_encoder_2"),
        *_tokenizer(f"{root}/tokenizer", clip_tokenizer_files()),
        *_tokenizer(f"{root}/tokenizer_2", t5_tokenizer_files()),
        PlannedFile(f"{root}/transformer/config.json", Kind.JSON, c.FLUX_TRANSFORMER),
        *_sharded(f"{root}/transformer", "diffusion_pytorch_model", "flux.transformer"),
        PlannedFile(f"{root}/vae/config.json", Kind.JSON, c.FLUX_VAE),
        PlannedFile(
            f"{root}/vae/diffusion_pytorch_model.safetensors", Kind.WEIGHTS, component="flux.vae"
        ),
    ]
    return ModelPlan(ModelType.FLUX, tuple(files))


def sdxl_config_files() -> tuple[PlannedFile, ...]:
    """The configs diffusers' ``from_single_file`` reads from the cached base repository."""
    return (
        PlannedFile("model_index.json", Kind.JSON, c.SDXL_MODEL_INDEX),
        PlannedFile("scheduler/scheduler_config.json", Kind.JSON, c.SDXL_SCHEDULER),
        PlannedFile("unet/config.json", Kind.JSON, c.SDXL_UNET),
        PlannedFile("vae/config.json", Kind.JSON, c.SDXL_VAE),
        PlannedFile("text_encoder/config.json", Kind.JSON, c.clip_text_config(CLIP_VOCAB_SIZE)),
        PlannedFile(
            "text_encoder_2/config.json",
            Kind.JSON,
            c.clip_text_config(
                CLIP_VOCAB_SIZE,
                layers=c.SDXL_TE2_LAYERS,
                with_projection=True,
                width=c.SDXL_TE2_DIM,
            ),
        ),
        *_tokenizer("tokenizer", clip_tokenizer_files()),
        *_tokenizer("tokenizer_2", clip_tokenizer_files()),
    )


def _sdxl() -> ModelPlan:
    checkpoint = PlannedFile(
        "stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors",
        Kind.WEIGHTS,
        component="sdxl.checkpoint",
    )
    return ModelPlan(ModelType.SDXL, (checkpoint,), hub_cache=((c.SDXL_REPO, sdxl_config_files()),))


_WAN_VARIANTS: dict[ModelType, tuple[str, str, int]] = {
    ModelType.WAN13: ("Wan2.1-T2V-1.3B", "t2v", 1536),
    ModelType.WAN14B_T2V: ("Wan2.1-T2V-14B", "t2v", 5120),
    ModelType.WAN14B_I2V: ("Wan2.1-I2V-14B-480P", "i2v", 5120),
}
WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_VAE = "Wan2.1_VAE.pth"
WAN_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


def _wan(model_type: ModelType) -> ModelPlan:
    root, variant, dim = _WAN_VARIANTS[model_type]
    files = [PlannedFile(f"{root}/config.json", Kind.JSON, c.wan_config(variant, dim))]
    if model_type is ModelType.WAN13:
        files.append(
            PlannedFile(
                f"{root}/diffusion_pytorch_model.safetensors",
                Kind.WEIGHTS,
                component=f"wan.transformer.{model_type.value}",
            )
        )
    else:
        files += _sharded(root, "diffusion_pytorch_model", f"wan.transformer.{model_type.value}")
    files += [
        PlannedFile(f"{root}/{WAN_T5}", Kind.TORCH, component="wan.t5"),
        PlannedFile(f"{root}/{WAN_VAE}", Kind.TORCH, component="wan.vae"),
        *_tokenizer(f"{root}/google/umt5-xxl", t5_tokenizer_files()),
    ]
    if variant == "i2v":
        files += [
            PlannedFile(f"{root}/{WAN_CLIP}", Kind.TORCH, component="wan.clip"),
            *_tokenizer(f"{root}/xlm-roberta-large", xlm_roberta_tokenizer_files()),
        ]
    return ModelPlan(model_type, tuple(files))


QWEN_DP_CONFIGS = {
    "configs/qwen_image/transformer/config.json": lambda _original: dict(c.QWEN_TRANSFORMER),
    "configs/qwen_image/vae/config.json": c.qwen_vae_config,
    "configs/qwen_image/text_encoder/config.json": c.qwen_text_encoder_config,
}


def _qwen() -> ModelPlan:
    root = "Qwen-Image"
    files = [
        PlannedFile(f"{root}/model_index.json", Kind.JSON, c.QWEN_MODEL_INDEX),
        *_sharded(f"{root}/text_encoder", "model", "qwen.text_encoder"),
        *_sharded(f"{root}/transformer", "diffusion_pytorch_model", "qwen.transformer"),
        PlannedFile(
            f"{root}/vae/diffusion_pytorch_model.safetensors", Kind.WEIGHTS, component="qwen.vae"
        ),
    ]
    return ModelPlan(ModelType.QWEN, tuple(files), dp_overrides=QWEN_DP_CONFIGS)


def _z_image() -> ModelPlan:
    root = "z_image_turbo/split_files"
    files = (
        PlannedFile(
            f"{root}/diffusion_models/z_image_turbo_bf16.safetensors",
            Kind.WEIGHTS,
            component="z_image.diffusion_model",
        ),
        PlannedFile(
            f"{root}/text_encoders/qwen_3_4b.safetensors",
            Kind.WEIGHTS,
            component="z_image.text_encoder",
        ),
        PlannedFile(f"{root}/vae/ae.safetensors", Kind.WEIGHTS, component="z_image.vae"),
        PlannedFile(
            "zimage_turbo_training_adapter/zimage_turbo_training_adapter_v1.safetensors",
            Kind.WEIGHTS,
            component="z_image.adapter",
        ),
    )
    return ModelPlan(ModelType.Z_IMAGE_TURBO, files)


def plan_for(model_type: ModelType) -> ModelPlan:
    if model_type is ModelType.TINY:
        return ModelPlan(model_type, ())
    if model_type in _WAN_VARIANTS:
        return _wan(model_type)
    builders = {
        ModelType.FLUX: _flux,
        ModelType.SDXL: _sdxl,
        ModelType.QWEN: _qwen,
        ModelType.Z_IMAGE_TURBO: _z_image,
    }
    return builders[model_type]()


def all_plans() -> list[ModelPlan]:
    return [plan_for(model_type) for model_type in ModelType]


# -- writing a plan ------------------------------------------------------------------------------
def write_files(files: tuple[PlannedFile, ...], folder: Path, dp_dir: Path | None) -> None:
    """Every planned file with its final content, and placeholders where weights will go.

    ``dp_dir`` is diffusion-pipe's tree for the files copied from it; without one (the CPU
    tests) they get a placeholder naming their source.
    """
    for planned in files:
        path = folder / planned.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # A hard link (Wan's shared T5 and VAE) is replaced, never written through.
        path.unlink(missing_ok=True)
        if planned.kind is Kind.JSON:
            path.write_text(json.dumps(planned.content, indent=2))
        elif planned.kind is Kind.TEXT:
            path.write_text(planned.content)
        elif planned.kind is Kind.COPY:
            source = dp_dir / planned.content if dp_dir is not None else None
            if source is not None and source.is_file():
                path.write_bytes(source.read_bytes())
            else:
                path.write_text(f"placeholder for diffusion-pipe's {planned.content}\n")
        elif planned.kind is Kind.INDEX:
            write_index(path, {"placeholder": planned.content[0]}, total_size=4)
        elif planned.kind is Kind.WEIGHTS:
            safetensors_io.write_zeros(path, {"placeholder": ("F32", [1])})
        else:  # Kind.TORCH: a real pickle needs torch, the builder writes it
            path.write_bytes(b"placeholder torch pickle\n")


def write_index(path: Path, weight_map: Mapping[str, str], total_size: int) -> None:
    body = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    path.write_text(json.dumps(body, indent=2))


def hub_cache_for(models_dir: Path) -> Path:
    """The Hub cache beside the model folders, where provision and the trainer look."""
    return models_dir.parent / getattr(provision, "HUB_CACHE", "hf-cache")


def hub_snapshot_dir(hub_cache: Path, repo_id: str) -> Path:
    """Where huggingface_hub finds ``repo_id`` at ``main`` offline (its cache layout:
    ``models--<org>--<name>/refs/main`` names the commit whose ``snapshots/`` folder it uses)."""
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    return repo_dir / "snapshots" / MINIATURE_COMMIT


def write_hub_cache(plan: ModelPlan, hub_cache: Path) -> None:
    for repo_id, files in plan.hub_cache:
        snapshot = hub_snapshot_dir(hub_cache, repo_id)
        write_files(files, snapshot, None)
        refs = snapshot.parent.parent / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / "main").write_text(MINIATURE_COMMIT)


def write_layout(
    plan: ModelPlan, models_dir: Path, dp_dir: Path | None = None, hub_cache: Path | None = None
) -> None:
    """The plan's folder with placeholders for the weights, its Hub cache files, its marker."""
    write_files(plan.files, models_dir, dp_dir)
    write_hub_cache(plan, hub_cache or hub_cache_for(models_dir))
    write_marker(plan, models_dir)


def write_marker(plan: ModelPlan, models_dir: Path) -> weights.Marker | None:
    """Provision's own ``.complete`` marker over what is on disk now (its sizes)."""
    spec = plan.spec
    if spec.builtin:
        return None
    records = []
    for source in spec.sources:
        folder = models_dir / source.subdir
        files = {
            str(PurePosixPath(path.relative_to(folder))): path.stat().st_size
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        records.append(
            weights.SourceRecord(
                repo_id=source.repo_id,
                revision=source.revision,
                commit=MINIATURE_COMMIT,
                subdir=source.subdir,
                files=files,
            )
        )
    return weights.write_marker(spec, models_dir, records)


def missing_from_plan(plan: ModelPlan, models_dir: Path) -> list[str]:
    """Planned files not on disk: a builder that skipped one is caught before any job runs."""
    return [f.path for f in plan.files if not (models_dir / f.path).is_file()]

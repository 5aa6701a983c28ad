"""Random weights for the miniatures, made by the same classes that will load them.

Each component is built from the config its loader will read (the plan's ``config.json``, the
Hub cache's, diffusion-pipe's own), by diffusers, transformers, diffusion-pipe's Wan modules or
ComfyUI, then saved where the plan puts it: so names and shapes match by construction, not by a
table kept in step by hand. Where a loader hard-codes a full-size frozen encoder (Wan's umT5-XXL
and CLIP, Z-Image's Qwen3-4B) it is written as zeros into a sparse file: the right names, shapes
and size, no disk and no time; those encoders only produce the (here meaningless) conditioning.

Everything heavy is imported inside the functions: this module runs on the GPU machine, in one
process per group of model types (``bench/gpu_acceptance.py build``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.acceptance import configs as c
from bench.acceptance import layout, safetensors_io, sd_keys
from bench.acceptance.layout import Kind, ModelPlan, PlannedFile
from contracts.enums import ModelType

COMFYUI_DIR = "submodules/ComfyUI"
BACKUP_SUFFIX = ".original"
LORA_RANK = 4


@dataclass
class BuildContext:
    dp_dir: Path
    hub_cache: Path
    device: str = "cpu"
    # Big files that several model types share (Wan's T5 and VAE): built once, then hard-linked.
    shared_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------------
@contextmanager
def _on_path(first: Path, *last: Path) -> Iterator[None]:
    """diffusion-pipe's modules import each other from its root, which goes first; ComfyUI goes
    last so that ``utils`` stays diffusion-pipe's (as models/base.py arranges it)."""
    added = [str(p) for p in (first, *last) if str(p) not in sys.path]
    if str(first) in added:
        sys.path.insert(0, str(first))
    sys.path.extend(entry for entry in added if entry != str(first))
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


def _unshared(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share memory (tied embeddings): copy the second one."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        pointer = tensor.data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def save_safetensors(state_dict: Mapping[str, Any], path: Path, dtype: Any = None) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, tensor in _unshared(state_dict).items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.to("cpu").contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    del tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _HoleWriter:
    """A file object for ``torch.save`` that seeks over chunks of zeros instead of writing them.

    torch.save hands each tensor's bytes to ``write`` in one piece, so an all-zero state dict
    becomes a file that is mostly a hole; the zip headers and the pickle are written as usual.
    """

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")

    def write(self, data: Any) -> int:
        import numpy as np

        view = memoryview(data).cast("B")
        if len(view) >= 4096 and not np.frombuffer(view, dtype=np.uint8).any():
            self._file.seek(len(view), os.SEEK_CUR)
        else:
            self._file.write(view)
        return len(view)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.truncate(self._file.tell())
        self._file.close()


def zeros_like_meta(model: Any, dtype: Any) -> dict[str, Any]:
    """A zero tensor for every entry of a meta-device model's state dict, without touching
    memory: numpy's zeros are calloc'd pages that are only ever read."""
    import numpy as np
    import torch

    out = {}
    for name, meta in model.state_dict().items():
        target = dtype if meta.is_floating_point() else meta.dtype
        width = torch.empty((), dtype=target).element_size()
        raw = np.zeros(meta.numel() * width, dtype=np.uint8)
        out[name] = torch.from_numpy(raw).view(target).reshape(meta.shape)
    return out


def save_torch_zeros(state_dict: Mapping[str, Any], path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    set_crc = getattr(torch.serialization, "set_crc32_options", None)
    if set_crc is not None:
        set_crc(False)  # torch.load does not check them; 11 GB of CRCs would cost seconds
    writer = _HoleWriter(path)
    try:
        torch.save(dict(state_dict), writer)
    finally:
        writer.close()
        if set_crc is not None:
            set_crc(True)


def _random_like(meta_state: Mapping[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """Small random values for weights, ones for norm scales, zeros for biases."""
    import torch

    out = {}
    for name, meta in meta_state.items():
        if name.endswith("bias") or meta.ndim == 0:
            value = torch.zeros(meta.shape, dtype=dtype, device=device)
        elif meta.ndim == 1:
            value = torch.ones(meta.shape, dtype=dtype, device=device)
        else:
            value = torch.randn(meta.shape, dtype=dtype, device=device) * 0.02
        out[name] = value.cpu()
    return out


def _read_json(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _link_shared(ctx: BuildContext, name: str, path: Path, make: Callable[[Path], None]) -> None:
    """Build a big file once per run and hard-link it into every folder that needs it."""
    if ctx.shared_dir is None:
        make(path)
        return
    shared = ctx.shared_dir / name
    if not shared.is_file():
        ctx.shared_dir.mkdir(parents=True, exist_ok=True)
        make(shared)
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(shared, path)


def clip_hub_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """CLIP text encoder names as the Hub's files spell them (``text_model.…``): transformers 5
    drops that level from ``CLIPTextModel`` and maps it back on load; older versions and
    diffusers' single-file conversion need it spelt out."""
    return {
        k if k.startswith("text_model.") or k == "text_projection.weight" else f"text_model.{k}": v
        for k, v in state_dict.items()
    }


# -- Flux ------------------------------------------------------------------------------------
def _clip_text(folder: Path, path: Path, ctx: BuildContext) -> None:
    import transformers

    model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder))
    save_safetensors(clip_hub_keys(model.state_dict()), path)


def _t5_text(folder: Path, path: Path, ctx: BuildContext) -> None:
    import transformers

    model = transformers.T5EncoderModel(transformers.T5Config.from_pretrained(folder))
    save_safetensors(model.state_dict(), path)


def _diffusers_model(class_name: str) -> Callable[[Path, Path, BuildContext], None]:
    def build(folder: Path, path: Path, ctx: BuildContext) -> None:
        import diffusers

        cls = getattr(diffusers, class_name)
        model = cls.from_config(cls.load_config(folder))
        save_safetensors(model.state_dict(), path)

    return build


# -- SDXL --------------------------------------------------------------------------------------
def _sdxl_checkpoint(folder: Path, path: Path, ctx: BuildContext) -> None:
    import diffusers
    import torch
    import transformers

    configs = layout.hub_snapshot_dir(ctx.hub_cache, c.SDXL_REPO)
    unet_cls, vae_cls = diffusers.UNet2DConditionModel, diffusers.AutoencoderKL
    unet = unet_cls.from_config(unet_cls.load_config(configs / "unet"))
    vae = vae_cls.from_config(vae_cls.load_config(configs / "vae"))
    text_config = transformers.CLIPTextConfig.from_pretrained
    te1 = transformers.CLIPTextModel(text_config(configs / "text_encoder"))
    te2 = transformers.CLIPTextModelWithProjection(text_config(configs / "text_encoder_2"))
    checkpoint = sd_keys.sdxl_to_original(
        unet.state_dict(),
        vae.state_dict(),
        clip_hub_keys(te1.state_dict()),
        clip_hub_keys(te2.state_dict()),
        concat=lambda parts: torch.cat(parts, dim=0),
        transpose=lambda tensor: tensor.T.contiguous(),
        conv_shape=lambda w: w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w,
    )
    save_safetensors(checkpoint, path, dtype=torch.float16)  # the real file is fp16


# -- Wan -------------------------------------------------------------------------------------
def _wan_transformer(folder: Path, path: Path, ctx: BuildContext) -> None:
    import torch

    config = {k: v for k, v in _read_json(folder / "config.json").items() if not k.startswith("_")}
    with _on_path(ctx.dp_dir):
        from models.wan.model import WanModel

        with torch.device("meta"):
            model = WanModel(**config)
    state = _random_like(model.state_dict(), ctx.device, torch.bfloat16)
    save_safetensors(state, path)


def _wan_t5(folder: Path, path: Path, ctx: BuildContext) -> None:
    def make(target: Path) -> None:
        import torch

        with _on_path(ctx.dp_dir):
            from models.wan.t5 import umt5_xxl

            model = umt5_xxl(encoder_only=True, return_tokenizer=False, device="meta")
        save_torch_zeros(zeros_like_meta(model, torch.bfloat16), target)

    _link_shared(ctx, layout.WAN_T5, path, make)


def _wan_vae(folder: Path, path: Path, ctx: BuildContext) -> None:
    def make(target: Path) -> None:
        import torch

        with _on_path(ctx.dp_dir):
            from models.wan.vae2_1 import WanVAE_

        # _video_vae's fixed architecture (models/wan/vae2_1.py), its own random init.
        cfg = {
            "dim": 96,
            "z_dim": 16,
            "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "attn_scales": [],
            "temperal_downsample": [False, True, True],
            "dropout": 0.0,
        }
        with torch.device(ctx.device):
            model = WanVAE_(**cfg)
        state = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)

    _link_shared(ctx, layout.WAN_VAE, path, make)


def _wan_clip(folder: Path, path: Path, ctx: BuildContext) -> None:
    import torch

    with _on_path(ctx.dp_dir):
        from models.wan.clip import clip_xlm_roberta_vit_h_14

        model = clip_xlm_roberta_vit_h_14(
            pretrained=False, return_transforms=False, return_tokenizer=False, device="meta"
        )
    save_torch_zeros(zeros_like_meta(model, torch.float16), path)


# -- Qwen-Image --------------------------------------------------------------------------------
def qwen_text_encoder_file_key(name: str) -> str:
    """A transformers-5 Qwen2.5-VL parameter name as the Qwen-Image repository's files spell it
    (the older layout): diffusion-pipe's loader renames them back (models/qwen_image.py)."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    return name


def diffusion_pipe_qwen_key(key: str) -> str:
    """models/qwen_image.py's renaming at 8f83dbf, for the tests' round trip."""
    key = key.replace("model.", "language_model.")
    key = "model." + key
    if "lm_head" in key:
        key = "lm_head.weight"
    return key


def _qwen_text_encoder(folder: Path, path: Path, ctx: BuildContext) -> None:
    import torch
    import transformers

    config_dir = ctx.dp_dir / "configs/qwen_image/text_encoder"
    config = transformers.Qwen2_5_VLConfig.from_pretrained(config_dir)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    state = {qwen_text_encoder_file_key(k): v for k, v in model.state_dict().items()}
    save_safetensors(state, path, dtype=torch.bfloat16)
    (folder / "config.json").write_text(json.dumps(_read_json(config_dir / "config.json")))


def _qwen_dp_model(class_name: str, config_name: str) -> Callable[[Path, Path, BuildContext], None]:
    def build(folder: Path, path: Path, ctx: BuildContext) -> None:
        import diffusers
        import torch

        config = _read_json(ctx.dp_dir / f"configs/qwen_image/{config_name}/config.json")
        model = getattr(diffusers, class_name).from_config(config)
        save_safetensors(model.state_dict(), path, dtype=torch.bfloat16)
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    return build


def apply_dp_overrides(plan: ModelPlan, dp_dir: Path) -> list[str]:
    """Replace diffusion-pipe's own configs where the plan says; the original is kept beside
    (``config.json.original``), so running twice starts from the original again."""
    done = []
    for relative, transform in plan.dp_overrides.items():
        path = dp_dir / relative
        backup = path.with_name(path.name + BACKUP_SUFFIX)
        if not backup.exists():
            shutil.copy2(path, backup)
        path.write_text(json.dumps(transform(_read_json(backup)), indent=2))
        done.append(relative)
    return done


# -- Z-Image (ComfyUI) ---------------------------------------------------------------------------
def z_image_detection_seed() -> dict[str, tuple[str, list[int]]]:
    """The keys ComfyUI's detection reads to call a state dict Z-Image, at one layer.

    Shapes only: the caption embedder gives dim and caption width, ``cap_pad_token`` means
    Turbo's padding, the FFN's width its multiplier, ``layers.0.`` one layer.
    """
    dim, cap, hidden = c.Z_IMAGE_DIM, c.Z_IMAGE_CAP_DIM, 10240
    return {
        "cap_embedder.0.weight": ("BF16", [cap]),
        "cap_embedder.1.weight": ("BF16", [dim, cap]),
        "cap_pad_token": ("BF16", [1, dim]),
        "x_pad_token": ("BF16", [1, dim]),
        "layers.0.attention_norm1.weight": ("BF16", [dim]),
        "layers.0.feed_forward.w1.weight": ("BF16", [hidden, dim]),
        "layers.0.feed_forward.w2.weight": ("BF16", [dim, hidden]),
        "noise_refiner.0.attention.k_norm.weight": ("BF16", [128]),
    }


def _meta_dict(shapes: Mapping[str, tuple[str, list[int]]]) -> dict[str, Any]:
    import torch

    return {k: torch.empty(shape, device="meta") for k, (_dtype, shape) in shapes.items()}


def _z_image_model(ctx: BuildContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ComfyUI's detected config, a meta-device state dict of its Z-Image at that config).

    The model is built the way ComfyUI builds it from a detected config; the result must be
    detected as the same config again, so the file written from it loads as this model. A
    config that changes once (the FFN width: detection reads it, the class derives it) is
    built a second time from what was detected.
    """
    with _on_path(ctx.dp_dir, ctx.dp_dir / COMFYUI_DIR):
        import comfy.model_detection

        state: dict[str, Any] = _meta_dict(z_image_detection_seed())
        config = comfy.model_detection.detect_unet_config(state, "")
        for _attempt in range(2):
            if config is None:
                raise RuntimeError("ComfyUI did not recognise the Z-Image keys")
            state = _comfy_meta_model(config, state)
            again = comfy.model_detection.detect_unet_config(state, "")
            if again == config:
                return config, state
            config = again
    raise RuntimeError(f"the built model is detected as {again}, not as {config}")


def _comfy_meta_model(config: dict[str, Any], seed: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import comfy.ldm.lumina.model
    import comfy.model_detection
    import comfy.ops
    import torch

    try:
        model_config = comfy.model_detection.model_config_from_unet_config(config, seed)
        model = model_config.get_model(seed, "", device=torch.device("meta"))
        return dict(model.diffusion_model.state_dict())
    except Exception:  # ComfyUI's own path first; the class itself is the fallback
        accepted = inspect.signature(comfy.ldm.lumina.model.NextDiT.__init__).parameters
        kwargs = {k: v for k, v in config.items() if k in accepted}
        with torch.device("meta"):
            model = comfy.ldm.lumina.model.NextDiT(
                **kwargs,
                device="meta",
                dtype=torch.bfloat16,
                operations=comfy.ops.disable_weight_init,
            )
        return dict(model.state_dict())


def _z_image_diffusion_model(folder: Path, path: Path, ctx: BuildContext) -> None:
    import torch

    config, state = _z_image_model(ctx)
    ctx.notes.append(f"z_image: ComfyUI detects {config}")
    save_safetensors(_random_like(state, ctx.device, torch.bfloat16), path)


def _z_image_text_encoder(folder: Path, path: Path, ctx: BuildContext) -> None:
    import torch
    import transformers

    config = transformers.Qwen3Config(
        **{k: v for k, v in c.QWEN3_4B.items() if k != "architectures"}
    )
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(config)
    # The repackaged file holds the base model only: the head is tied to the embeddings.
    shapes = {
        name: ("BF16", list(tensor.shape))
        for name, tensor in model.state_dict().items()
        if name.startswith("model.")
    }
    safetensors_io.write_zeros(path, shapes)


def _z_image_vae(folder: Path, path: Path, ctx: BuildContext) -> None:
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL.from_config(c.FLUX_REAL_VAE)
    state = sd_keys.vae_to_original(
        vae.state_dict(), reshape=lambda w: w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w
    )
    save_safetensors(state, path, dtype=torch.bfloat16)


def _z_image_adapter(folder: Path, path: Path, ctx: BuildContext) -> None:
    """A LoRA on two of layer 0's linear weights, in ComfyUI's generic key format."""
    import torch

    _config, state = _z_image_model(ctx)
    targets = [k for k, v in state.items() if k.startswith("layers.0.") and v.ndim == 2][:2]
    lora = {}
    for weight in targets:
        out_features, in_features = state[weight].shape
        stem = "diffusion_model." + weight.removesuffix(".weight")
        lora[f"{stem}.lora_down.weight"] = torch.randn(LORA_RANK, in_features) * 0.01
        lora[f"{stem}.lora_up.weight"] = torch.randn(out_features, LORA_RANK) * 0.01
        lora[f"{stem}.alpha"] = torch.tensor(float(LORA_RANK))
    save_safetensors(lora, path, dtype=torch.bfloat16)


# -- dispatch ------------------------------------------------------------------------------------
COMPONENTS: dict[str, Callable[[Path, Path, BuildContext], None]] = {
    "flux.text_encoder": _clip_text,
    "flux.text_encoder_2": _t5_text,
    "flux.transformer": _diffusers_model("FluxTransformer2DModel"),
    "flux.vae": _diffusers_model("AutoencoderKL"),
    "sdxl.checkpoint": _sdxl_checkpoint,
    "wan.t5": _wan_t5,
    "wan.vae": _wan_vae,
    "wan.clip": _wan_clip,
    "qwen.text_encoder": _qwen_text_encoder,
    "qwen.transformer": _qwen_dp_model("QwenImageTransformer2DModel", "transformer"),
    "qwen.vae": _qwen_dp_model("AutoencoderKLQwenImage", "vae"),
    "z_image.diffusion_model": _z_image_diffusion_model,
    "z_image.text_encoder": _z_image_text_encoder,
    "z_image.vae": _z_image_vae,
    "z_image.adapter": _z_image_adapter,
}
for _model_type in (ModelType.WAN13, ModelType.WAN14B_T2V, ModelType.WAN14B_I2V):
    COMPONENTS[f"wan.transformer.{_model_type.value}"] = _wan_transformer


def component_folder(planned: PlannedFile, models_dir: Path) -> Path:
    """The folder whose configs a component reads: its own, or for Wan the checkpoint root."""
    path = models_dir / planned.path
    if planned.component and planned.component.startswith("wan."):
        return models_dir / planned.path.split("/", 1)[0]
    return path.parent


def write_indexes(plan: ModelPlan, models_dir: Path) -> None:
    """Each ``*.safetensors.index.json`` over the keys its shards really hold."""
    for planned in plan.files:
        if planned.kind is not Kind.INDEX:
            continue
        index = models_dir / planned.path
        weight_map, total = {}, 0
        for shard in planned.content:
            header = safetensors_io.read_header(index.parent / shard)
            weight_map.update(dict.fromkeys(header, shard))
            total += sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
        layout.write_index(index, weight_map, total)


def build_model(plan: ModelPlan, models_dir: Path, ctx: BuildContext) -> None:
    """The plan's files, real weights in every one, indexes over them, then the marker."""
    apply_dp_overrides(plan, ctx.dp_dir)
    layout.write_files(plan.files, models_dir, ctx.dp_dir)
    layout.write_hub_cache(plan, ctx.hub_cache)
    for planned in plan.weights():
        assert planned.component is not None
        build = COMPONENTS[planned.component]
        build(component_folder(planned, models_dir), models_dir / planned.path, ctx)
    write_indexes(plan, models_dir)
    if missing := layout.missing_from_plan(plan, models_dir):
        raise RuntimeError(f"the build left out {missing}")
    layout.write_marker(plan, models_dir)


# -- quick checks with the loaders diffusion-pipe itself calls -----------------------------------
def _verify_flux(models_dir: Path, ctx: BuildContext) -> str:
    import diffusers
    import torch

    pipeline = diffusers.FluxPipeline.from_pretrained(
        models_dir / "FLUX.1-dev", torch_dtype=torch.bfloat16
    )
    return f"FluxPipeline loads: {type(pipeline.transformer).__name__}"


def _verify_sdxl(models_dir: Path, ctx: BuildContext) -> str:
    """models/sdxl.py's own call, offline, on the volume's Hub cache. The trainer gets the cache
    and offline mode through HF_HUB_CACHE and HF_HUB_OFFLINE, which huggingface_hub reads when
    it is imported: in this process they are passed as arguments instead."""
    import diffusers
    import torch

    pipeline = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(models_dir / "stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"),
        torch_dtype=torch.bfloat16,
        add_watermarker=False,
        cache_dir=str(ctx.hub_cache),
        local_files_only=True,
    )
    blocks = len(pipeline.unet.down_blocks)
    return f"from_single_file loads offline: UNet of {blocks} levels"


VERIFY: dict[ModelType, Callable[[Path, BuildContext], str]] = {
    ModelType.FLUX: _verify_flux,
    ModelType.SDXL: _verify_sdxl,
}


def verify_model(plan: ModelPlan, models_dir: Path, ctx: BuildContext) -> str | None:
    check = VERIFY.get(plan.model_type)
    return check(models_dir, ctx) if check is not None else None

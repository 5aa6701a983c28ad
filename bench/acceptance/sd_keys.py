"""diffusers state dicts renamed to the original Stable Diffusion checkpoint layout.

SDXL is loaded from one original-layout file (``sd_xl_base_1.0.safetensors``) and Z-Image's VAE
is Flux's ``ae.safetensors``, also original layout; the miniatures are built with diffusers and
renamed here. The tables follow diffusers' ``scripts/convert_diffusers_to_original_sdxl.py``
(Apache-2.0), which is positional: it holds for SDXL's block structure (3 UNet levels of 2
resnets, 4 VAE levels), and the miniatures keep that structure and shrink only widths. Pure key
logic on mappings, so the CPU tests check it without torch; diffusers' own loader, reading the
result back, is the check on the GPU machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# -- UNet ----------------------------------------------------------------------------------------
_UNET_FIXED = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
]
_UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _unet_layers() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for i in range(3):
        for j in range(2):
            pairs.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i > 0:
                pairs.append(
                    (f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")
                )
        for j in range(3):
            pairs.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i < 2:
                pairs.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        pairs.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        pairs.append(
            (f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0.")
        )
    # up_blocks.0 has attentions, so its upsampler is the block's third module, not its second.
    pairs.append(("output_blocks.2.2.conv.", "output_blocks.2.1.conv."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


def unet_key(name: str) -> str:
    fixed = {hf: sd for sd, hf in _UNET_FIXED}
    if name in fixed:
        return fixed[name]
    if "resnets" in name:
        for sd_part, hf_part in _UNET_RESNET:
            name = name.replace(hf_part, sd_part)
    for sd_part, hf_part in _unet_layers():
        name = name.replace(hf_part, sd_part)
    return name


# -- VAE -----------------------------------------------------------------------------------------
def _vae_layers() -> list[tuple[str, str]]:
    pairs = [
        ("nin_shortcut", "conv_shortcut"),
        ("norm_out", "conv_norm_out"),
        ("mid.attn_1.", "mid_block.attentions.0."),
    ]
    for i in range(4):
        for j in range(2):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < 3:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(3):
            pairs.append((f"decoder.up.{3 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    return pairs


_VAE_ATTENTION = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]
# The original VAE's attention projections are 1x1 convolutions, diffusers' are linear layers.
_VAE_CONV_WEIGHTS = tuple(f"mid.attn_1.{name}.weight" for name in ("q", "k", "v", "proj_out"))


def vae_key(name: str) -> str:
    original = name
    for sd_part, hf_part in _vae_layers():
        name = name.replace(hf_part, sd_part)
    if "attentions" in original:
        for sd_part, hf_part in _VAE_ATTENTION:
            name = name.replace(hf_part, sd_part)
    return name


def vae_needs_conv_shape(sd_name: str) -> bool:
    return sd_name.endswith(_VAE_CONV_WEIGHTS)


# -- text encoders -------------------------------------------------------------------------------
_OPENCLIP = [
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    (".c_fc.", ".fc1."),
    (".c_proj.", ".fc2."),
    (".attn", ".self_attn"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
]


def openclip_key(name: str) -> str:
    for sd_part, hf_part in _OPENCLIP:
        name = name.replace(hf_part, sd_part)
    return name


# -- whole checkpoints ---------------------------------------------------------------------------
Tensor = Any  # torch.Tensor where torch is present; the key logic never looks inside


def _renamed(
    state_dict: Mapping[str, Tensor], rename: Callable[[str], str], prefix: str
) -> dict[str, Tensor]:
    return {prefix + rename(name): value for name, value in state_dict.items()}


def vae_to_original(
    state_dict: Mapping[str, Tensor],
    prefix: str = "",
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """``reshape`` turns a linear weight into a 1x1 convolution's (``w[..., None, None]``)."""
    out = {}
    for name, value in state_dict.items():
        sd_name = vae_key(name)
        if reshape is not None and vae_needs_conv_shape(sd_name):
            value = reshape(value)
        out[prefix + sd_name] = value
    return out


_QKV = re.compile(r"^(?P<stem>.*\.self_attn)\.(?P<letter>[qkv])_proj\.(?P<kind>weight|bias)$")


def openclip_to_original(
    state_dict: Mapping[str, Tensor], concat: Callable[[list[Tensor]], Tensor], prefix: str
) -> dict[str, Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict as OpenCLIP's: q, k and v fused into
    ``in_proj_*`` (``concat`` joins them along the first dimension). The projection is left to
    the caller: OpenCLIP stores it transposed, under another name."""
    out: dict[str, Tensor] = {}
    fused: dict[tuple[str, str], list[Tensor | None]] = {}
    for name, value in state_dict.items():
        if match := _QKV.match(name):
            parts = fused.setdefault((match["stem"], match["kind"]), [None, None, None])
            parts["qkv".index(match["letter"])] = value
        elif name != "text_projection.weight":
            out[prefix + openclip_key(name)] = value
    for (stem, kind), parts in fused.items():
        if any(part is None for part in parts):
            raise ValueError(f"{stem}: q, k and v are not all there")
        out[f"{prefix}{openclip_key(stem)}.in_proj_{kind}"] = concat(parts)
    return out


def sdxl_to_original(
    unet: Mapping[str, Tensor],
    vae: Mapping[str, Tensor],
    text_encoder: Mapping[str, Tensor],
    text_encoder_2: Mapping[str, Tensor],
    *,
    concat: Callable[[list[Tensor]], Tensor],
    transpose: Callable[[Tensor], Tensor],
    conv_shape: Callable[[Tensor], Tensor],
) -> dict[str, Tensor]:
    """One original SDXL checkpoint from the four diffusers/transformers state dicts."""
    checkpoint = _renamed(unet, unet_key, "model.diffusion_model.")
    checkpoint.update(vae_to_original(vae, "first_stage_model.", conv_shape))
    checkpoint.update(
        {f"conditioner.embedders.0.transformer.{k}": v for k, v in text_encoder.items()}
    )
    second = "conditioner.embedders.1.model."
    checkpoint.update(openclip_to_original(text_encoder_2, concat, second))
    checkpoint[f"{second}text_projection"] = transpose(text_encoder_2["text_projection.weight"])
    return checkpoint

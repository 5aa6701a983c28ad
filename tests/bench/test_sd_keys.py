"""diffusers names to the original Stable Diffusion layout, and back through diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.acceptance import sd_keys


@pytest.mark.parametrize(
    ("diffusers", "original"),
    [
        ("time_embedding.linear_1.weight", "time_embed.0.weight"),
        ("add_embedding.linear_2.bias", "label_emb.0.2.bias"),
        ("down_blocks.0.resnets.1.conv1.weight", "input_blocks.2.0.in_layers.2.weight"),
        ("down_blocks.1.attentions.0.proj_in.weight", "input_blocks.4.1.proj_in.weight"),
        ("down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
        ("mid_block.resnets.1.norm1.weight", "middle_block.2.in_layers.0.weight"),
        ("mid_block.attentions.0.norm.weight", "middle_block.1.norm.weight"),
        ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.2.conv.weight"),
        ("up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias"),
        ("up_blocks.2.resnets.2.conv_shortcut.weight", "output_blocks.8.0.skip_connection.weight"),
    ],
)
def test_unet_names(diffusers: str, original: str) -> None:
    assert sd_keys.unet_key(diffusers) == original


@pytest.mark.parametrize(
    ("diffusers", "original"),
    [
        ("encoder.down_blocks.0.resnets.1.conv1.weight", "encoder.down.0.block.1.conv1.weight"),
        ("encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias"),
        ("decoder.up_blocks.0.resnets.2.norm1.weight", "decoder.up.3.block.2.norm1.weight"),
        ("decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up.3.upsample.conv.weight"),
        ("encoder.mid_block.attentions.0.to_q.weight", "encoder.mid.attn_1.q.weight"),
        ("decoder.mid_block.attentions.0.group_norm.bias", "decoder.mid.attn_1.norm.bias"),
        ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
        ("quant_conv.weight", "quant_conv.weight"),
    ],
)
def test_vae_names(diffusers: str, original: str) -> None:
    assert sd_keys.vae_key(diffusers) == original


def test_vae_attention_weights_become_one_by_one_convolutions() -> None:
    state = {"encoder.mid_block.attentions.0.to_out.0.weight": [2, 2], "encoder.conv_in.weight": 1}
    out = sd_keys.vae_to_original(state, "first_stage_model.", reshape=lambda w: ("conv", w))
    assert out["first_stage_model.encoder.mid.attn_1.proj_out.weight"] == ("conv", [2, 2])
    assert out["first_stage_model.encoder.conv_in.weight"] == 1


def test_openclip_fuses_q_k_v_and_leaves_the_projection_to_the_caller() -> None:
    """GIVEN a second text encoder's names WHEN renamed THEN q, k and v are joined in that
    order into in_proj_*, the MLP and norms take OpenCLIP's names, the projection is left out."""
    layer = "text_model.encoder.layers.3.self_attn"
    state = {
        f"{layer}.v_proj.weight": "v",
        f"{layer}.q_proj.weight": "q",
        f"{layer}.k_proj.weight": "k",
        "text_model.encoder.layers.3.mlp.fc1.bias": "fc1",
        "text_model.final_layer_norm.weight": "ln",
        "text_model.embeddings.position_embedding.weight": "pos",
        "text_projection.weight": "proj",
    }
    out = sd_keys.openclip_to_original(state, concat="".join, prefix="p.")
    assert out == {
        "p.transformer.resblocks.3.attn.in_proj_weight": "qkv",
        "p.transformer.resblocks.3.mlp.c_fc.bias": "fc1",
        "p.ln_final.weight": "ln",
        "p.positional_embedding": "pos",
    }


def test_a_layer_without_all_of_q_k_v_is_refused() -> None:
    state = {"text_model.encoder.layers.0.self_attn.q_proj.bias": "q"}
    with pytest.raises(ValueError, match="q, k and v"):
        sd_keys.openclip_to_original(state, concat="".join, prefix="")


def test_sdxl_checkpoint_round_trips_through_diffusers_single_file(tmp_path: Path) -> None:
    """GIVEN the SDXL miniature built from its cached configs WHEN saved in the original layout
    and read back by diffusers' from_single_file, offline THEN every tensor comes back equal
    (skipped where diffusers is not installed: the GPU run checks the same load)."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    import transformers

    from bench.acceptance import builders, layout
    from bench.acceptance import configs as c
    from contracts.enums import ModelType

    plan = layout.plan_for(ModelType.SDXL)
    hub_cache = tmp_path / "hf-cache"
    layout.write_hub_cache(plan, hub_cache)
    snapshot = layout.hub_snapshot_dir(hub_cache, c.SDXL_REPO)
    unet = diffusers.UNet2DConditionModel.from_config(
        diffusers.UNet2DConditionModel.load_config(snapshot / "unet")
    )
    te2 = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig.from_pretrained(snapshot / "text_encoder_2")
    )
    ctx = builders.BuildContext(dp_dir=tmp_path, hub_cache=hub_cache)
    path = tmp_path / "sd_xl_base_1.0.safetensors"
    torch.manual_seed(0)
    builders.COMPONENTS["sdxl.checkpoint"](tmp_path, path, ctx)
    loaded = diffusers.StableDiffusionXLPipeline.from_single_file(
        str(path), add_watermarker=False, cache_dir=str(hub_cache), local_files_only=True
    )
    assert set(loaded.unet.state_dict()) == set(unet.state_dict())
    assert set(loaded.text_encoder_2.state_dict()) == set(te2.state_dict())
    assert not any(p.is_meta for p in loaded.text_encoder_2.parameters())

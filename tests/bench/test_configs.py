"""The shrunk architectures: sizes that agree with each other and load into the real configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from bench.acceptance import configs as c
from bench.acceptance import layout
from bench.acceptance.tokenizers import CLIP_BOS_ID, CLIP_EOS_ID, CLIP_VOCAB_SIZE
from contracts.enums import ModelType


def _json(model_type: ModelType, suffix: str) -> dict:
    plan = layout.plan_for(model_type)
    return next(f.content for f in plan.files if f.path.endswith(suffix))


def test_flux_widths_agree_across_its_components() -> None:
    """GIVEN the Flux miniature WHEN its components' configs are compared THEN the transformer
    takes what the encoders and the VAE produce, and its rope covers a head exactly."""
    transformer = c.FLUX_TRANSFORMER
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert transformer["joint_attention_dim"] == c.t5_encoder_config()["d_model"]
    assert transformer["pooled_projection_dim"] == c.clip_text_config(10)["projection_dim"]
    assert transformer["in_channels"] == 4 * c.FLUX_VAE["latent_channels"]
    assert transformer["num_layers"] == transformer["num_single_layers"] == 1
    assert transformer["guidance_embeds"], "diffusion-pipe calls a file without guidance_in schnell"


def test_sdxl_unet_takes_both_text_encoders_and_keeps_the_original_structure() -> None:
    """GIVEN SDXL's miniature configs WHEN compared THEN cross-attention takes both encoders'
    widths, the added embedding the pooled text plus six time ids, and the block structure is
    SDXL's (the original-layout key names are positional)."""
    unet, vae = c.SDXL_UNET, c.SDXL_VAE
    te1 = c.clip_text_config(CLIP_VOCAB_SIZE)
    te2 = c.clip_text_config(
        CLIP_VOCAB_SIZE, layers=c.SDXL_TE2_LAYERS, with_projection=True, width=c.SDXL_TE2_DIM
    )
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"]
    expected = te2["projection_dim"] + 6 * unet["addition_time_embed_dim"]
    assert unet["projection_class_embeddings_input_dim"] == expected
    assert len(unet["block_out_channels"]) == 3 and unet["layers_per_block"] == 2
    assert len(vae["block_out_channels"]) == 4 and vae["layers_per_block"] == 2
    # diffusers' "xl_base" test key, and the width it tells the two encoders apart by
    assert te2["num_hidden_layers"] >= 10
    assert te2["hidden_size"] != te1["hidden_size"]


@pytest.mark.parametrize(
    "model_type", [ModelType.WAN13, ModelType.WAN14B_T2V, ModelType.WAN14B_I2V]
)
def test_wan_keeps_the_variant_width_and_rope_head(model_type: ModelType) -> None:
    """GIVEN a Wan miniature's config.json WHEN read as models/wan/wan.py reads it THEN dim is
    one it detects, heads are 128 wide (its rope layout) and i2v takes the image channels."""
    config = _json(model_type, "/config.json")
    assert config["dim"] in (1536, 5120)
    assert config["dim"] // config["num_heads"] == 128 and config["dim"] % config["num_heads"] == 0
    assert config["num_layers"] == 1
    assert config["in_dim"] == (36 if config["model_type"] == "i2v" else 16)


def _qwen_original() -> dict:
    """The shape of diffusion-pipe's configs/qwen_image/text_encoder/config.json (abridged)."""
    text = {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_window_layers": 28,
        "layer_types": ["full_attention"] * 28,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "model_type": "qwen2_5_vl_text",
        "vocab_size": 152064,
    }
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **{k: v for k, v in text.items() if k != "model_type"},
        "text_config": text,
        "vision_config": vision,
        "image_token_id": 151655,
        "video_token_id": 151656,
    }


def test_qwen_text_encoder_shrinks_to_a_model_transformers_builds() -> None:
    """GIVEN diffusion-pipe's Qwen2.5-VL config WHEN shrunk THEN transformers builds it, its
    rope sections cover half a head, its width is what the transformer attends to, and the
    token table still holds the real tokenizer's ids."""
    shrunk = c.qwen_text_encoder_config(_qwen_original())
    config = transformers.Qwen2_5_VLConfig(**shrunk)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)

    head = shrunk["hidden_size"] // shrunk["num_attention_heads"]
    assert sum(shrunk["text_config"]["rope_scaling"]["mrope_section"]) == head // 2
    assert shrunk["hidden_size"] == c.QWEN_TRANSFORMER["joint_attention_dim"]
    assert shrunk["vision_config"]["out_hidden_size"] == shrunk["hidden_size"]
    assert model.get_input_embeddings().weight.shape[0] >= 151936
    assert sum(p.numel() for p in model.parameters()) < 50_000_000


def test_qwen_transformer_rope_covers_its_heads() -> None:
    transformer = c.QWEN_TRANSFORMER
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert transformer["in_channels"] == 4 * transformer["out_channels"]


def test_qwen_vae_keeps_the_latent_statistics() -> None:
    original = {"base_dim": 96, "z_dim": 16, "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16}
    shrunk = c.qwen_vae_config(original)
    assert shrunk["base_dim"] < original["base_dim"]
    assert {k: shrunk[k] for k in ("z_dim", "latents_mean", "latents_std")} == {
        k: original[k] for k in ("z_dim", "latents_mean", "latents_std")
    }
    assert original["base_dim"] == 96, "the original is not changed in place"


def test_flux_text_encoders_build_and_encode_the_miniature_tokenizer(tmp_path: Path) -> None:
    """GIVEN Flux's CLIP config and tokenizer files WHEN transformers loads both THEN a caption
    encodes to ids inside the table and the encoder pools at the end token."""
    plan = layout.plan_for(ModelType.FLUX)
    layout.write_files(plan.files, tmp_path, None)
    folder = tmp_path / "FLUX.1-dev"
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    model = transformers.CLIPTextModel(
        transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder")
    )

    ids = tokenizer(["a red circle, lqshape"], padding="max_length", max_length=77)["input_ids"]
    out = model(torch.tensor(ids))

    assert ids[0][0] == CLIP_BOS_ID and CLIP_EOS_ID in ids[0]
    assert max(ids[0]) < CLIP_VOCAB_SIZE
    assert out.pooler_output.shape == (1, c.FLUX_TRANSFORMER["pooled_projection_dim"])


def test_flux_t5_config_builds_an_encoder_of_the_joint_width(tmp_path: Path) -> None:
    plan = layout.plan_for(ModelType.FLUX)
    layout.write_files(plan.files, tmp_path, None)
    config = json.loads((tmp_path / "FLUX.1-dev/text_encoder_2/config.json").read_text())
    model = transformers.T5EncoderModel(transformers.T5Config(**config))

    hidden = model(torch.tensor([[3, 9, 1131, 1]])).last_hidden_state

    assert hidden.shape[-1] == c.FLUX_TRANSFORMER["joint_attention_dim"]


def test_z_image_detection_seed_names_z_image_at_one_layer() -> None:
    from bench.acceptance.builders import z_image_detection_seed

    seed = z_image_detection_seed()
    assert seed["cap_embedder.1.weight"][1] == [c.Z_IMAGE_DIM, c.Z_IMAGE_CAP_DIM]
    assert {k.split(".")[1] for k in seed if k.startswith("layers.")} == {"0"}
    assert c.QWEN3_4B["hidden_size"] == c.Z_IMAGE_CAP_DIM

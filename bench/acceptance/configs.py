"""The miniatures' architectures: the real configs with every size that the loaders allow shrunk.

Pure data, so the CPU tests can check the sizes agree with each other without the libraries that
build the weights. What cannot shrink, and why (each read from diffusion-pipe at 8f83dbf or the
library that detects the model):
- Wan: ``models/wan/wan.py`` picks the variant from ``config.json``'s ``dim`` (1536 or 5120 only,
  and the registry's ``expect_json`` pins the same values), so only depth and FFN width shrink.
  Its T5 (umT5-XXL), VAE and CLIP are built by fixed Python functions (``models/wan/t5.py``
  ``umt5_xxl``, ``vae2_1.py``, ``clip.py``) and loaded strictly: they stay full size.
- Z-Image: ComfyUI recognises it by ``dim == 3840`` and counts the layers from the keys; its
  Qwen3-4B text encoder and Flux VAE have fixed shapes in ComfyUI: full size.
- Qwen-Image: diffusion-pipe reads all three architectures from its own ``configs/qwen_image/``
  (not from the model folder), so the acceptance copy of diffusion-pipe gets the three configs
  below in their place (``QWEN_DP_CONFIGS``).
- SDXL: diffusers recognises the single file by ``resblocks.9`` of the second text encoder, so
  that encoder keeps ten layers; the block structure stays SDXL's (3 UNet levels, 2 resnets each;
  4 VAE levels) because the original-layout key names are positional.
"""

from __future__ import annotations

import copy
from typing import Any

# -- shared sizes ---------------------------------------------------------------------------------
TEXT_DIM = 32  # every shrinkable text encoder's width
CLIP_POSITIONS = 77  # CLIP tokenizers pad to 77 tokens; the position table must hold them
T5_VOCAB = 32128  # configs/t5_old's tokenizer (32100 pieces + 28 spare, like T5 v1.1)
SDXL_TE2_LAYERS = 10  # diffusers' "xl_base" test key is ...resblocks.9...
# diffusers tells SDXL's two text encoders apart by width (768 and 1280 in the real model): the
# second must be wider than the first, or it is loaded with the first one's weights.
SDXL_TE2_DIM = 48

# -- Flux: a diffusers folder, every component built from these ----------------------------------
FLUX_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.30.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
FLUX_SCHEDULER: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX_TRANSFORMER: dict[str, Any] = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 16,
    "axes_dims_rope": [4, 6, 6],  # must add up to attention_head_dim
    "guidance_embeds": True,  # FLUX.1-dev: diffusion-pipe's is_dev() looks for guidance_in
    "in_channels": 64,  # 16 latent channels x 2x2 patches, as diffusion-pipe packs them
    "joint_attention_dim": TEXT_DIM,  # the T5 encoder's d_model
    "num_attention_heads": 2,
    "num_layers": 1,
    "num_single_layers": 1,
    "patch_size": 1,
    "pooled_projection_dim": TEXT_DIM,  # CLIP's pooled output
}
FLUX_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [32, 32, 32, 32],  # four levels: 8x downsampling, as the real one
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}


def clip_text_config(
    vocab_size: int, *, layers: int = 2, with_projection: bool = False, width: int = TEXT_DIM
) -> dict[str, Any]:
    """A CLIP text encoder as ``transformers.CLIPTextConfig`` reads it from ``config.json``."""
    from bench.acceptance.tokenizers import CLIP_BOS_ID, CLIP_EOS_ID

    config: dict[str, Any] = {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "projection_dim": width,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "max_position_embeddings": CLIP_POSITIONS,
        "hidden_act": "gelu" if with_projection else "quick_gelu",
        "layer_norm_eps": 1e-5,
        # CLIP pools at the first eos token only when eos_token_id is not the legacy 2.
        "bos_token_id": CLIP_BOS_ID,
        "eos_token_id": CLIP_EOS_ID,
        "pad_token_id": CLIP_EOS_ID,
        "torch_dtype": "float32",
    }
    return config


def t5_encoder_config() -> dict[str, Any]:
    """Flux's second text encoder (T5 v1.1: gated GELU, untied head), one layer wide as TEXT_DIM."""
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": T5_VOCAB,
        "d_model": TEXT_DIM,
        "d_kv": 8,
        "d_ff": 2 * TEXT_DIM,
        "num_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 4,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "torch_dtype": "float32",
    }


# -- SDXL: configs live in the Hub cache (from_single_file reads them there), weights in one file -
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SDXL_TIME_EMBED_DIM = 8
SDXL_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
    "attention_head_dim": [2, 2, 2],  # diffusers' legacy name for the number of heads
    "block_out_channels": [32, 64, 64],
    "center_input_sample": False,
    "cross_attention_dim": TEXT_DIM + SDXL_TE2_DIM,  # both encoders' hidden states, joined
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    # the pooled text embedding plus six time ids (original size, crop, target size)
    "projection_class_embeddings_input_dim": SDXL_TE2_DIM + 6 * SDXL_TIME_EMBED_DIM,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 1, 1],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_VAE: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# -- Wan 2.1: the official checkpoint's config.json (read by models/wan/wan.py) ------------------
WAN_HEAD_DIM = 128  # the real models' dim / num_heads, which rope_params is laid out for
WAN_FFN_DIM = 256


def wan_config(model_type: str, dim: int) -> dict[str, Any]:
    """``config.json`` of a Wan 2.1 checkpoint folder: the real variant's ``dim``, one block."""
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": dim,
        "eps": 1e-06,
        "ffn_dim": WAN_FFN_DIM,
        "freq_dim": 256,
        # i2v adds the first frame's 16 latent channels and a 4-channel mask to the noise
        "in_dim": 36 if model_type == "i2v" else 16,
        "model_type": model_type,
        "num_heads": dim // WAN_HEAD_DIM,
        "num_layers": 1,
        "out_dim": 16,
        "text_len": 512,
    }


# -- Qwen-Image: diffusion-pipe's own configs/qwen_image/, replaced in the acceptance copy --------
QWEN_TEXT_DIM = 64
QWEN_VOCAB = 152064  # the real tokenizer's ids go up to ~151k: the table keeps its length
QWEN_TRANSFORMER: dict[str, Any] = {
    "_class_name": "QwenImageTransformer2DModel",
    "_diffusers_version": "0.34.0.dev0",
    "attention_head_dim": 32,
    "axes_dims_rope": [8, 12, 12],
    "guidance_embeds": False,
    "in_channels": 64,
    "joint_attention_dim": QWEN_TEXT_DIM,
    "num_attention_heads": 2,
    "num_layers": 1,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 768,
}
QWEN_VAE_BASE_DIM = 16
QWEN_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "QwenImagePipeline",
    "_diffusers_version": "0.34.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "QwenImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLQwenImage"],
}


def qwen_vae_config(original: dict[str, Any]) -> dict[str, Any]:
    """diffusion-pipe's VAE config with a narrower base; z_dim and the latent stats stay."""
    config = copy.deepcopy(original)
    config["base_dim"] = QWEN_VAE_BASE_DIM
    return config


def qwen_text_encoder_config(original: dict[str, Any]) -> dict[str, Any]:
    """diffusion-pipe's Qwen2.5-VL config, one layer of QWEN_TEXT_DIM, a one-block vision tower.

    Only the sizes change: the token ids, the rope type and every switch stay the real model's.
    The multimodal rope splits each head's rotary half in three: the sections add up to it.
    """
    config = copy.deepcopy(original)
    heads, head_dim = 2, QWEN_TEXT_DIM // 2
    sizes = {
        "hidden_size": QWEN_TEXT_DIM,
        "intermediate_size": 2 * QWEN_TEXT_DIM,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "max_window_layers": 1,
        "vocab_size": QWEN_VOCAB,
    }
    mrope = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    for table in (config, config.get("text_config", {})):
        table.update(sizes)
        if table.get("rope_scaling"):
            table["rope_scaling"]["mrope_section"] = mrope
        if "layer_types" in table:
            table["layer_types"] = ["full_attention"]
    vision = config["vision_config"]
    vision.update(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=QWEN_TEXT_DIM,
        fullatt_block_indexes=[0],
    )
    return config


# -- Z-Image: what ComfyUI's detection needs to see to build the real architecture, one layer ----
Z_IMAGE_DIM = 3840  # comfy/model_detection.py: dim 3840 is Z-Image
Z_IMAGE_CAP_DIM = 2560  # Qwen3-4B's hidden size: the caption embedder's input
# Qwen3-4B as ComfyUI's text encoder loads it ("lumina2" clip type): fixed shapes, HF key names.
QWEN3_4B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": Z_IMAGE_CAP_DIM,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
# Flux's VAE, which ComfyUI builds with fixed channels from an ``ae.safetensors``.
FLUX_REAL_VAE: dict[str, Any] = {
    **FLUX_VAE,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "sample_size": 1024,
}

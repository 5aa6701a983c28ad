"""The Hub repositories loraq provisions, in their real layouts, with small generated files.

File names and folders are those of the real repositories (including files loraq must NOT
download, such as Flux's single-file checkpoint or Wan's demo assets). Weights are tiny valid
safetensors files; ``config.json`` files carry the keys diffusion-pipe's loaders read (Wan's
``model_type`` and ``dim`` pick the variant); sharded weights come with their index.
"""

from __future__ import annotations

import json
from typing import Any

from tests.hub_server import HubRepo

FLUX = "black-forest-labs/FLUX.1-dev"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
WAN13 = "Wan-AI/Wan2.1-T2V-1.3B"
WAN14_T2V = "Wan-AI/Wan2.1-T2V-14B"
WAN14_I2V = "Wan-AI/Wan2.1-I2V-14B-480P"
QWEN = "Qwen/Qwen-Image"
Z_IMAGE = "Comfy-Org/z_image_turbo"
Z_ADAPTER = "ostris/zimage_turbo_training_adapter"

# The one big file. huggingface_hub reads a download in 10 MiB chunks and, when the connection
# drops, resumes from the last whole chunk it wrote: so the file spans more than one chunk.
BIG_FILE = (WAN13, "diffusion_pytorch_model.safetensors")
BIG_FILE_ELEMENTS = 6 * 1024 * 1024  # bf16: 12 MiB of tensor data


def safetensors(tensors: dict[str, int]) -> bytes:
    """A valid safetensors file: bf16 tensors of the given element counts, zero-filled."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, count in tensors.items():
        header[name] = {
            "dtype": "BF16",
            "shape": [count],
            "data_offsets": [offset, offset + 2 * count],
        }
        offset += 2 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


def _sharded(folder: str, stem: str, shards: int, *, prefix: str = "") -> dict[str, bytes]:
    """``<stem>-0000i-of-0000n.safetensors`` shards and their ``<stem>.safetensors.index.json``."""
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for i in range(1, shards + 1):
        name = f"{stem}-{i:05d}-of-{shards:05d}.safetensors"
        tensor = f"{prefix}blocks.{i}.weight"
        files[f"{folder}{name}"] = safetensors({tensor: 16})
        weight_map[tensor] = name
    files[f"{folder}{stem}.safetensors.index.json"] = _json(
        {"metadata": {"total_size": 32 * shards}, "weight_map": weight_map}
    )
    return files


def _common(readme: str) -> dict[str, bytes]:
    return {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": readme.encode(),
    }


def flux() -> HubRepo:
    files = {
        **_common("# FLUX.1 [dev]\n"),
        "LICENSE.md": b"FLUX.1 [dev] Non-Commercial License\n",
        "dev_grid.jpg": b"\xff\xd8\xff\xe0jpeg",
        "flux1-dev.safetensors": safetensors({"double_blocks.0.img_attn.qkv.weight": 64}),
        "ae.safetensors": safetensors({"decoder.conv_in.weight": 16}),
        "model_index.json": _json(
            {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0.dev0"}
        ),
        "scheduler/scheduler_config.json": _json(
            {"_class_name": "FlowMatchEulerDiscreteScheduler"}
        ),
        "text_encoder/config.json": _json({"architectures": ["CLIPTextModel"]}),
        "text_encoder/model.safetensors": safetensors({"text_model.embeddings.position_ids": 8}),
        "text_encoder_2/config.json": _json({"architectures": ["T5EncoderModel"]}),
        **_sharded("text_encoder_2/", "model", 2, prefix="encoder."),
        "tokenizer/merges.txt": b"#version: 0.2\n",
        "tokenizer/special_tokens_map.json": _json({}),
        "tokenizer/tokenizer_config.json": _json({}),
        "tokenizer/vocab.json": _json({"a": 0}),
        "tokenizer_2/special_tokens_map.json": _json({}),
        "tokenizer_2/spiece.model": b"\x0a\x0bsentencepiece",
        "tokenizer_2/tokenizer.json": _json({"version": "1.0"}),
        "tokenizer_2/tokenizer_config.json": _json({}),
        "transformer/config.json": _json(
            {"_class_name": "FluxTransformer2DModel", "guidance_embeds": True}
        ),
        **_sharded("transformer/", "diffusion_pytorch_model", 3),
        "vae/config.json": _json({"_class_name": "AutoencoderKL"}),
        "vae/diffusion_pytorch_model.safetensors": safetensors({"decoder.conv_in.weight": 16}),
    }
    return HubRepo(FLUX, files=files, gated=True)


def sdxl() -> HubRepo:
    files = {
        **_common("# SD-XL 1.0-base\n"),
        "LICENSE.md": b"CreativeML Open RAIL++-M License\n",
        "01.png": b"\x89PNG",
        # Named by the key diffusers' single-file loader tells an SDXL base checkpoint by
        # (single_file_utils.py CHECKPOINT_KEY_NAMES["xl_base"]).
        "sd_xl_base_1.0.safetensors": safetensors(
            {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": 64}
        ),
        "sd_xl_base_1.0_0.9vae.safetensors": safetensors(
            {"model.diffusion_model.out.2.weight": 64}
        ),
        "sd_xl_offset_example-lora_1.0.safetensors": safetensors(
            {"lora_unet_out.lora_down.weight": 8}
        ),
        # The diffusers folders diffusers' from_single_file reads its configs from.
        "model_index.json": _json(
            {
                "_class_name": "StableDiffusionXLPipeline",
                "force_zeros_for_empty_prompt": True,
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
            }
        ),
        "scheduler/scheduler_config.json": _json({"_class_name": "EulerDiscreteScheduler"}),
        "text_encoder/config.json": _json({"architectures": ["CLIPTextModel"]}),
        "text_encoder/model.safetensors": safetensors({"text_model.embeddings.position_ids": 8}),
        "text_encoder_2/config.json": _json({"architectures": ["CLIPTextModelWithProjection"]}),
        **{
            f"{folder}/{name}": data
            for folder in ("tokenizer", "tokenizer_2")
            for name, data in _clip_tokenizer().items()
        },
        "unet/config.json": _json({"_class_name": "UNet2DConditionModel"}),
        "unet/diffusion_pytorch_model.fp16.safetensors": safetensors({"conv_in.weight": 16}),
        "vae/config.json": _json({"_class_name": "AutoencoderKL"}),
        # Matched by diffusers' patterns though no SDXL component reads it.
        "vae_1_0/config.json": _json({"_class_name": "AutoencoderKL"}),
    }
    return HubRepo(SDXL, files=files)


def _clip_tokenizer() -> dict[str, bytes]:
    """A CLIP BPE tokenizer small enough to read, in the four files SDXL's repo ships."""
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    return {
        "merges.txt": b"#version: 0.2\na b</w>\n",
        "special_tokens_map.json": _json({**special, "pad_token": "<|endoftext|>"}),
        "tokenizer_config.json": _json(
            {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77}
        ),
        "vocab.json": _json(
            {
                "a": 0,
                "b": 1,
                "a</w>": 2,
                "b</w>": 3,
                "ab</w>": 4,
                "<|startoftext|>": 5,
                "<|endoftext|>": 6,
            }
        ),
    }


def _wan_common() -> dict[str, bytes]:
    return {
        **_common("# Wan2.1\n"),
        "LICENSE.txt": b"Apache License 2.0\n",
        "assets/logo.png": b"\x89PNG",
        "assets/video_dit_arch.jpg": b"\xff\xd8\xff\xe0jpeg",
        "examples/i2v_input.JPG": b"\xff\xd8\xff\xe0jpeg",
        "configuration.json": _json({"framework": "Pytorch", "task": "text-to-video-synthesis"}),
        "models_t5_umt5-xxl-enc-bf16.pth": b"PK\x03\x04 umt5 weights",
        "Wan2.1_VAE.pth": b"PK\x03\x04 vae weights",
        "google/umt5-xxl/special_tokens_map.json": _json({}),
        "google/umt5-xxl/spiece.model": b"\x0a\x0bsentencepiece",
        "google/umt5-xxl/tokenizer.json": _json({"version": "1.0"}),
        "google/umt5-xxl/tokenizer_config.json": _json({}),
    }


def _wan_config(model_type: str, dim: int, in_dim: int) -> bytes:
    return _json(
        {
            "_class_name": "WanModel",
            "_diffusers_version": "0.30.0",
            "dim": dim,
            "eps": 1e-06,
            "ffn_dim": 8960 if dim == 1536 else 13824,
            "freq_dim": 256,
            "in_dim": in_dim,
            "model_type": model_type,
            "num_heads": 12 if dim == 1536 else 40,
            "num_layers": 30 if dim == 1536 else 40,
            "out_dim": 16,
            "text_len": 512,
        }
    )


def wan13() -> HubRepo:
    files = {
        **_wan_common(),
        "config.json": _wan_config("t2v", 1536, 16),
        BIG_FILE[1]: safetensors({"blocks.0.self_attn.q.weight": BIG_FILE_ELEMENTS}),
    }
    return HubRepo(WAN13, files=files)


def wan14_t2v() -> HubRepo:
    files = {
        **_wan_common(),
        "config.json": _wan_config("t2v", 5120, 16),
        **_sharded("", "diffusion_pytorch_model", 6),
    }
    return HubRepo(WAN14_T2V, files=files)


def wan14_i2v() -> HubRepo:
    shards = _sharded("", "diffusion_pytorch_model", 7)
    # diffusion-pipe tells Wan 2.1 I2V from 2.2 by this key (models/wan/wan.py).
    shards["diffusion_pytorch_model-00001-of-00007.safetensors"] = safetensors(
        {"blocks.0.cross_attn.k_img.weight": 16}
    )
    files = {
        **_wan_common(),
        "config.json": _wan_config("i2v", 5120, 36),
        **shards,
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth": b"PK\x03\x04 clip weights",
        "xlm-roberta-large/sentencepiece.bpe.model": b"\x0a\x0bsentencepiece",
        "xlm-roberta-large/special_tokens_map.json": _json({}),
        "xlm-roberta-large/tokenizer.json": _json({"version": "1.0"}),
        "xlm-roberta-large/tokenizer_config.json": _json({}),
    }
    return HubRepo(WAN14_I2V, files=files)


def qwen() -> HubRepo:
    files = {
        **_common("# Qwen-Image\n"),
        "LICENSE": b"Apache License 2.0\n",
        "model_index.json": _json({"_class_name": "QwenImagePipeline"}),
        "scheduler/scheduler_config.json": _json(
            {"_class_name": "FlowMatchEulerDiscreteScheduler"}
        ),
        "text_encoder/config.json": _json(
            {"architectures": ["Qwen2_5_VLForConditionalGeneration"]}
        ),
        "text_encoder/generation_config.json": _json({}),
        **_sharded("text_encoder/", "model", 4, prefix="model."),
        "tokenizer/merges.txt": b"#version: 0.2\n",
        "tokenizer/vocab.json": _json({"a": 0}),
        "tokenizer/tokenizer_config.json": _json({}),
        "transformer/config.json": _json({"_class_name": "QwenImageTransformer2DModel"}),
        **_sharded("transformer/", "diffusion_pytorch_model", 9),
        "vae/config.json": _json({"_class_name": "AutoencoderKLQwenImage"}),
        "vae/diffusion_pytorch_model.safetensors": safetensors({"decoder.conv_in.weight": 16}),
    }
    return HubRepo(QWEN, files=files)


def z_image() -> HubRepo:
    files = {
        **_common("# Z-Image-Turbo, ComfyUI repackaged\n"),
        "split_files/diffusion_models/z_image_turbo_bf16.safetensors": safetensors(
            {"layers.0.attention.qkv.weight": 64}
        ),
        "split_files/text_encoders/qwen_3_4b.safetensors": safetensors(
            {"model.embed_tokens.weight": 64}
        ),
        "split_files/vae/ae.safetensors": safetensors({"decoder.conv_in.weight": 16}),
    }
    return HubRepo(Z_IMAGE, files=files)


def z_adapter() -> HubRepo:
    files = {
        **_common("# Z-Image-Turbo Training Adapter\n"),
        "zimage_turbo_training_adapter_v1.safetensors": safetensors(
            {"diffusion_model.layers.0.lora_A.weight": 32}
        ),
        "zimage_turbo_training_adapter_v2.safetensors": safetensors(
            {"diffusion_model.layers.0.lora_A.weight": 32}
        ),
    }
    return HubRepo(Z_ADAPTER, files=files)


def all_repos() -> list[HubRepo]:
    return [flux(), sdxl(), wan13(), wan14_t2v(), wan14_i2v(), qwen(), z_image(), z_adapter()]

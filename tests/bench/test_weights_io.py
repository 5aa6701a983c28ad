"""Weights written without their data: sparse zero files that every reader takes whole."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from bench.acceptance import builders, safetensors_io
from stages import weights


def test_zero_safetensors_read_back_as_zeros_of_the_right_shapes(tmp_path: Path) -> None:
    """GIVEN a header-only file of two tensors WHEN safetensors and provision's check read it
    THEN the shapes and dtypes are there, every value is zero, and the file is not truncated."""
    path = tmp_path / "te.safetensors"
    size = safetensors_io.write_zeros(
        path, {"model.embed.weight": ("BF16", [1024, 512]), "model.norm.weight": ("F32", [512])}
    )

    with safe_open(str(path), "pt") as f:
        embed, norm = f.get_tensor("model.embed.weight"), f.get_tensor("model.norm.weight")

    assert embed.shape == (1024, 512) and embed.dtype == torch.bfloat16
    assert norm.dtype == torch.float32 and not embed.any() and not norm.any()
    assert path.stat().st_size == size
    assert weights._safetensors_problem(path) is None
    assert safetensors_io.tensor_count(path) == 2
    assert safetensors_io.is_sparse(path), "the zeros should be a hole, not written bytes"


def test_a_zero_state_dict_saves_as_a_sparse_torch_file_that_loads_whole(tmp_path: Path) -> None:
    """GIVEN a meta-device model WHEN its zeros are saved the way Wan's T5 is THEN torch.load
    and a strict load_state_dict take it, it is all zeros, and it holds almost no blocks."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.LayerNorm(2048))
    path = tmp_path / "t5.pth"

    builders.save_torch_zeros(builders.zeros_like_meta(model, torch.bfloat16), path)
    loaded = torch.load(path, map_location="cpu")
    real = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.LayerNorm(2048))
    real.load_state_dict(loaded, strict=True)

    assert loaded["0.weight"].dtype == torch.bfloat16 and not loaded["0.weight"].any()
    assert safetensors_io.is_sparse(path)
    assert path.stat().st_size > 1024 * 2048 * 2


def test_writing_real_weights_through_the_hole_writer_keeps_them(tmp_path: Path) -> None:
    """GIVEN non-zero tensors WHEN saved through the same writer THEN they come back equal."""
    state = {"w": torch.randn(256, 256), "z": torch.zeros(64, 64)}
    path = tmp_path / "mixed.pth"

    builders.save_torch_zeros(state, path)

    loaded = torch.load(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["z"], state["z"])


def test_tied_tensors_are_saved_as_separate_copies(tmp_path: Path) -> None:
    shared = torch.ones(4, 4)
    path = tmp_path / "tied.safetensors"
    builders.save_safetensors({"a": shared, "b": shared}, path)
    assert safetensors_io.tensor_count(path) == 2


def test_qwen_text_encoder_names_round_trip_through_diffusion_pipes_renaming() -> None:
    """GIVEN transformers' Qwen2.5-VL parameter names WHEN written as the repository's files
    spell them and renamed back as models/qwen_image.py does THEN each name is the original."""
    names = [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.norm.weight",
        "model.visual.blocks.0.attn.qkv.weight",
        "model.visual.merger.mlp.0.weight",
        "lm_head.weight",
    ]
    for name in names:
        on_disk = builders.qwen_text_encoder_file_key(name)
        assert "language_model" not in on_disk
        assert builders.diffusion_pipe_qwen_key(on_disk) == name


def test_clip_names_get_the_hub_prefix_once() -> None:
    keys = builders.clip_hub_keys(
        {"embeddings.x": 1, "text_model.encoder.y": 2, "text_projection.weight": 3}
    )
    assert set(keys) == {
        "text_model.embeddings.x",
        "text_model.encoder.y",
        "text_projection.weight",
    }

"""The stand-ins written into the run's site: flash-attn's attention, wandb, comfy_kitchen."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.acceptance import shims


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    shims.write_shims(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in list(sys.modules):
            if name.split(".")[0] in ("flash_attn", "wandb", "comfy_kitchen"):
                del sys.modules[name]


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention of one sequence: [L, H, D]."""
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def test_varlen_attention_attends_within_each_sequence_only(site: Path) -> None:
    """GIVEN two packed sequences of different lengths, with grouped heads WHEN the stand-in's
    flash_attn_varlen_func runs THEN each output equals attention over its own sequence."""
    flash_attn = importlib.import_module("flash_attn")
    torch.manual_seed(0)
    q = torch.randn(7, 4, 8)
    k, v = torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    cu_q, cu_k = torch.tensor([0, 3, 7]), torch.tensor([0, 5, 9])

    out = flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5)

    for (qs, qe), (ks, ke) in (((0, 3), (0, 5)), ((3, 7), (5, 9))):
        kk = k[ks:ke].repeat_interleave(2, dim=1)
        vv = v[ks:ke].repeat_interleave(2, dim=1)
        torch.testing.assert_close(out[qs:qe], _reference(q[qs:qe], kk, vv))


def test_varlen_attention_carries_gradients(site: Path) -> None:
    flash_attn = importlib.import_module("flash_attn")
    q = torch.randn(4, 2, 8, requires_grad=True)
    cu = torch.tensor([0, 4])
    flash_attn.flash_attn_varlen_func(q, q, q, cu, cu).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_wandb_imports_and_refuses_to_be_used(site: Path) -> None:
    wandb = importlib.import_module("wandb")
    with pytest.raises(RuntimeError, match="stand-in"):
        wandb.init(project="x")


def test_comfy_kitchen_imports_without_its_tensor_module(site: Path) -> None:
    """ComfyUI's quant_ops falls back exactly when comfy_kitchen.tensor cannot be imported."""
    importlib.import_module("comfy_kitchen")
    with pytest.raises(ImportError):
        importlib.import_module("comfy_kitchen.tensor")


def test_a_real_package_already_in_the_site_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "__init__.py").write_text("REAL = True\n")

    written = shims.write_shims(tmp_path)

    assert "wandb" not in written
    assert (tmp_path / "wandb" / "__init__.py").read_text() == "REAL = True\n"

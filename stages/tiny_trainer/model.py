"""A tiny diffusion transformer (DiT) with LoRA layers, trained with a flow-matching loss.

The base weights are drawn from a constant seed, so every run on every machine builds the same
frozen "base model" without a file to download; only the LoRA matrices are trained. The layout
mirrors what diffusion-pipe produces for real models: LoRA layers expose `base_layer`,
`lora_A` and `lora_B` like PEFT, so parameter names become the ComfyUI/PEFT adapter keys
(`diffusion_model.<module path>.lora_A.weight`).

Everything computes in float32 on the CPU whatever `[model] dtype` / `[adapter] dtype` say; those
only decide the dtype of the saved adapter (via save_dtype's default), as a CPU toy gains nothing
from reduced precision.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

# The base model is the same on every run: it is drawn from this seed, not from the training
# seed, so an adapter trained with any `seed` fits the base it will be loaded into.
BASE_MODEL_SEED = 1234
# Leaf module names that get a LoRA layer (PEFT's `target_modules`). Besides attention and MLP,
# the patch embedding and output projection are wrapped: with a random frozen base, a LoRA that
# cannot touch the input and output maps removes about a third as much loss in its first 50 steps.
LORA_TARGET_MODULES = ("qkv", "proj", "fc1", "fc2", "patch_embed", "final_proj")
# Std of the base output projection. Near zero, like DiT's zero-initialised final layer: the base
# then predicts ~zero velocity, so the loss a LoRA removes is the data's, not random base output.
_FINAL_PROJ_STD = 0.02
_PAD_TOKEN = 0
_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True)
class TinyDiTConfig:
    """Dimensions of the tiny DiT; `[model]` keys of the same names override the defaults."""

    image_size: int = 32
    channels: int = 3
    patch_size: int = 4
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    text_tokens: int = 8
    vocab_size: int = 1024

    @classmethod
    def from_model_table(cls, model: dict[str, Any], image_size: int) -> TinyDiTConfig:
        """Build from the `[model]` table, ignoring keys that are not dimensions."""
        dims = {
            k: int(model[k]) for k in cls.__dataclass_fields__ if k in model and k != "image_size"
        }
        cfg = cls(image_size=image_size, **dims)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Fail early with a readable message instead of a shape error mid-training."""
        if self.image_size % self.patch_size:
            raise ValueError(
                f"resolution {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.width % 4:
            raise ValueError(
                f"width {self.width} must be a multiple of 4 for the 2D position embedding"
            )


def tokenize(caption: str, length: int, vocab_size: int) -> torch.Tensor:
    """Map a caption to `length` token ids by hashing lower-cased words (CRC32: stable across runs).

    Python's `hash()` is salted per process, so it would change the "text encoder" every run.
    Id 0 is padding; words map to 1..vocab_size-1.
    """
    ids = [zlib.crc32(w.encode()) % (vocab_size - 1) + 1 for w in _WORD_RE.findall(caption.lower())]
    ids = (ids + [_PAD_TOKEN] * length)[:length]
    return torch.tensor(ids, dtype=torch.long)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features of `positions` (any float tensor) -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = positions.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D position embedding [grid*grid, dim]: half the channels encode rows, half columns."""
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat(
        [_sincos_1d(dim // 2, rows.flatten()), _sincos_1d(dim // 2, cols.flatten())], dim=-1
    )


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update, laid out like PEFT's LoRA layer.

    y = base(x) + (alpha / r) * B(A(dropout(x))), with B zero at start so training begins from the
    exact base model, and A Kaiming-uniform like PEFT.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta: torch.Tensor = self.lora_B(self.lora_A(self.lora_dropout(x)))
        base: torch.Tensor = self.base_layer(x)
        return base + delta * self.scaling


class Attention(nn.Module):
    """Multi-head self-attention over the joint [text ; image] sequence."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = functional.scaled_dot_product_attention(q, k, v)
        projected: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, n, w))
        return projected


class Mlp(nn.Module):
    """The transformer block's feed-forward layer."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(functional.gelu(self.fc1(x), approximate="tanh"))
        return out


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are shifted/scaled by the timestep (adaLN).

    No adaLN-zero gates: with a frozen random base they would start near zero and starve the
    LoRA layers inside the block of gradient.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)
        self.ada_ln = nn.Linear(width, 4 * width)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift1, scale1, shift2, scale2 = self.ada_ln(functional.silu(cond)).chunk(4, dim=-1)
        x = x + self.attn(_modulate(self.norm1(x), shift1, scale1))
        mlp_out: torch.Tensor = self.mlp(_modulate(self.norm2(x), shift2, scale2))
        return x + mlp_out


class TinyDiT(nn.Module):
    """Predicts the flow-matching velocity for noisy images given timesteps and caption tokens."""

    def __init__(self, cfg: TinyDiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Set from train.toml's `activation_checkpointing`: recompute blocks in backward.
        self.activation_checkpointing = False
        patch_dim = cfg.channels * cfg.patch_size**2
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Linear(patch_dim, cfg.width)
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width)
        )
        self.blocks = nn.ModuleList(
            DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.final_norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.final_ada_ln = nn.Linear(cfg.width, 2 * cfg.width)
        self.final_proj = nn.Linear(cfg.width, patch_dim)
        # Non-persistent: DeepSpeed checkpoints must hold only the trainable LoRA tensors.
        self.register_buffer("image_pos", _sincos_2d(cfg.width, grid), persistent=False)
        self.register_buffer(
            "text_pos", _sincos_1d(cfg.width, torch.arange(cfg.text_tokens)), persistent=False
        )

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        cond = self.time_mlp(_sincos_1d(self.cfg.width, t * 1000.0))
        image = self.patch_embed(self._patchify(x_t)) + self.image_pos
        text = self.text_embed(tokens) + self.text_pos
        x = torch.cat([text, image], dim=1)
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, use_reentrant=False)
            else:
                x = block(x, cond)
        shift, scale = self.final_ada_ln(functional.silu(cond)).chunk(2, dim=-1)
        out = self.final_proj(_modulate(self.final_norm(x[:, tokens.shape[1] :]), shift, scale))
        return self._unpatchify(out)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.cfg.patch_size
        x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p, c, g = self.cfg.patch_size, self.cfg.channels, self.cfg.image_size // self.cfg.patch_size
        x = x.view(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, g * p, g * p)


def build_base_model(cfg: TinyDiTConfig) -> TinyDiT:
    """Build the frozen base model from BASE_MODEL_SEED without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_MODEL_SEED)
        model = TinyDiT(cfg)
        nn.init.normal_(model.final_proj.weight, std=_FINAL_PROJ_STD)
        nn.init.zeros_(model.final_proj.bias)
    model.requires_grad_(False)
    return model


def inject_lora(model: nn.Module, rank: int, alpha: float, dropout: float) -> list[str]:
    """Replace every Linear whose leaf name is in LORA_TARGET_MODULES by a LoRALinear.

    Returns the wrapped module paths. Only the new lora_A/lora_B weights require grad.
    """
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES
    ]
    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), rank, alpha, dropout))
    return targets


def lora_state_dict(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The trainable tensors by parameter name, as contiguous CPU tensors of `dtype`.

    Called on a TinyDiffusionObjective, the names already carry the ComfyUI `diffusion_model.`
    prefix.
    """
    return {
        name: p.detach().to(device="cpu", dtype=dtype).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def sample_noise_and_t(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like x0 and t ~ sigmoid(N(0,1)) ("logit_normal"), one t per sample."""
    noise = torch.randn_like(x0)
    t = torch.sigmoid(torch.randn((x0.shape[0],), dtype=x0.dtype))
    return noise, t


class TinyDiffusionObjective(nn.Module):
    """The module DeepSpeed trains: the DiT under `diffusion_model` plus the rectified-flow loss.

    x_t = (1-t)·x0 + t·noise, target = noise - x0. Noise and t are inputs (not drawn here) so the
    caller controls the randomness per step and resumed runs repeat it exactly.
    """

    def __init__(self, diffusion_model: TinyDiT) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(
        self, x0: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        t_b = t.view(-1, 1, 1, 1)
        x_t = (1 - t_b) * x0 + t_b * noise
        pred = self.diffusion_model(x_t, t, tokens)
        return functional.mse_loss(pred.float(), (noise - x0).float())

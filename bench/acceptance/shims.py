"""Stand-ins for three packages that cannot travel, written into the run's own site folder.

Each is what the code that imports it needs on this run, no more (``prepare.LEFT_OUT`` says why
each real one stays behind), and the results file lists them, so a pass here is never read as a
pass with the real packages:
- ``flash_attn``: ``models/wan/model.py`` calls ``flash_attention``, which asserts flash-attn 2 or
  3 and calls ``flash_attn_varlen_func``; this one computes the same attention with PyTorch's
  ``scaled_dot_product_attention``, one sequence at a time.
- ``wandb``: ``train.py`` imports it at the top and calls it only with ``[monitoring]``.
- ``comfy_kitchen``: ``comfy/model_base.py`` imports it for one model (JoyImage); without
  ``comfy_kitchen.tensor`` ComfyUI's quantisation falls back to its own code, as it does
  whenever the package is missing.
"""

from __future__ import annotations

from pathlib import Path

FLASH_ATTN = '''"""loraq acceptance stand-in: flash-attn's varlen attention, by torch SDPA."""
import torch
import torch.nn.functional as F

__version__ = "0.0.0+loraq-acceptance-stand-in"


def _one(q, k, v, dropout_p, softmax_scale, causal):
    # [L, H, D] -> [1, H, L, D]; grouped-query heads repeated as flash-attn broadcasts them.
    if k.size(1) != q.size(1):
        repeat = q.size(1) // k.size(1)
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        dropout_p=dropout_p,
        is_causal=causal,
        scale=softmax_scale,
    )
    return out[0].transpose(0, 1)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                           max_seqlen_k=None, dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), deterministic=False, **_unused):
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError("the stand-in computes global attention only")
    starts_q = cu_seqlens_q.tolist()
    starts_k = cu_seqlens_k.tolist()
    outputs = [
        _one(q[starts_q[i]:starts_q[i + 1]], k[starts_k[i]:starts_k[i + 1]],
             v[starts_k[i]:starts_k[i + 1]], dropout_p, softmax_scale, causal)
        for i in range(len(starts_q) - 1)
    ]
    return torch.cat(outputs, dim=0)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_unused):
    return torch.stack(
        [_one(q[b], k[b], v[b], dropout_p, softmax_scale, causal) for b in range(q.size(0))]
    )
'''

WANDB = '''"""loraq acceptance stand-in: train.py imports wandb; only [monitoring] would call it."""
__version__ = "0.0.0+loraq-acceptance-stand-in"


def _refuse(*_args, **_kwargs):
    raise RuntimeError("wandb is a stand-in on this acceptance run: no [monitoring]")


init = login = log = finish = _refuse
'''

COMFY_KITCHEN = '''"""loraq acceptance stand-in: importable, no kernels, no comfy_kitchen.tensor."""
__version__ = "0.0.0+loraq-acceptance-stand-in"
'''

SHIMS = {
    "flash_attn/__init__.py": FLASH_ATTN,
    "wandb/__init__.py": WANDB,
    "comfy_kitchen/__init__.py": COMFY_KITCHEN,
}


def write_shims(site: Path) -> list[str]:
    """Write the stand-ins into ``site``, never over a real package that is already there."""
    written = []
    for relative, source in SHIMS.items():
        package = site / relative.split("/")[0]
        if package.exists() and not (package / ".loraq-stand-in").exists():
            continue
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        (package / ".loraq-stand-in").touch()
        written.append(package.name)
    return written
